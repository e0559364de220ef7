"""Probe page: is a fact really gone? Everything about one entity (author), per model.

Lists the entity's QA pairs with the gold answer, each model's answer, its probability of
the gold answer and the truth ratio; the same for paraphrased questions; and free-form
extraction prompts ("Tell me everything about …"). Runs behind a button; results are
memoised, so revisiting an entity at the same (α, β) is instant.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from msa_core.eval.probe import entity_groups, holds_gold
from msa_core.targets import Side, Target
from studio import labels, resources, session, widgets

engine = widgets.require_engine()
here = session.point()
alpha, beta = here.alpha, here.beta
st.title(":material/search: Probe")
st.caption(f"Unlearned model at **α = {alpha:.3f}, β = {beta:.3f}**. Truth ratio TR = P(perturbed) / P(paraphrased): "
           "TR ≪ 1 = the model still prefers the true answer; TR ≈ 1 = it cannot tell (forgotten).")

loaded = resources.question_sets(engine)
sets = loaded.sets
for problem in loaded.problems:
    st.warning(f"Question set not available: {problem}")
probe_sets = [n for n in sets if not n.startswith("MUSE")] or list(sets)
if not probe_sets:
    st.info("This experiment has no TOFU-format question data to probe.")
    st.stop()

c1, c2, c3 = st.columns([1, 2, 2], vertical_alignment="bottom")
set_name = c1.selectbox("Set", probe_sets, key="w_probe_set")
items = sets[set_name]
groups = entity_groups(items)
names = [g[0] for g in groups]
entity = c2.selectbox("Entity", names, key=f"w_probe_entity_{set_name}",
                      format_func=lambda n: f"{n} ({len(dict(groups)[n])} QA pairs)")
has_ref = engine.experiment.checkpoints.reference is not None
roles = c3.multiselect("Models", ["corrupted", "unlearned", "reference", "clean"],
                       default=["corrupted", "unlearned"] + (["reference"] if has_ref else []), key="w_probe_roles")
if not has_ref and "reference" in roles:
    roles.remove("reference")
idx = dict(groups)[entity]
chosen = [items[i] for i in idx]


def where(role: str) -> Target:
    return here if role == "unlearned" else Side(role)


run_key = (*resources.model_key(engine), set_name, entity, alpha, beta, tuple(roles))
if st.button(f"Probe {entity}", type="primary", key="w_probe_run"):
    session.put(session.K_PROBE_RUN, run_key)
if session.get(session.K_PROBE_RUN) != run_key:
    st.info(f"{len(chosen)} QA pairs about **{entity}**. Press *Probe* to ask every selected model.")
    st.stop()

qs = [it.question for it in chosen]
golds = [it.answer for it in chosen]
can_tr = all(it.perturbed_answers for it in chosen)
bar = st.progress(0.0, text="asking the models")
rows: list[dict] = [{"#": i, "question": q, "gold": g} for i, (q, g) in enumerate(zip(qs, golds))]
try:
    for k, role in enumerate(roles):
        bar.progress(k / max(1, len(roles)), text=f"{role}: answers, probabilities, truth ratios")
        ans = resources.answers(engine, where(role), qs, 48).texts
        prob = resources.gold_probabilities(engine, where(role), qs, golds)
        trs = resources.truth_ratio_values(engine, where(role), chosen) if can_tr else [None] * len(qs)
        for r, a, p, t in zip(rows, ans, prob, trs):
            r[f"{role} answer"] = a
            r[f"{role} gold?"] = "✔" if holds_gold(a, r["gold"]) else ""
            r[f"{role} p(gold)"] = p
            r[f"{role} TR"] = t
except widgets.CORE_ERRORS as exc:
    bar.empty()
    widgets.show_error("Probing failed", exc)
    st.stop()
bar.empty()

st.markdown(f"#### {entity}: original questions")
table = pd.DataFrame(rows)
fmt = {c: "{:.3g}" for c in table.columns if c.endswith(("p(gold)", " TR"))}
with st.container(key="probe_table"):
    st.dataframe(table.style.format(fmt, na_rep="—"), hide_index=True, width="stretch")
summary = {role: {"mean p(gold)": table[f"{role} p(gold)"].mean(),
                  "gold present": f"{(table[f'{role} gold?'] == '✔').sum()} / {len(table)}",
                  **({"mean TR": table[f"{role} TR"].mean()} if can_tr else {})} for role in roles}
st.dataframe(pd.DataFrame(summary).T, width="stretch")

paras = [(it.paraphrased_question, it.answer) for it in chosen if it.paraphrased_question]
st.markdown("#### Paraphrased questions")
if not paras:
    st.caption("This set has no paraphrased questions.")
else:
    pq = [p for p, _ in paras]
    prow: list[dict] = [{"paraphrased question": p, "gold": g} for p, g in paras]
    try:
        for role in roles:
            ans = resources.answers(engine, where(role), pq, 48).texts
            prob = resources.gold_probabilities(engine, where(role), pq, [g for _, g in paras])
            for r, a, p in zip(prow, ans, prob):
                r[f"{role} answer"] = a
                r[f"{role} gold?"] = "✔" if holds_gold(a, r["gold"]) else ""
                r[f"{role} p(gold)"] = p
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Probing paraphrases failed", exc)
    else:
        ptable = pd.DataFrame(prow)
        st.dataframe(ptable.style.format({c: "{:.3g}" for c in ptable.columns if c.endswith("p(gold)")}),
                     hide_index=True, width="stretch")

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
        out = {role: resources.answers(engine, where(role), prompts, 96, raw=raw).texts for role in roles}
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Extraction prompts failed", exc)
    else:
        for i, p in enumerate(prompts):
            with st.container(border=True, key=f"probe_extract_{i}"):
                st.markdown(f"**{labels.md_escape(p)}**")
                cols = st.columns(len(roles))
                for col, role in zip(cols, roles):
                    answer = out[role][i]
                    leaked = sum(holds_gold(answer, g) for g in golds)
                    col.caption(role)
                    col.markdown(labels.md_escape(answer) if answer else "_(empty)_")
                    col.caption(f"{leaked} of {len(golds)} gold answers recovered")
