"""α/β grid sweeps through the live engine, resumable through the results store.

:func:`run_sweep` resolves the reference once, then walks the grid in order: a point
already in the store (same fingerprint, tier and settings) is skipped, every new point
is written as soon as it is evaluated. An interrupted sweep (Ctrl-C, crash) therefore
loses at most the point in flight, and a re-run neither repeats nor duplicates points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Optional

from msa_core.eval.results import EvalResult
from msa_core.eval.run import ReferenceCache, evaluate, resolve_reference
from msa_core.eval.settings import eval_settings, max_length_for
from msa_core.progress import Progress, report, sub_progress

if TYPE_CHECKING:
    from msa_core.engine import Engine
    from msa_core.eval.store import ResultStore

# Values are rounded to 10 significant digits so 0.1 + 0.2 and 0.3 are one grid value.
_DIGITS = 10
# Slack when counting the points of start:stop:step, so 0:1:0.1 keeps its stop despite float error.
_COUNT_SLACK = 1e-9


def _number(text: str, name: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: {text.strip()!r} is not a number (in {whole!r})") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: {text.strip()!r} is not finite (in {whole!r})")
    return value


def parse_grid(
    text: str,
    *,
    name: str = "values",
    within: Optional[tuple[float, float]] = None,
    max_points: int = 10_000,
) -> list[float]:
    """Grid values from '0,0.5,1' or 'start:stop:step' (inclusive stop), sorted ascending, duplicates removed.

    ValueError naming ``name`` for: empty input, a non-number, NaN/inf, step <= 0 or stop <
    start, more than ``max_points`` values (counted before any list is built), and a value
    outside ``within`` (inclusive ``(low, high)``).
    """
    text = text.strip()
    if not text:
        raise ValueError(f"{name}: empty list")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{name}: expected start:stop:step, got {text!r}")
        start, stop, step = (_number(part, name, text) for part in parts)
        if step <= 0 or stop < start:
            raise ValueError(f"{name}: need step > 0 and stop >= start in {text!r}")
        count = math.floor((stop - start) / step + _COUNT_SLACK) + 1
        if count > max_points:
            raise ValueError(f"{name}: {text!r} has {count} values, more than the {max_points} allowed")
        raw = [start + i * step for i in range(count)]
    else:
        pieces = text.split(",")
        if len(pieces) > max_points:
            raise ValueError(f"{name}: {len(pieces)} values, more than the {max_points} allowed")
        raw = [_number(piece, name, text) for piece in pieces]
    values = sorted({float(f"{v:.{_DIGITS}g}") for v in raw})
    if within is not None:
        low, high = within
        for v in values:
            if not low <= v <= high:
                raise ValueError(f"{name}: {v:g} is outside the range [{low:g}, {high:g}]")
    return values


def grid_points(alphas: Iterable[float], betas: Iterable[float]) -> list[tuple[float, float]]:
    """(α, β) pairs in row-major order, duplicates removed."""
    seen, out = set(), []
    for a in alphas:
        for b in betas:
            key = (float(f"{a:.{_DIGITS}g}"), float(f"{b:.{_DIGITS}g}"))
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


def run_sweep(
    engine: Engine,
    store: ResultStore,
    alphas: Sequence[float],
    betas: Sequence[float],
    *,
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    progress: Optional[Progress] = None,
    on_point: Optional[Callable[[EvalResult, bool], None]] = None,
    batch_size: int = 16,
    reference_cache: Optional[ReferenceCache] = None,
) -> list[EvalResult]:
    """Evaluate every (α, β) of the grid not yet stored; returns all grid results in order.

    ``on_point(result, was_stored)`` is called for every point as it is done (``was_stored``
    is True for a point found in the store). Coefficients are validated before any work.
    The reference is resolved once per sweep (through ``reference_cache`` when given).
    """
    points = grid_points(alphas, betas)
    if not points:
        raise ValueError("the sweep grid is empty")
    for a, b in points:
        engine.experiment.validate_coefficients(a, b)
    report(progress, 0.0, "resolving the reference")
    ref = resolve_reference(engine, benchmark=benchmark, subset=subset, store=store,
                            progress=sub_progress(progress, 0.0, 0.05), batch_size=batch_size, cache=reference_cache)
    settings = eval_settings(engine.experiment, engine.tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                             max_length=max_length_for(engine.model), reference=ref, model=engine.model_settings)
    key = settings.key
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
