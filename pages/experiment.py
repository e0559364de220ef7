"""Experiment page: build the demo or load an experiment; what was loaded and the vectors' shape.

Before loading, the memory plan (:mod:`msa_core.plan`) for the chosen device and dtype. Shows the
compatibility report, parameter count, device placement, whether τ_f/τ_r were
computed or read from the cache (and how long that took), and per-layer norms of τ_f
and τ_r with their cosine similarity.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st

from msa_core.experiment import experiment_from_dict, load_experiment, save_experiment
from msa_core.paths import default_cache_dir
from msa_core.plan import page_rows, plan_for_experiment
from msa_core.vectors import layer_norms
from studio import charts, labels, resources, session, widgets

widgets.page_guard()
st.title(":material/science: Experiment")
engine = resources.loaded_engine()


@st.cache_data(show_spinner=False, max_entries=16)
def _plan(path: str, mtime: float, device: str, dtype: str, vector_dtype: str,
          placement: str) -> tuple[list[dict[str, str]], str, str]:
    """(rows, options, suggestion: '' when it fits) of loading ``path`` with the chosen device, dtype,
    vector dtype and placement (mtime: the file's, so an edited file is planned again)."""
    plan = plan_for_experiment(load_experiment(path), device=device, dtype=dtype, vector_dtype=vector_dtype,
                               device_map="auto" if placement == "auto" else None)
    return page_rows(plan), plan.options.label(), "" if plan.fits else plan.suggestion


def _memory_plan(path: Optional[str]) -> None:
    """Before loading: the memory the engine would take for the Device/Dtype chosen above (msa plan)."""
    if not path or not Path(path).is_file():
        return
    device, dtype = session.load_options()
    vector_dtype, placement = session.placement_options()
    try:
        rows, options, suggestion = _plan(str(path), Path(path).stat().st_mtime, device, dtype, vector_dtype,
                                          placement)
    except widgets.CORE_ERRORS as exc:
        st.caption(f"No memory plan for `{path}`: {exc}")
        return
    st.caption(f"Memory plan for `{Path(path).name}` before loading: {options} "
               f"({'fits' if not suggestion else 'does not fit'}; `msa plan` lists every option)")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    if suggestion:
        st.warning(suggestion, icon=":material/memory:")


def _load_forms() -> None:
    with st.expander("Load an experiment file or checkpoint folders", expanded=engine is None):
        c1, c2, c3, c4 = st.columns(4)
        for col, label, options, key, helptext in (
            (c1, "Device", widgets.device_choices(), session.K_DEVICE,
             "auto = the GPU when there is one. Only this machine's devices are listed. "
             "Changing it loads a second engine."),
            (c2, "Dtype", widgets.DTYPE_CHOICES, session.K_DTYPE,
             "auto = the checkpoint's dtype (bf16 on a GPU for fp32 checkpoints)."),
            (c3, "Vectors", widgets.VECTOR_DTYPE_CHOICES, session.K_VECTOR_DTYPE,
             "How τ_f, τ_r are stored: bfloat16 halves their memory (an 8B model then fits an 80 GB card); "
             "the arithmetic stays float32."),
            (c4, "Placement", widgets.placement_choices(), session.K_PLACEMENT,
             "one device = the Device above; auto = the model spread over every GPU by accelerate "
             "(each weight's vectors on its GPU)."),
        ):
            if session.get(key) not in options:  # e.g. a device this machine does not have
                session.put(key, options[0])  # the default ('auto', 'float32', 'one device')
                session.pop(session.widget_key(key))
            wkey = session.widget_mirror(key)
            col.selectbox(label, options, key=wkey, help=helptext, on_change=session.copy_widget, args=(wkey, key))
        path = st.text_input("Experiment file (.yaml)", key="w_page_exp_path", placeholder="/path/to/experiment.yaml")
        _memory_plan(path.strip() or session.experiment_path())
        if st.button("Load experiment file", key="w_page_exp_load", disabled=not path.strip()):
            if widgets.try_choose_experiment(path.strip()):
                st.rerun()
        st.markdown("**…or give the checkpoint folders** (local Hugging Face folders, safetensors):")
        with st.form("ckpt_form", border=True):
            name = st.text_input("Name", value="my-experiment", key="w_form_name")
            fields = {}
            cols = st.columns(2)
            for i, role in enumerate(("clean", "corrupted", "forget", "retain", "reference")):
                label = f"θ_{role} folder" + (" (optional)" if role == "reference" else "")
                fields[role] = cols[i % 2].text_input(label, key=f"w_form_{role}")
            tofu = cols[1].text_input("TOFU-format data folder (optional)", key="w_form_tofu")
            muse = st.text_input("MUSE-format data folder (optional)", key="w_form_muse")
            submitted = st.form_submit_button("Create and load")
        if submitted:
            raw = {"name": name.strip() or "experiment",
                   "checkpoints": {r: v.strip() for r, v in fields.items() if v.strip()},
                   "data": {"tofu": tofu.strip() or None, "muse": muse.strip() or None}}
            try:
                exp = experiment_from_dict(raw, Path.cwd())
                target = default_cache_dir() / "experiments" / f"{exp.name}.yaml"
                save_experiment(exp, target)
            except widgets.CORE_ERRORS as exc:
                widgets.show_error("Cannot create this experiment", exc)
            else:
                if widgets.try_choose_experiment(str(target)):
                    st.rerun()


if engine is None:
    widgets.no_experiment_offer()
    _load_forms()
    st.stop()

_load_forms()
exp = engine.experiment
vec = engine.vectors
st.subheader(exp.name)
c = st.columns(5)
c[0].metric("Parameters", f"{engine.parameter_count / 1e6:.2f} M")
c[1].metric("Device", str(engine.device))
c[2].metric("Dtype", str(engine.dtype).replace("torch.", ""))
c[3].metric("Engine load", labels.fmt_seconds(engine.load_seconds))
c[4].metric("Vectors", "from cache" if vec.from_cache else "computed", f"in {labels.fmt_seconds(vec.seconds)}",
            delta_color="off", delta_arrow="off")
st.caption(f"Experiment file `{exp.source}` · fingerprint `{engine.fingerprint}` · vector cache `{vec.path}`")

st.markdown("#### Checkpoints and compatibility")
rep = engine.compat
rows = [{"role": role, "folder": str(folder), "dtype": (rep.dtypes.get(role, "") if rep else "")}
        for role, folder in exp.checkpoints.as_dict().items()]
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
if rep is not None:
    st.success(f"All {len(rep.roles)} checkpoints are compatible: {rep.architecture}, {rep.num_tensors} tensors, "
               f"{rep.num_parameters / 1e6:.2f} M parameters, vocabulary {rep.vocab_size}.",
               icon=":material/check_circle:")
    for p in rep.problems:
        st.warning(p)
mem = engine.memory_bytes()
st.caption("Memory in use: " + ", ".join(f"{k} {labels.fmt_bytes(v)}" for k, v in mem.items())
           + f" · side models loaded: {', '.join(engine.loaded_side_models()) or 'none'}")
data = exp.data
st.caption(f"Data: TOFU `{data.tofu or '—'}` (forget `{data.forget_split}`, retain `{data.retain_split}`, "
           f"holdout `{data.holdout_split}`) · MUSE `{data.muse or '—'}` · α ∈ {list(exp.alpha_range)}, "
           f"β ∈ {list(exp.beta_range)}")

st.markdown("#### Forget and retain vectors per layer")
layers = layer_norms(vec.norms)
if not layers:
    st.info("The vector cache holds no per-tensor norms.")
else:
    st.plotly_chart(charts.layer_norms_figure(layers), key="norms_chart")
    st.caption("High cosine means τ_f and τ_r move the same weights the same way: subtracting α·τ_f then also "
               "removes retained knowledge, which β·τ_r puts back.")
    with st.expander("Per-layer table"):
        st.dataframe(pd.DataFrame([asdict(row) for row in layers]), hide_index=True, width="stretch")
