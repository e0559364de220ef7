"""α/β grid sweeps through the live engine, resumable through the results store, and
where to sweep.

:func:`run_sweep` resolves the reference once, then walks the grid in order: a point
already in the store (same fingerprint, tier and settings) is skipped, every new point
is written as soon as it is evaluated. An interrupted or stopped sweep (Ctrl-C, crash,
``should_stop``) therefore loses at most the point in flight, and a re-run neither
repeats nor duplicates points. Its progress messages carry an estimate of the time left.

Where to sweep: :func:`default_grid` puts a first grid around where the trade-off
happens (from the experiment's ranges and, once points are stored, from where utility
collapses); :func:`refine_points` adds points where the Pareto front of forgetting vs
utility bends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

from msa_core.eval.results import EvalResult
from msa_core.eval.run import ReferenceCache, evaluate, resolve_reference
from msa_core.eval.settings import EvalSettings, ReferenceStats, eval_settings, max_length_for
from msa_core.progress import Progress, report, sub_progress

if TYPE_CHECKING:
    from msa_core.engine import Engine
    from msa_core.eval.store import ResultStore

# Values are rounded to 10 significant digits so 0.1 + 0.2 and 0.3 are one grid value.
_DIGITS = 10
# Slack when counting the points of start:stop:step, so 0:1:0.1 keeps its stop despite float error.
_COUNT_SLACK = 1e-9
# Where the trade-off happens before anything is stored: α = 1 subtracts the whole forget
# fine-tune and β = 1 adds the whole retain fine-tune. On the demo (README's 5×3 sweep) and in
# the MSA paper, forgetting is complete by α ≈ 1–1.5 and utility falls apart past α ≈ 2, while
# β beyond 1 mostly costs forgetting; so the first grid spans α ∈ [0, 2], β ∈ [0, 1].
NATURAL_ALPHA_SPAN = 2.0
NATURAL_BETA_SPAN = 1.0
# Utility has "collapsed" below this share of the corrupted model's (α = min) utility: the
# default grid stops at the first α where every stored β is below it.
COLLAPSE_SHARE = 0.5
# Round steps: a grid step is the smallest of (1, 2, 2.5, 5) × 10^k that keeps the count.
_NICE_STEPS = (1.0, 2.0, 2.5, 5.0)


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


def _nice_values(low: float, high: float, max_count: int) -> list[float]:
    """low, low + step, …, high with a round step and at most ``max_count`` values (both ends kept)."""
    if high <= low or max_count < 2:
        return [float(f"{low:.{_DIGITS}g}")]
    raw = (high - low) / (max_count - 1)
    exp = math.floor(math.log10(raw))
    step = next(m * 10.0 ** e for e in (exp, exp + 1) for m in _NICE_STEPS if m * 10.0 ** e >= raw * (1 - 1e-9))
    count = math.floor((high - low) / step + _COUNT_SLACK) + 1
    values = [low + i * step for i in range(count)]
    if high - values[-1] > step * 1e-6:
        values.append(high)
    return sorted({float(f"{v:.{_DIGITS}g}") for v in values})


def default_grid(
    alpha_range: tuple[float, float],
    beta_range: tuple[float, float],
    stored: Sequence[tuple[float, float, float]] = (),
    *,
    n_alpha: int = 9,
    n_beta: int = 3,
) -> tuple[list[float], list[float]]:
    """A first sweep grid (α values, β values) around where the trade-off happens.

    Without ``stored`` points: α over [low, low + NATURAL_ALPHA_SPAN] and β over
    [low, low + NATURAL_BETA_SPAN], clipped to the experiment's ranges. With ``stored``
    (α, β, utility) triples of at least two α values: α runs up to the first α where the
    best utility over β falls below COLLAPSE_SHARE × the utility at the smallest stored α
    (so the collapse edge is in view, the collapsed region beyond is not), or, when utility
    never collapses there, up to 1.5 × the largest stored α. Round steps, at most
    ``n_alpha`` / ``n_beta`` values each."""
    a_lo, a_hi = float(alpha_range[0]), float(alpha_range[1])
    b_lo, b_hi = float(beta_range[0]), float(beta_range[1])
    a_top = min(a_hi, a_lo + NATURAL_ALPHA_SPAN)
    pts = [(float(a), float(b), float(u)) for a, b, u in stored if all(math.isfinite(float(v)) for v in (a, b, u))]
    by_alpha: dict[float, float] = {}
    for a, _b, u in pts:
        by_alpha[a] = max(u, by_alpha.get(a, -math.inf))
    if len(by_alpha) >= 2:
        alphas = sorted(by_alpha)
        base = by_alpha[alphas[0]]
        collapsed = next((a for a in alphas[1:] if by_alpha[a] < COLLAPSE_SHARE * base), None) if base > 0 else None
        a_top = collapsed if collapsed is not None else max(a_top, 1.5 * alphas[-1])
        a_top = min(a_hi, max(a_top, a_lo))
    b_top = min(b_hi, b_lo + NATURAL_BETA_SPAN)
    return _nice_values(a_lo, a_top, n_alpha), _nice_values(b_lo, b_top, n_beta)


def _front_indices(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points not dominated when x and y are both maximised, sorted by x."""
    order = sorted(range(len(xs)), key=lambda i: (-xs[i], -ys[i]))
    front, best_y = [], -math.inf
    for i in order:
        if ys[i] > best_y:
            front.append(i)
            best_y = ys[i]
    return sorted(front, key=lambda i: xs[i])


def _key(a: float, b: float) -> tuple[float, float]:
    return float(f"{a:.{_DIGITS}g}"), float(f"{b:.{_DIGITS}g}")


def refine_points(
    rows: Sequence[tuple[float, float, float, float]],
    *,
    max_new: int = 6,
    min_step: float = 0.01,
) -> list[tuple[float, float]]:
    """New (α, β) points where the Pareto front of stored points bends, most bent first.

    ``rows`` are (α, β, x, y) with x and y both to be maximised (pass log10 forget quality
    and utility, or a negated lower-is-better metric). The front is scaled to [0, 1] on both
    axes; each interior front point's bend is the turning angle between its two front
    segments, and the midpoints (in α, β) to both front neighbours of the most bent points
    are proposed first, then the midpoints of the longest front segments. A midpoint already
    stored, proposed, or closer than ``min_step`` in α and β to its ends is skipped."""
    pts = [(float(a), float(b), float(x), float(y)) for a, b, x, y in rows
           if all(math.isfinite(float(v)) for v in (a, b, x, y))]
    existing = {_key(a, b) for a, b, _x, _y in pts}
    front = [pts[i] for i in _front_indices([p[2] for p in pts], [p[3] for p in pts])]
    if len(front) < 2:
        return []
    xs, ys = [p[2] for p in front], [p[3] for p in front]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    norm = [((x - min(xs)) / span_x, (y - min(ys)) / span_y) for x, y in zip(xs, ys)]
    bends = []
    for i in range(1, len(front) - 1):
        (x0, y0), (x1, y1), (x2, y2) = norm[i - 1], norm[i], norm[i + 1]
        u, v = (x1 - x0, y1 - y0), (x2 - x1, y2 - y1)
        bends.append((abs(math.atan2(u[0] * v[1] - u[1] * v[0], u[0] * v[0] + u[1] * v[1])), i))
    pairs: list[tuple[int, int]] = []
    for _angle, i in sorted(bends, reverse=True):
        pairs += [(i - 1, i), (i, i + 1)]
    segments = sorted(range(len(front) - 1), key=lambda i: -math.dist(norm[i], norm[i + 1]))
    pairs += [(i, i + 1) for i in segments]
    out: list[tuple[float, float]] = []
    for i, j in pairs:
        (a0, b0, *_), (a1, b1, *_) = front[i], front[j]
        if abs(a1 - a0) < min_step and abs(b1 - b0) < min_step:
            continue
        mid = _key((a0 + a1) / 2, (b0 + b1) / 2)
        if mid in existing:
            continue
        existing.add(mid)
        out.append(mid)
        if len(out) >= max_new:
            break
    return out


def eta_text(seconds: float) -> str:
    """'about 40 s left', 'about 3 min left' (for progress messages)."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    return f"about {round(seconds / 60)} min left"


def unique_points(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """``points`` keyed as the store keys them (10 significant digits), in order, duplicates removed."""
    return list(dict.fromkeys(_key(float(a), float(b)) for a, b in points))


def sweep_settings(
    engine: Engine,
    store: Optional[ResultStore],
    *,
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    progress: Optional[Progress] = None,
    batch_size: Optional[int] = None,
    reference_cache: Optional[ReferenceCache] = None,
) -> tuple[ReferenceStats, EvalSettings]:
    """The reference (resolved through ``store`` and ``reference_cache``) and the evaluation settings
    every point of a sweep is stored under (``settings.key``)."""
    ref = resolve_reference(engine, benchmark=benchmark, subset=subset, store=store, progress=progress,
                            batch_size=batch_size, cache=reference_cache)
    settings = eval_settings(engine.experiment, engine.tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                             max_length=max_length_for(engine.model), reference=ref, model=engine.model_settings)
    return ref, settings


def run_sweep(
    engine: Engine,
    store: ResultStore,
    alphas: Sequence[float],
    betas: Sequence[float],
    **kwargs: Any,
) -> list[EvalResult]:
    """Evaluate every (α, β) of the grid ``alphas`` × ``betas`` not yet stored (row-major);
    see :func:`run_points` for the keyword arguments and what is returned."""
    return run_points(engine, store, grid_points(alphas, betas), **kwargs)


def run_points(
    engine: Engine,
    store: ResultStore,
    points: Sequence[tuple[float, float]],
    *,
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    progress: Optional[Progress] = None,
    on_point: Optional[Callable[[EvalResult, bool], None]] = None,
    batch_size: Optional[int] = None,
    reference_cache: Optional[ReferenceCache] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> list[EvalResult]:
    """Evaluate every (α, β) of ``points`` (any set, e.g. :func:`refine_points`'s) not yet stored;
    returns all their results in order.

    ``on_point(result, was_stored)`` is called for every point as it is done (``was_stored``
    is True for a point found in the store). Coefficients are validated before any work.
    The reference is resolved once per sweep (through ``reference_cache`` when given).
    ``should_stop()`` is asked before each point: when it returns True the sweep stops and
    returns the results so far (every evaluated point is already stored; a re-run resumes).
    Progress messages estimate the time left from the mean time of the points evaluated so far.
    """
    points = unique_points(points)
    if not points:
        raise ValueError("the sweep grid is empty")
    for a, b in points:
        engine.experiment.validate_coefficients(a, b)
    report(progress, 0.0, "resolving the reference")
    ref, settings = sweep_settings(engine, store, tier=tier, benchmark=benchmark, subset=subset,
                                   progress=sub_progress(progress, 0.0, 0.05), batch_size=batch_size,
                                   reference_cache=reference_cache)
    key = settings.key
    results: list[EvalResult] = []
    todo = sum(not store.has(engine.fingerprint, a, b, tier, key) for a, b in points)
    spent, evaluated = 0.0, 0
    for n, (a, b) in enumerate(points):
        if should_stop is not None and should_stop():
            report(progress, 0.05 + 0.95 * n / len(points),
                   f"sweep stopped after {n} of {len(points)} points (stored; run again to resume)")
            return results
        lo, hi = 0.05 + 0.95 * n / len(points), 0.05 + 0.95 * (n + 1) / len(points)
        stored = store.get(engine.fingerprint, a, b, tier, key)
        if stored is not None:
            results.append(stored)
            report(progress, hi, f"α={a:g} β={b:g}: already stored ({n + 1}/{len(points)})")
            if on_point is not None:
                on_point(stored, True)
            continue
        started = time.perf_counter()
        res = evaluate(engine, a, b, tier=tier, benchmark=benchmark, subset=subset,
                       progress=sub_progress(progress, lo, hi), reference=ref, batch_size=batch_size)
        store.put(res)
        spent, evaluated = spent + time.perf_counter() - started, evaluated + 1
        results.append(res)
        left = todo - evaluated
        eta = f", {eta_text(spent / evaluated * left)}" if left > 0 else ""
        report(progress, hi, f"α={a:g} β={b:g}: done ({n + 1}/{len(points)}{eta})")
        if on_point is not None:
            on_point(res, False)
    report(progress, 1.0, f"sweep done: {len(points)} points")
    return results
