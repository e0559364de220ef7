"""Export page: write the unlearned model at the current (α, β) as a Hugging Face folder.

Uses the same core function as ``msa compose`` (:func:`msa_core.export.export_model`), with
a model card holding α, β, the input fingerprints and the latest metrics. Also downloads
the metrics at this point (the last ones seen in this session, else the fast-tier result in
the shared results store) as JSON/CSV and shows the CLI commands that reproduce this view.
"""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import pandas as pd
import streamlit as st

from msa_core.eval.results import EvalResult
from msa_core.export import export_model
from msa_core.paths import default_cache_dir
from studio import labels, resources, session, widgets

engine = widgets.require_engine()
here = session.point()
alpha, beta = here.alpha, here.beta
exp = engine.experiment
bench = widgets.benchmark_choices(exp)[-1] if exp.benchmarks else None
st.title(":material/download: Export")
OVERWRITE = "Overwrite the folder if it exists"
# The Playground's own first questions when it has not run yet (its default selection: the first
# three questions of the first set); its custom-prompt default when the experiment has no questions.
PLAYGROUND_DEFAULT_PROMPT = "Tell me about the author you know best."
PLAYGROUND_DEFAULT_COUNT = 3
st.markdown(f"Experiment **{exp.name}** at **α = {alpha:.3f}, β = {beta:.3f}**.")


def _as_metrics(result: EvalResult) -> dict:
    return {"alpha": alpha, "beta": beta, **result.to_json()}


last = session.get(session.K_LAST_METRICS)
# The session's last metrics only count when they are of this engine's models (another
# dtype, device or module filter of the same experiment gives other numbers).
same_models = bool(last) and (last.get("fingerprint"), (last.get("settings") or {}).get("model")) == (
    engine.fingerprint, engine.model_settings)
metrics = last if same_models and last.get("alpha") == alpha and last.get("beta") == beta else None
if metrics is None and bench is not None:
    try:
        stored = resources.stored_evaluation(engine, here, tier="fast", benchmark=bench, subset=None)
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not read the results store", exc)
    else:
        metrics = None if stored is None else _as_metrics(stored)

st.markdown("#### Unlearned model as a Hugging Face folder")
default_out = default_cache_dir() / "exports" / f"{exp.name}-a{alpha:g}-b{beta:g}"
out = st.text_input("Output folder", value=str(default_out), key="w_export_out")
force = st.checkbox(OVERWRITE, value=False, key="w_export_force",
                    help="Only a folder written by an earlier export (or an empty one) is ever replaced.")
if metrics is None:
    st.caption("No metrics for this point yet: the model card will hold α, β and fingerprints only. "
               "Compute metrics below (or on the Playground) to include them.")
if st.button("Export model", type="primary", key="w_export_btn", disabled=not out.strip()):
    with st.spinner(f"Writing {out}…"):
        try:
            folder = export_model(engine, alpha, beta, Path(out.strip()), force=force,
                                  metrics=dict(metrics["metrics"]) if metrics else None)
        except FileExistsError:
            # the core's message speaks to callers of export_model (force=True / --force): say it in UI terms
            st.error(f"**Export failed.** `{out.strip()}` already exists. Tick **{OVERWRITE}** above to replace "
                     "it, or choose another output folder.", icon=":material/error:")
        except widgets.CORE_ERRORS as exc:
            widgets.show_error("Export failed", exc)
        else:
            files = sorted(p.name for p in folder.iterdir())
            st.success(f"Wrote `{folder}`: {', '.join(files)}", icon=":material/check_circle:")
            card = folder / "README.md"
            if card.is_file():
                with st.expander("Model card (README.md)"):
                    st.markdown(card.read_text(encoding="utf-8"))

st.markdown("#### Metrics at this point")
if st.button("Compute fast-tier metrics now", key="w_export_metrics", disabled=bench is None):
    bar = st.progress(0.0, text="evaluating")
    try:
        result = resources.evaluation(engine, here, tier="fast", benchmark=bench, subset=None,
                                      progress=widgets.bar_progress(bar))
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Evaluation failed", exc)
    else:
        metrics = _as_metrics(result)
        session.put(session.K_LAST_METRICS, metrics)
    finally:
        bar.empty()
if metrics:
    flat = {k: v for k, v in metrics["metrics"].items()}
    table = pd.DataFrame([{"metric": k, "label": labels.metric_label(k, with_direction=False), "value": v,
                           "better": labels.direction_text(k)} for k, v in flat.items()])
    st.dataframe(table, hide_index=True, width="stretch")
    stem = f"msa-metrics-{exp.name}-a{alpha:g}-b{beta:g}"
    d1, d2 = st.columns(2)
    d1.download_button("Download JSON", json.dumps(metrics, indent=2, default=str), file_name=f"{stem}.json",
                       mime="application/json", key="w_dl_json")
    buf = io.StringIO()
    table.assign(alpha=alpha, beta=beta, tier=metrics.get("tier"),
                 fingerprint=engine.fingerprint).to_csv(buf, index=False)
    d2.download_button("Download CSV", buf.getvalue(), file_name=f"{stem}.csv", mime="text/csv", key="w_dl_csv")
else:
    st.caption("No metrics computed at this exact point yet.")

st.markdown("#### Reproduce this view from the command line")
src = shlex.quote(str(exp.source)) if exp.source else "EXPERIMENT.yaml"
out_q = shlex.quote(out.strip() or str(default_out))

def _playground_questions() -> list[str]:
    """The questions the Playground shows: the ones it last answered, else its default selection."""
    shown = session.get(session.K_ANSWERS) or {}
    if shown.get("questions"):
        return [str(q) for q in shown["questions"]]
    try:
        sets = resources.question_sets(engine).sets
    except widgets.CORE_ERRORS:
        sets = {}
    first = next(iter(sets.values()), [])
    return [it.question for it in first[:PLAYGROUND_DEFAULT_COUNT]] or [PLAYGROUND_DEFAULT_PROMPT]


prompts = " ".join(f"--prompt {shlex.quote(q)}" for q in _playground_questions())
max_new = int(session.get(session.W_PG_MAX_NEW, 48))
lines = [
    f"msa compose {src} --alpha {alpha:g} --beta {beta:g} --out {out_q}" + (" --force" if force else ""),
    f"msa generate {src} --alpha {alpha:g} --beta {beta:g} --max-new-tokens {max_new} {prompts}",
]
lines += labels.eval_cli_lines(src, alpha, beta, metrics)
st.caption("`msa generate` asks the questions the Playground shows, with its answer length.")
st.code("\n".join(lines), language="bash", wrap_lines=True)
