"""α/β grid sweeps through the live engine, resumable through the results store.

:func:`run_sweep` resolves the reference once, then walks the grid in order: a point
already in the store (same fingerprint, tier and settings) is skipped, every new point
is written as soon as it is evaluated. An interrupted sweep (Ctrl-C, crash) therefore
loses at most the point in flight, and a re-run neither repeats nor duplicates points.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Sequence

from msa_core.eval.evaluate import eval_settings, evaluate, resolve_reference, max_length_for
from msa_core.eval.results import EvalResult
from msa_core.progress import Progress, report, sub_progress


def parse_grid(text: str, *, name: str = "values") -> list[float]:
    """'0,0.5,1' → [0.0, 0.5, 1.0]; also 'start:stop:step' (inclusive stop). ValueError naming ``name``."""
    text = text.strip()
    if not text:
        raise ValueError(f"{name}: empty list")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{name}: expected start:stop:step, got {text!r}")
        try:
            start, stop, step = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"{name}: {text!r} has a non-number") from None
        if step <= 0 or stop < start:
            raise ValueError(f"{name}: need step > 0 and stop >= start in {text!r}")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        return [float(f"{start + i * step:.10g}") for i in range(n)]
    out = []
    for p in text.split(","):
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"{name}: {p.strip()!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"{name}: {p.strip()!r} is not finite")
        out.append(v)
    return out


def grid_points(alphas: Iterable[float], betas: Iterable[float]) -> list[tuple[float, float]]:
    """(α, β) pairs in row-major order, duplicates removed."""
    seen, out = set(), []
    for a in alphas:
        for b in betas:
            key = (float(f"{a:.10g}"), float(f"{b:.10g}"))
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


def run_sweep(
    engine: Any,
    store: Any,
    alphas: Sequence[float],
    betas: Sequence[float],
    *,
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    progress: Optional[Progress] = None,
    on_point: Optional[Callable[[EvalResult, bool], None]] = None,
    batch_size: int = 16,
) -> list[EvalResult]:
    """Evaluate every (α, β) of the grid not yet stored; returns all grid results in order.

    ``on_point(result, was_stored)`` is called for every point as it is done (``was_stored``
    is True for a point found in the store). Coefficients are validated before any work.
    """
    points = grid_points(alphas, betas)
    if not points:
        raise ValueError("the sweep grid is empty")
    for a, b in points:
        engine.experiment.validate_coefficients(a, b)
    report(progress, 0.0, "resolving the reference")
    ref = resolve_reference(engine, benchmark=benchmark, subset=subset, store=store,
                            progress=sub_progress(progress, 0.0, 0.05), batch_size=batch_size)
    settings = eval_settings(engine.experiment, engine.tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                             max_length=max_length_for(engine.model), reference=ref)
    key = settings["key"]
    results: list[EvalResult] = []
    for n, (a, b) in enumerate(points):
        lo, hi = 0.05 + 0.95 * n / len(points), 0.05 + 0.95 * (n + 1) / len(points)
        stored = store.get(engine.fingerprint, a, b, tier, key)
        if stored is not None:
            results.append(stored)
            report(progress, hi, f"α={a:g} β={b:g}: already stored ({n + 1}/{len(points)})")
            if on_point is not None:
                on_point(stored, True)
            continue
        res = evaluate(engine, a, b, tier=tier, benchmark=benchmark, subset=subset,
                       progress=sub_progress(progress, lo, hi), reference=ref, batch_size=batch_size)
        store.put(res)
        results.append(res)
        report(progress, hi, f"α={a:g} β={b:g}: done ({n + 1}/{len(points)})")
        if on_point is not None:
            on_point(res, False)
    report(progress, 1.0, f"sweep done: {len(points)} points")
    return results
