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
# Forget/retain texts in the Playground's orange/green; the weight chart's lines in colours of their own.
FORGET_COLOR, RETAIN_COLOR, NEUTRAL_COLOR = "#c2410c", "#15803d", "#6b7280"
CORRUPTED_COLOR, REFERENCE_COLOR = "#7c3aed", "#0369a1"

engine = widgets.require_engine()
here = session.point()
st.title(":material/stacks: Layers")
st.caption(f"Unlearned model at **α = {here.alpha:.3f}, β = {here.beta:.3f}** (move the sliders in the sidebar): "
           "where in the network does it differ from the model before unlearning, and from the one that never "
           f"saw the forget set? Terms: [relative L2]({glossary.link('relative_l2')}), "
           f"[linear CKA]({glossary.link('linear_cka')}).")
has_ref = engine.experiment.checkpoints.reference is not None

sets = resources.question_sets(engine).sets
left, _ = st.columns([1, 3])
n_texts = int(left.number_input("Texts per set (representations)", min_value=1, max_value=MAX_TEXTS,
                                value=DEFAULT_TEXTS, key="w_layers_texts",
                                help="The first N forget and N retain questions with their gold answers, in the "
                                     "models' QA format; every token of them is one sample for the CKA."))
weights_col, reps_col = st.columns(2)

t0 = time.perf_counter()
try:
    with st.spinner("Comparing weights layer by layer…"):
        dist = resources.layer_distances(engine, here)
        ref_dist = resources.reference_layer_distances(engine)
except widgets.CORE_ERRORS as exc:
    widgets.show_error("Could not compare the weights", exc)
    st.stop()
names = [row.layer for row in dist["corrupted"]]
weights = {"to corrupted": [row.relative for row in dist["corrupted"]]}
if "reference" in dist:
    weights["to reference"] = [row.relative for row in dist["reference"]]
if ref_dist:
    weights["reference to corrupted (scale)"] = [row.relative for row in ref_dist]
with weights_col:
    st.plotly_chart(charts.layer_lines_figure(
        names, weights, title="Weights: relative L2 distance (0 = same)", y_title="‖θ_unlearned − θ_x‖ / ‖θ_x‖",
        colors={"to corrupted": CORRUPTED_COLOR, "to reference": REFERENCE_COLOR,
                "reference to corrupted (scale)": NEUTRAL_COLOR},
        dashed=("reference to corrupted (scale)",)), key="layers_weights")
    st.caption("How far the unlearned model's weights are from each model, per layer. The distance to the corrupted "
               "model is α·τ_f − β·τ_r as a fraction of the layer's weights and grows with the sliders; where the "
               "distance to the reference falls below the dashed line, that layer moved toward the model that never "
               "learned the forget set."
               + ("" if has_ref else " This experiment has no reference model: only the corrupted one is shown."))

pairs = {kind: tuple((it.question, it.answer) for it in sets.get(kind, [])[:n_texts] if it.answer)
         for kind in ("forget", "retain")}
pairs = {kind: p for kind, p in pairs.items() if p}
cka: dict[str, list[float]] = {}
cka_layers: list[str] = []
tokens: dict[str, int] = {}
with reps_col:
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
                        cka[f"{kind} texts vs {other}"] = [v for _, v in values]
                        cka_layers = [name for name, _ in values]
        except widgets.CORE_ERRORS as exc:
            widgets.show_error("Could not compare the representations", exc)
            st.stop()
        colors = {name: FORGET_COLOR if name.startswith("forget") else RETAIN_COLOR for name in cka}
        st.plotly_chart(charts.layer_lines_figure(
            cka_layers, cka, title="Hidden states: linear CKA (1 = same)", y_title="linear CKA",
            y_range=(0.0, 1.02), colors=colors, dashed=[name for name in cka if name.endswith("reference")]),
            key="layers_cka")
        st.caption("How similar the unlearned model's hidden states are to each model's on the same texts (solid: "
                   "vs corrupted, dashed: vs reference). Forgetting shows as the forget-texts line (orange) dropping "
                   "below 1 against the corrupted model while the retain-texts line (green) stays near 1. 'embed' is "
                   "the embedding output, each L… a decoder layer's output; "
                   + ", ".join(f"{n} {kind} tokens" for kind, n in tokens.items()) + ".")
st.caption(f"Computed in {labels.fmt_seconds(time.perf_counter() - t0)} (memoised per point: moving back is instant).")

with st.expander("Per-layer table"):
    table = pd.DataFrame({"layer": names, **{f"relative L2 {k}": v for k, v in weights.items()}}).set_index("layer")
    if cka:
        reps = pd.DataFrame({"layer": cka_layers, **{f"CKA {k}": v for k, v in cka.items()}}).set_index("layer")
        order = names + [name for name in cka_layers if name not in names]  # model order, not alphabetical
        table = table.join(reps, how="outer").reindex(order)
    table = table.reset_index()
    st.dataframe(table, hide_index=True, width="stretch")
