"""Hugging Face checkpoint folders: tensor index, lazy tensor access, the config, and safe
model/tokenizer loading. JSON files (sharded index, config, tokenizer) are validated for
structure and type, and every error names the file and the key or tensor.

Only safetensors are read lazily (one tensor at a time, by positional reads). ``pytorch_model*.bin`` files are read
with ``torch.load(weights_only=True)`` — never an unrestricted unpickle — and
``trust_remote_code`` stays off unless an experiment turns it on. Content fingerprints live in
``fingerprints.py`` and compatibility checks in ``compatibility.py``.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import torch

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


# Model dtypes flash-attention 2 runs in.
_FA2_DTYPES = (torch.float16, torch.bfloat16)


def _flash_attn_problem() -> tuple[bool, Optional[str]]:
    """(installed, problem): whether ``flash_attn`` is installed and, if it is, why it cannot be
    used (None: it imports cleanly and has ``flash_attn_func``)."""
    try:
        module = importlib.import_module("flash_attn")
    except ModuleNotFoundError as exc:
        if exc.name == "flash_attn":
            return False, None
        return True, f"importing flash_attn failed: {type(exc).__name__}: {exc}"  # a dependency is missing
    except Exception as exc:  # noqa: BLE001 - a broken CUDA extension raises anything (ImportError, OSError, …)
        return True, f"importing flash_attn failed: {type(exc).__name__}: {exc}"
    if module is None or not callable(getattr(module, "flash_attn_func", None)):
        return True, "flash_attn has no flash_attn_func (an incomplete or incompatible install)"
    return True, None


def _transformers_has_fa2() -> bool:
    """Whether transformers itself accepts attn_implementation='flash_attention_2' here."""
    try:
        from transformers.utils import is_flash_attn_2_available
    except ImportError:
        return False
    return bool(is_flash_attn_2_available())


def attention_backend(device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """'flash_attention_2' when flash-attn imports cleanly, the device is CUDA and the model dtype
    is fp16/bf16; else 'sdpa'. Logs one line saying which and why (a warning when flash-attn is
    installed but broken, never an exception)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        log.info("attention: sdpa (device %s; flash-attention 2 needs CUDA)", dev)
        return "sdpa"
    if dtype is not None and dtype not in _FA2_DTYPES:
        log.info("attention: sdpa (model dtype %s; flash-attention 2 needs float16 or bfloat16)",
                 str(dtype).removeprefix("torch."))
        return "sdpa"
    installed, problem = _flash_attn_problem()
    if not installed:
        log.info("attention: sdpa (flash-attn is not installed)")
        return "sdpa"
    if problem is None and not _transformers_has_fa2():
        problem = "transformers reports flash-attention 2 as unavailable (version or GPU not supported)"
    if problem is not None:
        log.warning("attention: sdpa, not flash-attention 2: flash-attn is installed but unusable (%s); "
                    "reinstall it for this torch/CUDA or uninstall it", problem)
        return "sdpa"
    log.info("attention: flash_attention_2 (flash-attn importable, device %s, dtype %s)", dev,
             str(dtype).removeprefix("torch.") if dtype is not None else "of the checkpoint")
    return "flash_attention_2"


def _map_devices(device_map: Any) -> list[str]:
    """The placements an explicit device map names ('cpu', 'cuda:0', 'disk', …; ints are CUDA indices)."""
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    out = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            out.append(f"cuda:{v}")
        else:
            out.append(str(v))
    return out


def _not_resident(device_map: Any, model: Any = None) -> list[str]:
    """Modules a device map puts on 'disk' or 'meta' (plus parameters left on meta after loading)."""
    bad = []
    if isinstance(device_map, dict):
        bad = [str(k) or "(whole model)" for k, v in device_map.items() if str(v) in ("disk", "meta")]
    elif str(device_map) in ("disk", "meta"):
        bad = ["(whole model)"]
    if model is not None:
        hf_map = getattr(model, "hf_device_map", None) or {}
        bad += [str(k) or "(whole model)" for k, v in hf_map.items() if str(v) in ("disk", "meta")]
        if not bad:  # no map recorded: name the parameters left on meta
            bad = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    return bad


def _offload_error(folder: Path, modules: list[str]) -> ValueError:
    shown = ", ".join(modules[:6]) + (f" and {len(modules) - 6} more" if len(modules) > 6 else "")
    return ValueError(
        f"{folder}: the device map leaves {len(modules)} module(s) off the devices (disk offload or meta): {shown}; "
        "composition needs every weight resident on a device (accelerate also offloads the 'cpu' part of a GPU "
        "map): give more max_memory or more GPUs, or load the whole model on one device"
    )


def map_main_device(device_map: Any) -> torch.device:
    """The device that decides dtype and attention for a device map: its first CUDA placement
    ('auto': cuda when available), else the CPU."""
    if isinstance(device_map, str) and device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return default_device()
    for name in _map_devices(device_map):
        if name.startswith("cuda"):
            return torch.device(name)
    return torch.device("cpu")


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
    device_map: Any = None,
    max_memory: Optional[dict[Any, Any]] = None,
) -> Any:
    """Load a causal LM from a local HF folder in eval mode (no gradients): onto ``device``, or,
    with ``device_map`` ('auto', a device name, or a module → device dict), dispatched over the
    devices by transformers/accelerate (``max_memory``: device → bytes or '70GiB', for 'auto').

    A map that leaves modules on 'disk' or 'meta' (disk offload) is refused, naming them: the
    engine composes weights in place, so every weight must be resident on a device.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep CLI/app output clean; callers report progress themselves
    read_config(Path(folder))  # config.json: named errors for bad bytes / a non-object / bad architectures
    kwargs: dict[str, Any] = {}
    if device_map is not None:
        offloaded = _not_resident(device_map)
        if offloaded:
            raise _offload_error(Path(folder), offloaded)
        dev = map_main_device(device_map)
        kwargs["device_map"] = device_map
        if max_memory is not None:
            kwargs["max_memory"] = dict(max_memory)
    else:
        dev = torch.device(device)
    torch_dtype = resolve_dtype(dtype, dev, Path(folder))
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(folder),
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attention_backend(dev, torch_dtype),
            use_safetensors=any(Path(folder).glob("*.safetensors")) or None,
            output_loading_info=True,
            **kwargs,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError) as exc:
        # A config that contradicts the weights (e.g. num_key_value_heads) surfaces here as a
        # RuntimeError size mismatch, or a TypeError/KeyError from a config of the wrong type;
        # an 'auto' map that needs disk offload, as a ValueError asking for an offload folder.
        raise ValueError(f"{folder}: cannot load model ({type(exc).__name__}: {exc})") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        # transformers would fill these with random values and only log a warning.
        raise ValueError(f"{folder}: the weights lack {len(missing)} tensor(s) the model needs, e.g. {missing[:3]}")
    if device_map is None:
        model.to(dev)
    else:
        offloaded = _not_resident(None, model)
        if offloaded:
            raise _offload_error(Path(folder), offloaded)
    model.eval()
    model.requires_grad_(False)
    return model
