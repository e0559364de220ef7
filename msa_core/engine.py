"""The live engine: one working model on a device, rewritten in place for each (α, β).

The engine loads (or computes) the vectors and ONE working ``transformers`` model (on one
device, or dispatched over several by ``accelerate`` with a ``device_map``), keeps the
pristine θ_corrupted tensors (as stored in the checkpoint: the model dtype, or the
checkpoint's own where it differs, so the compose rounds once; see :class:`_StoredCorrupted`)
and τ_f, τ_r (fp32, or bf16 with ``vector_dtype``: storage only, the arithmetic stays fp32)
on each parameter's own device, frees the CPU copies of the vectors, and hands
them to a :class:`msa_core.recompose.RecomposePlan` built once in its constructor, which does
the arithmetic ``w = cast(θ_c − α·τ_f + β·τ_r)`` (fp32) on every move: never incrementally
(no drift) and never by building a new model (no extra memory). Tied weights are one
parameter and are composed once; buffers are left alone. Besides the working model the
engine owns the lock, the read-only side models (clean, reference, forget, retain), the
memory report and the fused kernel's warm-up.

The working model is shared by every caller of a process (every browser session of a
server), so compose-then-use is one critical section: ``with engine.session(α, β) as m``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from msa_core.checkpoints import TensorReader, default_device, load_model, load_tokenizer, read_tensor_index
from msa_core.compatibility import CompatReport, check_compatible
from msa_core.experiment import Experiment
from msa_core.fingerprints import experiment_fingerprint
from msa_core.progress import Progress, report, sub_progress
from msa_core.recompose import RecomposePlan, first_non_finite
from msa_core.turns import TurnLock
from msa_core.vectors import VectorSet, compute_vectors

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SIDE_ROLES = ("clean", "reference", "forget", "retain")
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")
# Model dtypes the engine composes into (name or alias → dtype); anything else is refused up front.
MODEL_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# Storage dtypes of τ_f, τ_r on the device (name or alias → dtype); the compose computes in fp32.
VECTOR_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
# device_map strings accelerate plans itself.
AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# How many parameter names an error about a module filter quotes as examples.
_EXAMPLE_NAMES = 4


def available_devices() -> list[str]:
    """Devices this machine can run a model on, e.g. ['cpu'] or ['cpu', 'cuda', 'cuda:0', 'cuda:1']."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """The torch device for a name ('cpu', 'cuda', 'cuda:1', …; None/''/'auto' = cuda when available).

    Raises ValueError naming the device and listing :func:`available_devices` when the name is
    unknown or the device does not exist on this machine (checked before anything is loaded).
    """
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return default_device()
    text = str(device).strip()
    available = available_devices()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {text!r}; available devices: {', '.join(available)}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    name = dev.type if dev.index is None else f"{dev.type}:{dev.index}"
    if name not in available:
        raise ValueError(f"device {text!r} is not available on this machine; available devices: {', '.join(available)}")
    return dev


def resolve_model_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """The model dtype for a name ('float32', 'bf16', …) or dtype; None for None/''/'auto' (the
    checkpoint's own). Raises ValueError naming the dtype and the accepted names otherwise."""
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() in ("", "auto")):
        return None
    if isinstance(dtype, torch.dtype):
        if dtype in MODEL_DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower() in MODEL_DTYPES:
        return MODEL_DTYPES[dtype.strip().lower()]
    raise ValueError(f"unknown model dtype {dtype!r}; expected one of float32, bfloat16, float16 (or auto)")


def resolve_vector_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """The storage dtype of the vectors for a name ('float32', 'bfloat16', 'bf16', …) or dtype
    (None/'': float32). Raises ValueError naming the value and the accepted names otherwise."""
    if dtype is None or (isinstance(dtype, str) and not dtype.strip()):
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in VECTOR_DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower() in VECTOR_DTYPES:
        return VECTOR_DTYPES[dtype.strip().lower()]
    raise ValueError(f"unknown vector dtype {dtype!r}; expected float32 or bfloat16")


def resolve_device_map(device_map: Any) -> Any:
    """A checked ``device_map``: None; 'auto' (or another accelerate strategy); a device name
    ('cpu', 'cuda:1', checked like :func:`resolve_device`) as ``{"": name}``; or a dict of module
    name → device name or CUDA index, every device checked against this machine. 'disk' and
    'meta' placements are refused, naming the modules: composition needs the weights resident."""
    if device_map is None:
        return None
    if isinstance(device_map, str):
        text = device_map.strip()
        if text.lower() in AUTO_MAPS:
            return text.lower()
        if text.lower() in ("disk", "meta"):
            raise ValueError(f"device map {text!r} would offload the whole model; composition needs the weights "
                             "resident on a device (cpu or cuda)")
        return {"": str(resolve_device(text))}
    if not isinstance(device_map, dict) or not device_map:
        raise ValueError(f"device map must be 'auto', a device name or a non-empty module → device object, "
                         f"got {type(device_map).__name__}")
    out: dict[str, Union[int, str]] = {}
    offloaded = []
    for module, where in device_map.items():
        if not isinstance(module, str):
            raise ValueError(f"device map key {module!r} must be a module name (string)")
        if isinstance(where, bool) or not isinstance(where, (int, str, torch.device)):
            raise ValueError(f"device map entry {module!r}: {where!r} is not a device name or CUDA index")
        if isinstance(where, int):
            resolve_device(f"cuda:{where}")
            out[module] = where
            continue
        name = str(where).strip()
        if name in ("disk", "meta"):
            offloaded.append(module or "(whole model)")
            continue
        try:
            out[module] = str(resolve_device(name))
        except ValueError as exc:
            raise ValueError(f"device map entry {module!r}: {exc}") from None
    if offloaded:
        raise ValueError(f"device map puts {', '.join(offloaded)} on disk/meta (offload); composition needs every "
                         "weight resident on a device (cpu or cuda): place those modules on a device")
    on_cpu = [m or "(whole model)" for m, d in out.items() if d == "cpu"]
    if on_cpu and len(on_cpu) < len(out) and any(isinstance(d, int) or str(d).startswith("cuda") for d in out.values()):
        # accelerate runs such modules on the GPU and keeps their weights outside the module
        # (meta parameters, copied in at each forward): nothing resident to compose in place.
        raise ValueError(f"device map mixes CUDA devices with 'cpu' for {', '.join(on_cpu)}: accelerate offloads "
                         "'cpu' modules of a GPU map (their weights are copied to the GPU at each forward), which the "
                         "engine cannot compose in place; put those modules on a GPU, or the whole model on the CPU")
    return out


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: Union[int, str], what: str = "size") -> int:
    """Bytes from an int or a size like '70GiB', '500MB', '1.5TiB', '123' (units: B, KB, MB, GB, TB
    powers of 1000; KiB, MiB, GiB, TiB powers of 1024; case-insensitive). ValueError names ``what``."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{what}: {text} is negative")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{what}: {text!r} is not a size like 70GiB, 500MB or a byte count")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def resolve_max_memory(max_memory: Optional[dict[Any, Any]]) -> Optional[dict[Union[int, str], int]]:
    """``max_memory`` for accelerate: keys 'cpu', 'disk', 'mps', a CUDA index or 'cuda'/'cuda:N'
    (→ the index), values bytes or a size (:func:`parse_size`) → bytes. ValueError names a bad
    key or value."""
    if max_memory is None:
        return None
    if not isinstance(max_memory, dict):
        raise ValueError(f"max_memory must be a device → size object, got {type(max_memory).__name__}")
    out: dict[Union[int, str], int] = {}
    for key, size in max_memory.items():
        k: Union[int, str]
        if isinstance(key, int) and not isinstance(key, bool):
            k = key
        elif isinstance(key, str) and key.strip() in ("cpu", "disk", "mps"):
            k = key.strip()
        elif isinstance(key, str) and re.fullmatch(r"cuda(:\d+)?", key.strip()):
            k = int(key.strip().partition(":")[2] or 0)
        else:
            raise ValueError(f"max_memory key {key!r}: expected cpu, disk, mps, cuda:N or a CUDA index")
        if isinstance(size, bool) or not isinstance(size, (int, str)):
            raise ValueError(f"max_memory[{key!r}] = {size!r}: expected bytes or a size like '70GiB'")
        out[k] = parse_size(size, f"max_memory[{key!r}]")
    return out


def check_finite(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise ValueError naming ``what`` (role and folder) and the first tensor holding NaN/Inf."""
    names, tensors = [], []
    for name, t in named:
        if t.is_floating_point():
            names.append(name)
            tensors.append(t.detach())
    bad = first_non_finite(tensors)
    if bad is not None:
        loaded = str(tensors[bad].dtype).removeprefix("torch.")
        raise ValueError(f"{what}: tensor {names[bad]} has NaN/Inf values (as loaded in {loaded})")


@dataclass(frozen=True)
class ModuleFilter:
    """Restrict α/β to some parameters: a regex on the name and/or a layer range (inclusive).

    Parameters outside the filter keep θ_corrupted. Example: ``ModuleFilter(include=r"mlp")``
    or ``ModuleFilter(layers=(0, 7))``.
    """

    include: Optional[str] = None
    layers: Optional[tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.include is not None:
            try:
                re.compile(self.include)
            except re.error as exc:
                raise ValueError(f"module filter include={self.include!r} is not a valid regex ({exc})") from None
        if self.layers is not None and (len(self.layers) != 2 or self.layers[0] > self.layers[1]):
            raise ValueError(f"module filter layers={self.layers!r} must be (first, last) with first <= last")

    def describe(self) -> str:
        """The filter as the user gave it, e.g. "include='mlp', layers 0-7"."""
        parts = []
        if self.include is not None:
            parts.append(f"include={self.include!r}")
        if self.layers is not None:
            parts.append(f"layers {self.layers[0]}-{self.layers[1]}")
        return ", ".join(parts) or "no filter"

    def matches(self, name: str) -> bool:
        if self.include is not None and not re.search(self.include, name):
            return False
        if self.layers is not None:
            m = _LAYER_RE.search("." + name)
            if m is None or not self.layers[0] <= int(m.group(1)) <= self.layers[1]:
                return False
        return True


def _resolve_names(model: PreTrainedModel, vector_names: set[str]) -> dict[str, str]:
    """Model parameter name → vector (checkpoint) tensor name, handling tied aliases."""
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    out: dict[str, str] = {}
    for name, p in model.named_parameters():
        match = next((a for a in aliases[id(p)] if a in vector_names), None)
        if match is None:
            raise KeyError(f"model parameter {name} (aliases {aliases[id(p)]}) has no forget/retain vector tensor")
        out[name] = match
    return out


class _StoredCorrupted:
    """θ_corrupted as stored, for the pristine copies of a model loaded in another dtype.

    The compose rounds once: w = cast(θ_c − α·τ_f + β·τ_r) with θ_c as the checkpoint holds it.
    A model loaded in a narrower dtype than its checkpoint (fp32 weights, bf16 model) holds θ_c
    already rounded; composing from that copy rounds twice (23% of bf16 elements off by one
    step in the issue's measurement). So where a tensor's stored dtype differs from the model's,
    its pristine copy is the stored tensor in its stored dtype (exact and no wider than needed).
    NOTE: memory. An fp32 checkpoint in a bf16 model keeps θ_c in fp32, 4 bytes per parameter
    instead of 2 (an 8B model: 32 GB instead of 16 GB); load the model in the checkpoint's
    dtype, or convert the checkpoint, to avoid it. A tensor whose stored value, cast to the model
    dtype, is not what the model loaded (a library that transforms weights on load) keeps the
    model's copy, with a warning.
    """

    def __init__(self, folder: Path, dtype: torch.dtype):
        self.folder = Path(folder)
        self.dtype = dtype
        self._reader: Optional[TensorReader] = None
        self._index: dict[str, tuple[str, tuple[int, ...]]] = {}

    def __enter__(self) -> _StoredCorrupted:
        try:
            self._index = read_tensor_index(self.folder)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the stored dtypes of %s (%s); composing from the loaded weights", self.folder, exc)
            self._index = {}
        if any(d != _dtype_name(self.dtype) and d.startswith(("float", "bfloat")) for d, _s in self._index.values()):
            self._reader = TensorReader(self.folder).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.__exit__(*exc)

    def pristine(self, name: str, loaded: torch.Tensor) -> torch.Tensor:
        """The pristine θ_c of checkpoint tensor ``name`` on the model's device: the stored tensor
        when its floating dtype differs from the model's, else a copy of ``loaded``."""
        info = self._index.get(name)
        if self._reader is None or info is None or info[0] == _dtype_name(self.dtype):
            return loaded.detach().clone()
        stored = self._reader.get(name).to(loaded.device, copy=True)  # never a view of a mapped .bin
        if not stored.is_floating_point() or tuple(stored.shape) != tuple(loaded.shape):
            return loaded.detach().clone()
        if not torch.equal(stored.to(loaded.dtype), loaded):
            log.warning("%s: tensor %s as loaded is not the stored one cast to %s; composing from the loaded copy",
                        self.folder, name, _dtype_name(loaded.dtype))
            return loaded.detach().clone()
        return stored


def release_host_memory() -> bool:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), e.g. the CPU fp32 vectors
    once they are placed: tensors under glibc's mmap threshold (≤ 32 MB) are freed into the heap,
    which otherwise stays in the process's RSS. True when it ran (Linux with glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return False
    return True


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _nbytes(model: PreTrainedModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class Engine:
    """The working model, its recompose plan, the lock and the side models; see the module docstring."""

    def __init__(
        self,
        experiment: Experiment,
        model: PreTrainedModel,
        tokenizer: Optional[PreTrainedTokenizerBase],
        vectors: VectorSet,
        *,
        module_filter: Optional[ModuleFilter] = None,
        compat: Optional[CompatReport] = None,
        fingerprint: str = "",
        load_seconds: float = 0.0,
        vector_dtype: Union[str, torch.dtype, None] = "float32",
        device_map: Any = None,
        max_memory: Optional[dict[Any, Any]] = None,
    ):
        self.experiment = experiment
        # The experiment as loaded; :meth:`swap_vectors` changes ``experiment`` (another θ_clean /
        # epoch choice, msa_core.choices) but never this. ``choice`` is the active choice (None: the
        # experiment's own checkpoints).
        self.base_experiment = experiment
        self.choice: Optional[object] = None
        self.model = model
        self.tokenizer = tokenizer
        self.vectors = vectors
        self.compat = compat
        self.fingerprint = fingerprint
        self.load_seconds = load_seconds
        self.module_filter = module_filter
        self.lock = TurnLock()  # FIFO and re-entrant: long jobs can yield_turn() to waiting sessions
        self.last_compose_seconds = 0.0
        self.compose_path = ""  # how the last recompose ran (benchmarks and the app's status)
        self._side: dict[str, PreTrainedModel] = {}
        self._side_lock = threading.Lock()
        # τ_f, τ_r storage on the devices; the device map / max memory the model was loaded with
        # (side models load the same way).
        self.vector_dtype: torch.dtype = resolve_vector_dtype(vector_dtype)
        self.device_map = device_map
        self.max_memory = max_memory
        first = next(model.parameters())
        self.device: torch.device = first.device  # where inputs go (a dispatched model's first device)
        self.dtype: torch.dtype = first.dtype
        self.devices: tuple[torch.device, ...] = tuple(
            sorted({p.device for p in model.parameters()}, key=lambda d: (d.type != first.device.type, str(d)))
        )
        self.parameter_count = sum(p.numel() for p in model.parameters())
        # Once, at load: a NaN/Inf in θ_c would otherwise give empty answers at every point.
        check_finite(model.named_parameters(), f"corrupted checkpoint {experiment.checkpoints.corrupted}")
        # the names of the parameters α/β apply to, parallel to the plan's tensors; ``vectors``
        # becomes the placed copies (the caller's CPU fp32 tensors are not kept)
        self.param_names, self.plan, self.vectors = self._build_plan(vectors, module_filter)
        self.alpha = 0.0  # the working model starts as θ_corrupted
        self.beta = 0.0

    def _build_plan(
        self, vectors: VectorSet, module_filter: Optional[ModuleFilter]
    ) -> tuple[list[str], RecomposePlan, VectorSet]:
        """Pair every (filtered) parameter with a pristine copy and its vectors on that parameter's
        device (in :attr:`vector_dtype`); returns the parameter names, the plan over them and
        ``vectors`` holding only those placed copies (by vector name: fingerprint, path and norms
        kept), so the caller's CPU tensors are freed once it drops them."""
        kept: list[str] = []
        names = _resolve_names(self.model, set(vectors.forget))
        params = dict(self.model.named_parameters())
        live: list[torch.Tensor] = []
        pristine: list[torch.Tensor] = []
        tau_f: list[torch.Tensor] = []
        tau_r: list[torch.Tensor] = []
        placed_f: dict[str, torch.Tensor] = {}
        placed_r: dict[str, torch.Tensor] = {}
        with torch.no_grad(), _StoredCorrupted(self.experiment.checkpoints.corrupted, self.dtype) as stored:
            for pname, vname in names.items():
                p = params[pname]
                tf, tr = vectors.forget[vname], vectors.retain[vname]
                if tuple(tf.shape) != tuple(p.shape):
                    raise ValueError(
                        f"vector tensor {vname} has shape {list(tf.shape)}, model parameter {pname} has {list(p.shape)}"
                    )
                if module_filter is not None and not module_filter.matches(pname):
                    continue
                kept.append(pname)
                live.append(p.data)
                pristine.append(stored.pristine(vname, p.data))
                # on THIS parameter's device: a dispatched model composes without crossing devices
                tau_f.append(tf.to(device=p.device, dtype=self.vector_dtype))
                tau_r.append(tr.to(device=p.device, dtype=self.vector_dtype))
                placed_f[vname], placed_r[vname] = tau_f[-1], tau_r[-1]
        if module_filter is not None and not kept:
            shown = ", ".join(list(names)[:_EXAMPLE_NAMES])
            raise ValueError(
                f"module filter ({module_filter.describe()}) matches none of the model's {len(names)} parameters "
                f"(e.g. {shown}); α/β would change nothing"
            )
        return kept, RecomposePlan(live, pristine, tau_f, tau_r), replace(vectors, forget=placed_f, retain=placed_r)

    def swap_vectors(self, experiment: Experiment, vectors: VectorSet, *, fingerprint: str = "",
                     choice: Optional[object] = None) -> None:
        """Use another (θ_clean, θ_forget, θ_retain) choice of the same θ_corrupted: ``experiment``
        names its checkpoints (the corrupted one must be this engine's) and ``vectors`` are its τ_f, τ_r.

        The working model is not reloaded: the plan is rebuilt over the same parameters with the new
        vectors, the working model is reset to θ_corrupted (α = β = 0), and the side models of the
        roles that changed (clean, forget, retain) are dropped so they load from the new folders.
        Holds the lock, so no session sees a half-swapped engine."""
        if Path(experiment.checkpoints.corrupted).resolve() != Path(self.experiment.checkpoints.corrupted).resolve():
            raise ValueError(
                f"cannot swap vectors: the new choice's corrupted checkpoint {experiment.checkpoints.corrupted} is not "
                f"this engine's {self.experiment.checkpoints.corrupted}"
            )
        with self.lock:
            self.alpha = self.beta = math.nan
            self.plan.compose(0.0, 0.0)  # θ_c: the old plan's pristine copy, before it is replaced
            names, plan, placed = self._build_plan(vectors, self.module_filter)
            self.param_names, self.plan, self.vectors = names, plan, placed
            self.experiment = experiment
            self.choice = choice
            self.fingerprint = fingerprint or experiment_fingerprint(experiment)
            with self._side_lock:
                for role in ("clean", "forget", "retain"):
                    self._side.pop(role, None)
            self.alpha = self.beta = 0.0

    @classmethod
    def load(
        cls,
        experiment: Experiment,
        *,
        device: Union[str, torch.device, None] = None,
        dtype: Union[str, torch.dtype, None] = None,
        cache_dir: Optional[Path] = None,
        module_filter: Optional[ModuleFilter] = None,
        progress: Optional[Progress] = None,
        vector_dtype: Union[str, torch.dtype, None] = "float32",
        device_map: Any = None,
        max_memory: Optional[dict[Any, Any]] = None,
    ) -> Engine:
        """Check the checkpoints, load (or compute) the vectors, load the working model.

        ``vector_dtype`` ('float32' | 'bfloat16'): how τ_f, τ_r are stored on the device (bf16:
        half the memory; the compose still computes in fp32). ``device_map`` (None: the whole
        model on ``device``; 'auto'; a device name; or a module → device dict) loads the model
        through accelerate, with ``max_memory`` (device → bytes or '70GiB'; CUDA devices as
        indices or 'cuda:N') for 'auto'; each parameter's θ_c, τ_f, τ_r then live on its device.
        """
        t0 = time.perf_counter()
        # before anything heavy: a bad --device/--dtype/--vector-dtype/--device-map fails at once
        if device_map is not None and device not in (None, "", "auto"):
            raise ValueError(f"give a device ({device!r}) or a device map ({device_map!r}), not both")
        device_map = resolve_device_map(device_map)
        max_memory = resolve_max_memory(max_memory)
        if isinstance(device_map, str) and device_map in AUTO_MAPS and max_memory is None:
            from msa_core.plan import default_max_memory

            # accelerate alone fills each GPU with weights; θ_c, τ_f, τ_r need room beside them
            max_memory = resolve_max_memory(default_max_memory(
                experiment, dtype=None if dtype is None else str(dtype).replace("torch.", ""),
                vector_dtype=str(resolve_vector_dtype(vector_dtype)).replace("torch.", "")))
            if max_memory is not None:
                log.info("device_map %s: max_memory per device %s (room for θ_c and the vectors beside the model)",
                         device_map, max_memory)
        dev = resolve_device(device) if device_map is None else None
        dtype = resolve_model_dtype(dtype)
        vdtype = resolve_vector_dtype(vector_dtype)
        report(progress, 0.0, "checking checkpoints")
        compat = check_compatible(experiment)
        vectors = compute_vectors(experiment, cache_dir, sub_progress(progress, 0.05, 0.8), check=False)
        report(progress, 0.8, "loading the working model")
        tok = load_tokenizer(experiment.checkpoints.corrupted, trust_remote_code=experiment.trust_remote_code)
        model = load_model(
            experiment.checkpoints.corrupted, device=dev, dtype=dtype, trust_remote_code=experiment.trust_remote_code,
            device_map=device_map, max_memory=max_memory,
        )
        engine = cls(
            experiment,
            model,
            tok,
            vectors,
            module_filter=module_filter,
            compat=compat,
            fingerprint=experiment_fingerprint(experiment),
            vector_dtype=vdtype,
            device_map=device_map,
            max_memory=max_memory,
        )
        del vectors  # the CPU fp32 tensors: the engine holds the placed copies
        release_host_memory()
        engine.load_seconds = time.perf_counter() - t0
        report(progress, 1.0, "engine ready")
        return engine

    def set_coefficients(self, alpha: float, beta: float) -> float:
        """Recompose the working model at (α, β); returns seconds spent (0.0 if unchanged).

        Raises ValueError for non-finite or out-of-range coefficients, and when the composed
        weights are not finite (e.g. a large weight times α overflows the dtype), naming the
        first such tensor; the working model is then reset to θ_corrupted (0, 0).
        """
        self.experiment.validate_coefficients(alpha, beta)
        alpha, beta = float(alpha), float(beta)
        with self.lock:
            if alpha == self.alpha and beta == self.beta:
                return 0.0
            t0 = time.perf_counter()
            # NaN marks the weights as unknown while they are rewritten, so an error midway can
            # never make a later call at the old point skip its compose.
            self.alpha = self.beta = math.nan
            self.compose_path = self.plan.compose(alpha, beta)
            # (0, 0) is a copy of θ_c, checked at load; any other point costs one read of the
            # weights (a sum per tensor or slice). The sum's sync also waits for a GPU compose.
            bad = self.plan.first_non_finite() if (alpha, beta) != (0.0, 0.0) else None
            if bad is None:
                for dev in self.plan.devices:
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
            if bad is not None:
                dtype = str(self.dtype).removeprefix("torch.")
                self.plan.compose(0.0, 0.0)  # θ_c itself (a copy, finite: checked at load)
                self.alpha, self.beta = 0.0, 0.0
                raise ValueError(
                    f"the composed weights at α={alpha:g}, β={beta:g} are not finite: tensor {self.param_names[bad]} "
                    f"has NaN/Inf values (θ_c − α·τ_f + β·τ_r overflows {dtype}); the model was reset to "
                    "θ_corrupted (α=0, β=0)"
                )
            self.alpha, self.beta = alpha, beta
            self.last_compose_seconds = time.perf_counter() - t0
            return self.last_compose_seconds

    @contextmanager
    def session(self, alpha: float, beta: float) -> Iterator[PreTrainedModel]:
        """Hold the lock, compose at (α, β) and yield the working model for generate/score."""
        with self.lock:
            self.set_coefficients(alpha, beta)
            yield self.model

    def yield_turn(self, alpha: float, beta: float) -> bool:
        """Between two batches of a long job inside ``session(alpha, beta)``: let the sessions
        already waiting for the engine run first (in arrival order), then recompose at
        (α, β) if they moved it. Returns True when others ran. The job must not keep
        tensors computed from the weights across this call (each batch reads them anew)."""
        if not self.lock.yield_turn():
            return False
        self.set_coefficients(alpha, beta)
        return True

    def side_model(self, role: str) -> Optional[PreTrainedModel]:
        """A separate read-only model for 'clean' | 'reference' | 'forget' | 'retain' (lazy, cached).

        Returns None when the experiment has no such checkpoint (only 'reference' is optional).
        These are loaded as their own models rather than composed, because θ_clean and the
        reference are not combinations of θ_corrupted, τ_f and τ_r.
        """
        if role not in SIDE_ROLES:
            raise ValueError(f"unknown model role {role!r}; expected one of {SIDE_ROLES}")
        folder = getattr(self.experiment.checkpoints, role)
        if folder is None:
            return None
        with self._side_lock:
            if role not in self._side:
                model = load_model(
                    folder, device=self.device, dtype=self.dtype, trust_remote_code=self.experiment.trust_remote_code,
                    device_map=self.device_map, max_memory=self.max_memory,
                )
                check_finite(model.named_parameters(), f"{role} checkpoint {folder}")  # once, before it is kept
                self._side[role] = model
            return self._side[role]

    @property
    def model_settings(self) -> dict[str, object]:
        """What besides the checkpoints changes this engine's outputs, as JSON: the model dtype,
        the device type ('cpu', 'cuda', …; 'cpu+cuda' for a model dispatched over both), the
        module filter (None when α/β apply everywhere) and, only when not float32, the vectors'
        storage dtype (so results stored before that option keep their keys). Part of the key of
        every stored result and of the app's memos."""
        f = self.module_filter
        filt = None
        if f is not None and (f.include is not None or f.layers is not None):
            filt = {"include": f.include, "layers": None if f.layers is None else list(f.layers)}
        device = "+".join(sorted({d.type for d in self.devices})) or self.device.type
        out: dict[str, object] = {"dtype": str(self.dtype).replace("torch.", ""), "device": device,
                                  "module_filter": filt}
        if self.vector_dtype != torch.float32:
            out["vector_dtype"] = _dtype_name(self.vector_dtype)
        return out

    def release_side_model(self, role: str) -> bool:
        """Drop the loaded side model of ``role`` (its memory is freed once no caller holds it);
        True when one was loaded. A later :meth:`side_model` loads it again."""
        with self._side_lock:
            model = self._side.pop(role, None)
        if model is not None and any(d.type == "cuda" for d in self.devices):
            del model
            torch.cuda.empty_cache()
            return True
        return model is not None

    def loaded_side_models(self) -> list[str]:
        """Roles whose side models are currently loaded."""
        return list(self._side)

    def warm_up_async(self) -> Optional[threading.Thread]:
        """Compile the fused kernels (CPU and/or CUDA) in a background thread (when this engine will use them),
        so the first slider moves do not wait for the compiler; a compose that starts
        meanwhile waits for it. For long-lived processes (the app); None when not needed."""
        return self.plan.warm_up_async()

    def memory_by_device(self) -> dict[str, dict[str, int]]:
        """Per device (e.g. 'cuda:0'): bytes of the composed parameters, pristine θ_c, the vectors
        and scratch there (parameters outside a module filter are not counted)."""
        return self.plan.memory_by_device()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by the working model, pristine θ_c, the vectors, scratch and side models."""
        out = {"working_model": _nbytes(self.model), **self.plan.memory_bytes()}
        for role, m in self._side.items():
            out[f"side:{role}"] = _nbytes(m)
        out["total"] = sum(out.values())
        return out
