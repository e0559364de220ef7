"""Layers page: where in the network forgetting happens, at the current (α, β).

Per layer: how far the unlearned model's weights are from the corrupted and the reference
model's (relative L2), and how similar its hidden states are to theirs on a handful of
forget and retain QA texts (linear CKA). Both follow the sidebar's sliders; the math is
:mod:`msa_core.layers`, memoised per point in :mod:`studio.resources`.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from msa_core.layers import cka_per_layer
from msa_core.targets import Side, Target
from studio import charts, glossary, labels, resources, session, widgets

# Texts per set: a handful keeps a slider move to one short forward pass per model.
DEFAULT_TEXTS, MAX_TEXTS = 4, 8
FORGET_COLOR, RETAIN_COLOR, NEUTRAL_COLOR = "#c2410c", "#15803d", "#6b7280"

engine = widgets.require_engine()
here = session.point()
st.title(":material/stacks: Layers")
st.caption(f"Unlearned model at **α = {here.alpha:.3f}, β = {here.beta:.3f}** (move the sliders in the sidebar): "
           "where in the network does it differ from the model before unlearning, and from the one that never "
           f"saw the forget set? Terms: [relative L2]({glossary.link('relative_l2')}), "
           f"[linear CKA]({glossary.link('linear_cka')}).")
has_ref = engine.experiment.checkpoints.reference is not None

t0 = time.perf_counter()
try:
    with st.spinner("Comparing weights layer by layer…"):
        dist = resources.layer_distances(engine, here)
        ref_dist = resources.reference_layer_distances(engine)
except widgets.CORE_ERRORS as exc:
    widgets.show_error("Could not compare the weights", exc)
    st.stop()
names = [row.layer for row in dist["corrupted"]]
weights = {"unlearned ↔ corrupted": [row.relative for row in dist["corrupted"]]}
if "reference" in dist:
    weights["unlearned ↔ reference"] = [row.relative for row in dist["reference"]]
if ref_dist:
    weights["reference ↔ corrupted (scale)"] = [row.relative for row in ref_dist]
st.markdown("#### Weights")
st.plotly_chart(charts.layer_lines_figure(
    names, weights, title="Relative L2 distance per layer (0 = same weights)",
    y_title="‖θ_unlearned − θ_x‖ / ‖θ_x‖",
    colors={"unlearned ↔ corrupted": FORGET_COLOR, "unlearned ↔ reference": RETAIN_COLOR,
            "reference ↔ corrupted (scale)": NEUTRAL_COLOR},
    dashed=("reference ↔ corrupted (scale)",)), key="layers_weights")
st.caption("The distance to the corrupted model is α·τ_f − β·τ_r as a fraction of the layer's weights: it grows "
           "with the sliders. Where the distance to the reference shrinks below the dashed line, that layer moved "
           "toward the model that never learned the forget set."
           + ("" if has_ref else " This experiment has no reference model, so only the corrupted model is shown."))

st.markdown("#### Representations")
sets = resources.question_sets(engine).sets
n_texts = int(st.number_input("Texts per set", min_value=1, max_value=MAX_TEXTS, value=DEFAULT_TEXTS,
                              key="w_layers_texts",
                              help="The first N forget and N retain questions with their gold answers, in the "
                                   "models' QA format; every token of them is one sample for the CKA."))
pairs = {kind: tuple((it.question, it.answer) for it in sets.get(kind, [])[:n_texts] if it.answer)
         for kind in ("forget", "retain")}
pairs = {kind: p for kind, p in pairs.items() if p}
cka: dict[str, list[float]] = {}
tokens: dict[str, int] = {}
if not pairs:
    st.info("This experiment has no TOFU-format forget or retain questions to compare representations on.")
else:
    others: list[tuple[str, Target]] = [("corrupted", Side("corrupted"))] + (
        [("reference", Side("reference"))] if has_ref else [])
    try:
        with st.spinner("Running the models on the forget and retain texts…"):
            for kind, texts in pairs.items():
                mine = resources.hidden_grams(engine, here, texts)
                tokens[kind] = mine.tokens
                for other, target in others:
                    values = cka_per_layer(mine, resources.hidden_grams(engine, target, texts))
                    cka[f"{kind} texts: unlearned vs {other}"] = [v for _, v in values]
                    cka_layers = [name for name, _ in values]
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not compare the representations", exc)
        st.stop()
    colors = {name: FORGET_COLOR if name.startswith("forget") else RETAIN_COLOR for name in cka}
    st.plotly_chart(charts.layer_lines_figure(
        cka_layers, cka, title="Linear CKA of hidden states per layer (1 = same representation)",
        y_title="linear CKA", y_range=(0.0, 1.02), colors=colors,
        dashed=[name for name in cka if name.endswith("reference")]), key="layers_cka")
    st.caption("Solid lines: against the corrupted model; dashed: against the reference. Forgetting shows as a "
               "forget-texts line (orange) that drops below 1 against the corrupted model while the retain-texts "
               "line (green) stays near 1. 'embed' is the embedding output, each L… a decoder layer's output; "
               + ", ".join(f"{n} {kind} tokens" for kind, n in tokens.items()) + ".")
st.caption(f"Computed in {labels.fmt_seconds(time.perf_counter() - t0)} (memoised per point: moving back is instant).")

with st.expander("Per-layer table"):
    table = pd.DataFrame({"layer": names, **weights}).set_index("layer")
    if cka:
        reps = pd.DataFrame({"layer": cka_layers, **{f"CKA {k}": v for k, v in cka.items()}}).set_index("layer")
        order = names + [name for name in cka_layers if name not in names]  # model order, not alphabetical
        table = table.join(reps, how="outer").reindex(order)
    table = table.reset_index()
    st.dataframe(table, hide_index=True, width="stretch")
