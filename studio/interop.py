"""The "Import open-unlearning results" panel: a run folder in, a named point on the trade-off plots out.

:func:`import_panel` draws an expander with a folder path, a method name and an Import
button that calls :func:`msa_core.eval.openunlearning.import_run` into the app's results
store (the same store ``msa import`` writes), then says what was imported. Errors are shown
with :func:`studio.widgets.show_error`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from studio import resources, session
from studio.widgets import CORE_ERRORS, show_error

if TYPE_CHECKING:
    from msa_core.engine import Engine

FOLDER_KEY = "interop_folder"
NAME_KEY = "interop_method"
BUTTON_KEY = "interop_import"
LAST_KEY = "interop_last"


def import_panel(engine: Engine) -> None:
    """Draw the import expander for ``engine``'s experiment (see the module docstring)."""
    from msa_core.eval.openunlearning import import_run

    with st.expander("Import open-unlearning results", expanded=False):
        st.caption("A folder with open-unlearning's TOFU_EVAL.json and/or TOFU_SUMMARY.json (or its `evals/` "
                   "folder), from any method: NPO, GradDiff, RMU, …. It becomes a named point of this experiment "
                   "on the trade-off plots; importing the same folder again replaces it. "
                   "Same as `msa import FOLDER --name METHOD EXPERIMENT`.")
        folder = st.text_input("Result folder", key=FOLDER_KEY, placeholder="saves/unlearn/tofu_NPO/evals")
        method = st.text_input("Method name", key=NAME_KEY, placeholder="default: the folder's name",
                               help="The series the point joins (e.g. NPO, GradDiff).")
        if st.button("Import", key=BUTTON_KEY, disabled=not folder.strip()):
            try:
                res = import_run(resources.results_store(), engine.fingerprint, folder.strip(),
                                 method.strip() or None)
            except CORE_ERRORS as exc:
                show_error("Could not import the open-unlearning results", exc)
            else:
                session.put(LAST_KEY, {"model": res.model, "tier": res.tier, "metrics": len(res.metrics),
                                       "source": res.settings.get("source")})
        last = session.get(LAST_KEY)
        if last:
            st.success(f"Imported **{last['model']}** ({last['tier']} tier, {last['metrics']} metrics) from "
                       f"`{last['source']}`.", icon=":material/check_circle:")
