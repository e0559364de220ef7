"""The live recomposition engine: one working model rewritten in place for each (α, β).

The engine holds the pristine θ_corrupted tensors (model dtype) and τ_f, τ_r (fp32) on
the device, plus ONE working ``transformers`` model. ``set_coefficients(α, β)`` rewrites
every affected parameter from the pristine tensors::

    w = cast(θ_c − α·τ_f + β·τ_r)        (arithmetic in fp32)

never incrementally (no drift) and never by building a new model (no extra memory).
On a GPU the arithmetic is batched with ``torch._foreach_*`` over groups of tensors,
through a bounded fp32 scratch buffer when the model dtype is not fp32. On the CPU, large
models go through the one-pass compiled kernel of :mod:`msa_core.fused` and the rest through
cache-sized slices (see ``_compose_into``). Tied weights are one parameter and are composed
once; buffers are left alone.

The working model is shared by every caller of a process (every browser session of a
server), so compose-then-use is one critical section: ``with engine.session(α, β) as m``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

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
from msa_core import fused
from msa_core.progress import Progress, report, sub_progress
from msa_core.vectors import VectorSet, compute_vectors

log = logging.getLogger(__name__)

# fp32 scratch used when the model dtype is not fp32: bounded so it never costs a model's worth.
# On CUDA it also bounds a foreach group (few, large kernel launches).
SCRATCH_ELEMENTS = 32 * 1024 * 1024
# CPU compose: tensors are cut into slices and every term of a slice runs while it sits in
# the L2 cache, so memory traffic is the minimum (read θ_c, τ_f, τ_r once, write w once)
# instead of one full pass per op. With several torch threads, slices stay under ATen's
# parallel grain (32768) so each op runs serially in its thread, _CPU_ITEM_SLICES of them
# form one work item (a few foreach calls), and items are spread over that many Python
# threads: no OpenMP fork/join per op, which stalls whenever another process holds a core.
# With one torch thread there is no fork/join at all and slices are larger (less overhead).
# See BENCHMARKS.md (recompose bandwidth).
CPU_STEP_ELEMENTS = 32704
_CPU_ITEM_SLICES = 8
_CPU_SERIAL_STEP = 512 * 1024
# Below this many elements the CPU compose stays in the calling thread (no pool hand-off).
_CPU_THREADED_MIN = 1 << 20
# Below this many elements the fused CPU kernel (msa_core.fused) is not used: its per-call
# overhead outweighs the pass it saves on small models (BENCHMARKS.md, figure 1).
_FUSED_MIN = 1 << 24
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


def _resolve_names(model: Any, vector_names: set[str]) -> dict[str, str]:
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


class Engine:
    """θ_corrupted, τ_f, τ_r and one working model on a device; see the module docstring."""

    def __init__(
        self,
        experiment: Experiment,
        model: Any,
        tokenizer: Any,
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
        self.alpha: Optional[float] = None
        self.beta: Optional[float] = None
        self.last_compose_seconds = 0.0
        self.compose_path = ""  # how the last recompose ran (benchmarks and the app's status)
        self._side: dict[str, Any] = {}
        self._side_lock = threading.Lock()
        first = next(model.parameters())
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype

        names = _resolve_names(model, set(vectors.forget))
        params = dict(model.named_parameters())
        self._params: list[torch.Tensor] = []
        self._pristine: list[torch.Tensor] = []
        self._tau_f: list[torch.Tensor] = []
        self._tau_r: list[torch.Tensor] = []
        self.param_names: list[str] = []
        with torch.no_grad():
            for pname, vname in names.items():
                p = params[pname]
                tf, tr = vectors.forget[vname], vectors.retain[vname]
                if tuple(tf.shape) != tuple(p.shape):
                    raise ValueError(f"vector tensor {vname} has shape {list(tf.shape)}, model parameter {pname} has {list(p.shape)}")
                if module_filter is not None and not module_filter.matches(pname):
                    continue
                self.param_names.append(pname)
                self._params.append(p.data)
                self._pristine.append(p.data.detach().clone())
                self._tau_f.append(tf.to(device=self.device, dtype=torch.float32))
                self._tau_r.append(tr.to(device=self.device, dtype=torch.float32))
        self._groups = self._make_groups()
        self._scratch: Optional[torch.Tensor] = None
        if self.dtype != torch.float32:
            biggest = max((sum(self._params[i].numel() for i in g) for g in self._groups), default=0)
            self._scratch = torch.empty(biggest, dtype=torch.float32, device=self.device)
        self.parameter_count = sum(p.numel() for p in model.parameters())
        self.alpha, self.beta = 0.0, 0.0  # the working model starts as θ_corrupted

    @classmethod
    def load(
        cls,
        experiment: Experiment,
        *,
        device: Any = None,
        dtype: Any = None,
        cache_dir: Optional[Path] = None,
        module_filter: Optional[ModuleFilter] = None,
        progress: Optional[Progress] = None,
    ) -> "Engine":
        """Check the checkpoints, load (or compute) the vectors, load the working model."""
        t0 = time.perf_counter()
        dev = torch.device(device) if device is not None else default_device()
        report(progress, 0.0, "checking checkpoints")
        compat = check_compatible(experiment)
        vectors = compute_vectors(experiment, cache_dir, sub_progress(progress, 0.05, 0.8), check=False)
        report(progress, 0.8, "loading the working model")
        tok = load_tokenizer(experiment.checkpoints.corrupted, trust_remote_code=experiment.trust_remote_code)
        model = load_model(experiment.checkpoints.corrupted, device=dev, dtype=dtype, trust_remote_code=experiment.trust_remote_code)
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

    def _make_groups(self) -> list[list[int]]:
        """Tensor indices in groups processed together by ``_compose_into``.

        A group holds at most CPU_STEP_ELEMENTS elements on the CPU (small tensors batched
        with foreach ops and still cache-resident) and SCRATCH_ELEMENTS elsewhere (few,
        large launches); a bigger tensor is its own group, walked in CPU_STEP_ELEMENTS
        slices on the CPU. On the CPU only the first CPU_STEP_ELEMENTS of the fp32 scratch
        are ever touched, so its untouched pages cost no resident memory.
        """
        limit = CPU_STEP_ELEMENTS if self.device.type == "cpu" else SCRATCH_ELEMENTS
        groups: list[list[int]] = []
        current: list[int] = []
        size = 0
        for i, p in enumerate(self._params):
            n = p.numel()
            if current and size + n > limit:
                groups.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        if current:
            groups.append(current)
        return groups

    @torch.no_grad()
    def _compose_into(self, alpha: float, beta: float) -> None:
        """Write cast(θ_c − α·τ_f + β·τ_r) into every parameter.

        The arithmetic is fp32 and left to right (θ_c, then −α·τ_f, then +β·τ_r, each a
        fused multiply-add), terms with a zero coefficient are skipped, and (0, 0) is a
        plain copy of θ_c (bit-exact). On CUDA: foreach ops over groups of whole tensors.
        On the CPU: a large model (≥ _FUSED_MIN elements) goes through msa_core.fused's
        compiled one-pass kernel when it is available (the same fp32 expression, possibly
        rounded differently in the last bits); otherwise cache-sized work items (slices of tensors, see
        CPU_STEP_ELEMENTS) go through every term with foreach ops, spread over
        torch.get_num_threads() Python threads, bit-identical to whole-tensor passes.
        """
        ca, cb = -alpha, beta
        use_a, use_b = alpha != 0.0, beta != 0.0

        def apply(idx: list[int], scratch: Optional[torch.Tensor]) -> None:
            params = [self._params[j] for j in idx]
            base = [self._pristine[j] for j in idx]
            if not (use_a or use_b):
                torch._foreach_copy_(params, base)  # θ_c itself: no fp32 round trip needed
                return
            if scratch is None:
                work = params  # fp32 model: compute directly in the parameters
            else:
                work, off = [], 0
                for p in params:
                    work.append(scratch[off : off + p.numel()].view(p.shape))
                    off += p.numel()
            torch._foreach_copy_(work, base)
            if use_a:
                torch._foreach_add_(work, [self._tau_f[j] for j in idx], alpha=ca)
            if use_b:
                torch._foreach_add_(work, [self._tau_r[j] for j in idx], alpha=cb)
            if work is not params:
                torch._foreach_copy_(params, work)

        if self.device.type != "cpu":
            for g in self._groups:
                apply(g, self._scratch)
            self.compose_path = "foreach (device)"
            return
        views = self._fused_views() if (use_a or use_b) and self._fused_eligible() else None
        if views and fused.compose_fused(views, ca, cb):
            self.compose_path = "fused kernel (torch.compile)"
            return
        self.compose_path = "sliced eager"

        single = torch.get_num_threads() == 1
        step, per_item = (_CPU_SERIAL_STEP, 1) if single else (CPU_STEP_ELEMENTS, _CPU_ITEM_SLICES)
        plan = getattr(self, "_cpu_plan", None)
        if plan is None or plan[0] != (step, per_item):
            # Work items, built once: (w, θ_c, τ_f, τ_r) lists of flat slices, ≤ per_item·step elements.
            items: list[tuple[list[torch.Tensor], ...]] = []
            cur: tuple[list[torch.Tensor], ...] = ([], [], [], [])
            size = 0
            for i in range(len(self._params)):
                ts = (self._params[i], self._pristine[i], self._tau_f[i], self._tau_r[i])
                if not all(t.is_contiguous() for t in ts):  # cannot be sliced: its own item
                    items.append(tuple([t] for t in ts))
                    continue
                flat = [t.view(-1) for t in ts]
                n = flat[0].numel()
                for s0 in range(0, n, step):
                    s1 = min(s0 + step, n)
                    if size and size + (s1 - s0) > per_item * step:
                        items.append(cur)
                        cur, size = ([], [], [], []), 0
                    for lst, t in zip(cur, flat):
                        lst.append(t[s0:s1])
                    size += s1 - s0
            if size:
                items.append(cur)
            plan = ((step, per_item), items, sum(p.numel() for p in self._params))
            self._cpu_plan = plan
        _, items, total = plan
        lowp = self.dtype != torch.float32

        def run(part: list[tuple[list[torch.Tensor], ...]], scratch: Optional[torch.Tensor]) -> None:
            with torch.no_grad():
                for p, b, f, r in part:
                    if not (use_a or use_b):
                        torch._foreach_copy_(p, b)
                        continue
                    if not lowp and len(p) == 1:  # one fp32 slice: first term straight into w
                        torch.add(b[0], f[0] if use_a else r[0], alpha=ca if use_a else cb, out=p[0])
                        if use_a and use_b:
                            p[0].add_(r[0], alpha=cb)
                        continue
                    if lowp:  # low-precision model: through fp32 scratch, then one rounding cast
                        work, off = [], 0
                        for t in p:
                            work.append(scratch[off : off + t.numel()].view(t.shape))
                            off += t.numel()
                    else:
                        work = p
                    torch._foreach_copy_(work, b)
                    if use_a:
                        torch._foreach_add_(work, f, alpha=ca)
                    if use_b:
                        torch._foreach_add_(work, r, alpha=cb)
                    if lowp:
                        torch._foreach_copy_(p, work)

        workers = 1 if single or total < _CPU_THREADED_MIN else min(torch.get_num_threads(), len(items))
        chunk = max((sum(t.numel() for t in it[0]) for it in items), default=0)
        scratch = getattr(self, "_cpu_scratch", None)
        if lowp and (scratch is None or scratch.numel() < workers * chunk):
            scratch = self._cpu_scratch = torch.empty(workers * chunk, dtype=torch.float32)
        regions = [scratch[k * chunk : (k + 1) * chunk] if lowp else None for k in range(workers)]
        if workers == 1:
            run(items, regions[0])
            return
        from concurrent.futures import ThreadPoolExecutor

        held = getattr(self, "_cpu_pool", None)  # (workers, pool), kept for the engine's lifetime
        if held is None or held[0] != workers:
            if held is not None:
                held[1].shutdown(wait=True)
            held = self._cpu_pool = (workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msa-compose"))
        pool = held[1]
        # Parts handed out on demand, so a worker that loses its core does not hold the rest back.
        n_parts = workers * 8
        bounds = [len(items) * k // n_parts for k in range(n_parts + 1)]
        parts = iter([items[bounds[k] : bounds[k + 1]] for k in range(n_parts)])
        take = threading.Lock()

        def worker(k: int) -> None:
            while True:
                with take:
                    part = next(parts, None)
                if part is None:
                    return
                run(part, regions[k])

        for fut in [pool.submit(worker, k) for k in range(workers)]:
            fut.result()

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
            self._compose_into(alpha, beta)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.alpha, self.beta = alpha, beta
            self.last_compose_seconds = time.perf_counter() - t0
            return self.last_compose_seconds

    @contextmanager
    def session(self, alpha: float, beta: float) -> Iterator[Any]:
        """Hold the lock, compose at (α, β) and yield the working model for generate/score."""
        with self.lock:
            self.set_coefficients(alpha, beta)
            yield self.model

    def composed_state_dict(self, alpha: float, beta: float) -> dict[str, torch.Tensor]:
        """CPU copies of every model tensor at (α, β), in the model dtype (for export)."""
        with self.session(alpha, beta) as model:
            return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}

    def side_model(self, role: str) -> Optional[Any]:
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

    def _fused_eligible(self) -> bool:
        """Whether recomposition may use msa_core.fused: a CPU model of ≥ _FUSED_MIN elements,
        the kernel not turned off or failed."""
        return self.device.type == "cpu" and self.parameter_count >= _FUSED_MIN and fused.enabled()

    def _fused_views(self) -> Optional[fused.Views]:
        """The parameters' flat views for msa_core.fused, built on first use (None: not usable)."""
        if not hasattr(self, "_fused_view_cache"):
            self._fused_view_cache = fused.prepare(self._params, self._pristine, self._tau_f, self._tau_r)
        return self._fused_view_cache

    def warm_up_async(self) -> Optional[threading.Thread]:
        """Compile the fused CPU kernel in a background thread (when this engine will use it),
        so the first slider moves do not wait for the compiler; a compose that starts
        meanwhile waits for it. For long-lived processes (the app); None when not needed."""
        if not self._fused_eligible():
            return None
        thread = threading.Thread(target=fused.warm_up, args=(self.dtype,), name="msa-fused-warm-up", daemon=True)
        thread.start()
        return thread

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by the working model, pristine θ_c, the vectors, scratch and side models."""

        def nbytes(ts: list[torch.Tensor]) -> int:
            return sum(t.numel() * t.element_size() for t in ts)

        out = {
            "working_model": sum(p.numel() * p.element_size() for p in self.model.parameters()),
            "pristine": nbytes(self._pristine),
            "vectors": nbytes(self._tau_f) + nbytes(self._tau_r),
            "scratch": 0 if self._scratch is None else self._scratch.numel() * 4,
        }
        for role, m in self._side.items():
            out[f"side:{role}"] = sum(p.numel() * p.element_size() for p in m.parameters())
        out["total"] = sum(out.values())
        return out

    def composed_bytes_per_move(self) -> int:
        """Bytes a full recompose must at least move: read θ_c, τ_f, τ_r, write w."""
        per = sum(p.numel() * p.element_size() * 2 for p in self._params)
        return per + sum(t.numel() * 4 for t in self._tau_f) + sum(t.numel() * 4 for t in self._tau_r)
