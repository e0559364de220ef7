"""The live engine: one working model on a device, rewritten in place for each (α, β).

The engine loads (or computes) the vectors and ONE working ``transformers`` model, keeps
the pristine θ_corrupted tensors (model dtype) and τ_f, τ_r (fp32) on the device, and hands
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
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch

from msa_core.checkpoints import (
    CompatReport,
    check_compatible,
    default_device,
    experiment_fingerprint,
    load_model,
    load_tokenizer,
)
from msa_core.experiment import Experiment
from msa_core.progress import Progress, report, sub_progress
from msa_core.recompose import RecomposePlan
from msa_core.vectors import VectorSet, compute_vectors

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SIDE_ROLES = ("clean", "reference", "forget", "retain")
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


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
    ):
        self.experiment = experiment
        self.model = model
        self.tokenizer = tokenizer
        self.vectors = vectors
        self.compat = compat
        self.fingerprint = fingerprint
        self.load_seconds = load_seconds
        self.module_filter = module_filter
        self.lock = threading.RLock()
        self.last_compose_seconds = 0.0
        self.compose_path = ""  # how the last recompose ran (benchmarks and the app's status)
        self._side: dict[str, PreTrainedModel] = {}
        self._side_lock = threading.Lock()
        first = next(model.parameters())
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype
        self.parameter_count = sum(p.numel() for p in model.parameters())
        # the names of the parameters α/β apply to, parallel to the plan's tensors
        self.param_names, self.plan = self._build_plan(vectors, module_filter)
        self.alpha = 0.0  # the working model starts as θ_corrupted
        self.beta = 0.0

    def _build_plan(
        self, vectors: VectorSet, module_filter: Optional[ModuleFilter]
    ) -> tuple[list[str], RecomposePlan]:
        """Pair every (filtered) parameter with a pristine copy and its vectors on the device;
        returns the parameter names and the plan over them."""
        kept: list[str] = []
        names = _resolve_names(self.model, set(vectors.forget))
        params = dict(self.model.named_parameters())
        live: list[torch.Tensor] = []
        pristine: list[torch.Tensor] = []
        tau_f: list[torch.Tensor] = []
        tau_r: list[torch.Tensor] = []
        with torch.no_grad():
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
                pristine.append(p.data.detach().clone())
                tau_f.append(tf.to(device=self.device, dtype=torch.float32))
                tau_r.append(tr.to(device=self.device, dtype=torch.float32))
        return kept, RecomposePlan(live, pristine, tau_f, tau_r)

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
    ) -> Engine:
        """Check the checkpoints, load (or compute) the vectors, load the working model."""
        t0 = time.perf_counter()
        dev = torch.device(device) if device is not None else default_device()
        report(progress, 0.0, "checking checkpoints")
        compat = check_compatible(experiment)
        vectors = compute_vectors(experiment, cache_dir, sub_progress(progress, 0.05, 0.8), check=False)
        report(progress, 0.8, "loading the working model")
        tok = load_tokenizer(experiment.checkpoints.corrupted, trust_remote_code=experiment.trust_remote_code)
        model = load_model(
            experiment.checkpoints.corrupted, device=dev, dtype=dtype, trust_remote_code=experiment.trust_remote_code
        )
        engine = cls(
            experiment,
            model,
            tok,
            vectors,
            module_filter=module_filter,
            compat=compat,
            fingerprint=experiment_fingerprint(experiment),
        )
        engine.load_seconds = time.perf_counter() - t0
        report(progress, 1.0, "engine ready")
        return engine

    def set_coefficients(self, alpha: float, beta: float) -> float:
        """Recompose the working model at (α, β); returns seconds spent (0.0 if unchanged).

        Raises ValueError for non-finite or out-of-range coefficients.
        """
        self.experiment.validate_coefficients(alpha, beta)
        alpha, beta = float(alpha), float(beta)
        with self.lock:
            if alpha == self.alpha and beta == self.beta:
                return 0.0
            t0 = time.perf_counter()
            self.compose_path = self.plan.compose(alpha, beta)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.alpha, self.beta = alpha, beta
            self.last_compose_seconds = time.perf_counter() - t0
            return self.last_compose_seconds

    @contextmanager
    def session(self, alpha: float, beta: float) -> Iterator[PreTrainedModel]:
        """Hold the lock, compose at (α, β) and yield the working model for generate/score."""
        with self.lock:
            self.set_coefficients(alpha, beta)
            yield self.model

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
                self._side[role] = load_model(
                    folder, device=self.device, dtype=self.dtype, trust_remote_code=self.experiment.trust_remote_code
                )
            return self._side[role]

    def loaded_side_models(self) -> list[str]:
        """Roles whose side models are currently loaded."""
        return list(self._side)

    def warm_up_async(self) -> Optional[threading.Thread]:
        """Compile the fused CPU kernel in a background thread (when this engine will use it),
        so the first slider moves do not wait for the compiler; a compose that starts
        meanwhile waits for it. For long-lived processes (the app); None when not needed."""
        return self.plan.warm_up_async()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by the working model, pristine θ_c, the vectors, scratch and side models."""
        out = {"working_model": _nbytes(self.model), **self.plan.memory_bytes()}
        for role, m in self._side.items():
            out[f"side:{role}"] = _nbytes(m)
        out["total"] = sum(out.values())
        return out
