"""Hugging Face checkpoint folders: tensor index, lazy tensor access, the config, and safe
model/tokenizer loading. JSON files (sharded index, config, tokenizer) are validated for
structure and type, and every error names the file and the key or tensor.

Only safetensors are read lazily (one tensor at a time, by positional reads). ``pytorch_model*.bin`` files are read
with ``torch.load(weights_only=True)`` — never an unrestricted unpickle — and
``trust_remote_code`` stays off unless an experiment turns it on. Content fingerprints live in
``fingerprints.py`` and compatibility checks in ``compatibility.py``.
"""

from __future__ import annotations

import os
import pickle
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import torch

from msa_core.safetensors_stream import SafetensorsFile, read_header
from msa_core.untrusted import json_type, read_json_object, read_text

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


def locate_tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...], Path]]:
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
    return {name: (dtype, shape) for name, (dtype, shape, _f) in locate_tensors(folder).items()}


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


def read_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """(architecture, config) from a folder's ``config.json``, its structure validated by key."""
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
    read_config(Path(folder))  # config.json: named errors for bad bytes / a non-object / bad architectures
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
