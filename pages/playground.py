"""Playground page: corrupted | unlearned(α, β) | reference | clean answers side by side.

Questions come from the forget / retain / utility sets or are typed in. Each answer cell
shows whether it still contains the gold fact and the model's probability of the gold
answer. Fixed models' answers are memoised per question, so moving a slider only
recomposes and regenerates the unlearned column. A fragment holds the fast-tier metrics,
read from and written to the shared results store (the same rows ``msa eval`` writes).
"""

from __future__ import annotations

import time

import streamlit as st

from msa_core.eval.probe import GOLD_THRESHOLD, gold_overlap
from msa_core.eval.questions import QAItem
from msa_core.targets import Point, Side, Target
from studio import labels, resources, session, widgets

engine = widgets.require_engine()
here = session.point()
alpha, beta = here.alpha, here.beta
st.title(":material/tune: Playground")
st.caption(f"Unlearned model at **α = {alpha:.3f}, β = {beta:.3f}** (move the sliders in the sidebar).")

loaded = resources.question_sets(engine)
sets = loaded.sets
for problem in loaded.problems:
    st.warning(f"Question set not available: {problem}")

c1, c2, c3, c4 = st.columns([2, 3, 1, 1], vertical_alignment="bottom")
source = c1.selectbox("Questions from", list(sets) + ["custom prompt"], key="w_pg_source")
if source == "custom prompt":
    text = c2.text_area("One question per line", key="w_pg_custom", height=80,
                        value="Tell me about the author you know best.")
    items = [QAItem(q.strip(), "") for q in text.splitlines() if q.strip()][:8]
else:
    pool = sets.get(source, [])
    shown = [f"{i}: {it.question}" for i, it in enumerate(pool)]
    chosen = c2.multiselect("Questions", range(len(pool)), default=list(range(min(3, len(pool)))),
                            format_func=lambda i: shown[i], key=f"w_pg_q_{source}", max_selections=8)
    items = [pool[i] for i in chosen]
show_ref = c3.toggle("Reference", value=engine.experiment.checkpoints.reference is not None, key="w_pg_ref",
                     disabled=engine.experiment.checkpoints.reference is None,
                     help="The retain-only model: what 'never learned the forget set' looks like")
show_clean = c4.toggle("Clean", value=True, key="w_pg_clean", help="θ_clean, before any fine-tuning")
max_new = session.get(session.W_PG_MAX_NEW, 48)

if not items:
    st.info("Pick at least one question.")
    st.stop()

questions = [it.question for it in items]
golds = [it.answer for it in items]
has_gold = all(golds)
roles = ["corrupted", "unlearned"] + (["reference"] if show_ref else []) + (["clean"] if show_clean else [])
targets: dict[str, Target] = {role: here if role == "unlearned" else Side(role) for role in roles}
titles = {"corrupted": "Corrupted (α=β=0)", "unlearned": f"Unlearned (α={alpha:.2f}, β={beta:.2f})",
          "reference": "Reference (retain-only)", "clean": "Clean (θ_clean)"}

results: dict[str, list[str]] = {}
probs: dict[str, list[float]] = {}
timing = {"compose": 0.0, "generate": 0.0}
t_all = time.perf_counter()
try:
    with st.spinner("Generating answers…"):
        for role in roles:
            out = resources.answers(engine, targets[role], questions, int(max_new))
            results[role] = out.texts
            if role == "unlearned":
                timing.update(compose=out.compose_seconds, generate=out.generate_seconds)
            if has_gold:
                probs[role] = resources.gold_probabilities(engine, targets[role], questions, golds)
except widgets.CORE_ERRORS as exc:
    widgets.show_error("Generation failed", exc)
    st.stop()
t_all = time.perf_counter() - t_all
# A stable hook for tests and for the Export page: what this session saw at this point.
session.put(session.K_ANSWERS, {"alpha": alpha, "beta": beta, "questions": questions, **results})

if timing["compose"] or timing["generate"]:
    st.caption(f"Unlearned column: compose {labels.fmt_seconds(timing['compose'])} · generation "
               f"{labels.fmt_seconds(timing['generate'])} · page total {labels.fmt_seconds(t_all)} "
               "(other columns are cached per question)")
else:
    st.caption(f"All answers came from the cache · page total {labels.fmt_seconds(t_all)}")

for i, q in enumerate(questions):
    with st.container(border=True, key=f"qa_{i}"):
        with st.container(key=f"q_text_{i}"):
            st.markdown(f"**Q{i + 1}.** {labels.md_escape(q)}")
        if golds[i]:
            st.markdown(f"Gold: `{golds[i]}`")
        cols = st.columns(len(roles))
        for col, role in zip(cols, roles):
            with col.container(key=f"ans_{role}_{i}"):
                st.caption(titles[role])
                answer = results[role][i]
                with st.container(key=f"ans_text_{role}_{i}"):
                    st.markdown(labels.md_escape(answer) if answer else "_(empty answer)_")
                if golds[i]:
                    overlap = gold_overlap(answer, golds[i])
                    mark = (":orange[**● still contains the gold fact**]" if overlap >= GOLD_THRESHOLD
                            else ":gray[○ gold fact absent]")
                    st.markdown(f"{mark} · ROUGE-L recall {overlap:.2f}")
                if role in probs:
                    st.caption(f"p(gold | q) = {probs[role][i]:.3g}")
with st.expander("Generation settings"):
    st.number_input("Max new tokens", min_value=8, max_value=256, value=48, step=8, key=session.W_PG_MAX_NEW)
    st.caption("Greedy decoding in the QA format the models were trained with. ● marks an answer whose ROUGE-L "
               f"recall against the gold answer is ≥ {GOLD_THRESHOLD}: on the forget set that means the fact "
               "is still there (bad); on retain and utility sets it means it survived (good).")


@st.fragment
def metrics_panel() -> None:
    """Fast-tier (teacher-forced) metrics at the current point, with deltas against corrupted."""
    st.markdown("#### Fast-tier metrics at this point")
    choices = widgets.benchmark_choices(engine.experiment)
    if not choices:
        st.caption("The experiment has no evaluation data.")
        return
    bench = choices[0]
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    subset = int(left.number_input("Items per set", min_value=4, max_value=400, value=20, step=4, key="w_pg_subset",
                                   help="Evaluate on the first N items of each set (fast tier: no generation)"))
    auto = right.toggle("Recompute on every slider move", key="w_pg_auto", value=False)
    corrupted = Point(0.0, 0.0)
    try:
        current = resources.stored_evaluation(engine, here, tier="fast", benchmark=bench, subset=subset)
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not read the results store", exc)
        return
    clicked = st.button("Compute metrics", key="w_pg_metrics", type="primary")
    if current is None and (clicked or auto):
        bar = st.progress(0.0, text="evaluating")
        try:
            resources.evaluation(engine, corrupted, tier="fast", benchmark=bench, subset=subset,
                                 progress=widgets.bar_progress(bar, 0.0, 0.5, "corrupted: "))
            current = resources.evaluation(engine, here, tier="fast", benchmark=bench, subset=subset,
                                           progress=widgets.bar_progress(bar, 0.5, 1.0, "unlearned: "))
        except widgets.CORE_ERRORS as exc:
            widgets.show_error("Evaluation failed", exc)
            return
        finally:
            bar.empty()
    if current is None:
        st.caption("Not computed for this point yet.")
        return
    session.put(session.K_LAST_METRICS, {"alpha": alpha, "beta": beta, **current.to_json()})
    base = resources.stored_evaluation(engine, corrupted, tier="fast", benchmark=bench, subset=subset)
    widgets.metric_row(current.flat(), base.flat() if base is not None else None, key="pg_metrics")
    st.caption(f"Computed in {labels.fmt_seconds(current.seconds)} on the first {subset} items per set. Deltas are "
               "against the corrupted model (α = β = 0); green = better.")


metrics_panel()
