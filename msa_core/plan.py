"""The memory planner: bytes per device of an engine for each loading option, before any weight is read.

A plan takes a model's shape — its parameters, from the experiment's real checkpoint (the
safetensors headers, :func:`msa_core.checkpoints.read_tensor_index`) or from a config alone
(accelerate's ``init_empty_weights`` + ``AutoModelForCausalLM.from_config`` on the meta device) —
and the options of :class:`PlanOptions`, and gives per device (:class:`DeviceRow`):

- working model: parameters × model dtype (fp32 4 B, bf16/fp16 2 B);
- θ_c: the pristine copy, in the checkpoint's stored dtype (the engine keeps the stored tensor
  when it differs from the model's, see ``engine._StoredCorrupted``: an fp32 checkpoint in a bf16
  model keeps 4 B per parameter);
- τ_f + τ_r: 2 × parameters × vector dtype (fp32 4 B, bf16 2 B);
- side models (clean and, when the experiment has one, reference): 0 when their answers and
  metrics come from the disk cache, else one model each in the model dtype;
- headroom, the rule: :data:`HEADROOM_FRACTION` of the above, plus generation memory for
  ``batch`` sequences of ``max_length`` tokens (:func:`msa_core.batching.sequence_bytes`: the KV
  cache of the device's layers, one layer's activations, and the logits on the lm_head's device).

Tied weights are one parameter and count once. ``device_map`` None (or one device name) puts
everything on one device; "auto" splits whole decoder layers over the devices as accelerate does
(``get_balanced_memory`` + ``infer_auto_device_map``, transformers' "auto"); a dict maps module
prefixes to devices. A plan that does not fit names its shortfall and the cheapest option that
would fit (:attr:`MemoryPlan.suggestion`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from msa_core.batching import kv_bytes_per_token, sequence_bytes
from msa_core.checkpoints import read_config, read_tensor_index
from msa_core.experiment import Experiment
from msa_core.untrusted import read_json_object

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
VECTOR_DTYPES = ("float32", "bfloat16")
SIDE_MODES = ("cached", "device")
# Headroom on top of the engine's tensors: the CUDA context, the allocator's fragmentation and the
# temporaries of a forward pass that the generation term does not count (measured engines on the
# CPU stay well inside 10% of their tensors; a GPU estimate until a device check confirms it).
HEADROOM_FRACTION = 0.10
# The batch a plan reserves generation memory for: evaluation batches are chosen from what is
# free once the engine is loaded (msa_core.batching), so the plan only needs room for one.
PLAN_BATCH = 1
# Longest sequence planned for when the caller gives none: the evaluation's cap (MUSE, 2048).
PLAN_MAX_LENGTH = 2048
# The most devices a "needs N devices" suggestion looks at.
_MAX_SUGGESTED_DEVICES = 64
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Devices that do not fit a plan go to this row (accelerate's "disk": no room on any device).
UNPLACED = "(no room)"

DeviceMap = Union[None, str, Mapping[str, str]]


def dtype_name(dtype: Union[str, torch.dtype]) -> str:
    """The canonical name ('float32', 'bfloat16', 'float16') of a dtype, name or alias."""
    name = str(dtype).removeprefix("torch.").strip().lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES or name == "float64":
        raise ValueError(f"unknown dtype {dtype!r}; expected float32, bfloat16 or float16")
    return name


def fmt_gib(n: float) -> str:
    """Bytes in the largest binary unit that keeps one or more whole units, one decimal: '74.8 GiB', '3.2 MiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


# ----------------------------------------------------------------------------- the model's shape


@dataclass(frozen=True)
class ParamInfo:
    """One parameter (tied aliases counted once): its name in the model, element count and stored dtype."""

    name: str
    numel: int
    stored_dtype: str


@dataclass(frozen=True)
class ModelShape:
    """A model's parameters without its weights, and the meta-device model accelerate maps."""

    source: str
    config: Any
    params: tuple[ParamInfo, ...]
    meta_model: Any = field(compare=False, repr=False)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def stored_dtype(self) -> str:
        """The dtype most parameters are stored in."""
        counts: dict[str, int] = {}
        for p in self.params:
            counts[p.stored_dtype] = counts.get(p.stored_dtype, 0) + p.numel
        return max(counts, key=lambda k: counts[k])

    @property
    def max_length(self) -> int:
        n = getattr(self.config, "max_position_embeddings", None)
        return min(int(n), PLAN_MAX_LENGTH) if isinstance(n, int) and n > 1 else PLAN_MAX_LENGTH

    @property
    def no_split_modules(self) -> list[str]:
        return list(getattr(self.meta_model, "_no_split_modules", None) or [])


def meta_model(config: Any, *, trust_remote_code: bool = False) -> nn.Module:
    """``AutoModelForCausalLM.from_config`` on the meta device (no memory for weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    # NOTE: under init_empty_weights (accelerate 1.15, transformers 5.23) from_config leaves a tied
    # lm_head as its own parameter (the same call without it ties); tie again so tied weights count
    # once. Harmless when already tied; remove when the two libraries tie on meta by themselves.
    model.tie_weights()
    return model


def _config_dtype(config: Any) -> Optional[str]:
    raw = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    try:
        return None if raw is None else dtype_name(raw)
    except ValueError:
        return None


def shape_from_config(config: Any, *, source: str = "config", stored_dtype: Optional[str] = None,
                      trust_remote_code: bool = False) -> ModelShape:
    """The shape of the model a transformers config describes (a ``PretrainedConfig``); parameters
    are taken as stored in ``stored_dtype`` (default: the config's ``dtype``, else float32)."""
    model = meta_model(config, trust_remote_code=trust_remote_code)
    stored = dtype_name(stored_dtype) if stored_dtype else (_config_dtype(config) or "float32")
    params = tuple(ParamInfo(n, p.numel(), stored) for n, p in model.named_parameters())
    return ModelShape(source, config, params, model)


def load_config_file(path: Union[str, os.PathLike[str]]) -> Any:
    """A transformers config from a ``config.json`` file (or a folder holding one), validated by key."""
    from transformers import AutoConfig

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    raw = read_json_object(p)
    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        raise ValueError(f"{p}: 'model_type' must be a string naming the architecture (e.g. 'llama'), "
                         f"got {model_type!r:.60}")
    fields = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: cannot build a {model_type} config ({type(exc).__name__}: {exc})") from None


def shape_from_checkpoint(folder: Union[str, os.PathLike[str]], *, trust_remote_code: bool = False) -> ModelShape:
    """The shape of a checkpoint folder: the parameters its config's model has, with the shapes and
    stored dtypes of its weight files' headers (no weights are read). A parameter whose stored shape
    differs from the config's, or that the weights lack, is refused by name (the engine would not load)."""
    from transformers import AutoConfig

    folder = Path(folder)
    read_config(folder)  # named errors for a bad config.json before transformers parses it
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: cannot read the model config ({type(exc).__name__}: {exc})") from None
    model = meta_model(config, trust_remote_code=trust_remote_code)
    index = read_tensor_index(folder)
    prefix = getattr(model, "base_model_prefix", "") or ""
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    params = []
    for name, p in model.named_parameters():
        stored = _stored_entry(index, aliases[id(p)], prefix)
        if stored is None:
            raise ValueError(f"{folder}: the weights lack tensor {name}, which the model of config.json needs")
        dtype, shape = stored
        if tuple(shape) != tuple(p.shape):
            raise ValueError(f"{folder}: tensor {name} is stored with shape {list(shape)}, the config's model "
                             f"has {list(p.shape)}")
        params.append(ParamInfo(name, p.numel(), dtype if dtype in DTYPE_BYTES else "float32"))
    return ModelShape(str(folder), config, tuple(params), model)


def _stored_entry(index: Mapping[str, tuple[str, tuple[int, ...]]], names: Sequence[str],
                  prefix: str) -> Optional[tuple[str, tuple[int, ...]]]:
    """The header entry of a parameter under any of its (tied) names, with or without the base-model prefix."""
    for name in names:
        candidates = [name]
        if prefix and name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1:])
        elif prefix:
            candidates.append(f"{prefix}.{name}")
        for c in candidates:
            if c in index:
                return index[c]
    return None


def experiment_shape(exp: Experiment) -> ModelShape:
    """The shape of an experiment's θ_corrupted checkpoint (the engine's working model)."""
    return shape_from_checkpoint(exp.checkpoints.corrupted, trust_remote_code=exp.trust_remote_code)


def side_model_count(exp: Experiment) -> int:
    """Side models an engine of ``exp`` holds besides the working model: clean, and reference when set."""
    return 1 + (exp.checkpoints.reference is not None)


# ----------------------------------------------------------------------------- devices


def parse_size(text: str) -> int:
    """Bytes from '80GiB', '80 GB', '512MiB', '1.5TiB' or a plain byte count."""
    m = _SIZE_RE.match(str(text))
    if m is None:
        raise ValueError(f"device size {text!r} is not a size like 80GiB, 80GB or 512MiB")
    unit = (m.group(2) or "B").upper()
    return int(float(m.group(1)) * _UNITS[unit])


def device_name(text: str) -> str:
    name = text.strip().lower()
    if name == "cuda":
        return "cuda:0"
    if name == "cpu" or re.fullmatch(r"cuda:\d+", name):
        return name
    raise ValueError(f"device {text!r} in --devices is not cpu or cuda:N")


def parse_devices(text: str) -> dict[str, int]:
    """Device capacities from 'cuda:0=80GiB,cuda:1=80GiB', or 'N x SIZE' for N CUDA devices ('8x80GiB')."""
    text = text.strip()
    many = re.fullmatch(r"(\d+)\s*[x×]\s*(.+)", text)
    if many:
        n = int(many.group(1))
        if n < 1:
            raise ValueError(f"--devices {text!r}: the device count must be at least 1")
        size = parse_size(many.group(2))
        return {f"cuda:{i}": size for i in range(n)}
    out: dict[str, int] = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, sep, size = part.partition("=")
        if not sep:
            raise ValueError(f"--devices entry {part!r} is not DEVICE=SIZE (e.g. cuda:0=80GiB)")
        dev = device_name(name)
        if dev in out:
            raise ValueError(f"--devices names {dev} twice")
        out[dev] = parse_size(size)
    if not out:
        raise ValueError("--devices lists no device")
    return out


def machine_devices() -> dict[str, int]:
    """This machine's CUDA devices and their total memory (``torch.cuda.mem_get_info``), else the CPU's RAM."""
    if torch.cuda.is_available():
        return {f"cuda:{i}": int(torch.cuda.mem_get_info(i)[1]) for i in range(torch.cuda.device_count())}
    return {"cpu": cpu_ram()}


def cpu_ram() -> int:
    """This machine's total RAM in bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _accelerate_key(device: str) -> Union[int, str]:
    return int(device.split(":")[1]) if device.startswith("cuda:") else device


def _device_of_key(key: Union[int, str]) -> str:
    if isinstance(key, int):
        return f"cuda:{key}"
    if key == "disk":
        return UNPLACED
    text = str(key)
    return "cuda:0" if text == "cuda" else text


@contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """NOTE: accelerate warns "Device N is not available" for every planned GPU this machine lacks;
    planning for another machine is the point here, so its module logger is muted meanwhile.
    Remove when accelerate's device-map functions stop checking the local machine."""
    logger = logging.getLogger("accelerate.utils.modeling")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


# ----------------------------------------------------------------------------- options and plans


@dataclass(frozen=True)
class PlanOptions:
    """How the engine would be loaded: model dtype, vector dtype, side models, device map."""

    dtype: str = "bfloat16"
    vector_dtype: str = "float32"
    side_models: str = "cached"
    device_map: DeviceMap = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        vd = dtype_name(self.vector_dtype)
        if vd not in VECTOR_DTYPES:
            raise ValueError(f"vector dtype {self.vector_dtype!r}: expected one of {', '.join(VECTOR_DTYPES)}")
        object.__setattr__(self, "vector_dtype", vd)
        if self.side_models not in SIDE_MODES:
            raise ValueError(f"side models {self.side_models!r}: expected one of {', '.join(SIDE_MODES)}")

    def label(self) -> str:
        """E.g. 'bfloat16 model, bfloat16 vectors, side models cached, device_map auto'."""
        dm = self.device_map
        where = "one device" if dm is None else ("device_map auto" if dm == "auto"
                                                 else f"on {dm}" if isinstance(dm, str) else "explicit device_map")
        return f"{self.dtype} model, {self.vector_dtype} vectors, side models {self.side_models}, {where}"


@dataclass(frozen=True)
class DeviceRow:
    """Bytes one device holds under a plan."""

    device: str
    working_model: int
    theta_c: int
    vectors: int
    side_models: int
    headroom: int
    capacity: int

    @property
    def total(self) -> int:
        return self.working_model + self.theta_c + self.vectors + self.side_models + self.headroom

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def shortfall(self) -> int:
        return max(0, self.total - self.capacity)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "working_model": self.working_model, "theta_c": self.theta_c,
                "tau_f_tau_r": self.vectors, "side_models": self.side_models, "headroom": self.headroom,
                "total": self.total, "capacity": self.capacity, "fits": self.fits}


@dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of one option set; :attr:`suggestion` names what would fit when it does not."""

    source: str
    parameter_count: int
    options: PlanOptions
    rows: tuple[DeviceRow, ...]
    side_model_count: int
    batch: int
    max_length: int
    suggestion: str = ""

    @property
    def fits(self) -> bool:
        return all(r.fits for r in self.rows)

    @property
    def shortfall_bytes(self) -> int:
        return sum(r.shortfall for r in self.rows)

    @property
    def total_bytes(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def largest_device_bytes(self) -> int:
        return max(r.total for r in self.rows if r.device != UNPLACED)

    def verdict(self) -> str:
        """One line: fits, or the shortfall and what would fit."""
        if self.fits:
            return f"fits: {self.options.label()}"
        return f"does not fit ({fmt_gib(self.shortfall_bytes)} short): {self.options.label()}. {self.suggestion}"

    def as_dict(self) -> dict[str, Any]:
        dm = self.options.device_map
        return {"source": self.source, "parameter_count": self.parameter_count,
                "options": {"dtype": self.options.dtype, "vector_dtype": self.options.vector_dtype,
                            "side_models": self.options.side_models,
                            "device_map": dict(dm) if isinstance(dm, Mapping) else dm},
                "side_model_count": self.side_model_count, "batch": self.batch, "max_length": self.max_length,
                "rows": [r.as_dict() for r in self.rows], "fits": self.fits,
                "shortfall_bytes": self.shortfall_bytes, "suggestion": self.suggestion}


def resolve_dtype(dtype: Optional[str], shape: ModelShape, devices: Mapping[str, int]) -> str:
    """The model dtype for 'auto'/None as the engine picks it: the checkpoint's, bf16 on a GPU for fp32 ones."""
    if dtype is not None and str(dtype).strip().lower() not in ("", "auto"):
        return dtype_name(dtype)
    # as msa_core.checkpoints.resolve_dtype: the one stored dtype, else fp32
    dtypes = {p.stored_dtype for p in shape.params}
    stored = dtypes.pop() if len(dtypes) == 1 else "float32"
    if stored == "float32" and any(d.startswith("cuda") for d in devices):
        return "bfloat16"
    return stored if stored in ("float32", "bfloat16", "float16") else "float32"


def _engine_bytes(p: ParamInfo, opts: PlanOptions, n_side: int) -> tuple[int, int, int, int]:
    """(working model, θ_c, τ_f + τ_r, side models) bytes of one parameter."""
    m = DTYPE_BYTES[opts.dtype]
    sides = n_side * m if opts.side_models == "device" else 0
    return p.numel * m, p.numel * DTYPE_BYTES[p.stored_dtype], 2 * p.numel * DTYPE_BYTES[opts.vector_dtype], \
        p.numel * sides


def assign_devices(shape: ModelShape, opts: PlanOptions, devices: Mapping[str, int], n_side: int = 2,
                   fixed: int = 0) -> dict[str, str]:
    """Parameter name → device under ``opts.device_map`` (``UNPLACED`` where "auto" finds no room), with
    ``n_side`` side models and ``fixed`` bytes of generation memory per device for "auto"."""
    dm = opts.device_map
    first = next(iter(devices))
    if dm is None or (isinstance(dm, str) and dm != "auto"):
        dev = first if dm is None else device_name(dm)
        if dev not in devices:
            raise ValueError(f"device_map {dm!r}: no such device among {', '.join(devices)}")
        return {p.name: dev for p in shape.params}
    if isinstance(dm, Mapping):
        module_map = {str(k): device_name(str(v)) for k, v in dm.items()}
        for dev in module_map.values():
            if dev not in devices:
                raise ValueError(f"device_map places modules on {dev}, which is not among {', '.join(devices)}")
    else:
        module_map = _auto_map(shape, opts, devices, n_side, fixed)
    out = {}
    for p in shape.params:
        owner = max((k for k in module_map if k == "" or p.name == k or p.name.startswith(k + ".")),
                    key=len, default=None)
        if owner is None:
            raise ValueError(f"device_map places no module holding parameter {p.name}")
        out[p.name] = module_map[owner]
    return out


def _auto_map(shape: ModelShape, opts: PlanOptions, devices: Mapping[str, int], n_side: int,
              fixed: int) -> dict[str, str]:
    """Module → device as transformers' device_map="auto" splits whole decoder layers.

    accelerate sizes modules by their model dtype only, but the engine holds more beside each
    parameter on the same device (θ_c, τ_f, τ_r, side models: 4–8 extra bytes per parameter in
    bf16). So each device's capacity is scaled down by (model bytes) / (engine bytes) per
    parameter, after taking off the fixed generation memory and the headroom fraction: accelerate
    then fills each device with exactly as many parameters as the engine's tensors fit. The
    largest per-parameter cost is used (stored dtypes may differ between tensors), which errs on
    the side of fitting.
    """
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    m = DTYPE_BYTES[opts.dtype]
    worst = max(sum(_engine_bytes(ParamInfo(p.name, 1, p.stored_dtype), opts, n_side)) for p in shape.params)
    scale = m / worst
    max_memory: dict[Union[int, str], int] = {}
    for dev, cap in devices.items():
        usable = max(0, int((cap - fixed) / (1 + HEADROOM_FRACTION) * scale))
        max_memory[_accelerate_key(dev)] = usable
    torch_dtype = getattr(torch, opts.dtype)
    no_split = shape.no_split_modules
    with _quiet_accelerate():
        if len([k for k in max_memory if isinstance(k, int)]) > 1:
            max_memory = get_balanced_memory(shape.meta_model, max_memory=max_memory, no_split_module_classes=no_split,
                                             dtype=torch_dtype)
        mapping = infer_auto_device_map(shape.meta_model, max_memory=max_memory, no_split_module_classes=no_split,
                                        dtype=torch_dtype)
    return {name: _device_of_key(key) for name, key in mapping.items()}


def _head_param(shape: ModelShape) -> str:
    """The (deduplicated) name of the output projection's weight: where the logits are computed."""
    head = shape.meta_model.get_output_embeddings() if hasattr(shape.meta_model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    for name, p in shape.meta_model.named_parameters():
        if p is weight:
            return name
    return shape.params[-1].name


def plan_memory(
    shape: ModelShape,
    options: PlanOptions,
    devices: Mapping[str, int],
    *,
    side_models: int = 2,
    batch: int = PLAN_BATCH,
    max_length: Optional[int] = None,
    suggest: bool = True,
) -> MemoryPlan:
    """Bytes per device of an engine of ``shape`` loaded with ``options`` on ``devices`` (name →
    capacity in bytes, in placement order), with ``side_models`` side models (clean, reference) and
    generation room for ``batch`` sequences of ``max_length`` tokens (default: the model's max
    positions, capped at 2048). When it does not fit and ``suggest``, :attr:`MemoryPlan.suggestion`
    names the cheapest option that would (:func:`suggest_option`)."""
    if not devices:
        raise ValueError("a memory plan needs at least one device")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    length = int(max_length) if max_length else shape.max_length
    m = DTYPE_BYTES[options.dtype]
    per_seq_kv = kv_bytes_per_token(shape.config, m) * length * batch
    generation = sequence_bytes(shape.config, length, m) * batch
    where = assign_devices(shape, options, devices, side_models, generation)
    sums: dict[str, list[int]] = {d: [0, 0, 0, 0] for d in devices}
    layers: dict[str, set[int]] = {d: set() for d in devices}
    for p in shape.params:
        dev = where[p.name]
        acc = sums.setdefault(dev, [0, 0, 0, 0])
        for i, b in enumerate(_engine_bytes(p, options, side_models)):
            acc[i] += b
        hit = _LAYER_RE.search(p.name)
        if hit:
            layers.setdefault(dev, set()).add(int(hit.group(1)))
    n_layers = max(1, len(set().union(*layers.values())))
    head_device = where.get(_head_param(shape), next(iter(where.values())))
    rows = []
    for dev, (work, theta, vec, side) in sums.items():
        if work == 0 and dev not in where.values():
            continue  # a device the plan leaves empty holds nothing of the engine
        gen = 0
        if dev != UNPLACED:
            # KV cache for this device's layers; activations and logits where the head is (one device
            # computes them at a time; counted once, on the head's device).
            gen = per_seq_kv * len(layers.get(dev, ())) // n_layers
            if dev == head_device:
                gen += generation - per_seq_kv
        headroom = int(HEADROOM_FRACTION * (work + theta + vec + side)) + gen
        rows.append(DeviceRow(dev, work, theta, vec, side, headroom, 0 if dev == UNPLACED else int(devices[dev])))
    plan = MemoryPlan(shape.source, shape.parameter_count, options, tuple(rows), side_models, batch, length)
    if suggest and not plan.fits:
        plan = replace(plan, suggestion=suggest_option(shape, options, devices, side_models=side_models,
                                                       batch=batch, max_length=length))
    return plan


def _alternatives(options: PlanOptions, devices: Mapping[str, int]) -> list[tuple[str, PlanOptions]]:
    """Option sets to try, cheapest change first: bf16 vectors, cached side models, both, a bf16
    model, then device_map auto over the given devices with the same."""
    out: list[tuple[str, PlanOptions]] = []
    bf16v = replace(options, vector_dtype="bfloat16")
    cached = replace(options, side_models="cached")
    both = replace(options, vector_dtype="bfloat16", side_models="cached")
    if options.vector_dtype != "bfloat16":
        out.append(("bf16 vectors (--vector-dtype bfloat16)", bf16v))
    if options.side_models != "cached":
        out.append(("side models from the disk cache", cached))
    if both not in (options, bf16v, cached):
        out.append(("bf16 vectors and side models from the disk cache", both))
    if options.dtype == "float32":
        out.append(("a bf16 model with bf16 vectors and cached side models (--dtype bfloat16)",
                    replace(both, dtype="bfloat16")))
    if options.device_map != "auto" and len(devices) > 1:
        auto = [("device_map auto over the given devices (--device-map auto)", replace(options, device_map="auto")),
                ("device_map auto with bf16 vectors and cached side models", replace(both, device_map="auto"))]
        out.extend(auto)
    return out


def suggest_option(
    shape: ModelShape,
    options: PlanOptions,
    devices: Mapping[str, int],
    *,
    side_models: int = 2,
    batch: int = PLAN_BATCH,
    max_length: Optional[int] = None,
) -> str:
    """The cheapest option that would fit ``devices``, in words; else how much more memory it needs
    and how many devices like the largest given one would hold it (device_map auto, bf16 vectors,
    cached side models)."""
    kw: dict[str, Any] = {"side_models": side_models, "batch": batch, "max_length": max_length, "suggest": False}
    for words, alt in _alternatives(options, devices):
        p = plan_memory(shape, alt, devices, **kw)
        if p.fits:
            return f"Would fit with {words}: {fmt_gib(p.largest_device_bytes)} on the fullest device."
    best = replace(options, vector_dtype="bfloat16", side_models="cached",
                   dtype="bfloat16" if options.dtype == "float32" else options.dtype)
    base = plan_memory(shape, replace(best, device_map="auto" if len(devices) > 1 else None), devices, **kw)
    short = base.shortfall_bytes
    size = max(devices.values())
    need = max(len(devices) + 1, math.ceil(base.total_bytes / size))
    for n in range(need, _MAX_SUGGESTED_DEVICES + 1):
        more = {f"cuda:{i}": size for i in range(n)}
        if plan_memory(shape, replace(best, device_map="auto"), more, **kw).fits:
            return (f"Does not fit on these devices: needs {fmt_gib(short)} more even with "
                    f"{best.dtype} model, bf16 vectors and cached side models; "
                    f"device_map auto over {n} × {fmt_gib(size)} devices would fit "
                    f"(--device-map auto --devices {n}x{size / 2**30:g}GiB).")
    return f"Does not fit on these devices: needs {fmt_gib(short)} more."


def option_grid(dtypes: Sequence[str], devices: Mapping[str, int]) -> list[PlanOptions]:
    """Every option combination for the table: model dtype × vector dtype × side models × device map
    (one device; "auto" as well when there are several devices)."""
    maps: list[DeviceMap] = [None] + (["auto"] if len(devices) > 1 else [])
    return [PlanOptions(dtype=d, vector_dtype=v, side_models=s, device_map=m)
            for d in dtypes for v in VECTOR_DTYPES for s in ("device", "cached") for m in maps]


def plan_table(shape: ModelShape, devices: Mapping[str, int], *, dtypes: Sequence[str] = ("float32", "bfloat16"),
               side_models: int = 2, batch: int = PLAN_BATCH, max_length: Optional[int] = None) -> list[MemoryPlan]:
    """One plan per :func:`option_grid` combination (no suggestions: the table shows every option)."""
    return [plan_memory(shape, o, devices, side_models=side_models, batch=batch, max_length=max_length,
                        suggest=False) for o in option_grid(dtypes, devices)]


def engine_max_memory(devices: Mapping[str, int], options: PlanOptions, *, side_models: int = 2,
                      stored_dtype: Optional[str] = None, generation_bytes: int = 0) -> dict[Union[int, str], int]:
    """The ``max_memory`` to give accelerate / ``from_pretrained(device_map=...)`` so that the engine's
    own tensors (θ_c, τ_f, τ_r, side models) fit beside the model on each device: the same scaling
    as the planner's device map (see ``_auto_map``). Keys as accelerate takes them (0, 1, …, "cpu")."""
    m = DTYPE_BYTES[options.dtype]
    probe = ParamInfo("", 1, dtype_name(stored_dtype) if stored_dtype else options.dtype)
    scale = m / sum(_engine_bytes(probe, options, side_models))
    return {_accelerate_key(d): max(0, int((cap - generation_bytes) / (1 + HEADROOM_FRACTION) * scale))
            for d, cap in devices.items()}


def default_max_memory(exp: Experiment, *, dtype: Optional[str] = None, vector_dtype: str = "float32",
                       devices: Optional[Mapping[str, int]] = None) -> Optional[dict[Union[int, str], int]]:
    """The ``max_memory`` an engine loaded with a device-map strategy ('auto', …) and no explicit
    ``max_memory`` gives accelerate: on each CUDA device, room for the model's share only, so θ_c
    and τ_f, τ_r fit beside it (:func:`engine_max_memory`; accelerate alone would fill each GPU
    with model weights). None without CUDA devices (accelerate's own choice then)."""
    devs = dict(devices) if devices is not None else machine_devices()
    gpus = {d: cap for d, cap in devs.items() if d.startswith("cuda")}
    if not gpus:
        return None
    shape = experiment_shape(exp)
    opts = PlanOptions(dtype=resolve_dtype(dtype, shape, gpus), vector_dtype=vector_dtype, device_map="auto")
    return engine_max_memory(gpus, opts, side_models=0, stored_dtype=shape.stored_dtype)


def page_rows(plan: MemoryPlan) -> list[dict[str, str]]:
    """The plan as table rows in GiB (the Experiment page shows them before loading)."""
    return [{"device": r.device, "working model": fmt_gib(r.working_model), "θ_c": fmt_gib(r.theta_c),
             "τ_f + τ_r": fmt_gib(r.vectors), "side models": fmt_gib(r.side_models),
             "headroom": fmt_gib(r.headroom), "total": fmt_gib(r.total), "capacity": fmt_gib(r.capacity),
             "fits": "yes" if r.fits else "no"} for r in plan.rows]


def plan_for_experiment(exp: Experiment, *, device: Optional[str] = None, dtype: Optional[str] = None,
                        vector_dtype: str = "float32", side_models: str = "cached",
                        devices: Optional[Mapping[str, int]] = None, device_map: DeviceMap = None) -> MemoryPlan:
    """The plan of loading ``exp`` on one ``device`` ('auto'/None: the first of ``devices``) in
    ``dtype`` ('auto'/None: as the engine picks), the way the app loads it; with ``device_map``
    'auto', spread over all of ``devices`` (``device`` is then ignored). Capacities come from
    ``devices`` (default: :func:`machine_devices`, plus the CPU's RAM for 'cpu')."""
    devs = dict(devices) if devices is not None else machine_devices()
    spread = device_map == "auto"
    if spread:
        where = devs
    elif device is None or str(device).strip().lower() in ("", "auto"):
        where = dict([next(iter(devs.items()))])
    else:
        name = device_name(device)
        if name not in devs and name == "cpu":
            devs[name] = cpu_ram()
        if name not in devs:
            raise ValueError(f"device {device!r}: not among the planned devices {', '.join(devs)}")
        where = {name: devs[name]}
    shape = experiment_shape(exp)
    opts = PlanOptions(dtype=resolve_dtype(dtype, shape, where), vector_dtype=vector_dtype, side_models=side_models,
                       device_map="auto" if spread else None)
    return plan_memory(shape, opts, where, side_models=side_model_count(exp))
