"""MSA Studio: the Streamlit entrypoint (``streamlit run app.py``).

Holds the page config, the shared sidebar (experiment picker, α/β sliders with exact
number inputs, presets, device/memory and vector-cache status) and ``st.navigation``
listing the pages explicitly. Because the sidebar widgets live here, α and β keep their
values on every page; the view (experiment, α, β, page, question selection) also lives in
the URL (``studio/links.py``), so a reload, a new tab or a shared link restores it. The
engine is loaded here (once per server process) with a live progress bar, before the
chosen page runs. The pieces live in ``studio/``; the pages in ``pages/``; ``streamlit run``
puts this folder on ``sys.path``, so both import as is.
"""

from __future__ import annotations

import logging

import streamlit as st

from msa_core.log_setup import configure_logging
from studio import links, resources, session, widgets

configure_logging(logging.INFO)  # basicConfig, minus rouge_score's absl INFO lines (msa_core/log_setup.py)

st.set_page_config(page_title="MSA Studio", page_icon=":material/neurology:", layout="wide")
session.init_session()

PAGES = [
    st.Page("pages/experiment.py", title="Experiment", icon=":material/science:", default=True),
    st.Page("pages/playground.py", title="Playground", icon=":material/tune:"),
    st.Page("pages/tradeoff.py", title="Trade-off", icon=":material/insights:"),
    st.Page("pages/probe.py", title="Probe", icon=":material/search:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
    st.Page("pages/layers.py", title="Layers", icon=":material/stacks:"),
    st.Page("pages/guided.py", title="Guided demo", icon=":material/slideshow:"),
    st.Page("pages/glossary.py", title="Glossary", icon=":material/menu_book:"),
]
nav = st.navigation(PAGES)
links.restore(PAGES, nav)  # once per session: the URL's experiment, α, β, page, questions (or the last experiment)
links.show_warnings()

widgets.experiment_picker()
engine = None
exp_path = session.experiment_path()
if exp_path:
    try:
        exp = resources.experiment(exp_path)
    # Any failure (see widgets.ensure_engine): an escaping one would keep the file chosen and
    # fail again on every rerun; show_error logs it, the choice is cleared.
    except Exception as exc:
        widgets.show_error("Could not read the experiment file", exc)
        widgets.choose_experiment(None)
    else:
        widgets.coefficient_controls(exp)
info_box = st.sidebar.container(key="engine_info")

# Work asked for from the sidebar or a page happens here, in the main area, with progress.
widgets.run_pending_demo_build()
if session.experiment_path():
    engine = widgets.ensure_engine()
with info_box:
    widgets.engine_sidebar_info(engine)

links.write(nav)  # the view into the URL, so a reload or a shared link shows it again
session.put(session.K_ENTRY, True)  # see widgets.page_guard
try:
    nav.run()
finally:
    session.pop(session.K_ENTRY)
