"""Trade-off page: the α×β results from the store, sweeps that run/resume/refine, other methods.

Controls: tier/benchmark/subset; the sweep grid (a default around where the trade-off
happens, "Suggest a grid" re-derives it from the stored points); *Run / resume sweep*
(progress with the time left and a Cancel button; a cancelled sweep keeps its points and
resumes); *Refine* (adds points where the Pareto front bends); which stored runs to show,
and clearing one (confirmed). Charts: per run, heatmaps (grey cells: not evaluated, ★ at the
current point wherever it is); forgetting vs utility with selectable axes, other θ_clean /
epoch choices' α/β points and other methods' named points (gradient baselines, imports) as
their own series, the Pareto front across all and the reference as the target; a table of
each series' best point at ≥ 90% of the corrupted model's utility; one small chart per metric
along α. The shown rows download as CSV.
"""

from __future__ import annotations

import shlex
from typing import Any, Optional

import numpy as np
import pandas as pd
import streamlit as st

from msa_core.eval.results import EvalResult
from msa_core.eval.store import UTILITY_KEEP, StoredRun
from msa_core.eval.sweep import default_grid, parse_grid, refine_points, run_points
from studio import charts, interop, labels, resources, rtt_panel, session, widgets

K_SWEEP_RUNNING = session.K_SWEEP_RUNNING
W_RUNS = "w_to_runs"
# How many points one click of *Refine* adds.
REFINE_POINTS = 6

engine = widgets.require_engine()
here = session.point()
exp = engine.experiment
st.title(":material/insights: Trade-off")
st.caption(f"Current point: **α = {here.alpha:.3f}, β = {here.beta:.3f}** (★ on every chart, between grid cells "
           "when it is not a grid point).")

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

if session.get(K_SWEEP_RUNNING):
    stopped = session.pop(K_SWEEP_RUNNING)
    st.warning(f"The sweep of {stopped['points']} points was cancelled (or cut short by another click). Every point "
               "evaluated before that is stored; *Run / resume sweep* continues from there.",
               icon=":material/pause_circle:")


def load_rows() -> pd.DataFrame:
    """Rows of this tier/benchmark/subset, every run (the reference's rows included)."""
    try:
        df = resources.results_grid(engine, tier)
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not read the results store", exc)
        return pd.DataFrame()
    return charts.select_rows(df, tier=tier, benchmark=benchmark, subset=subset_arg)


def stored_runs(rows: pd.DataFrame) -> list[StoredRun]:
    """The store's runs drawn from ``rows`` (this engine's model settings), newest first."""
    keys = set(charts.composed(rows)["settings_key"]) if not rows.empty else set()
    try:
        return [r for r in store.runs(engine.fingerprint, tier=tier) if r.settings_key in keys]
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not list the stored runs", exc)
        return []


def utility_triples(rows: pd.DataFrame) -> list[tuple[float, float, float]]:
    """(α, β, utility) of the composed rows, for the default grid's collapse edge."""
    data = charts.composed(rows)
    _x, util = charts.default_axes(data)
    if util is None or data.empty:
        return []
    return list(zip(data["alpha"], data["beta"], data[util].astype(float)))


all_rows = load_rows()
runs = stored_runs(all_rows)


# ----------------------------------------------------------------------------- the sweep grid
def grid_text(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def suggest_grid() -> None:
    """on_click / first visit: the default grid from the experiment's ranges and the stored points."""
    alphas, betas = default_grid(exp.alpha_range, exp.beta_range, utility_triples(all_rows))
    st.session_state["w_to_alphas"], st.session_state["w_to_betas"] = grid_text(alphas), grid_text(betas)


if "w_to_alphas" not in st.session_state or "w_to_betas" not in st.session_state:
    suggest_grid()
g1, g2, g3 = st.columns([5, 5, 2], vertical_alignment="bottom")
a_text = g1.text_input("Sweep α values", key="w_to_alphas",
                       help="Comma-separated (or start:stop:step), inside the experiment's α range "
                            f"[{exp.alpha_range[0]:g}, {exp.alpha_range[1]:g}]")
b_text = g2.text_input("Sweep β values", key="w_to_betas",
                       help="Comma-separated (or start:stop:step), inside the experiment's β range "
                            f"[{exp.beta_range[0]:g}, {exp.beta_range[1]:g}]")
g3.button("Suggest a grid", key="w_to_suggest", on_click=suggest_grid,
          help="α from 0 to where utility collapses in the stored points (0–2 before anything is stored), "
               "β from 0 to 1: where the trade-off happens, not the collapsed region.")
try:
    alphas = parse_grid(a_text, name="α values", within=exp.alpha_range)
    betas = parse_grid(b_text, name="β values", within=exp.beta_range)
except ValueError as exc:
    widgets.show_error("Bad sweep grid", exc)
    alphas, betas = [], []

b1, b2 = st.columns(2)
run = b1.button(f"Run / resume sweep ({len(alphas)}×{len(betas)} = {len(alphas) * len(betas)} points)",
                type="primary", key="w_to_run", disabled=not alphas or not betas)
src = shlex.quote(str(exp.source)) if exp.source else "EXPERIMENT.yaml"
st.caption("Same sweep from the command line: `msa sweep " + src + f" --alphas {','.join(f'{a:g}' for a in alphas)} "
           f"--betas {','.join(f'{b:g}' for b in betas)} --tier {tier} --benchmark {benchmark}"
           + (f" --subset {subset_arg}" if subset_arg else "") + "`")
progress_slot = st.empty()
cancel_slot = st.empty()
if session.get(session.K_SWEEP_MSG):
    progress_slot.success(session.pop(session.K_SWEEP_MSG), icon=":material/check_circle:")


# ----------------------------------------------------------------------------- which runs
def run_label(run_: StoredRun) -> str:
    return run_.label()


by_key = {r.settings_key: r for r in runs}
if W_RUNS in st.session_state and not set(st.session_state[W_RUNS]) <= set(by_key):
    del st.session_state[W_RUNS]  # a run was deleted or the filters changed: back to the newest
if W_RUNS not in st.session_state or (not st.session_state[W_RUNS]
                                      and st.session_state.get(f"{W_RUNS}_of") != sorted(by_key)):
    # first visit, or nothing picked among runs that changed (another subset or tier): the newest
    st.session_state[W_RUNS] = [runs[0].settings_key] if runs else []
st.session_state[f"{W_RUNS}_of"] = sorted(by_key)
shown_keys: list[str] = st.multiselect(
    "Stored runs to show", list(by_key), format_func=lambda k: run_label(by_key[k]), key=W_RUNS,
    help="A run is every point stored with the same evaluation settings (tier, benchmark, items, reference, "
         "prompt format, model dtype…). Each run is drawn on its own: heatmaps per run, one series per run.",
    disabled=len(runs) < 2) if runs else []
rows = charts.select_rows(all_rows, tier=tier, benchmark=benchmark, subset=subset_arg, settings_keys=shown_keys)
only_grid = st.toggle("Heatmaps: only the α/β values of the sweep grid above", key="w_to_only_grid",
                      help="Off: every stored point of the run (cells never evaluated are grey). On: just this grid.")


def delete_run(key: str) -> None:
    """on_click of the confirmed delete: remove the run's rows, reset the confirmation."""
    try:
        n = store.delete_run(engine.fingerprint, key, tier=tier)
    except widgets.CORE_ERRORS as exc:
        session.put(session.K_SWEEP_MSG, f"could not delete the run: {widgets.error_text(exc)}")
        return
    session.put(session.K_SWEEP_MSG, f"deleted {n} stored points of run {key[:8]}")
    st.session_state["w_to_clear_ok"] = False


if runs:
    with st.expander("Clear a stored run", icon=":material/delete:"):
        victim = st.selectbox("Run", list(by_key), format_func=lambda k: run_label(by_key[k]), key="w_to_clear_run")
        ok = st.checkbox(f"Yes, delete the {by_key[victim].points} stored points of this run (the reference's "
                         "results and other runs stay)", key="w_to_clear_ok")
        st.button("Delete run", key="w_to_clear", disabled=not ok, on_click=delete_run, args=(victim,),
                  icon=":material/delete_forever:")

# ----------------------------------------------------------------------------- scatter axes, methods
try:
    methods = resources.comparison_methods(engine)
except widgets.CORE_ERRORS as exc:
    widgets.show_error("Could not read other methods' results", exc)
    methods = pd.DataFrame()
if not methods.empty and "benchmark" in methods.columns and benchmark != "all":
    methods = methods[methods["benchmark"].isin([benchmark, "all"])]


def other_choice_rows() -> tuple[Optional[str], dict[str, pd.DataFrame], list[pd.DataFrame]]:
    """(the current grid's series name, other θ_clean / epoch choices' composed rows of this
    tier/benchmark/subset by Choice.label() — the newest evaluation per (α, β) —, their
    reference rows) when the experiment offers choices, else (None, {}, [])."""
    try:
        if not resources.has_choices(engine):
            return None, {}, []
        name = f"MSA α/β · {resources.current_choice(engine).label()}"
        grids = resources.other_choice_grids(engine, tier)
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not read the other θ_clean / epoch choices' results", exc)
        return None, {}, []
    out, refs = {}, []
    for choice, df in grids.items():
        picked = charts.select_rows(df, tier=tier, benchmark=benchmark, subset=subset_arg)
        if picked.empty:
            continue
        comp = charts.composed(picked).drop_duplicates(subset=["alpha", "beta"], keep="last")
        if not comp.empty:
            out[choice.label()] = comp
        refs.append(picked)
    return name, out, refs


grid_name, choice_rows, choice_refs = other_choice_rows()
choices = charts.axis_choices(rows, pd.concat([methods, *choice_rows.values()], ignore_index=True)
                              if choice_rows else methods)
dx, dy = charts.default_axes(rows)
x_metric: Optional[str] = None
y_metric: Optional[str] = None


def follow_default(key: str, default: Optional[str], fallback: int) -> None:
    """The axis picker ``key`` follows the page's default (session.follow_default), else the
    ``fallback``-th metric."""
    session.follow_default(key, default if default in choices else choices[min(fallback, len(choices) - 1)], choices)


if choices:
    a1, a2, a3, a4 = st.columns([4, 4, 3, 3], vertical_alignment="bottom")
    follow_default("w_to_x", dx, 0)
    follow_default("w_to_y", dy, 1)
    x_metric = a1.selectbox("Scatter x (forgetting)", choices,
                            format_func=labels.metric_label, key="w_to_x",
                            help="Forget quality is drawn on a log scale; lower-is-better metrics on a reversed "
                                 "axis, so right is always better.")
    y_metric = a2.selectbox("Scatter y (utility)", choices,
                            format_func=labels.metric_label, key="w_to_y",
                            help="Default: model utility, unless it is 0 at most unlearned points (the tiny demo's "
                                 "full tier), then the teacher-forced utility.")
    n_methods = methods["method"].nunique() if not methods.empty else 0
    show_methods = a3.toggle(f"Other methods ({n_methods})" if n_methods else "Other methods (none stored)",
                             value=True, key="w_to_methods", disabled=methods.empty,
                             help="Named points of other methods stored for this experiment (imported "
                                  "open-unlearning runs, gradient-based baselines), one series per method.")
    if not show_methods:
        methods = pd.DataFrame()
    show_choices = a4.toggle(f"Other θ_clean / epochs ({len(choice_rows)})" if choice_rows
                             else "Other θ_clean / epochs (none stored)",
                             value=True, key="w_to_choices", disabled=not choice_rows,
                             help="The α/β points stored for the experiment's other θ_clean candidates and "
                                  "fine-tune epochs (the sidebar's pickers switch between them), one series each.")
    if not show_choices:
        choice_rows = {}


def current_row() -> Optional[dict[str, Any]]:
    """A stored evaluation at the current point with this page's settings, when one exists."""
    try:
        res = resources.stored_evaluation(engine, here, tier=tier, benchmark=benchmark, subset=subset_arg)
    except widgets.CORE_ERRORS:
        return None
    return None if res is None else res.flat()


# ----------------------------------------------------------------------------- refine
def refinement(data: pd.DataFrame) -> list[tuple[float, float]]:
    """New points where the shown front of (x, y) bends (x, y turned so that larger is better)."""
    comp = charts.composed(data)
    if x_metric not in comp.columns or y_metric not in comp.columns or comp.empty:
        return []
    comp = comp.dropna(subset=[x_metric, y_metric])

    def better(name: str) -> pd.Series:
        vals = comp[name].astype(float)
        return np.log10(vals.clip(lower=1e-30)) if name in charts.LOG_METRICS else charts.goodness(name, vals)

    return refine_points(list(zip(comp["alpha"], comp["beta"], better(x_metric), better(y_metric))),
                         max_new=REFINE_POINTS)


new_points = refinement(rows)
refine = b2.button(f"Refine where the front bends (+{len(new_points)} point{'' if len(new_points) == 1 else 's'})",
                   key="w_to_refine",
                   disabled=not new_points,
                   help="Adds points half-way between neighbours on the Pareto front of the scatter's axes, most "
                        "bent part first. " + ("New: " + ", ".join(f"(α={a:g}, β={b:g})" for a, b in new_points)
                                               if new_points else "Needs a front of at least two stored points."))

# ----------------------------------------------------------------------------- charts
chart_slot = st.empty()


def reference_of(df: pd.DataFrame) -> Optional[pd.Series]:
    """The reference model's row: this choice's, else one stored with another choice (the same model)."""
    ref = charts.reference_row(df)
    for other in choice_refs:
        if ref is not None:
            break
        ref = charts.reference_row(other)
    return ref


def draw(df: pd.DataFrame, version: int) -> None:
    with chart_slot.container():
        comp = charts.composed(df)
        if comp.empty:
            st.info("No results for this tier/benchmark/run yet: run a sweep.")
            if x_metric and y_metric and (choice_rows or not methods.empty):  # the other series alone
                st.plotly_chart(charts.tradeoff_scatter(df, x_metric, y_metric, here, reference_of(df),
                                                        methods=methods, choice_series=choice_rows,
                                                        grid_name=grid_name),
                                key=f"scatter_{version}", config={"displaylogo": False})
            return
        st.caption(f"{len(comp)} points shown ({tier} tier, {benchmark}"
                   f"{'' if subset_arg is None else f', first {subset_arg} items per set'}"
                   f"{'' if len(shown_keys) < 2 else f', {len(shown_keys)} runs'}).")
        run_keys = list(dict.fromkeys(comp["settings_key"])) if "settings_key" in comp.columns else [None]
        tabs = st.tabs([f"Run {k[:8]}" for k in run_keys]) if len(run_keys) > 1 else [st.container()]
        for tab, key in zip(tabs, run_keys):
            one = comp if key is None else comp[comp["settings_key"] == key]
            if only_grid:
                one = one[one["alpha"].isin(alphas) & one["beta"].isin(betas)]
            with tab:
                if one.empty:
                    st.info("No stored point of this run is on the sweep grid above.")
                    continue
                heat = charts.heatmap_metrics(one, benchmark)
                cols = st.columns(2)
                for i, name in enumerate(heat):
                    cols[i % 2].plotly_chart(charts.heatmap(one, name, here), key=f"hm_{key}_{name}_{version}",
                                             config={"displaylogo": False})
        if x_metric and y_metric:
            names = {k: k[:8] for k in run_keys if k is not None}
            st.plotly_chart(charts.tradeoff_scatter(df, x_metric, y_metric, here, reference_of(df),
                                                    methods=methods, run_names=names, current_row=current_row(),
                                                    choice_series=choice_rows, grid_name=grid_name),
                            key=f"scatter_{version}", config={"displaylogo": False})
        line_metrics = [m for m in charts.heatmap_metrics(comp, benchmark) if m in comp.columns]
        if line_metrics:
            newest = comp[comp["settings_key"] == run_keys[0]] if run_keys[0] is not None else comp
            st.plotly_chart(charts.alpha_lines(newest, line_metrics, here.beta, alpha=here.alpha),
                            key=f"lines_{version}", config={"displaylogo": False})


draw(rows, 0)


# ----------------------------------------------------------------------------- best point per series
def best_table() -> None:
    """Per series (this choice's runs, other choices, other methods): its best forget quality among the
    points keeping ≥ UTILITY_KEEP of the corrupted model's utility."""
    comp = charts.composed(rows)
    name = grid_name or "MSA α/β"
    keys = list(dict.fromkeys(comp["settings_key"])) if "settings_key" in comp.columns else []
    series = {name if len(keys) == 1 else f"{name} · run {k[:8]}": comp[comp["settings_key"] == k] for k in keys}
    series.update(choice_rows)
    if not any(not v.empty for v in series.values()) and methods.empty:
        return
    pool = pd.concat([comp, *choice_rows.values()], ignore_index=True) if choice_rows else comp
    base = pool[(pool["alpha"] == 0) & (pool["beta"] == 0)] if not pool.empty else pool
    corrupted = base.iloc[-1] if not base.empty else None
    table = charts.best_points(series, methods, corrupted, keep=UTILITY_KEEP)
    util, floor = charts.utility_floor(corrupted, UTILITY_KEEP)
    st.subheader(f"Best point per series at ≥ {UTILITY_KEEP:.0%} of the corrupted model's utility")
    if util is None:
        st.caption("The corrupted model's utility (α = β = 0) is not stored for these settings, so there is no "
                   "utility floor: each series' best forget quality over all its points.")
    else:
        st.caption(f"Floor: {labels.metric_label(util, with_direction=False)} ≥ {floor:.3g} "
                   f"({UTILITY_KEEP:.0%} of the corrupted model's {floor / UTILITY_KEEP:.3g}); among those points, "
                   "the highest forget quality (else the forget truth ratio). Empty metrics: no point of the "
                   "series keeps that utility.")
    shown = table.rename(columns={c: f"{labels.metric_label(c, with_direction=False)} {labels.arrow(c)}"
                                  for c in table.columns if c not in ("series", "point", "kept")})
    st.dataframe(shown, hide_index=True, width="stretch", key="to_best",
                 column_config={"kept": st.column_config.CheckboxColumn(f"keeps ≥ {UTILITY_KEEP:.0%}")})


best_table()


def shown_table() -> pd.DataFrame:
    """The shown rows (the selected runs, the reference) and other methods' named points, as one table."""
    parts = [rows.assign(method=np.where(rows["model"].fillna("composed") == "composed", "MSA α/β", rows["model"]))
             if not rows.empty else rows]
    parts += [df.assign(method=label) for label, df in choice_rows.items()]
    if not methods.empty:
        parts.append(methods)
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


table = shown_table()
st.download_button("Download the shown results (CSV)", table.to_csv(index=False).encode("utf-8"),
                   file_name=f"msa_tradeoff_{exp.name}_{tier}_{benchmark}.csv", mime="text/csv",
                   key="w_to_csv", disabled=table.empty, icon=":material/download:")

# ----------------------------------------------------------------------------- other methods and the attack
# Above the sweep execution below, which ends in st.rerun.
interop.import_panel(engine)
rtt_panel.recovery_panel(engine)

# ----------------------------------------------------------------------------- running a sweep
if run or refine:
    todo = [(a, b) for a in alphas for b in betas] if run else new_points
    session.put(K_SWEEP_RUNNING, {"points": len(todo)})
    done = {"n": 0}
    bar = progress_slot.progress(0.0, text="starting the sweep")
    # A click anywhere (this button first) makes Streamlit rerun the page, which stops this run at
    # its next progress update; the flag above, still set then, tells the next run what happened.
    cancel_slot.button("Cancel sweep", key="w_to_cancel", icon=":material/stop_circle:",
                       help="Stops after the point in flight; the points done so far stay stored and a new "
                            "*Run / resume* skips them.")
    on_progress = widgets.bar_progress(bar)

    def on_point(result: EvalResult, _was_stored: bool) -> None:
        done["n"] += 1
        # Redraw with the run being written (its settings key), not the runs picked before.
        draw(charts.select_rows(load_rows(), tier=tier, benchmark=benchmark, subset=subset_arg,
                                settings_keys=[result.settings_key]), done["n"])

    try:
        run_points(engine, store, todo, tier=tier, benchmark=benchmark, subset=subset_arg,
                   progress=on_progress, on_point=on_point, reference_cache=resources.reference_cache())
    except widgets.CORE_ERRORS as exc:
        session.pop(K_SWEEP_RUNNING)
        cancel_slot.empty()
        widgets.show_error("Sweep failed", exc)
        draw(load_rows(), done["n"] + 1)
    else:
        session.pop(K_SWEEP_RUNNING)
        # Rerun so the sidebar's "Best" preset sees the new points, and the run picker shows the
        # sweep's run (the newest); the message survives it.
        st.session_state.pop(W_RUNS, None)
        what = "sweep" if run else "refinement"
        session.put(session.K_SWEEP_MSG, f"{what} finished: {done['n']} points evaluated or found in the store")
        st.rerun()
