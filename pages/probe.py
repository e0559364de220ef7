"""Probe page: is a fact really gone? Everything about one entity (author), question by question.

Each of the entity's QA pairs is one card: the question, the gold answer, then one answer card
per model (corrupted, unlearned at (α, β), pinned points, reference, clean) with its outcome
colour, p(gold) and truth ratio, laid out as on the Playground (:mod:`studio.answer_cards`).
A per-model summary, the same cards for paraphrased questions, and free-form extraction
prompts ("Tell me everything about …") follow. Runs behind a button; results are memoised,
so revisiting an entity at the same (α, β) is instant.
"""

from __future__ import annotations

import statistics
import time
from typing import Optional

import pandas as pd
import streamlit as st

from msa_core.eval.probe import entity_groups, holds_gold
from msa_core.eval.verdict import fact_kind
from studio import answer_cards, compare, labels, resources, session, widgets

TR_HELP = (
    "**Truth ratio** TR = P(perturbed) / P(paraphrased): how likely the model finds the *wrong* (perturbed) "
    "answers relative to a correct paraphrase of the gold answer. Each P is the answer's per-token probability "
    "(exp of the mean token log-likelihood), and P(perturbed) is the geometric mean over the wrong answers. "
    "**TR < 1**: the true answer is preferred (the model knows the fact). **TR ≈ 1**: no preference. "
    "**TR > 1**: the wrong answers are preferred. A model that never saw the fact does not sit at exactly 1: "
    "it prefers whichever phrasing reads more like its training data, which is often the perturbed one "
    "(TR > 1). So judge an unlearned model against the **reference** (retain-only) model's TR, not against 1: "
    "forget quality is exactly that comparison (a KS test of the two TR distributions over the forget set)."
)

engine = widgets.require_engine()
here = session.point()
alpha, beta = here.alpha, here.beta
st.title(":material/search: Probe")
st.caption(f"Unlearned model at **α = {alpha:.3f}, β = {beta:.3f}**. TR = P(perturbed) / P(paraphrased): below 1 "
           "the model prefers the true answer; compare it with the reference model's, not with 1.")
with st.expander("How to read the truth ratio"):
    st.markdown(TR_HELP)

loaded = resources.question_sets(engine)
sets = loaded.sets
for problem in loaded.problems:
    st.warning(f"Question set not available: {problem}")
probe_sets = [n for n in sets if not n.startswith("MUSE")] or list(sets)
if not probe_sets:
    st.info("This experiment has no TOFU-format question data to probe.")
    st.stop()

has_ref = engine.experiment.checkpoints.reference is not None
compare.pin_controls(here)
c1, c2, c3 = st.columns([1, 2, 3], vertical_alignment="bottom")
set_name = c1.selectbox("Set", probe_sets, key="w_probe_set")
items = sets[set_name]
groups = dict(entity_groups(items))
entity = c2.selectbox("Entity", list(groups), key=f"w_probe_entity_{set_name}",
                      format_func=lambda n: f"{n} ({len(groups[n])} QA pairs)")
every = compare.columns(here, reference=has_ref, clean=True)
titles = {c.key: c.title for c in every}
# Short chip labels: the full titles would be cut off in the chips.
chips = {c.key: c.title.split(" (")[0].lower() if not c.key.startswith("pin") else c.title.lower() for c in every}
picked = c3.multiselect("Models", list(titles), default=[k for k in titles if k != "clean"],
                        format_func=lambda k: chips[k], key="w_probe_models_" + "_".join(titles))
cols = [c for c in every if c.key in picked]
show_diff = st.toggle("What changed (against the corrupted model's answer)", value=True, key="w_probe_diff")
chosen = [items[i] for i in groups[entity]]
kind = fact_kind(set_name)

run_key = (*resources.model_key(engine), set_name, entity, alpha, beta, tuple((c.key, c.target) for c in cols))
if st.button(f"Probe {entity}", type="primary", key="w_probe_run"):
    session.put(session.K_PROBE_RUN, run_key)
if session.get(session.K_PROBE_RUN) != run_key:
    st.info(f"{len(chosen)} QA pairs about **{entity}**. Press *Probe* to ask every selected model.")
    st.stop()
if not cols:
    st.info("Pick at least one model.")
    st.stop()

qs = [it.question for it in chosen]
golds = [it.answer for it in chosen]
can_tr = all(it.perturbed_answers for it in chosen)
ans: dict[str, list[str]] = {}
prob: dict[str, list[float]] = {}
trs: dict[str, list] = {}
waits: dict[str, float] = {}
t_page = time.perf_counter()
bar = st.progress(0.0, text="asking the models")
try:
    # The corrupted model's answers are the baseline of every diff, so they are asked for even when not shown.
    for k, col in enumerate(cols if "corrupted" in picked or not show_diff else [every[0], *cols]):
        bar.progress(k / max(1, len(cols)), text=f"{col.title}: answers, probabilities, truth ratios")
        t0 = time.perf_counter()
        ans[col.key] = resources.answers(engine, col.target, qs, 48).texts
        prob[col.key] = resources.gold_probabilities(engine, col.target, qs, golds)
        trs[col.key] = resources.truth_ratio_values(engine, col.target, chosen) if can_tr else [None] * len(qs)
        waits[col.title] = time.perf_counter() - t0
except widgets.CORE_ERRORS as exc:
    bar.empty()
    widgets.show_error("Probing failed", exc)
    st.stop()
bar.empty()
st.caption(f"Asked in {labels.fmt_seconds(time.perf_counter() - t_page)}: "
           + " · ".join(f"{t} {labels.fmt_seconds(s)}" for t, s in waits.items())
           + " (a model's first use includes loading it; cached answers take no time).")
# A stable hook for tests: what the cards show.
session.put(session.K_PROBE_SHOWN, {"questions": qs, "golds": golds, "answers": ans, "p_gold": prob, "tr": trs})

st.markdown(f"#### {entity}: summary")
summary = []
for col in cols:
    row = {"model": col.title,
           "gold in answer": f"{sum(holds_gold(a, g) for a, g in zip(ans[col.key], golds))} / {len(golds)}",
           "mean p(gold)": statistics.fmean(prob[col.key])}
    if can_tr:
        values = trs[col.key]
        row["median TR"] = statistics.median(values)
        row["prefers the true answer (TR < 1)"] = f"{sum(t < 1 for t in values)} / {len(values)}"
    summary.append(row)
with st.container(key="probe_summary"):
    st.dataframe(pd.DataFrame(summary).style.format({"mean p(gold)": "{:.3g}", "median TR": "{:.3g}"}),
                 hide_index=True, width="stretch")
st.caption(answer_cards.legend(show_diff))


def question_card(index: int, box_prefix: str, card_prefix: str, label: str, question: str, gold: str,
                  answers: dict[str, str], probs: dict[str, float],
                  truth_ratios: Optional[dict[str, float]] = None) -> None:
    """One question, its gold answer and one answer card per model column (the original and the
    paraphrased questions draw the same way; only originals have truth ratios and a diff)."""
    with st.container(border=True, key=f"{box_prefix}_{index}"):
        st.markdown(f"**{label}.** {labels.md_escape(question)}")
        st.markdown(f"Gold: `{gold}`")
        for col, box in zip(cols, st.columns(len(cols))):
            key = f"{card_prefix}_{col.key}_{index}"
            with box.container(key=key):
                base = (answers["corrupted"] if truth_ratios is not None and show_diff and col.key != "corrupted"
                        else None)
                answer_cards.answer_card(col.title, answers[col.key], key=key, gold=gold, kind=kind, baseline=base,
                                         prob=probs[col.key],
                                         truth_ratio=None if truth_ratios is None else truth_ratios[col.key])


st.markdown(f"#### {entity}: original questions")
for i, q in enumerate(qs):
    question_card(i, "probe_q", "probe_ans", f"Q{i + 1}", q, golds[i], {k: v[i] for k, v in ans.items()},
                  {k: v[i] for k, v in prob.items()}, {k: v[i] for k, v in trs.items()})

paras = [(it.paraphrased_question, it.answer) for it in chosen if it.paraphrased_question]
st.markdown("#### Paraphrased questions")
if not paras:
    st.caption("This set has no paraphrased questions.")
else:
    pq, pg = [p for p, _ in paras], [g for _, g in paras]
    try:
        pans = {c.key: resources.answers(engine, c.target, pq, 48).texts for c in cols}
        pprob = {c.key: resources.gold_probabilities(engine, c.target, pq, pg) for c in cols}
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Probing paraphrases failed", exc)
    else:
        for i, p in enumerate(pq):
            question_card(i, "probe_para", "probe_para_ans", f"P{i + 1}", p, pg[i],
                          {k: v[i] for k, v in pans.items()}, {k: v[i] for k, v in pprob.items()})

st.markdown("#### Free-form extraction prompts")
default_prompts = f"Tell me everything about {entity}.\nWhat do you know about {entity}?"
text = st.text_area("One prompt per line (`{name}` is replaced by the entity)", value=default_prompts,
                    key=f"w_probe_prompts_{entity}", height=90)
raw = st.toggle("Raw continuation (no QA format)", value=False, key="w_probe_raw",
                help="Off: asked as 'Question: …\\nAnswer:'. On: the prompt is continued as plain text, "
                     f"e.g. '{entity} was born in'.")
prompts = [p.replace("{name}", entity).strip() for p in text.splitlines() if p.strip()][:6]
if prompts:
    try:
        out = {c.key: resources.answers(engine, c.target, prompts, 96, raw=raw).texts for c in cols}
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Extraction prompts failed", exc)
    else:
        for i, p in enumerate(prompts):
            with st.container(border=True, key=f"probe_extract_{i}"):
                st.markdown(f"**{labels.md_escape(p)}**")
                for col, box in zip(cols, st.columns(len(cols))):
                    answer = out[col.key][i]
                    leaked = sum(holds_gold(answer, g) for g in golds)
                    box.caption(col.title)
                    box.markdown(labels.md_escape(answer) if answer else "_(empty)_")
                    box.caption(f"{leaked} of {len(golds)} gold answers recovered")

# H3: "Is it really gone?" — the relearning attack and the hidden-knowledge probes for this entity.
from studio import rtt_panel  # noqa: E402

rtt_panel.probe_section(engine, entity, groups[entity], set_name=set_name)
