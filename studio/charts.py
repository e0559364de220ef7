"""Plotly figures of MSA Studio (no caches, no st calls): the Trade-off page's heatmaps,
forget-vs-utility scatter and lines along α over the results grid, and the Experiment
page's per-layer norms of τ_f and τ_r.

Every axis, colour bar and legend names the metric with its better direction, so a reader
never has to guess whether up is good. Forget quality is drawn on a log scale.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from msa_core.targets import Point
from msa_core.vectors import LayerNorms
from studio.labels import arrow, metric_info, metric_label

POINT_COLS = ("alpha", "beta")
HEATMAP_ORDER = ("forget_quality", "model_utility", "model_utility_tf", "forget_rouge", "retain_rouge",
                 "forget_truth_ratio", "forget_prob", "retain_prob", "extraction_strength")
MUSE_ORDER = ("muse_verbmem_forget", "muse_knowmem_forget", "muse_knowmem_retain", "muse_privleak",
              "muse_mink_auc")


def select_rows(df: pd.DataFrame, *, tier: str, benchmark: str, subset: Optional[int]) -> pd.DataFrame:
    """Rows of one tier/benchmark/subset of the composed model, one per (α, β) (latest wins)."""
    if df is None or df.empty or not set(POINT_COLS) <= set(df.columns):
        return pd.DataFrame()
    out = df
    for col, val in (("tier", tier), ("benchmark", benchmark)):
        if col in out.columns:
            out = out[out[col] == val]
    if "subset" in out.columns:
        out = out[out["subset"].isna()] if subset is None else out[out["subset"] == subset]
    return out.drop_duplicates(subset=list(POINT_COLS) + (["model"] if "model" in out.columns else []), keep="last")


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


def _log10(v: pd.Series) -> pd.Series:
    return np.log10(v.clip(lower=1e-30))


def heatmap(df: pd.DataFrame, name: str, current: Point) -> go.Figure:
    """α × β heatmap of one metric (forget quality as log10), ★ at the current point."""
    data = composed(df)
    log = name == "forget_quality"
    values = _log10(data[name]) if log else data[name]
    table = data.assign(_v=values).pivot_table(index="beta", columns="alpha", values="_v", aggfunc="last")
    info = metric_info(name)
    # A reversed scale for lower-is-better metrics keeps bright = better on every heatmap.
    scale = "Viridis_r" if info is not None and info.direction == "lower" else "Viridis"
    # Short colour-bar title (the chart title carries the full direction and ideal): a long
    # vertical title would run past a 330-px chart into its neighbour.
    bar_title = ("log10, " if log else "") + (f"{arrow(name)} better" if arrow(name) else "")
    fig = go.Figure(go.Heatmap(z=table.values, x=[f"{a:g}" for a in table.columns], y=[f"{b:g}" for b in table.index],
                               colorscale=scale, colorbar=dict(title=dict(text=bar_title, side="right")),
                               hovertemplate="α=%{x}, β=%{y}<br>value=%{z:.3g}<extra></extra>"))
    if current.alpha in set(table.columns) and current.beta in set(table.index):
        fig.add_trace(go.Scatter(x=[f"{current.alpha:g}"], y=[f"{current.beta:g}"], mode="markers",
                                 name="current point",
                                 marker=dict(symbol="star", size=16, color="white", line=dict(color="black", width=1))))
    fig.update_layout(title=("log10 " if log else "") + metric_label(name), height=330, margin=dict(t=50, b=40),
                      showlegend=False, xaxis_title="α (forget strength)", yaxis_title="β (retain strength)")
    # Grid values as categories: evenly sized cells whatever the spacing of the sweep.
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def tradeoff_axes(df: pd.DataFrame) -> tuple[Optional[str], Optional[str]]:
    """(x, y) metric columns for the forget-vs-utility scatter."""
    x = "forget_quality" if "forget_quality" in df.columns and df["forget_quality"].notna().any() else None
    y = next((m for m in ("model_utility", "model_utility_tf") if m in df.columns and df[m].notna().any()), None)
    return x, y


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows not dominated when both ``x`` and ``y`` are to be maximised, sorted by x."""
    pts = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[False, False])
    front, best_y = [], -math.inf
    for idx, row in pts.iterrows():
        if row[y] > best_y:
            front.append(idx)
            best_y = row[y]
    return pts.loc[front].sort_values(x)


def tradeoff_scatter(df: pd.DataFrame, x: str, y: str, current: Point,
                     reference: Optional[pd.Series]) -> go.Figure:
    """Forget quality (log x) vs model utility, Pareto front, corrupted / reference / current markers."""
    data = composed(df).dropna(subset=[x, y])
    label = [f"α={a:g}, β={b:g}" for a, b in zip(data["alpha"], data["beta"])]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=data[x], y=data[y], mode="markers", name="grid points", text=label,
                             marker=dict(size=9, color=data["alpha"], colorscale="Cividis", showscale=True,
                                         colorbar=dict(title="α")),
                             hovertemplate="%{text}<br>x=%{x:.3g}<br>y=%{y:.3g}<extra></extra>"))
    front = pareto_front(data, x, y)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", name="Pareto front (best trade-offs)",
                                 line=dict(color="#c2410c", dash="dash")))
    corrupted = data[(data["alpha"] == 0) & (data["beta"] == 0)]
    if not corrupted.empty:
        fig.add_trace(go.Scatter(x=corrupted[x], y=corrupted[y], mode="markers", name="corrupted (α=β=0)",
                                 marker=dict(symbol="x", size=14, color="crimson")))
    if reference is not None and pd.notna(reference.get(x)) and pd.notna(reference.get(y)):
        fig.add_trace(go.Scatter(x=[reference[x]], y=[reference[y]], mode="markers", name="reference (ideal)",
                                 marker=dict(symbol="diamond", size=14, color="seagreen")))
    cur = data[(data["alpha"] == current.alpha) & (data["beta"] == current.beta)]
    if not cur.empty:
        fig.add_trace(go.Scatter(x=cur[x], y=cur[y], mode="markers", name="current point",
                                 marker=dict(symbol="star", size=18, color="gold", line=dict(color="black", width=1))))
    fig.update_xaxes(type="log", title=f"{metric_label(x)} — log scale, right is better")
    # The y title must fit the 460-px chart height: label and arrow only (the chart title says top-right is better).
    fig.update_yaxes(title=f"{metric_label(y, with_direction=False)} ({arrow(y)} up is better)")
    fig.update_layout(title="Forgetting vs utility: top-right is better", height=460, margin=dict(t=50),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def alpha_lines(df: pd.DataFrame, metrics: list[str], beta: float) -> go.Figure:
    """Each metric along α at the grid β closest to ``beta`` (legend says which way is better)."""
    data = composed(df)
    betas = sorted(data["beta"].unique())
    b = min(betas, key=lambda v: abs(v - beta)) if betas else beta
    rows = data[data["beta"] == b].sort_values("alpha")
    fig = go.Figure()
    for m in metrics:
        yv = _log10(rows[m]) if m == "forget_quality" else rows[m]
        name = ("log10 " if m == "forget_quality" else "") + metric_label(m)
        fig.add_trace(go.Scatter(x=rows["alpha"], y=yv, mode="lines+markers", name=name))
    fig.update_layout(title=f"Metrics along α at β = {b:g}", height=420, xaxis_title="α (forget strength)",
                      yaxis_title="value (see legend for the better direction)", legend=dict(orientation="h", y=-0.3),
                      margin=dict(t=50))
    return fig


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
