"""The recomposition arithmetic: w = cast(θ_c − α·τ_f + β·τ_r) into every parameter, in place.

:class:`RecomposePlan` is built once per engine from four parallel lists of tensors (the
working model's parameters, the pristine θ_corrupted copies, τ_f and τ_r) and then rewrites
the parameters for any (α, β) without allocating a model. The pristine copies are in the
model dtype or, per tensor, in the checkpoint's own floating dtype when that differs (an fp32
θ_c in a bf16 model); the vectors are fp32, or bf16 when the engine keeps them narrow
(``vector_dtype``: storage only). The arithmetic reads every term exactly in fp32, so the
result is rounded once, to the model dtype, on every path.

Each parameter's four tensors live on that parameter's device (a model dispatched over
several devices by ``accelerate``); the plan groups the tensors by device and composes each
group where it lives, never across devices:

- on a CUDA device, the one-pass compiled kernel of :mod:`msa_core.fused` (Inductor
  generates a Triton kernel: read θ_c, τ_f, τ_r once, write w once) for a large model;
  otherwise, and as the fallback when the kernel cannot compile or run, foreach ops over
  groups of whole tensors through a bounded fp32 scratch buffer when the model dtype is not
  fp32 (few, large kernel launches);
- on the CPU, a large model goes through the same compiled kernel (Inductor's C++) when it is
  available; otherwise tensors are cut into cache-sized slices, grouped into work items and
  spread over ``torch.get_num_threads()`` Python threads;
- on another accelerator (mps, …), the foreach path.

Every eager path runs the same sequence, :func:`compose_items`: θ_c, then −α·τ_f, then +β·τ_r,
in fp32 and left to right, then one cast; terms with a zero coefficient are skipped and (0, 0)
is a plain copy of θ_c (bit-exact). The eager paths are bit-identical to whole-tensor
arithmetic; the fused kernel may round the last bits differently (see its module).

The plan does no locking: its owner (:class:`msa_core.engine.Engine`) serialises composes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

import torch

from msa_core import fused

# fp32 scratch used on a GPU when the model dtype is not fp32: bounded so it never costs a
# model's worth. It also bounds a foreach group (few, large kernel launches).
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
# Below this many elements (per device) the fused kernel (msa_core.fused) is not used: its per-call
# overhead outweighs the pass it saves on small models (BENCHMARKS.md, figure 1).
_FUSED_MIN = 1 << 24
# Parts per worker thread: parts are handed out on demand, so a worker that loses its core
# does not hold the rest back.
_PARTS_PER_WORKER = 8

PATH_DEVICE = "foreach (device)"
PATH_FUSED = "fused kernel (torch.compile)"
PATH_EAGER = "sliced eager"


class WorkItem(NamedTuple):
    """Parallel lists of tensors (or flat slices of them) composed together by one foreach call each."""

    params: list[torch.Tensor]
    pristine: list[torch.Tensor]
    tau_f: list[torch.Tensor]
    tau_r: list[torch.Tensor]

    @property
    def elements(self) -> int:
        return sum(t.numel() for t in self.params)


def _views_in(scratch: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive views of ``scratch`` shaped like ``like`` (the fp32 work space of one item)."""
    out, off = [], 0
    for t in like:
        out.append(scratch[off : off + t.numel()].view(t.shape))
        off += t.numel()
    return out


@torch.no_grad()
def compose_items(items: Sequence[WorkItem], ca: float, cb: float, scratch: Optional[torch.Tensor]) -> None:
    """w = cast(θ_c + ca·τ_f + cb·τ_r) into the ``params`` of every item; THE compose sequence.

    ``scratch`` (fp32, at least one item's elements) is the work space when the parameters
    are not fp32 (None for an fp32 model: the parameters are the work space).
    """
    use_a, use_b = ca != 0.0, cb != 0.0
    for p, b, f, r in items:
        if not (use_a or use_b):
            torch._foreach_copy_(p, b)  # θ_c itself: no fp32 round trip needed
            continue
        if scratch is None and len(p) == 1 and p[0].is_cpu:
            # One fp32 CPU tensor: the first term goes straight into w (one op fewer). CPU only,
            # where torch.add and foreach add are the same kernel (bit-identical results); on a
            # GPU the foreach kernel is kept so device results do not change.
            torch.add(b[0], f[0] if use_a else r[0], alpha=ca if use_a else cb, out=p[0])
            if use_a and use_b:
                p[0].add_(r[0], alpha=cb)
            continue
        work = p if scratch is None else _views_in(scratch, p)
        torch._foreach_copy_(work, b)
        if use_a:
            torch._foreach_add_(work, f, alpha=ca)
        if use_b:
            torch._foreach_add_(work, r, alpha=cb)
        if work is not p:
            torch._foreach_copy_(p, work)  # the one rounding cast to the model dtype


Tensors4 = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor]]


def grouped_items(tensors: Tensors4, limit: int) -> list[WorkItem]:
    """Whole tensors of the parallel (w, θ_c, τ_f, τ_r) lists in groups of at most ``limit``
    elements (a bigger tensor is a group of its own): the GPU path's work items."""
    items: list[WorkItem] = []
    cur = WorkItem([], [], [], [])
    size = 0
    for ts in zip(*tensors):
        n = ts[0].numel()
        if cur.params and size + n > limit:
            items.append(cur)
            cur, size = WorkItem([], [], [], []), 0
        for lst, t in zip(cur, ts):
            lst.append(t)
        size += n
    if cur.params:
        items.append(cur)
    return items


def sliced_items(tensors: Tensors4, step: int, per_item: int) -> list[WorkItem]:
    """Flat slices of ≤ ``step`` elements of the parallel (w, θ_c, τ_f, τ_r) lists, at most
    ``per_item`` · ``step`` elements per item: the CPU eager path's work items. A
    non-contiguous tensor (cannot be sliced flat) is an item of its own."""
    items: list[WorkItem] = []
    cur = WorkItem([], [], [], [])
    size = 0
    for ts in zip(*tensors):
        if not all(t.is_contiguous() for t in ts):
            items.append(WorkItem(*([t] for t in ts)))
            continue
        flat = [t.view(-1) for t in ts]
        n = flat[0].numel()
        for s0 in range(0, n, step):
            s1 = min(s0 + step, n)
            if size and size + (s1 - s0) > per_item * step:
                items.append(cur)
                cur, size = WorkItem([], [], [], []), 0
            for lst, t in zip(cur, flat):
                lst.append(t[s0:s1])
            size += s1 - s0
    if size:
        items.append(cur)
    return items


def device_kind(device: torch.device) -> str:
    """How a plan composes on ``device``: 'cpu', 'cuda' (fused kernel, foreach fallback) or
    'device' (any other accelerator: foreach only)."""
    if device.type in ("cpu", "cuda"):
        return device.type
    return "device"


def _group_key(t: torch.Tensor) -> torch.device:
    """The device group a parameter belongs to (its device; tests split a CPU plan into fake
    'cpu:N' groups through this)."""
    return t.device


class _DeviceGroup:
    """The tensors of a plan that live on one device, and how they are composed there."""

    def __init__(self, device: torch.device, tensors: Tensors4):
        self.device = device
        self.kind = device_kind(device)
        self._tensors = tensors
        params = tensors[0]
        self.dtype: torch.dtype = params[0].dtype
        self.elements = sum(p.numel() for p in params)
        on_cpu = self.kind == "cpu"
        # GPU: groups of whole tensors; the fp32 scratch (as large as the biggest group) is
        # allocated on the first eager compose, so a device on the fused path never holds it.
        self._device_items: list[WorkItem] = [] if on_cpu else grouped_items(tensors, SCRATCH_ELEMENTS)
        self._device_scratch: Optional[torch.Tensor] = None
        # The fused kernel's flat views (only for a model big enough to use it; built here
        # because marking sizes dynamic per move costs ~2 ms of Python per 100 tensors).
        self._fused_views: Optional[fused.Views] = (
            fused.prepare(*tensors) if self.kind in fused.FAMILIES and self.elements >= _FUSED_MIN else None
        )
        # CPU eager path: its work items depend on torch's thread count, which may change
        # between composes, so they are (re)built for the (step, slices per item) in use.
        self._cpu_key: Optional[tuple[int, int]] = None
        self._cpu_items: list[WorkItem] = []
        self._cpu_scratch: Optional[torch.Tensor] = None  # grown to workers × largest item (low-precision models)
        self._pool: Optional[ThreadPoolExecutor] = None  # kept for the plan's lifetime, replaced when workers change
        self._pool_workers = 0

    @property
    def fused_eligible(self) -> bool:
        return self._fused_views is not None and self.elements >= _FUSED_MIN and fused.enabled(self.kind)

    def scratch_buffers(self) -> list[torch.Tensor]:
        return [s for s in (self._device_scratch, self._cpu_scratch) if s is not None]

    def warm_up_args(self) -> Optional[tuple[torch.dtype, tuple[torch.dtype, ...], torch.dtype, torch.device, str]]:
        """What :func:`msa_core.fused.warm_up` needs to compile this group's kernels (None: not used)."""
        if not self.fused_eligible:
            return None
        bases = tuple(sorted({b.dtype for b in self._tensors[1]}, key=str))
        vec = self._tensors[2][0].dtype
        return self.dtype, bases, vec, self.device, self.kind

    def compose(self, ca: float, cb: float) -> str:
        views = self._fused_views if (ca != 0.0 or cb != 0.0) and self.fused_eligible else None
        if views and fused.compose_fused(views, ca, cb, family=self.kind):
            return PATH_FUSED
        if self.kind != "cpu":
            if self._device_scratch is None and self.dtype != torch.float32:
                biggest = max((it.elements for it in self._device_items), default=0)
                self._device_scratch = torch.empty(biggest, dtype=torch.float32, device=self.device)
            compose_items(self._device_items, ca, cb, self._device_scratch)
            return PATH_DEVICE
        self._compose_cpu(ca, cb)
        return PATH_EAGER

    def _compose_cpu(self, ca: float, cb: float) -> None:
        single = torch.get_num_threads() == 1
        step, per_item = (_CPU_SERIAL_STEP, 1) if single else (CPU_STEP_ELEMENTS, _CPU_ITEM_SLICES)
        if self._cpu_key != (step, per_item):
            self._cpu_items = sliced_items(self._tensors, step, per_item)
            self._cpu_key = (step, per_item)
        items = self._cpu_items
        workers = 1 if single or self.elements < _CPU_THREADED_MIN else min(torch.get_num_threads(), len(items))
        regions = self._cpu_regions(workers, max((it.elements for it in items), default=0))
        if workers == 1:
            compose_items(items, ca, cb, regions[0])
            return
        pool = self._pool_of(workers)
        n_parts = workers * _PARTS_PER_WORKER
        bounds = [len(items) * k // n_parts for k in range(n_parts + 1)]
        parts = iter([items[bounds[k] : bounds[k + 1]] for k in range(n_parts)])
        take = threading.Lock()

        def worker(k: int) -> None:
            while True:
                with take:
                    part = next(parts, None)
                if part is None:
                    return
                compose_items(part, ca, cb, regions[k])

        for fut in [pool.submit(worker, k) for k in range(workers)]:
            fut.result()

    def _cpu_regions(self, workers: int, chunk: int) -> list[Optional[torch.Tensor]]:
        """One fp32 scratch region per worker for a low-precision model (None each for fp32)."""
        if self.dtype == torch.float32:
            return [None] * workers
        if self._cpu_scratch is None or self._cpu_scratch.numel() < workers * chunk:
            self._cpu_scratch = torch.empty(workers * chunk, dtype=torch.float32)
        return [self._cpu_scratch[k * chunk : (k + 1) * chunk] for k in range(workers)]

    def _pool_of(self, workers: int) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_workers != workers:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msa-compose")
            self._pool_workers = workers
        return self._pool


def _nbytes(ts: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


class RecomposePlan:
    """Everything needed to rewrite a set of parameters at any (α, β), built once.

    ``params`` are the working model's tensors (written in place), ``pristine`` θ_corrupted
    (per tensor in the model dtype or in a floating dtype of its own, e.g. the fp32 values a bf16
    model was loaded from), ``tau_f``/``tau_r`` the vectors (fp32 or bf16), parallel lists with
    matching shapes; each parameter's four tensors on that parameter's device (the plan composes
    per device, see the module docstring). The tensors are held, never copied.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        pristine: Sequence[torch.Tensor],
        tau_f: Sequence[torch.Tensor],
        tau_r: Sequence[torch.Tensor],
    ):
        if not (len(params) == len(pristine) == len(tau_f) == len(tau_r)):
            raise ValueError(
                f"recompose plan needs parallel lists: {len(params)} params, {len(pristine)} pristine, "
                f"{len(tau_f)} tau_f, {len(tau_r)} tau_r"
            )
        by_device: dict[torch.device, list[int]] = {}
        for i, ts in enumerate(zip(params, pristine, tau_f, tau_r)):
            if len({tuple(t.shape) for t in ts}) != 1:
                raise ValueError(f"recompose plan tensor {i}: shapes differ {[list(t.shape) for t in ts]}")
            if len({t.device for t in ts}) != 1:
                raise ValueError(
                    f"recompose plan tensor {i}: devices differ {[str(t.device) for t in ts]} "
                    "(θ_c, τ_f and τ_r must live on their parameter's device)"
                )
            by_device.setdefault(_group_key(ts[0]), []).append(i)
        self._params = tuple(params)
        self._pristine = tuple(pristine)
        self._tau_f = tuple(tau_f)
        self._tau_r = tuple(tau_r)
        self._tensors: Tensors4 = (self._params, self._pristine, self._tau_f, self._tau_r)
        first = self._params[0] if self._params else torch.empty(0)
        self.device: torch.device = first.device  # the first parameter's (where a model's inputs go)
        self.dtype: torch.dtype = first.dtype
        self.elements = sum(p.numel() for p in self._params)
        # One group per device; CUDA groups first so the GPUs work while a CPU group composes.
        self._groups = [
            _DeviceGroup(dev, tuple([lst[i] for i in idx] for lst in self._tensors))  # type: ignore[arg-type]
            for dev, idx in sorted(by_device.items(), key=lambda kv: device_kind(kv[0]) == "cpu")
        ]

    # ------------------------------------------------------------------ read-only views

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        """The working model's tensors this plan writes (model dtype)."""
        return self._params

    @property
    def pristine(self) -> tuple[torch.Tensor, ...]:
        """θ_corrupted, one copy per parameter (model dtype, or the checkpoint's where it differs)."""
        return self._pristine

    @property
    def tau_f(self) -> tuple[torch.Tensor, ...]:
        """τ_f per parameter (fp32 or bf16, on the parameter's device)."""
        return self._tau_f

    @property
    def tau_r(self) -> tuple[torch.Tensor, ...]:
        """τ_r per parameter (fp32 or bf16, on the parameter's device)."""
        return self._tau_r

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """The devices the plan's tensors live on (composition order: CUDA devices first)."""
        return tuple(g.device for g in self._groups)

    @property
    def tensor_count(self) -> int:
        return len(self._params)

    @property
    def bytes_per_move(self) -> int:
        """Bytes one full recompose must at least move: read θ_c, τ_f, τ_r, write w."""
        return sum(_nbytes(ts) for ts in self._tensors)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by the pristine copies, the vectors and the fp32 scratch buffers."""
        return {
            "pristine": _nbytes(self._pristine),
            "vectors": _nbytes(self._tau_f) + _nbytes(self._tau_r),
            "scratch": sum(_nbytes(g.scratch_buffers()) for g in self._groups),
        }

    def memory_by_device(self) -> dict[str, dict[str, int]]:
        """:meth:`memory_bytes` per device (its name, e.g. 'cuda:0'), the working parameters included
        as ``params`` (tied weights once)."""
        out: dict[str, dict[str, int]] = {}
        for g in self._groups:
            p, b, f, r = g._tensors
            out[str(g.device)] = {"params": _nbytes(p), "pristine": _nbytes(b), "vectors": _nbytes(f) + _nbytes(r),
                                  "scratch": _nbytes(g.scratch_buffers())}
        return out

    @property
    def fused_eligible(self) -> bool:
        """Whether composes may use msa_core.fused on some device: a CPU or CUDA group of
        ≥ _FUSED_MIN elements whose tensors are contiguous, the kernel not turned off or failed."""
        return any(g.fused_eligible for g in self._groups)

    # ------------------------------------------------------------------ composing

    def first_non_finite(self) -> Optional[int]:
        """Index (into :attr:`params`) of the first parameter holding NaN/Inf after a compose, or None."""
        return first_non_finite(self._params)

    def compose(self, alpha: float, beta: float) -> str:
        """Write cast(θ_c − α·τ_f + β·τ_r) into every parameter; returns the path taken (one
        device: its path; several: "path on device + …").

        The caller validates (α, β) and holds whatever lock guards the parameters. A CUDA compose
        is asynchronous: the caller synchronises before reporting a time.
        """
        ca, cb = -alpha, beta
        paths = [(g.compose(ca, cb), g.device) for g in self._groups]
        if not paths:
            return PATH_EAGER  # nothing to compose
        if len(paths) == 1:
            return paths[0][0]
        return " + ".join(f"{path} on {dev}" for path, dev in paths)

    def warm_up_async(self) -> Optional[threading.Thread]:
        """Compile the fused kernels in a background thread when this plan will use them (None otherwise)."""
        jobs = [args for g in self._groups if (args := g.warm_up_args()) is not None]
        if not jobs:
            return None

        def run() -> None:
            for dtype, bases, vec, dev, family in jobs:
                fused.warm_up(dtype, bases, vector_dtype=vec, device=dev, family=family)

        thread = threading.Thread(target=run, name="msa-fused-warm-up", daemon=True)
        thread.start()
        return thread


@torch.no_grad()
def first_non_finite(tensors: Sequence[torch.Tensor]) -> Optional[int]:
    """Index of the first tensor holding a NaN/Inf element, None when every tensor is finite.

    fp32-accumulated sums and one device sync: a sum is finite only if every element is, and
    summing reads each tensor once at full vector speed without allocating a mask (an
    elementwise isfinite is several times slower). On the CPU, tensors are summed in slices
    under ATen's parallel grain (as the compose does), so no sum waits on an OpenMP fork/join
    that stalls whenever another process holds a core. A sum that overflowed although the
    elements are finite (values near the dtype's maximum) is confirmed elementwise.
    """
    if not tensors:
        return None
    sums: list[torch.Tensor] = []
    owner: list[int] = []
    for i, t in enumerate(tensors):
        if t.is_cpu and t.is_contiguous() and t.numel() > CPU_STEP_ELEMENTS:
            flat = t.view(-1)
            parts = [flat[s0 : s0 + CPU_STEP_ELEMENTS].sum(dtype=torch.float32)
                     for s0 in range(0, flat.numel(), CPU_STEP_ELEMENTS)]
        else:
            parts = [t.sum(dtype=torch.float32)]
        sums.extend(parts)
        owner.extend([i] * len(parts))
    # One stack per device (a dispatched model's tensors live on several), then one host copy each.
    by_device: dict[torch.device, list[int]] = {}
    for k, s in enumerate(sums):
        by_device.setdefault(s.device, []).append(k)
    finite = torch.empty(len(sums), dtype=torch.bool)
    for ks in by_device.values():
        finite[ks] = torch.isfinite(torch.stack([sums[k] for k in ks])).cpu()
    for k in torch.nonzero(~finite).flatten().tolist():
        if not bool(torch.isfinite(tensors[owner[k]]).all()):
            return owner[k]
    return None


@torch.no_grad()
def whole_tensor_reference(plan: RecomposePlan, alpha: float, beta: float) -> list[torch.Tensor]:
    """What every parameter of ``plan`` must hold at (α, β), as new tensors: whole-tensor fp32
    arithmetic in the plan's order (θ_c, −α·τ_f, +β·τ_r), cast once to the model dtype.

    The definition the paths are checked against: the eager paths equal it bit for bit, the
    fused kernel within its last-bit rounding (tests, ``bench/recompose.py``).
    """
    out = []
    for p, b, f, r in zip(plan.params, plan.pristine, plan.tau_f, plan.tau_r):
        w = b.float().clone()
        if alpha:
            w.add_(f, alpha=-alpha)
        if beta:
            w.add_(r, alpha=beta)
        out.append(w.to(p.dtype))
    return out
