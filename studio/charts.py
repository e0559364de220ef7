"""Plotly figures of MSA Studio (no caches, no st calls): the Trade-off page's heatmaps,
forget-vs-utility scatter (α/β runs, other θ_clean / epoch choices and other methods' named
points) with its best-point-per-series table, and small multiples along α over the results
grid, and the Experiment page's per-layer norms of τ_f and τ_r.

Every axis, colour bar and legend names the metric with its better direction, so a reader
never has to guess whether up is good. Forget quality is drawn on a log scale whose ticks
read as numbers (1e-3, 0.01, 0.1, 1). A heatmap over a ragged set of points marks the cells
that were never evaluated instead of leaving holes; the current point is marked wherever
it is (between grid cells, or interpolated on the scatter when it was not evaluated).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from msa_core.eval.store import UTILITY_KEEP, UTILITY_METRICS
from msa_core.targets import Point
from msa_core.vectors import LayerNorms
from studio.labels import arrow, metric_info, metric_label

POINT_COLS = ("alpha", "beta")
HEATMAP_ORDER = ("forget_quality", "model_utility", "model_utility_tf", "forget_rouge", "retain_rouge",
                 "forget_truth_ratio", "forget_prob", "retain_prob", "extraction_strength")
MUSE_ORDER = ("muse_verbmem_forget", "muse_knowmem_forget", "muse_knowmem_retain", "muse_privleak",
              "muse_mink_auc")
# Metrics drawn on a log axis: forget quality is a KS p-value spanning many decades.
LOG_METRICS = ("forget_quality",)
# Scatter axes, in the order a default is looked for.
X_PREFERENCE = ("forget_quality", "forget_truth_ratio", "forget_rouge", "forget_prob", "muse_knowmem_forget",
                "muse_verbmem_forget")
Y_PREFERENCE = ("model_utility", "model_utility_tf", "retain_rouge", "retain_prob", "muse_knowmem_retain")
# A y metric that is 0 (or missing) at more than this share of the unlearned points says
# little about them: model utility is a harmonic mean, 0 as soon as one of its nine parts is 0
# (the tiny demo model scores no ROUGE on the utility sets at 5 of its 12 unlearned points of
# README's 5×3 sweep); the next utility metric is then the default.
UNINFORMATIVE_SHARE = 0.25
# Room for Plotly's toolbar (top right, ~28 px) above a chart's title.
MODEBAR_PX = 32
# Title line length for a half-width chart (two heatmaps per row at 1400 px leave ~480 px
# each; ~8 px per character at the 15-px title font).
TITLE_CHARS = 46
# Heatmap colours of a closer-to-a-target metric: Viridis' bright end at the target (zmid),
# its dark end on both sides, so bright = better as on every other heatmap.
TARGET_SCALE = [[0.0, "#440154"], [0.25, "#21918c"], [0.5, "#fde725"], [0.75, "#21918c"], [1.0, "#440154"]]
# Interpolation looks this many grid values out on each side for a fully evaluated rectangle.
BRACKET_TRIES = 3
# Fixed colours of the other θ_clean / epoch choices' series (the current grid is coloured by α).
SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MARKER_SYMBOLS = ("circle", "square", "triangle-up", "diamond-open", "cross", "triangle-down", "pentagon", "hexagon")


# ----------------------------------------------------------------------------- rows
def select_rows(df: pd.DataFrame, *, tier: str, benchmark: str, subset: Optional[int],
                settings_keys: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Rows of one tier/benchmark/subset, one per (α, β, model, run) (latest wins); only the runs
    (settings keys) in ``settings_keys`` when given (side-model rows such as the reference are kept)."""
    if df is None or df.empty or not set(POINT_COLS) <= set(df.columns):
        return pd.DataFrame()
    out = df
    for col, val in (("tier", tier), ("benchmark", benchmark)):
        if col in out.columns:
            out = out[out[col] == val]
    if "subset" in out.columns:
        out = out[out["subset"].isna()] if subset is None else out[out["subset"] == subset]
    if settings_keys is not None and "settings_key" in out.columns:
        side = out["model"].fillna("composed") != "composed" if "model" in out.columns else False
        out = out[out["settings_key"].isin(list(settings_keys)) | side]
    keys = list(POINT_COLS) + [c for c in ("model", "settings_key") if c in out.columns]
    return out.drop_duplicates(subset=keys, keep="last")


def composed(df: pd.DataFrame) -> pd.DataFrame:
    """Only the composed-model rows (drop side-model rows such as the reference)."""
    if "model" in df.columns:
        return df[df["model"].fillna("composed") == "composed"]
    return df


def reference_row(df: pd.DataFrame) -> Optional[pd.Series]:
    """The reference model's row when the store holds one."""
    if "model" not in df.columns:
        return None
    ref = df[df["model"] == "reference"]
    if ref.empty:
        return None
    row = ref.iloc[-1].copy()
    # The reference against itself: identical truth-ratio distributions, KS p-value 1 by definition.
    if pd.isna(row.get("forget_quality", float("nan"))):
        row["forget_quality"] = 1.0
    return row


def heatmap_metrics(df: pd.DataFrame, benchmark: str) -> list[str]:
    """Metrics worth a heatmap that the grid actually has values for."""
    order = {"muse": MUSE_ORDER, "tofu": HEATMAP_ORDER}.get(benchmark, HEATMAP_ORDER[:5] + MUSE_ORDER)
    data = composed(df)
    names = [m for m in order if m in data.columns and data[m].notna().any()]
    if "model_utility" in names and "model_utility_tf" in names:
        names.remove("model_utility_tf")
    return names[:8]


# ----------------------------------------------------------------------------- numbers
def _log10(v: pd.Series) -> pd.Series:
    return np.log10(v.clip(lower=1e-30))


def tick_text(value: float) -> str:
    """A log-axis tick as a number: 1e-3 (and below as 1e-k), 0.01, 0.1, 1, 10."""
    k = math.log10(value)
    if abs(k - round(k)) < 1e-9 and round(k) < -2:
        return f"1e{round(k)}"
    return f"{value:g}"


def log_ticks(low: float, high: float) -> list[float]:
    """Tick values for a log axis over [low, high] (> 0): every power of ten, plus 2 and 5
    times each when the span is two decades or less (so a short axis has several ticks)."""
    low, high = max(float(low), 1e-30), max(float(high), 1e-30)
    k0, k1 = math.floor(math.log10(low)), math.ceil(math.log10(high))
    mults = (1.0, 2.0, 5.0) if k1 - k0 <= 2 else (1.0,)
    ticks = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in mults]
    return [float(f"{t:.12g}") for t in ticks if low / 1.0001 <= t <= high * 1.0001] or [10.0 ** k0]


def goodness(name: str, values: pd.Series) -> pd.Series:
    """Values turned so that larger is better (−badness), by the metric's direction."""
    info = metric_info(name)
    if info is None:
        return values.astype(float)
    return -values.astype(float).map(info.badness)


def wrap_title(text: str, width: int = TITLE_CHARS) -> str:
    """``text`` on lines of at most ``width`` characters joined with <br> (Plotly never wraps)."""
    return "<br>".join(textwrap.wrap(text, width=width, break_long_words=False)) or text


def _title(text: str, body: int, width: int = TITLE_CHARS) -> tuple[dict[str, Any], int, int]:
    """A left-aligned Plotly title below the toolbar row, the top margin it needs and the figure
    height for a plot area (plus bottom margin) of ``body`` pixels."""
    wrapped = wrap_title(text, width)
    lines = wrapped.count("<br>") + 1
    top = MODEBAR_PX + 20 * lines + 14
    height = body + top
    # In container coordinates, anchored at its top just below the toolbar row: Plotly lays a
    # multi-line title out downwards from there (a bottom anchor would push lines into the plot).
    # Plotly puts the first line's glyph tops ~6 px above the anchor: hence the extra 6 px.
    return (dict(text=wrapped, x=0.01, xref="container", xanchor="left", y=1 - (MODEBAR_PX + 6) / height,
                 yref="container", yanchor="top", font=dict(size=15)), top, height)


def interpolate(df: pd.DataFrame, name: str, alpha: float, beta: float) -> Optional[float]:
    """``name`` at (α, β) by bilinear interpolation between the corners of the smallest fully
    evaluated grid rectangle around it (in log10 for log metrics); exact at a grid point; None
    outside the grid or when no evaluated rectangle surrounds it."""
    data = composed(df)
    if name not in data.columns or data.empty:
        return None
    log = name in LOG_METRICS
    vals = _log10(data[name]) if log else data[name].astype(float)
    table = data.assign(_v=vals).pivot_table(index="beta", columns="alpha", values="_v", aggfunc="last")

    def sides(axis: Sequence[float], v: float) -> Optional[tuple[list[float], list[float]]]:
        """Grid values at or below ``v`` (nearest first) and at or above it (nearest first)."""
        axis = sorted(axis)
        if not axis or v < axis[0] - 1e-12 or v > axis[-1] + 1e-12:
            return None
        below = [a for a in reversed(axis) if a <= v + 1e-12][:BRACKET_TRIES]
        above = [a for a in axis if a >= v - 1e-12][:BRACKET_TRIES]
        return below, above

    sa, sb = sides(list(table.columns), alpha), sides(list(table.index), beta)
    if sa is None or sb is None:
        return None
    # The smallest rectangle of evaluated grid points around (α, β): on a ragged grid (a
    # refinement point, a second sweep) the nearest cells may not all have been evaluated.
    boxes = [((a0, a1), (b0, b1)) for a0 in sa[0] for a1 in sa[1] for b0 in sb[0] for b1 in sb[1]
             if not any(pd.isna(table.at[b, a]) for a in (a0, a1) for b in (b0, b1))]
    if not boxes:
        return None
    ab, bb = min(boxes, key=lambda box: ((box[0][1] - box[0][0]) + 1e-9) * ((box[1][1] - box[1][0]) + 1e-9))
    corners = [[table.at[b, a] for a in ab] for b in bb]
    ta = 0.0 if ab[1] == ab[0] else (alpha - ab[0]) / (ab[1] - ab[0])
    tb = 0.0 if bb[1] == bb[0] else (beta - bb[0]) / (bb[1] - bb[0])
    low = corners[0][0] * (1 - ta) + corners[0][1] * ta
    high = corners[1][0] * (1 - ta) + corners[1][1] * ta
    v = float(low * (1 - tb) + high * tb)
    return 10.0 ** v if log else v


# ----------------------------------------------------------------------------- heatmaps
def _target(name: str) -> Optional[float]:
    """The value a closer-to-a-target metric aims at (PrivLeak: 0, an AUC: 0.5), else None."""
    info = metric_info(name)
    if info is None or not info.direction.startswith("closer"):
        return None
    return {"closer_to_1": 1.0, "closer_to_0": 0.0}.get(info.direction, info.ideal)


def _cell_position(axis: Sequence[float], value: float) -> tuple[float, bool]:
    """The category-axis position (cell index, fractional between cells) of ``value``, clamped
    to the axis; and whether it was inside the axis' span."""
    axis = list(axis)
    if len(axis) == 1:
        return 0.0, math.isclose(value, axis[0], abs_tol=1e-9)
    inside = axis[0] - 1e-9 <= value <= axis[-1] + 1e-9
    return float(np.interp(value, axis, range(len(axis)))), inside


def heatmap(df: pd.DataFrame, name: str, current: Point) -> go.Figure:
    """α × β heatmap of one metric (forget quality with a log colour scale), evenly sized cells,
    grey cells where the grid was not evaluated, ★ at the current point wherever it is."""
    data = composed(df)
    log = name in LOG_METRICS
    values = _log10(data[name]) if log else data[name]
    table = data.assign(_v=values).pivot_table(index="beta", columns="alpha", values="_v", aggfunc="last",
                                               dropna=False)
    table = table.reindex(index=sorted(set(data["beta"])), columns=sorted(set(data["alpha"])))
    xs, ys = [f"{a:g}" for a in table.columns], [f"{b:g}" for b in table.index]
    info = metric_info(name)
    # A reversed scale for lower-is-better metrics keeps bright = better on every heatmap; a
    # closer-to-a-target metric (PrivLeak → 0) is brightest at its target, dark on both sides.
    scale: Any = "Viridis_r" if info is not None and info.direction == "lower" else "Viridis"
    target = _target(name)
    bar = dict(title=dict(text=f"{arrow(name)} better" if arrow(name) else "", side="right"), thickness=14)
    extra: dict[str, Any] = {}
    if target is not None and not log:
        scale, extra = TARGET_SCALE, dict(zmid=target)
        bar["title"]["text"] = f"→ {target:g} better"
    finite = table.values[np.isfinite(table.values)]
    if log and finite.size:
        ticks = log_ticks(10.0 ** finite.min(), 10.0 ** finite.max())
        bar.update(tickvals=[math.log10(t) for t in ticks], ticktext=[tick_text(t) for t in ticks])
    fmt = "%{customdata:.3g}" if log else "%{z:.3g}"
    fig = go.Figure(go.Heatmap(z=table.values, x=xs, y=ys, colorscale=scale, colorbar=bar, **extra,
                               customdata=10.0 ** table.values if log else None,
                               hovertemplate=f"α=%{{x}}, β=%{{y}}<br>value={fmt}<extra></extra>"))
    missing = np.isnan(table.values)
    title = metric_label(name) + (" · log colour scale" if log else "")
    if missing.any():
        fig.add_trace(go.Heatmap(z=np.where(missing, 1.0, np.nan), x=xs, y=ys, showscale=False,
                                 colorscale=[[0, "#d4d4d8"], [1, "#d4d4d8"]], name="not evaluated",
                                 hovertemplate="α=%{x}, β=%{y}<br>not evaluated<extra></extra>"))
        title += f" · {int(missing.sum())} of {missing.size} cells not evaluated (grey)"
    if not table.empty:
        ix, in_a = _cell_position(list(table.columns), current.alpha)
        iy, in_b = _cell_position(list(table.index), current.beta)
        where = "" if in_a and in_b else " (outside the grid: drawn at its edge)"
        fig.add_annotation(x=ix, y=iy, text="★", showarrow=False, font=dict(size=20, color="white"),
                           bgcolor="rgba(0,0,0,0.55)", borderpad=1, name="current point",
                           hovertext=f"current point α={current.alpha:g}, β={current.beta:g}{where}")
    title_dict, top, height = _title(title, 300)
    fig.update_layout(title=title_dict, height=height, margin=dict(t=top, b=45, l=55, r=10),
                      showlegend=False, xaxis_title="α (forget strength)", yaxis_title="β (retain strength)")
    # Grid values as categories: evenly sized cells whatever the spacing of the sweep.
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


# ----------------------------------------------------------------------------- scatter
def axis_choices(df: pd.DataFrame, methods: Optional[pd.DataFrame] = None) -> list[str]:
    """Metric columns with values at the composed points (or the named points), preferred ones first."""
    data = composed(df)
    have = [c for c in data.columns if metric_info(c) is not None and data[c].notna().any()]
    if methods is not None and not methods.empty:
        have += [c for c in methods.columns if metric_info(c) is not None and methods[c].notna().any()
                 and c not in have]
    pref = {m: i for i, m in enumerate(X_PREFERENCE + Y_PREFERENCE)}
    return sorted(have, key=lambda c: (pref.get(c, len(pref)), c))


def informative(df: pd.DataFrame, name: str) -> bool:
    """False when ``name`` is missing or 0 at more than UNINFORMATIVE_SHARE of the unlearned
    (α > 0) points (the full-tier utility of a model that scores no ROUGE on utility sets)."""
    data = composed(df)
    if name not in data.columns:
        return False
    moved = data[data["alpha"] > 0] if "alpha" in data.columns else data
    moved = moved if not moved.empty else data
    vals = moved[name]
    empty = (vals.isna() | (vals == 0)).sum()
    return bool(len(vals)) and empty <= UNINFORMATIVE_SHARE * len(vals)


def default_axes(df: pd.DataFrame) -> tuple[Optional[str], Optional[str]]:
    """(x, y) metric columns for the forget-vs-utility scatter: forget quality (else the first
    forgetting metric stored) against the first informative utility metric (see :func:`informative`)."""
    data = composed(df)
    x = next((m for m in X_PREFERENCE if m in data.columns and data[m].notna().any()), None)
    ys = [m for m in Y_PREFERENCE if m in data.columns and data[m].notna().any()]
    y = next((m for m in ys if informative(data, m)), ys[0] if ys else None)
    return x, y


def tradeoff_axes(df: pd.DataFrame) -> tuple[Optional[str], Optional[str]]:
    """Alias of :func:`default_axes` (the name the page used before axes were selectable)."""
    return default_axes(df)


def pareto_front(points: pd.DataFrame, x: str, y: str, *, by_direction: bool = False) -> pd.DataFrame:
    """Rows not dominated when both ``x`` and ``y`` are to be maximised (or, with ``by_direction``,
    improved in each metric's better direction), sorted by x."""
    pts = points.dropna(subset=[x, y])
    gx = goodness(x, pts[x]) if by_direction else pts[x].astype(float)
    gy = goodness(y, pts[y]) if by_direction else pts[y].astype(float)
    order = pd.DataFrame({"gx": gx, "gy": gy}).sort_values(["gx", "gy"], ascending=[False, False])
    front, best_y = [], -math.inf
    for idx, row in order.iterrows():
        if row["gy"] > best_y:
            front.append(idx)
            best_y = row["gy"]
    return pts.loc[front].sort_values(x)


# Columns of the best-point table, where stored (the utility metric the floor used comes first).
BEST_COLUMNS = ("forget_quality", "model_utility", "model_utility_tf", "forget_rouge", "retain_rouge",
                "forget_truth_ratio")


def utility_floor(corrupted: Optional[Mapping[str, Any]],
                  keep: float = UTILITY_KEEP) -> tuple[Optional[str], Optional[float]]:
    """(utility metric, floor): the first of :data:`msa_core.eval.store.UTILITY_METRICS` that the
    corrupted model's row (α = β = 0) has, and ``keep`` × its value (the store's "best point" rule);
    (None, None) when the corrupted model's utility is not stored."""
    if corrupted is None:
        return None, None
    for name in UTILITY_METRICS:
        value = corrupted.get(name)
        if value is not None and pd.notna(value):
            return name, keep * float(value)
    return None, None


def _forget_metric(rows: pd.DataFrame) -> Optional[str]:
    """The metric a series' best point maximises: forget quality, else the forget truth ratio."""
    return next((m for m in ("forget_quality", "forget_truth_ratio") if m in rows.columns and rows[m].notna().any()),
                None)


def best_points(
    series: Mapping[str, pd.DataFrame],
    methods: Optional[pd.DataFrame],
    corrupted: Optional[Mapping[str, Any]],
    *,
    keep: float = UTILITY_KEEP,
) -> pd.DataFrame:
    """One row per series: its point with the best forget quality (else forget truth ratio) among
    those keeping ≥ ``keep`` × the corrupted model's utility (see :func:`utility_floor`; every
    point when that utility is not stored). ``series``: label → composed α/β rows (points named
    "α=…, β=…"); ``methods``: :meth:`ResultStore.method_grid` rows, one series per method (points
    named by their ``point``). Columns: series, point, kept (False: no point keeps the utility,
    the metrics are then empty), then the :data:`BEST_COLUMNS` that any series stores."""
    util, floor = utility_floor(corrupted, keep)
    groups: list[tuple[str, pd.DataFrame, list[str]]] = []
    for label, rows in series.items():
        rows = composed(rows)
        if rows.empty:
            continue
        names = [f"α={a:g}, β={b:g}" for a, b in zip(rows["alpha"], rows["beta"])]
        groups.append((str(label), rows, names))
    if methods is not None and not methods.empty:
        for method, rows in methods.groupby("method", sort=False):
            groups.append((str(method), rows, [str(p) for p in rows["point"]]))
    out = []
    for label, rows, names in groups:
        rows = rows.assign(_point=names)
        metric = _forget_metric(rows)
        if metric is None:
            continue
        pool = rows[rows[metric].notna()]
        if util is not None and floor is not None:
            pool = pool[pool[util] >= floor] if util in pool.columns else pool.iloc[0:0]
        entry: dict[str, Any] = {"series": label, "point": "none keeps the utility", "kept": not pool.empty}
        if not pool.empty:
            best = pool.loc[pool[metric].map(metric_info(metric).badness).idxmin()]
            entry["point"] = best["_point"]
            entry.update({c: best.get(c) for c in BEST_COLUMNS if c in rows.columns})
        out.append(entry)
    cols = ["series", "point", "kept"]
    have = [c for c in BEST_COLUMNS if any(c in e and pd.notna(e[c]) for e in out)]
    if util is not None and util in have:
        have.remove(util)
        have.insert(0, util)
    return pd.DataFrame(out, columns=cols + have)


def _axis_title(name: str, horizontal: bool) -> str:
    info = metric_info(name)
    side = "right" if horizontal else "up"
    log = " — log scale" if name in LOG_METRICS else ""
    if info is None:
        return name + log
    if info.direction in ("higher", "lower"):
        flipped = ", axis reversed" if info.direction == "lower" else ""
        return f"{metric_label(name, with_direction=False)} ({arrow(name)}){log}{flipped}: {side} is better"
    return f"{metric_label(name, with_direction=False)}{log}: {info.direction_text()}"


def _style_axis(fig: go.Figure, name: str, values: pd.Series, horizontal: bool) -> None:
    update = fig.update_xaxes if horizontal else fig.update_yaxes
    info = metric_info(name)
    kwargs: dict[str, Any] = dict(title=_axis_title(name, horizontal))
    if name in LOG_METRICS:
        pos = values[values > 0]
        kwargs["type"] = "log"
        if not pos.empty:
            ticks = log_ticks(float(pos.min()), float(pos.max()))
            kwargs.update(tickvals=ticks, ticktext=[tick_text(t) for t in ticks])
    if info is not None and info.direction == "lower":
        kwargs["autorange"] = "reversed"  # right / up is better on every axis
    update(**kwargs)


def tradeoff_scatter(
    df: pd.DataFrame,
    x: str,
    y: str,
    current: Point,
    reference: Optional[Mapping[str, Any]],
    *,
    methods: Optional[pd.DataFrame] = None,
    run_names: Optional[Mapping[str, str]] = None,
    current_row: Optional[Mapping[str, Any]] = None,
    choice_series: Optional[Mapping[str, pd.DataFrame]] = None,
    grid_name: Optional[str] = None,
) -> go.Figure:
    """``x`` (forgetting) vs ``y`` (utility): the α/β points (one series per run when several are
    shown; ``grid_name``, e.g. the current choice, names them), the α/β points of other θ_clean / epoch choices
    (``choice_series``: label → composed rows, one series each), other methods' named points
    (``methods``: :meth:`ResultStore.method_grid` rows, one series per method), the Pareto front
    across all of them, the corrupted model, the reference (retain-only) model as the target, and
    the current point — its grid row, else ``current_row`` (a stored evaluation there), else
    interpolated from the grid."""
    data = composed(df)
    data = data.assign(**{c: np.nan for c in (x, y, *POINT_COLS) if c not in data.columns}).dropna(subset=[x, y])
    fig = go.Figure()
    runs = (list(dict.fromkeys(data["settings_key"])) if "settings_key" in data.columns else []) or [None]
    if composed(df).empty:
        runs = []  # no α/β point of this choice: only other choices' or methods' series
    everything = []
    for i, key in enumerate(runs):
        rows = data if key is None else data[data["settings_key"] == key]
        name = (grid_name or "α/β grid") if len(runs) <= 1 else \
            f"α/β run {(run_names or {}).get(key, str(key)[:8])}" + (f" · {grid_name}" if grid_name else "")
        label = [f"α={a:g}, β={b:g}" for a, b in zip(rows["alpha"], rows["beta"])]
        fig.add_trace(go.Scatter(
            x=rows[x], y=rows[y], mode="markers", name=name, text=label,
            marker=dict(size=9, symbol=MARKER_SYMBOLS[i % len(MARKER_SYMBOLS)], color=rows["alpha"],
                        colorscale="Cividis", showscale=i == 0,
                        colorbar=dict(title="α", thickness=12, x=1.0, len=0.6, y=0.7)),
            hovertemplate=f"{name}<br>%{{text}}<br>x=%{{x:.3g}}<br>y=%{{y:.3g}}<extra></extra>"))
        everything.append(rows[[x, y]])
    for j, (label, rows) in enumerate((choice_series or {}).items()):
        rows = composed(rows)
        if not {x, y} <= set(rows.columns):
            continue
        rows = rows.dropna(subset=[x, y])
        if rows.empty:
            continue
        fig.add_trace(go.Scatter(
            x=rows[x], y=rows[y], mode="markers", name=str(label),
            text=[f"α={a:g}, β={b:g}" for a, b in zip(rows["alpha"], rows["beta"])],
            marker=dict(size=9, symbol=MARKER_SYMBOLS[(len(runs) + j) % len(MARKER_SYMBOLS)],
                        color=SERIES_COLORS[j % len(SERIES_COLORS)], line=dict(color="black", width=0.5)),
            hovertemplate=f"{label}<br>%{{text}}<br>x=%{{x:.3g}}<br>y=%{{y:.3g}}<extra></extra>"))
        everything.append(rows[[x, y]])
    named = methods.dropna(subset=[x, y]) if methods is not None and {x, y} <= set(methods.columns) else None
    if named is not None and not named.empty:
        for j, (method, rows) in enumerate(named.groupby("method", sort=False)):
            fig.add_trace(go.Scatter(
                x=rows[x], y=rows[y], mode="lines+markers", name=str(method), text=list(rows["point"]),
                marker=dict(size=11, symbol=MARKER_SYMBOLS[(j + 1) % len(MARKER_SYMBOLS)]),
                line=dict(width=1, dash="dot"),
                hovertemplate=f"{method} %{{text}}<br>x=%{{x:.3g}}<br>y=%{{y:.3g}}<extra></extra>"))
            everything.append(rows[[x, y]])
    pool = pd.concat(everything, ignore_index=True) if everything else pd.DataFrame(columns=[x, y])
    front = pareto_front(pool, x, y, by_direction=True) if not pool.empty else pool
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", name="Pareto front (all series)",
                                 line=dict(color="#c2410c", dash="dash"), hoverinfo="skip"))
    corrupted = data[(data["alpha"] == 0) & (data["beta"] == 0)].head(1)
    if not corrupted.empty:
        fig.add_trace(go.Scatter(x=corrupted[x], y=corrupted[y], mode="markers", name="corrupted (α=β=0)",
                                 marker=dict(symbol="x", size=14, color="crimson")))
    if reference is not None and pd.notna(reference.get(x)) and pd.notna(reference.get(y)):
        fig.add_trace(go.Scatter(x=[reference[x]], y=[reference[y]], mode="markers",
                                 name="reference, retain-only (target)",
                                 marker=dict(symbol="diamond", size=15, color="seagreen",
                                             line=dict(color="black", width=1))))
    _current_marker(fig, data, x, y, current, current_row)
    _style_axis(fig, x, pd.concat([pool[x], pd.Series([reference.get(x)] if reference is not None else [])],
                                  ignore_index=True).dropna().astype(float), True)
    _style_axis(fig, y, pool[y].astype(float), False)
    title, top, height = _title("Forgetting vs utility: the better corner is top-right", 480, width=90)
    fig.update_layout(title=title, height=height, margin=dict(t=top, l=70, r=20),
                      legend=dict(orientation="h", y=-0.22, yanchor="top"))
    return fig


def _current_marker(fig: go.Figure, data: pd.DataFrame, x: str, y: str, current: Point,
                    current_row: Optional[Mapping[str, Any]]) -> None:
    """The ★: the grid row at the current point, else a stored evaluation there, else interpolated."""
    star = dict(symbol="star", size=18, color="gold", line=dict(color="black", width=1))
    cur = data[np.isclose(data["alpha"], current.alpha) & np.isclose(data["beta"], current.beta)]
    name, cx, cy = "current point", None, None
    if not cur.empty:
        cx, cy = cur[x].iloc[-1], cur[y].iloc[-1]
    elif current_row is not None and pd.notna(current_row.get(x)) and pd.notna(current_row.get(y)):
        cx, cy, name = current_row[x], current_row[y], "current point (stored evaluation)"
    else:
        ix, iy = interpolate(data, x, current.alpha, current.beta), interpolate(data, y, current.alpha, current.beta)
        if ix is not None and iy is not None:
            cx, cy, name = ix, iy, "current point (interpolated from the grid)"
            star.update(symbol="star-open", line=dict(color="goldenrod", width=2))
    if cx is None:
        fig.add_annotation(text=f"★ current point α={current.alpha:g}, β={current.beta:g}: not evaluated, and no "
                                "evaluated grid cell around it to interpolate from (evaluate it on the Playground)",
                           xref="paper", yref="paper", x=0, y=1.0, yanchor="bottom", showarrow=False,
                           font=dict(size=11))
        return
    fig.add_trace(go.Scatter(x=[cx], y=[cy], mode="markers", name=name, marker=star,
                             hovertemplate=f"{name}<br>α={current.alpha:g}, β={current.beta:g}"
                                           "<br>x=%{x:.3g}<br>y=%{y:.3g}<extra></extra>"))


# ----------------------------------------------------------------------------- along α
def alpha_lines(df: pd.DataFrame, metrics: list[str], beta: float, *, alpha: Optional[float] = None,
                cols: int = 3) -> go.Figure:
    """One small chart per metric along α at the grid β closest to ``beta``, each with its own
    y axis (PrivLeak ≈ −30 and [0, 1] metrics side by side), forget quality on a log axis, and
    a dashed line at the current ``alpha``."""
    data = composed(df)
    betas = sorted(data["beta"].unique())
    b = min(betas, key=lambda v: abs(v - beta)) if betas else beta
    rows = data[data["beta"] == b].sort_values("alpha")
    metrics = [m for m in metrics if m in rows.columns] or metrics[:1]
    cols = max(1, min(cols, len(metrics)))
    nrows = math.ceil(len(metrics) / cols)
    titles = [f"{metric_label(m, with_direction=False)} {arrow(m)}".strip() for m in metrics]
    # ~80 px between rows: the x tick labels of one row, then the next row's subplot titles.
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=min(0.3, 80 / (250 * nrows)) if nrows > 1 else 0.1)
    for i, m in enumerate(metrics):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(x=rows["alpha"], y=rows[m], mode="lines+markers", name=metric_label(m),
                                 showlegend=False,
                                 hovertemplate=f"{metric_label(m, with_direction=False)}<br>α=%{{x:g}}"
                                               "<br>%{y:.3g}<extra></extra>"), r, c)
        info = metric_info(m)
        if m in LOG_METRICS:
            pos = rows[m][rows[m] > 0]
            ticks = log_ticks(float(pos.min()), float(pos.max())) if not pos.empty else [1.0]
            fig.update_yaxes(type="log", tickvals=ticks, ticktext=[tick_text(t) for t in ticks], row=r, col=c)
        if info is not None and info.direction == "lower":
            fig.update_yaxes(autorange="reversed", row=r, col=c)
        if _target(m) is not None:  # a closer-to-a-target metric: its target as a dotted line
            fig.add_hline(y=_target(m), line=dict(color="grey", dash="dot", width=1), row=r, col=c)
        fig.update_xaxes(title_text="α" if r == nrows else None, row=r, col=c)
    if alpha is not None:
        fig.add_vline(x=alpha, line=dict(color="goldenrod", dash="dash", width=1), row="all", col="all")
    title, top, height = _title(f"Metrics along α at β = {b:g} (each with its own axis; ↓ metrics have reversed "
                                "axes, so up is better everywhere; dashed: current α)", 250 * nrows + 40, width=110)
    fig.update_layout(title=title, height=height, margin=dict(t=top + 10, b=40, l=50, r=20))
    return fig


# ----------------------------------------------------------------------------- experiment page
def layer_norms_figure(layers: list[LayerNorms]) -> go.Figure:
    """‖τ_f‖ and ‖τ_r‖ per layer as bars, and their cosine per layer as a line (range −1…1)."""
    names = [row.layer for row in layers]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("‖τ‖ per layer (L2 over the layer's tensors)",
                                                        "cos(τ_f, τ_r) per layer"))
    fig.add_trace(go.Bar(x=names, y=[row.forget for row in layers], name="‖τ_f‖ forget vector"), 1, 1)
    fig.add_trace(go.Bar(x=names, y=[row.retain for row in layers], name="‖τ_r‖ retain vector"), 1, 1)
    fig.add_trace(go.Scatter(x=names, y=[row.cosine for row in layers], mode="lines+markers", name="cosine"), 1, 2)
    fig.update_yaxes(title_text="L2 norm", row=1, col=1)
    fig.update_yaxes(title_text="cosine similarity", range=[-1, 1], row=1, col=2)
    fig.update_layout(height=380, barmode="group", margin=dict(t=40, b=10), legend=dict(orientation="h"))
    return fig


def layer_lines_figure(
    layers: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    y_title: str,
    y_range: Optional[tuple[float, float]] = None,
    colors: Optional[Mapping[str, str]] = None,
    dashed: Sequence[str] = (),
) -> go.Figure:
    """The Layers page's per-layer lines: one value per layer (x, in model order) for each named
    series (weight distances or linear CKA); ``dashed`` series are drawn as context lines."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Scatter(
            x=list(layers), y=list(values), mode="lines+markers", name=name,
            line=dict(color=(colors or {}).get(name), dash="dash" if name in dashed else "solid"),
            hovertemplate="%{x}: %{y:.4g}<extra>" + name + "</extra>"))
    fig.update_xaxes(title="layer (input → output)", type="category")
    # Distances start at 0 (no zoomed-in axis that exaggerates small differences).
    fig.update_yaxes(title=y_title, range=list(y_range) if y_range else None, rangemode="tozero")
    # Legend under the plot: series names are sentences and would squeeze the plot at 1400 px.
    fig.update_layout(title=title, height=420, margin=dict(t=50, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, x=0))
    return fig
