"""MSA Studio: the Streamlit entrypoint (``streamlit run app.py``).

Holds the page config, the shared sidebar (experiment picker, α/β sliders with exact
number inputs, presets, device/memory and vector-cache status) and ``st.navigation``
listing the pages explicitly. Because the sidebar widgets live here, α and β keep their
values on every page. The engine is loaded here (once per server process) with a live
progress bar, before the chosen page runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from pages import state, ui  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

st.set_page_config(page_title="MSA Studio", page_icon=":material/neurology:", layout="wide")
state.init_session()

PAGES = [
    st.Page("pages/experiment.py", title="Experiment", icon=":material/science:", default=True),
    st.Page("pages/playground.py", title="Playground", icon=":material/tune:"),
    st.Page("pages/tradeoff.py", title="Trade-off", icon=":material/insights:"),
    st.Page("pages/probe.py", title="Probe", icon=":material/search:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]
nav = st.navigation(PAGES)


def _pick_experiment() -> None:
    """The experiment picker: embedded demo, a file path, or a recently used file."""
    st.sidebar.subheader("Experiment")
    source = st.sidebar.radio(
        "Source", ["Embedded demo", "Experiment file", "Recent"], key="w_exp_source", horizontal=True,
        label_visibility="collapsed",
    )
    if source == "Embedded demo":
        quick = st.sidebar.toggle(
            "Quick demo (smaller, for tests)", value=state.demo_quick_default(), key="w_demo_quick",
            help="The full demo makes a clearer point; the quick one builds in well under a minute.",
        )
        if st.sidebar.button("Build / load the demo", key="w_demo_build", width="stretch"):
            st.session_state[state.K_PENDING_DEMO] = "quick" if quick else "full"
    elif source == "Experiment file":
        path = st.sidebar.text_input("Path to an experiment .yaml", key="w_exp_path_input",
                                     placeholder="/path/to/experiment.yaml")
        if st.sidebar.button("Load", key="w_exp_load", width="stretch", disabled=not path.strip()):
            ui.try_choose_experiment(path.strip(), where=st.sidebar)
    else:
        recents = state.recent_experiments()
        if not recents:
            st.sidebar.caption("No recently used experiments yet.")
        else:
            choice = st.sidebar.selectbox("Recently used", recents, key="w_exp_recent")
            if st.sidebar.button("Load", key="w_exp_load_recent", width="stretch"):
                ui.try_choose_experiment(choice, where=st.sidebar)
    current = state.experiment_path()
    if current:
        st.sidebar.container(key="exp_current").caption(f"Current: `{current}`")


def _coefficients(alpha_range: tuple[float, float], beta_range: tuple[float, float]) -> None:
    """α/β sliders with matching number inputs, and the presets."""
    state.clamp_point(alpha_range, beta_range)
    st.sidebar.subheader("Coefficients")
    st.sidebar.latex(r"\theta = \theta_c - \alpha\,\tau_f + \beta\,\tau_r")
    for name, rng, w_slider, w_num, helptext in (
        ("alpha", alpha_range, state.W_ALPHA_SLIDER, state.W_ALPHA_NUM,
         "α scales the forget vector τ_f = θ_forget − θ_clean that is subtracted."),
        ("beta", beta_range, state.W_BETA_SLIDER, state.W_BETA_NUM,
         "β scales the retain vector τ_r = θ_retain − θ_clean that is added back."),
    ):
        symbol = "α" if name == "alpha" else "β"
        c1, c2 = st.sidebar.columns([3, 2], vertical_alignment="bottom")
        c1.slider(f"{symbol} ({name})", min_value=float(rng[0]), max_value=float(rng[1]), step=0.05,
                  key=w_slider, on_change=state.sync_from_widget, args=(name, w_slider), help=helptext)
        c2.number_input(f"exact {symbol}", min_value=float(rng[0]), max_value=float(rng[1]), step=0.01,
                        format="%.3f", key=w_num, on_change=state.sync_from_widget, args=(name, w_num))
    best = ui.best_point_or_none()
    presets = st.sidebar.container(horizontal=True, gap="small")
    presets.button("Corrupted", key="w_preset_corrupted", help="(α, β) = (0, 0): the model before unlearning",
                   on_click=state.set_point, args=(0.0, 0.0), width="content")
    presets.button("Paper", key="w_preset_paper", help="(α, β) = (1, 1), the paper's default",
                   on_click=state.set_point, args=(1.0, 1.0), width="content")
    presets.button("Best", key="w_preset_best", disabled=best is None, width="content",
                   help=f"The best stored point: (α, β) = ({best[0]:g}, {best[1]:g}), highest forget quality "
                   "keeping ≥ 90% of the corrupted model's utility" if best
                   else "No sweep results yet (run one on the Trade-off page)",
                   on_click=state.set_point, args=best or (0.0, 0.0))
    a, b = state.point()
    st.sidebar.container(key="point_caption").caption(f"Current point: α = {a:.3f}, β = {b:.3f}")


_pick_experiment()
engine = None
exp_path = state.experiment_path()
if exp_path:
    try:
        exp = state.experiment(exp_path)
    except ui.CORE_ERRORS as exc:
        ui.show_error("Could not read the experiment file", exc)
        state.choose_experiment(None)
    else:
        _coefficients(exp.alpha_range, exp.beta_range)
info_box = st.sidebar.container(key="engine_info")

# Work asked for from the sidebar or a page happens here, in the main area, with progress.
ui.run_pending_demo_build()
if state.experiment_path():
    engine = ui.ensure_engine()
with info_box:
    ui.engine_sidebar_info(engine)

# Pages check this flag: a page run without the entrypoint (Streamlit's legacy pages/
# mode, e.g. a deep link as the very first request of a fresh server) goes back here.
st.session_state[ui.ENTRY_FLAG] = True
try:
    nav.run()
finally:
    st.session_state.pop(ui.ENTRY_FLAG, None)
