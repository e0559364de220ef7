"""The strategies the live engine is measured against in ``bench/recompose.py`` (figure 1).

Not used by the library; kept here on purpose, each as a named baseline:

- :func:`previous_engine`: the RETIRED engine (whole-tensor foreach passes over groups of 32M
  elements: copy + one add per term, through an fp32 scratch for low-precision models),
  kept as the reference point of BENCHMARKS.md's "vs previous engine" column and for the
  benchmark's correctness check (the live engine's eager path must match it bit for bit);
- :func:`python_loop`: the obvious per-tensor Python expression;
- :func:`compiled`: one ``torch.compile`` kernel per tensor, measured as a ceiling;
- :func:`sliced_copy`: the copy baseline done the engine's way (slices over threads);
- :func:`eager_engine`: the live engine with its fused CPU kernel switched off.

All of them read the engine's tensors through its public plan (``engine.plan``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
from _common import sync

if TYPE_CHECKING:
    from msa_core.engine import Engine

# The retired engine's group size (elements per foreach group and fp32 scratch).
PREVIOUS_GROUP_ELEMENTS = 32 * 1024 * 1024
PREVIOUS_ENGINE = "previous engine (foreach, whole tensors)"
PYTHON_LOOP = "per-tensor Python expression"


def previous_engine(engine: Engine, group_elements: int = PREVIOUS_GROUP_ELEMENTS) -> Callable[[float, float], None]:
    """The engine before the recompose benchmark: whole-tensor foreach passes over groups."""
    plan = engine.plan
    P, B, F, R = plan.params, plan.pristine, plan.tau_f, plan.tau_r
    groups: list[list[int]] = []
    cur: list[int] = []
    size = 0
    for i, p in enumerate(P):
        if cur and size + p.numel() > group_elements:
            groups.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += p.numel()
    if cur:
        groups.append(cur)
    scratch = None
    if engine.dtype != torch.float32:
        biggest = max(sum(P[i].numel() for i in g) for g in groups)
        scratch = torch.empty(biggest, dtype=torch.float32, device=engine.device)

    @torch.no_grad()
    def run(a: float, b: float) -> None:
        for g in groups:
            params = [P[i] for i in g]
            if scratch is None:
                work = params
            else:
                work, off = [], 0
                for p in params:
                    work.append(scratch[off : off + p.numel()].view(p.shape))
                    off += p.numel()
            torch._foreach_copy_(work, [B[i] for i in g])
            if a != 0.0:
                torch._foreach_add_(work, [F[i] for i in g], alpha=-a)
            if b != 0.0:
                torch._foreach_add_(work, [R[i] for i in g], alpha=b)
            if work is not params:
                torch._foreach_copy_(params, work)

    return run


def python_loop(engine: Engine) -> Callable[[float, float], None]:
    """A per-tensor Python expression: p.copy_((θ.float() − α·τ_f + β·τ_r).to(dtype))."""
    plan = engine.plan

    @torch.no_grad()
    def run(a: float, b: float) -> None:
        for p, t, f, r in zip(plan.params, plan.pristine, plan.tau_f, plan.tau_r):
            p.copy_((t.float() - a * f + b * r).to(p.dtype))

    return run


def eager_engine(engine: Engine) -> Callable[[float, float], None]:
    """The engine with its fused CPU kernel switched off (its eager, sliced path)."""

    def run(a: float, b: float) -> None:
        old = os.environ.get("MSA_FUSED_COMPOSE")
        os.environ["MSA_FUSED_COMPOSE"] = "0"
        try:
            engine.set_coefficients(a, b)
        finally:
            if old is None:
                del os.environ["MSA_FUSED_COMPOSE"]
            else:
                os.environ["MSA_FUSED_COMPOSE"] = old

    return run


def compiled(engine: Engine) -> tuple[Callable[[float, float], None], float]:
    """One fused torch.compile kernel per tensor (not used by the engine; measured as a ceiling).
    Returns the strategy and the seconds its first call (the compilation) took."""
    plan = engine.plan

    def fused(w: torch.Tensor, t: torch.Tensor, f: torch.Tensor, r: torch.Tensor, ab: torch.Tensor) -> None:
        w.copy_((t.float() - ab[0] * f + ab[1] * r).to(w.dtype))

    fn = torch.compile(fused, dynamic=True)
    flat = [
        (p.view(-1), t.view(-1), f.view(-1), r.view(-1))
        for p, t, f, r in zip(plan.params, plan.pristine, plan.tau_f, plan.tau_r)
    ]
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(*flat[0], torch.tensor([0.5, 0.5], device=engine.device))
    sync(engine.device)
    compile_s = time.perf_counter() - t0

    @torch.no_grad()
    def run(a: float, b: float) -> None:
        ab = torch.tensor([a, b], dtype=torch.float32, device=engine.device)
        for args in flat:
            fn(*args, ab)

    return run, compile_s


def sliced_copy(engine: Engine) -> Callable[[], None]:
    """The baseline's copies (θ_c → w, τ_f → τ_r) done the engine's way on the CPU: slices of
    CPU_STEP_ELEMENTS spread over torch.get_num_threads() threads (the best copy we know)."""
    from msa_core.recompose import CPU_STEP_ELEMENTS

    plan = engine.plan
    step = CPU_STEP_ELEMENTS
    pairs = []
    for dsts, srcs in ((plan.params, plan.pristine), (plan.tau_r, plan.tau_f)):
        for d, s in zip(dsts, srcs):
            fd, fs = d.view(-1), s.view(-1)
            pairs.extend((fd[i : i + step], fs[i : i + step]) for i in range(0, fd.numel(), step))
    workers = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers)
    n_parts = workers * 8
    bounds = [len(pairs) * k // n_parts for k in range(n_parts + 1)]
    chunks = [pairs[bounds[k] : bounds[k + 1]] for k in range(n_parts)]

    def run() -> None:
        it = iter(chunks)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    part = next(it, None)
                if part is None:
                    return
                for d, s in part:
                    d.copy_(s)

        for f in [pool.submit(worker) for _ in range(workers)]:
            f.result()

    return run


def passes_bytes(strategy: str, e: int, device: str) -> int:
    """Bytes per parameter a strategy actually moves (e = model element size); the minimum is 2e + 8."""
    if strategy.startswith("engine") and device == "cpu":
        return 2 * e + 8  # every term on a cache-resident slice, or one fused pass
    if strategy.startswith("engine") or strategy == PREVIOUS_ENGINE:
        return 32 if e == 4 else (e + 4) + 24 + (4 + e)  # copy + 2 adds (+ fp32 scratch in/out)
    if strategy.startswith("copy,"):
        return 2 * e + 8
    if strategy == PYTHON_LOOP:
        return 48 if e == 4 else (e + 4) + 8 + 12 + 8 + 12 + (4 + e) + 2 * e
    return 2 * e + 8
