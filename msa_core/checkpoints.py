"""Hugging Face checkpoint folders: tensor index, lazy tensor access, fingerprints,
compatibility checks, and safe model/tokenizer loading.

Only safetensors are read lazily (one tensor at a time, by positional reads). ``pytorch_model*.bin`` files are read
with ``torch.load(weights_only=True)`` — never an unrestricted unpickle — and
``trust_remote_code`` stays off unless an experiment turns it on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from msa_core.experiment import Experiment
from msa_core.safetensors_stream import SafetensorsFile, read_header

log = logging.getLogger(__name__)

TensorInfo = tuple[str, tuple[int, ...]]  # (dtype string, shape)

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: safetensors (sharded index honoured) or .bin."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ValueError(f"{index}: malformed sharded index ({exc})") from None
        files = sorted({folder / name for name in weight_map.values()})
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


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check that the file is as long as it claims."""
    return read_header(path)[0]


def read_tensor_index(folder: Path) -> dict[str, TensorInfo]:
    """Tensor name → (dtype, shape) for every weight in a folder, without loading data."""
    out: dict[str, TensorInfo] = {}
    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            for name, meta in _read_safetensors_header(f).items():
                if name == "__metadata__":
                    continue
                out[name] = (_ST_DTYPES.get(meta["dtype"], meta["dtype"].lower()), tuple(meta["shape"]))
        else:
            for name, t in _load_bin(f).items():
                out[name] = (str(t.dtype).replace("torch.", ""), tuple(t.shape))
    return out


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: cannot read weights safely ({exc})") from None


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


def checkpoint_fingerprint(folder: Path) -> str:
    """A short hash of a checkpoint's weight files: names, sizes, mtimes and safetensors headers."""
    h = hashlib.sha256()
    for f in weight_files(folder):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        if f.suffix == ".safetensors":
            h.update(json.dumps(_read_safetensors_header(f), sort_keys=True).encode())
    cfg = Path(folder) / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    return h.hexdigest()[:16]


def experiment_fingerprint(exp: Experiment) -> str:
    """One hash over the fingerprints of every checkpoint in an experiment."""
    h = hashlib.sha256()
    for role, folder in exp.checkpoints.as_dict().items():
        h.update(f"{role}={checkpoint_fingerprint(folder)};".encode())
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
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{cfg_path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    return str(archs[0]), cfg


def _tokenizer_vocab(folder: Path) -> Optional[dict[str, int]]:
    tj = Path(folder) / "tokenizer.json"
    if not tj.is_file():
        return None
    try:
        model = json.loads(tj.read_text()).get("model", {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"{tj}: not valid JSON ({exc})") from None
    vocab = model.get("vocab")
    return vocab if isinstance(vocab, dict) else None


def compare_checkpoints(folders: Mapping[str, Path], max_report: int = 10) -> CompatReport:
    """Compare architecture, tensor names, shapes, dtypes and tokenizer vocabularies.

    The first folder is the base every other is compared against; problems name the
    role and the tensor. Never raises for a mismatch (see :func:`check_compatible`).
    """
    roles = list(folders)
    base_role = roles[0]
    base_arch, base_cfg = _architecture(folders[base_role])
    base_index = read_tensor_index(folders[base_role])
    base_vocab = _tokenizer_vocab(folders[base_role])
    problems: list[str] = []
    for role in roles[1:]:
        arch, cfg = _architecture(folders[role])
        if arch != base_arch:
            problems.append(f"{role}: architecture {arch} differs from {base_role}'s {base_arch}")
        for key in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads"):
            if cfg.get(key) != base_cfg.get(key):
                problems.append(f"{role}: config {key}={cfg.get(key)} differs from {base_role}'s {base_cfg.get(key)}")
        index = read_tensor_index(folders[role])
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
        dtypes={r: sorted({d for d, _ in read_tensor_index(folders[r]).values()})[0] for r in roles},
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


def load_tokenizer(folder: Path, *, trust_remote_code: bool = False) -> Any:
    """The folder's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
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
    dev = torch.device(device)
    torch_dtype = resolve_dtype(dtype, dev, Path(folder))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder),
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attention_backend(dev),
            use_safetensors=any(Path(folder).glob("*.safetensors")) or None,
        )
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: cannot load model ({exc})") from None
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    return model
