"""Trade-off page: the α×β grid from the results store, and a button that runs/resumes a sweep.

Heatmaps (forget quality on a log scale, model utility, forget/retain ROUGE, MUSE metrics
when present), forget quality vs model utility with the Pareto front and markers for the
corrupted model, the reference and the current point, and lines along α at fixed β. Every
axis and colour bar says which direction is better. Charts refill as sweep points finish.
"""

from __future__ import annotations

import shlex

import numpy as np
import pandas as pd
import streamlit as st

from msa_core.eval import run_sweep
from msa_core.eval.sweep import parse_grid
from studio import charts, resources, session, widgets

engine = widgets.require_engine()
here = session.point()
alpha, beta = here.alpha, here.beta
exp = engine.experiment
st.title(":material/insights: Trade-off")
st.caption(f"Current point: **α = {alpha:.3f}, β = {beta:.3f}** (★ on every chart).")

store = resources.results_store()
benchmarks = widgets.benchmark_choices(exp)
if not benchmarks:
    st.info("This experiment has no TOFU or MUSE data, so there is nothing to evaluate.")
    st.stop()

c1, c2, c3 = st.columns(3)
tier = c1.radio("Tier", ["fast", "full"], horizontal=True, key="w_to_tier",
                help="fast: teacher-forced only (seconds per point). full: adds generation (ROUGE, MUSE).")
benchmark = c2.radio("Benchmark", benchmarks, horizontal=True, key="w_to_bench")
subset = c3.number_input("Items per set (0 = all)", min_value=0, max_value=5000, value=0, step=10, key="w_to_subset")
subset_arg = int(subset) or None


def _grid_values(rng: tuple[float, float], n: int) -> str:
    return ", ".join(f"{v:g}" for v in np.round(np.linspace(rng[0], rng[1], n), 3))


g1, g2 = st.columns(2)
a_text = g1.text_input("Sweep α values", value=_grid_values(exp.alpha_range, 6), key="w_to_alphas",
                       help="Comma-separated (or start:stop:step), inside the experiment's α range")
b_text = g2.text_input("Sweep β values", value=_grid_values(exp.beta_range, 4), key="w_to_betas",
                       help="Comma-separated (or start:stop:step), inside the experiment's β range")
try:
    alphas = parse_grid(a_text, name="α values", within=exp.alpha_range)
    betas = parse_grid(b_text, name="β values", within=exp.beta_range)
except ValueError as exc:
    widgets.show_error("Bad sweep grid", exc)
    alphas, betas = [], []

run = st.button(f"Run / resume sweep ({len(alphas)}×{len(betas)} = {len(alphas) * len(betas)} points)",
                type="primary", key="w_to_run", disabled=not alphas or not betas)
src = shlex.quote(str(exp.source)) if exp.source else "EXPERIMENT.yaml"
st.caption("Same sweep from the command line: `msa sweep " + src + f" --alphas {','.join(f'{a:g}' for a in alphas)} "
           f"--betas {','.join(f'{b:g}' for b in betas)} --tier {tier} --benchmark {benchmark}"
           + (f" --subset {subset_arg}" if subset_arg else "") + "`")
progress_slot = st.empty()
if session.get(session.K_SWEEP_MSG):
    progress_slot.success(session.pop(session.K_SWEEP_MSG), icon=":material/check_circle:")
chart_slot = st.empty()


def load_grid() -> pd.DataFrame:
    try:
        df = resources.results_grid(engine, tier)
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not read the results store", exc)
        return pd.DataFrame()
    return charts.select_rows(df, tier=tier, benchmark=benchmark, subset=subset_arg)


def draw(df: pd.DataFrame, version: int) -> None:
    with chart_slot.container():
        if df.empty:
            st.info("No results for this tier/benchmark yet: run a sweep.")
            return
        n = len(charts.composed(df))
        st.caption(f"{n} points in the store for this experiment ({tier} tier, {benchmark}"
                   f"{'' if subset_arg is None else f', first {subset_arg} items per set'}).")
        heat = charts.heatmap_metrics(df, benchmark)
        cols = st.columns(2)
        for i, name in enumerate(heat):
            cols[i % 2].plotly_chart(charts.heatmap(df, name, here), key=f"hm_{name}_{version}")
        x, y = charts.tradeoff_axes(df)
        if x and y:
            st.plotly_chart(charts.tradeoff_scatter(df, x, y, here, charts.reference_row(df)),
                            key=f"scatter_{version}")
        line_metrics = [m for m in heat if m in df.columns]
        if line_metrics:
            st.plotly_chart(charts.alpha_lines(df, line_metrics, beta), key=f"lines_{version}")


draw(load_grid(), 0)

if run:
    done = {"n": 0}
    bar = progress_slot.progress(0.0, text="starting the sweep")
    on_progress = widgets.bar_progress(bar)

    def on_point(*_args: object, **_kwargs: object) -> None:
        done["n"] += 1
        draw(load_grid(), done["n"])

    try:
        run_sweep(engine, store, alphas, betas, tier=tier, benchmark=benchmark, subset=subset_arg,
                  progress=on_progress, on_point=on_point, reference_cache=resources.reference_cache())
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Sweep failed", exc)
        draw(load_grid(), done["n"] + 1)
    else:
        # Rerun so the sidebar's "Best" preset sees the new points; the message survives it.
        session.put(session.K_SWEEP_MSG, f"sweep finished: {done['n']} points evaluated or found in the store")
        st.rerun()
