"""Hugging Face checkpoint folders: tensor index, lazy tensor access, content fingerprints,
compatibility checks (including a config that contradicts its own weights), and safe
model/tokenizer loading. JSON files (sharded index, config, tokenizer) are validated for
structure and type, and every error names the file and the key or tensor.

Only safetensors are read lazily (one tensor at a time, by positional reads). ``pytorch_model*.bin`` files are read
with ``torch.load(weights_only=True)`` — never an unrestricted unpickle — and
``trust_remote_code`` stays off unless an experiment turns it on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from msa_core.experiment import Experiment
from msa_core.safetensors_stream import SafetensorsFile, read_header
from msa_core.untrusted import json_type, read_json_object, read_text

log = logging.getLogger(__name__)

TensorInfo = tuple[str, tuple[int, ...]]  # (dtype string, shape)

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _shard_names(index: Path) -> dict[str, str]:
    """Tensor name → shard file name from a sharded index, with its structure validated."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' must be an object mapping tensor names to shard files, "
                         f"got {json_type(weight_map)}")
    if not weight_map:
        raise ValueError(f"{index}: 'weight_map' lists no tensors")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise ValueError(f"{index}: weight_map[{name!r}] must be a shard file name, got {shard!r:.100}")
        # Lexical check (not resolve()): Hugging Face cache snapshots are symlinks into ../blobs.
        if os.path.isabs(shard) or ".." in Path(shard).parts:
            raise ValueError(f"{index}: weight_map[{name!r}] = {shard!r} points outside the model folder")
    return weight_map


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: safetensors (sharded index honoured) or .bin."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / name for name in _shard_names(index).values()})
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index}: shard {missing[0].name} listed but missing")
        return files
    st = sorted(folder.glob("*.safetensors"))
    if st:
        return st
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weight files")


def _tensor_files(folder: Path) -> dict[str, tuple[str, tuple[int, ...], Path]]:
    """Tensor name → (dtype, shape, file) over every weight file; a name in two files is refused."""
    folder = Path(folder)
    out: dict[str, tuple[str, tuple[int, ...], Path]] = {}
    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            entries = read_header(f).entries
            found = {name: (_ST_DTYPES.get(e.dtype, e.dtype.lower()), e.shape) for name, e in entries.items()}
        else:
            found = {name: (str(t.dtype).replace("torch.", ""), tuple(t.shape)) for name, t in _load_bin(f).items()}
        for name, (dtype, shape) in found.items():
            if name in out:
                # Which copy a loader would use is unspecified; refusing beats a silent pick.
                raise ValueError(f"{folder}: tensor {name} is stored twice, in {out[name][2].name} and {f.name}")
            out[name] = (dtype, shape, f)
    if not out:
        raise ValueError(f"{folder}: the weight files hold no tensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        for name, shard in _shard_names(index).items():
            if name not in out or out[name][2] != folder / shard:
                raise ValueError(f"{index}: weight_map puts tensor {name} in {shard}, which does not hold it")
    return out


def read_tensor_index(folder: Path) -> dict[str, TensorInfo]:
    """Tensor name → (dtype, shape) for every weight in a folder, without loading data."""
    return {name: (dtype, shape) for name, (dtype, shape, _f) in _tensor_files(folder).items()}


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: cannot read weights safely ({exc})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict (tensor name → tensor), got a {type(sd).__name__}")
    for name, t in sd.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r:.100} is a {type(t).__name__}, expected a tensor")
    return sd


class TensorReader:
    """Lazy access to the tensors of one checkpoint folder (safetensors: positional reads).

    Use as a context manager; ``get(name)`` returns a CPU tensor in the stored dtype.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._stack = ExitStack()
        self._where: dict[str, Any] = {}

    def __enter__(self) -> TensorReader:
        for f in weight_files(self.folder):
            if f.suffix == ".safetensors":
                handle = self._stack.enter_context(SafetensorsFile(f))  # fails early, by name, on truncation
                for k in handle.keys():
                    self._where[k] = handle
            else:
                tensors = _load_bin(f)
                for k in tensors:
                    self._where[k] = tensors
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> torch.Tensor:
        src = self._where.get(name)
        if src is None:
            raise KeyError(f"{self.folder}: no tensor named {name!r}")
        return src.get_tensor(name) if isinstance(src, SafetensorsFile) else src[name]


# Content digests of weight files, keyed by what identifies one version of a file. Owner: this
# module. Reason: hashing a 7B checkpoint takes ~10 s (sha256 at ~1.7 GB/s), and one app
# process fingerprints the same checkpoints on every engine load, vector-cache check and export.
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()
# A file hashed within this many seconds of its last change is not cached: a rewrite in the same
# clock tick can leave size, mtime and even ctime unchanged (git's "racy clean" problem).
_RACY_NS = 2_000_000_000
# Large reads keep hashing near disk speed; one buffer per file being hashed.
_HASH_CHUNK = 8 << 20
# Files other than the weights that change a model's answers (architecture, tokenizer, defaults).
_SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
)


def _file_key(st: os.stat_result, path: Path) -> tuple[str, int, int, int, int, int]:
    return (str(path.absolute()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def file_digest(path: Path) -> str:
    """sha256 of a file's content (streamed in 8 MiB reads; cached per file version in this process)."""
    path = Path(path)
    before = path.stat()
    key = _file_key(before, path)
    with _DIGESTS_LOCK:
        hit = _DIGESTS.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    digest = h.hexdigest()
    settled = time.time_ns() - max(before.st_mtime_ns, before.st_ctime_ns) > _RACY_NS
    if settled and _file_key(path.stat(), path) == key:  # unchanged while we read it
        with _DIGESTS_LOCK:
            _DIGESTS[key] = digest
    return digest


def _digests(files: list[Path]) -> dict[Path, str]:
    """Content digests of several files, hashed in parallel (hashlib and reads release the GIL)."""
    unique = sorted(set(files))
    if len(unique) <= 1:
        return {f: file_digest(f) for f in unique}
    with ThreadPoolExecutor(max_workers=min(4, len(unique), os.cpu_count() or 1)) as pool:
        return dict(zip(unique, pool.map(file_digest, unique)))


def _fingerprint(folder: Path, files: list[Path], digests: dict[Path, str]) -> str:
    h = hashlib.sha256(b"msa-checkpoint-v2;")
    for f in files:
        h.update(f"{f.relative_to(folder)}={digests[f]};".encode())
    for name in _SIDE_FILES:
        p = folder / name
        if p.is_file():
            h.update(f"{name}={hashlib.sha256(p.read_bytes()).hexdigest()};".encode())
    return h.hexdigest()[:16]


def checkpoint_fingerprint(folder: Path) -> str:
    """A short hash of a checkpoint's content: every weight file's bytes, config and tokenizer files.

    Content, not size/mtime: a checkpoint rewritten in place with the same size, mtime and
    header gets a new fingerprint, so stale vectors and stored results are not reused.
    """
    folder = Path(folder)
    files = weight_files(folder)
    return _fingerprint(folder, files, _digests(files))


def checkpoint_fingerprints(folders: Mapping[str, Path]) -> dict[str, str]:
    """:func:`checkpoint_fingerprint` of several folders (by role), every weight file hashed in one pool."""
    files = {role: weight_files(Path(folder)) for role, folder in folders.items()}
    digests = _digests([f for fs in files.values() for f in fs])
    return {role: _fingerprint(Path(folder), files[role], digests) for role, folder in folders.items()}


def experiment_fingerprint(exp: Experiment) -> str:
    """One hash over the fingerprints of every checkpoint in an experiment."""
    h = hashlib.sha256()
    for role, fingerprint in checkpoint_fingerprints(exp.checkpoints.as_dict()).items():
        h.update(f"{role}={fingerprint};".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CompatReport:
    """Outcome of comparing checkpoints: roles, sizes, and every problem found."""

    roles: tuple[str, ...]
    architecture: str
    num_tensors: int
    num_parameters: int
    dtypes: dict[str, str]
    vocab_size: Optional[int]
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def _architecture(folder: Path) -> tuple[str, dict[str, Any]]:
    cfg_path = Path(folder) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} does not exist")
    cfg = read_json_object(cfg_path)
    archs = cfg.get("architectures")
    if archs is not None and not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
        raise ValueError(f"{cfg_path}: 'architectures' must be a non-empty list of strings, got {archs!r:.100}")
    model_type = cfg.get("model_type", "?")
    if not isinstance(model_type, str):
        raise ValueError(f"{cfg_path}: 'model_type' must be a string, got {json_type(model_type)}")
    return (archs[0] if archs else model_type), cfg


def _tokenizer_vocab(folder: Path) -> Optional[dict[str, int]]:
    tj = Path(folder) / "tokenizer.json"
    if not tj.is_file():
        return None
    model = read_json_object(tj).get("model", {})
    if not isinstance(model, dict):
        raise ValueError(f"{tj}: 'model' must be an object, got {json_type(model)}")
    vocab = model.get("vocab")
    return vocab if isinstance(vocab, dict) else None


# Llama-style decoders (the same tensor names and shapes): the config implies every weight's shape.
_LLAMA_STYLE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"}
_LAYER_TENSOR = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _config_int(cfg: dict[str, Any], key: str, cfg_path: Path) -> Optional[int]:
    """A positive integer config value, None when absent; any other type or value is refused by name."""
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{cfg_path}: {key} must be a positive integer, got {value!r:.100}")
    return value


def _implied_shapes(
    cfg: dict[str, Any], cfg_path: Path
) -> Optional[tuple[int, dict[str, tuple[tuple[int, ...], str]]]]:
    """(num_hidden_layers, tensor suffix → (shape, the config values that imply it)) for a Llama-style config.

    None when the config leaves a size to the library's defaults (nothing to compare against).
    """
    keys = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "num_hidden_layers")
    values = {key: _config_int(cfg, key, cfg_path) for key in (*keys, "num_key_value_heads", "head_dim")}
    if any(values[key] is None for key in keys):
        return None
    hidden, heads, inter, vocab, layers = (int(values[key] or 0) for key in keys)
    kv = values["num_key_value_heads"] or heads
    head_dim = values["head_dim"] or hidden // heads
    q = (f"num_attention_heads={heads} × head_dim={head_dim}, hidden_size={hidden}", heads * head_dim)
    k = (f"num_key_value_heads={kv} × head_dim={head_dim}, hidden_size={hidden}", kv * head_dim)
    mlp = f"intermediate_size={inter}, hidden_size={hidden}"
    norm = f"hidden_size={hidden}"
    shapes: dict[str, tuple[tuple[int, ...], str]] = {
        "model.embed_tokens.weight": ((vocab, hidden), f"vocab_size={vocab}, hidden_size={hidden}"),
        "lm_head.weight": ((vocab, hidden), f"vocab_size={vocab}, hidden_size={hidden}"),
        "model.norm.weight": ((hidden,), norm),
        "self_attn.q_proj.weight": ((q[1], hidden), q[0]),
        "self_attn.q_proj.bias": ((q[1],), q[0]),
        "self_attn.o_proj.weight": ((hidden, q[1]), q[0]),
        "mlp.gate_proj.weight": ((inter, hidden), mlp),
        "mlp.up_proj.weight": ((inter, hidden), mlp),
        "mlp.down_proj.weight": ((hidden, inter), mlp),
        "input_layernorm.weight": ((hidden,), norm),
        "post_attention_layernorm.weight": ((hidden,), norm),
    }
    for proj in ("k_proj", "v_proj"):
        shapes[f"self_attn.{proj}.weight"] = ((k[1], hidden), k[0])
        shapes[f"self_attn.{proj}.bias"] = ((k[1],), k[0])
    return layers, shapes


def config_problems(
    role: str, folder: Path, tensors: Optional[dict[str, tuple[str, tuple[int, ...], Path]]] = None
) -> list[str]:
    """Where a Llama-style ``config.json`` contradicts the weights (shapes, layer count), by role and tensor.

    A config that disagrees with its weights passes a name-and-shape comparison between
    checkpoints (they may all share the mistake) and only fails inside the model loader;
    this names the config values and the tensor instead. Other architectures: [] (their
    load errors are reported by :func:`load_model`). ``tensors``: the folder's
    :func:`_tensor_files`, when the caller has already read them.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    _arch, cfg = _architecture(folder)
    if cfg.get("model_type") not in _LLAMA_STYLE:
        return []
    implied = _implied_shapes(cfg, cfg_path)
    if implied is None:
        return []
    layers, shapes = implied
    problems: list[str] = []
    wrong = 0
    seen_layers: set[int] = set()
    for name, (_dtype, shape, f) in (tensors if tensors is not None else _tensor_files(folder)).items():
        m = _LAYER_TENSOR.match(name)
        if m:
            seen_layers.add(int(m.group(1)))
        want = shapes.get(m.group(2) if m else name)
        if want is not None and shape != want[0]:
            wrong += 1
            if wrong == 1:  # one example per role; the count says how far it goes
                problems.append(
                    f"{role}: {cfg_path.name} ({want[1]}) implies tensor {name} of shape {list(want[0])}, "
                    f"but {f} has {list(shape)}"
                )
    if wrong > 1:
        problems[0] += f" ({wrong - 1} more tensors disagree with {cfg_path} too)"
    if seen_layers and seen_layers != set(range(layers)):
        problems.append(
            f"{role}: {cfg_path.name} says num_hidden_layers={layers}, but the weights in {folder} have "
            f"layers {min(seen_layers)}..{max(seen_layers)} ({len(seen_layers)} in all)"
        )
    return problems


def compare_checkpoints(folders: Mapping[str, Path], max_report: int = 10) -> CompatReport:
    """Compare architecture, tensor names, shapes, dtypes and tokenizer vocabularies.

    The first folder is the base every other is compared against; problems name the
    role and the tensor. Never raises for a mismatch (see :func:`check_compatible`).
    """
    roles = list(folders)
    base_role = roles[0]
    base_arch, base_cfg = _architecture(folders[base_role])
    tensors = {role: _tensor_files(folders[role]) for role in roles}
    indexes = {role: {name: (dt, shape) for name, (dt, shape, _f) in t.items()} for role, t in tensors.items()}
    base_index = indexes[base_role]
    base_vocab = _tokenizer_vocab(folders[base_role])
    problems: list[str] = config_problems(base_role, folders[base_role], tensors[base_role])
    for role in roles[1:]:
        arch, cfg = _architecture(folders[role])
        if arch != base_arch:
            problems.append(f"{role}: architecture {arch} differs from {base_role}'s {base_arch}")
        for key in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "head_dim"):
            if cfg.get(key) != base_cfg.get(key):
                problems.append(f"{role}: config {key}={cfg.get(key)} differs from {base_role}'s {base_cfg.get(key)}")
        problems.extend(config_problems(role, folders[role], tensors[role]))
        index = indexes[role]
        missing = sorted(set(base_index) - set(index))
        extra = sorted(set(index) - set(base_index))
        for name in missing[:max_report]:
            problems.append(f"{role}: tensor {name} missing (present in {base_role})")
        for name in extra[:max_report]:
            problems.append(f"{role}: extra tensor {name} (absent from {base_role})")
        shown = 0
        for name in sorted(set(index) & set(base_index)):
            (dt, shape), (bdt, bshape) = index[name], base_index[name]
            if shape != bshape:
                problems.append(f"{role}: tensor {name} has shape {list(shape)}, {base_role} has {list(bshape)}")
                shown += 1
            elif dt != bdt:
                problems.append(f"{role}: tensor {name} has dtype {dt}, {base_role} has {bdt}")
                shown += 1
            if shown >= max_report:
                break
        vocab = _tokenizer_vocab(folders[role])
        if base_vocab is not None and vocab is not None and vocab != base_vocab:
            diff = sorted(set(vocab.items()) ^ set(base_vocab.items()))[:3]
            problems.append(f"{role}: tokenizer vocabulary differs from {base_role}'s (e.g. {diff})")
    n_params = 0
    for _dtype, shape in base_index.values():
        n = 1
        for s in shape:
            n *= s
        n_params += n
    return CompatReport(
        roles=tuple(roles),
        architecture=base_arch,
        num_tensors=len(base_index),
        num_parameters=n_params,
        dtypes={r: sorted({d for d, _ in indexes[r].values()})[0] for r in roles},
        vocab_size=base_cfg.get("vocab_size"),
        problems=tuple(problems),
    )


def check_compatible(exp: Experiment) -> CompatReport:
    """Compare all checkpoints of an experiment (corrupted is the base); raise ValueError on any mismatch."""
    folders = {"corrupted": exp.checkpoints.corrupted}
    folders.update({r: p for r, p in exp.checkpoints.as_dict().items() if r != "corrupted"})
    report = compare_checkpoints(folders)
    if not report.ok:
        shown = "\n  ".join(report.problems[:20])
        raise ValueError(f"checkpoints of experiment {exp.name!r} are not compatible:\n  {shown}")
    return report


def resolve_dtype(dtype: Any, device: torch.device, folder: Optional[Path] = None) -> torch.dtype:
    """A torch dtype from a name/dtype/None (None: the checkpoint's, bf16 on CUDA for fp32 checkpoints)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype not in ("", "auto"):
        name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16"}.get(dtype, dtype)
        value = getattr(torch, name, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return value
    stored = torch.float32
    if folder is not None:
        dts = {d for d, _ in read_tensor_index(folder).values() if d.startswith(("float", "bfloat"))}
        if len(dts) == 1:
            stored = getattr(torch, dts.pop())
    if device.type == "cuda" and stored == torch.float32:
        return torch.bfloat16
    return stored


def default_device() -> torch.device:
    """cuda when available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def attention_backend(device: torch.device) -> str:
    """flash_attention_2 when importable on CUDA, else sdpa."""
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401  (optional GPU extra)

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


# The tokenizer files that are JSON objects (validated before transformers parses them).
_TOKENIZER_JSON = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json"
)


def load_tokenizer(folder: Path, *, trust_remote_code: bool = False) -> Any:
    """The folder's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    for name in _TOKENIZER_JSON:  # named errors for bad bytes / wrong JSON types, before the library sees them
        if (Path(folder) / name).is_file():
            read_json_object(Path(folder) / name)
    if (Path(folder) / "merges.txt").is_file():
        read_text(Path(folder) / "merges.txt")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{folder}: cannot load tokenizer ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001
        # NOTE: the Rust tokenizers library raises a bare Exception for a malformed tokenizer.json
        # ("data did not match any variant of untagged enum ..."); remove when it raises a typed error.
        raise ValueError(f"{folder}: cannot load tokenizer ({exc})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    folder: Path,
    *,
    device: Any = "cpu",
    dtype: Any = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM from a local HF folder onto ``device`` in eval mode (no gradients)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep CLI/app output clean; callers report progress themselves
    _architecture(Path(folder))  # config.json: named errors for bad bytes / a non-object / bad architectures
    dev = torch.device(device)
    torch_dtype = resolve_dtype(dtype, dev, Path(folder))
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(folder),
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attention_backend(dev),
            use_safetensors=any(Path(folder).glob("*.safetensors")) or None,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError) as exc:
        # A config that contradicts the weights (e.g. num_key_value_heads) surfaces here as a
        # RuntimeError size mismatch, or a TypeError/KeyError from a config of the wrong type.
        raise ValueError(f"{folder}: cannot load model ({type(exc).__name__}: {exc})") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        # transformers would fill these with random values and only log a warning.
        raise ValueError(f"{folder}: the weights lack {len(missing)} tensor(s) the model needs, e.g. {missing[:3]}")
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    return model
