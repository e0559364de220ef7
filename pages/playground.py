"""Playground page: the verdict at this point, then corrupted | unlearned(α, β) | pinned points |
reference | clean answers side by side.

On top, the one-glance verdict (:mod:`msa_core.eval.verdict`) over the first forget and retain
questions, recomputed with every slider move. Questions come from the forget / retain / utility
sets or are typed in; each answer card shows what changed against the corrupted model's answer
(word diff), whether the gold fact is still there in colours that mean the same on every set,
and p(gold). Pinned points (:mod:`studio.compare`) are extra columns. Answers are memoised per
question and model, so a slider move only recomposes and regenerates the unlearned column. A
fragment holds the fast-tier metrics of every column, read from and written to the shared
results store (the same rows ``msa eval`` writes), with the whole wait and its parts.
"""

from __future__ import annotations

import time
from typing import Optional

import pandas as pd
import streamlit as st

from msa_core.eval.questions import QAItem
from msa_core.eval.verdict import (
    FORGET,
    FORGET_SETS,
    RETAIN,
    RETAIN_SETS,
    Verdict,
    check_answers,
    fact_kind,
    utility_share,
)
from msa_core.targets import Point, Side
from studio import answer_cards, compare, labels, links, resources, session, widgets

t_page = time.perf_counter()
engine = widgets.require_engine()
here = session.point()
alpha, beta = here.alpha, here.beta
st.title(":material/tune: Playground")
st.caption(f"Unlearned model at **α = {alpha:.3f}, β = {beta:.3f}** (move the sliders in the sidebar).")

loaded = resources.question_sets(engine)
sets = loaded.sets
for problem in loaded.problems:
    st.warning(f"Question set not available: {problem}")
max_new = int(session.get(session.W_PG_MAX_NEW, 48))
verdict_n = int(session.get(session.W_PG_VERDICT_N, 10))
subset = int(session.get(session.W_PG_SUBSET, 20))
choices = widgets.benchmark_choices(engine.experiment)
bench = choices[0] if choices else None
has_ref = engine.experiment.checkpoints.reference is not None
waits: dict[str, float] = {}  # model name → seconds this run waited for it (answers + p(gold))
timing = {"compose": 0.0, "generate": 0.0}  # the current point's share of that: recomposition, generation


def timed_answers(title: str, target, questions: list[str], golds: Optional[list[str]] = None):
    """Answers (and p(gold) when ``golds``) of one model, with the wait added to ``waits``."""
    t0 = time.perf_counter()
    out = resources.answers(engine, target, questions, max_new)
    probs = resources.gold_probabilities(engine, target, questions, golds) if golds else None
    waits[title] = waits.get(title, 0.0) + time.perf_counter() - t0
    if isinstance(target, Point) and target == here:
        timing["compose"] += out.compose_seconds
        timing["generate"] += out.generate_seconds
    return out, probs


def stored_utility(at: Point) -> tuple[Optional[tuple[str, float]], str]:
    """Stored fast-tier utility at ``at`` as a share of the corrupted model's, and the words shown
    when there is none (not computed yet, or a corrupted utility of 0)."""
    if bench is None:
        return None, "utility: the experiment has no evaluation data"
    now = resources.stored_evaluation(engine, at, tier="fast", benchmark=bench, subset=subset)
    base = resources.stored_evaluation(engine, Point(0.0, 0.0), tier="fast", benchmark=bench, subset=subset)
    if now is None or base is None:
        return None, "utility: not computed here yet (*Compute metrics* below)"
    share = utility_share(now.flat(), base.flat())
    if share is None:
        return None, "utility: no share (the corrupted model's stored utility is 0 or missing)"
    return share, ""


# ----------------------------------------------------------------------------- verdict
compare.pin_controls(here)
verdict_sets = {kind: next((n for n in names if sets.get(n)), None)
                for kind, names in ((FORGET, FORGET_SETS), (RETAIN, RETAIN_SETS))}
verdict_box = st.container(border=True, key="verdict")
verdict_points = [("Unlearned", here)]
verdict_points += [(f"Pinned {compare.point_title(p)}", p) for p in compare.pinned() if p != here]
verdict_points.append(("Corrupted", Side("corrupted")))
verdicts: dict[str, Verdict] = {}
no_utility = ""
try:
    with st.spinner("Checking the verdict questions…"):
        for title, target in verdict_points:
            checks = []
            for kind, name in verdict_sets.items():
                if name is None:
                    continue
                items = sets[name][:verdict_n]
                out, _ = timed_answers(title.lower() if title in ("Unlearned", "Corrupted") else title,
                                       target, [it.question for it in items])
                checks += check_answers(kind, out.texts, [it.answer for it in items])
            utility, why_not = stored_utility(target if isinstance(target, Point) else Point(0.0, 0.0))
            verdicts[title] = Verdict.of(checks, utility)
            if title == "Unlearned":
                no_utility = why_not
except widgets.CORE_ERRORS as exc:
    widgets.show_error("The verdict could not be computed", exc, where=verdict_box)
else:
    with verdict_box:
        v = verdicts["Unlearned"]
        colour_leak = "green" if v.leaked == 0 else "red"
        colour_keep = "green" if v.kept == v.retain_total else "red"
        parts = []
        if v.forget_total:
            parts.append(f":{colour_leak}[forget facts still leaked **{v.leaked}/{v.forget_total}**]")
        if v.retain_total:
            parts.append(f":{colour_keep}[retain facts kept **{v.kept}/{v.retain_total}**]")
        parts.append(f"utility **{100 * v.utility[1]:.0f}%** of corrupted" if v.utility is not None
                     else f":gray[{no_utility}]")
        with st.container(key="verdict_text"):
            st.markdown("#### " + " · ".join(parts))
        others = [f"{t}: {w.text() or '—'}" for t, w in verdicts.items() if t != "Unlearned"]
        st.caption(f"Over the first {verdict_n} questions of "
                   + " and ".join(f"*{n}*" for n in verdict_sets.values() if n)
                   + " (greedy answers; a fact counts as present at ROUGE-L recall ≥ 0.6)"
                   + (f"; utility = {labels.metric_label(v.utility[0], with_direction=False)} on the first "
                      f"{subset} items per set, stored" if v.utility else "") + ".  \n" + "  \n".join(others))
    session.put(session.K_VERDICT, {"alpha": alpha, "beta": beta, "text": verdicts["Unlearned"].text(),
                                    "counts": verdicts["Unlearned"], "sets": verdict_sets, "n": verdict_n})

# ----------------------------------------------------------------------------- questions
c1, c3, c4, c5 = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
url_choice = session.get(session.K_QUESTIONS)
if url_choice and "w_pg_source" not in st.session_state:
    if url_choice[0] in sets:
        st.session_state["w_pg_source"] = url_choice[0]
    else:
        st.warning(f"URL parameter questions: no question set {url_choice[0]!r} here; sets: {', '.join(sets)}")
source = c1.selectbox("Questions from", list(sets) + ["custom prompt"], key="w_pg_source")
kind = fact_kind(source)
if source == "custom prompt":
    text = st.text_area("One question per line", key="w_pg_custom", height=80,
                        value="Tell me about the author you know best.")
    items = [QAItem(q.strip(), "") for q in text.splitlines() if q.strip()][:8]
    links.set_questions(None)
else:
    pool = sets.get(source, [])
    qkey = f"w_pg_q_{source}"
    if qkey not in st.session_state:
        wanted = list(range(min(3, len(pool))))
        if url_choice and url_choice[0] == source:
            wanted = [i for i in url_choice[1] if i < len(pool)][:8]
            if len(wanted) < min(len(url_choice[1]), 8):
                st.warning(f"URL parameter questions: set {source!r} has {len(pool)} questions; "
                           "indices past its end were dropped")
        st.session_state[qkey] = wanted

    def short(i: int) -> str:
        # NOTE: chips show at most ~60 characters before Streamlit cuts them; the full question is in its card.
        q = pool[i].question
        return f"{i}: {q if len(q) <= 60 else q[:57] + '…'}"

    chosen = st.multiselect("Questions (up to 8; the full text is in each card)", range(len(pool)),
                            format_func=short, key=qkey, max_selections=8)
    items = [pool[i] for i in chosen]
    links.set_questions((source, list(chosen)))
show_ref = c3.toggle("Reference", value=has_ref, key="w_pg_ref", disabled=not has_ref,
                     help="The retain-only model: what 'never learned the forget set' looks like")
show_clean = c4.toggle("Clean", value=True, key="w_pg_clean", help="θ_clean, before any fine-tuning")
show_diff = c5.toggle("What changed", value=True, key="w_pg_diff",
                      help="Mark, word by word, how each answer differs from the corrupted model's")

if not items:
    st.info("Pick at least one question.")
    st.stop()

questions = [it.question for it in items]
golds = [it.answer for it in items]
has_gold = all(golds)
cols = compare.columns(here, reference=show_ref, clean=show_clean)
results: dict[str, list[str]] = {}
probs: dict[str, list[float]] = {}
try:
    with st.spinner("Generating answers…"):
        for col in cols:
            out, p = timed_answers(col.title if col.key.startswith("pin") else col.key, col.target, questions,
                                   golds if has_gold else None)
            results[col.key] = out.texts
            if p is not None:
                probs[col.key] = p
except widgets.CORE_ERRORS as exc:
    widgets.show_error("Generation failed", exc)
    st.stop()
# A stable hook for tests and for the Export page: what this session saw at this point.
session.put(session.K_ANSWERS, {"alpha": alpha, "beta": beta, "questions": questions, **results})

# Honest timing: the whole wait of this run (verdict questions included), then its parts.
slow = [f"{t} {labels.fmt_seconds(s)}" for t, s in waits.items() if s >= 0.05]
unlearned = (f"unlearned: compose {labels.fmt_seconds(timing['compose'])} · generation "
             f"{labels.fmt_seconds(timing['generate'])}" if timing["compose"] or timing["generate"]
             else "unlearned: cached")
st.caption(f"This view took {labels.fmt_seconds(time.perf_counter() - t_page)}, of which the models "
           f"{labels.fmt_seconds(sum(waits.values()))} ({unlearned}"
           + (f"; by model: {', '.join(slow)}" if slow else "; everything else came from the cache")
           + "). A model's first use includes loading it; answers are cached per question and model.")
st.caption(answer_cards.legend(show_diff))

for i, q in enumerate(questions):
    with st.container(border=True, key=f"qa_{i}"):
        with st.container(key=f"q_text_{i}"):
            st.markdown(f"**Q{i + 1}.** {labels.md_escape(q)}")
        if golds[i]:
            st.markdown(f"Gold: `{golds[i]}`")
        for col, box in zip(cols, st.columns(len(cols))):
            with box.container(key=f"ans_{col.key}_{i}"):
                base = results["corrupted"][i] if show_diff and col.key != "corrupted" else None
                answer_cards.answer_card(col.title, results[col.key][i], key=f"ans_{col.key}_{i}", gold=golds[i],
                                         kind=kind, baseline=base,
                                         prob=probs[col.key][i] if col.key in probs else None)
with st.expander("Generation and verdict settings"):
    st.number_input("Max new tokens", min_value=8, max_value=256, value=48, step=8, key=session.W_PG_MAX_NEW)
    st.number_input("Verdict questions per set", min_value=1, max_value=50, value=10, step=1,
                    key=session.W_PG_VERDICT_N,
                    help="The verdict asks the first N forget and the first N retain questions at every move")
    st.caption("Greedy decoding in the QA format the models were trained with. ● marks an answer whose ROUGE-L "
               "recall against the gold answer is ≥ 0.6: on a forget question that is a leak (red), on a retain, "
               "real-authors or world-facts question a kept fact (green).")


@st.fragment
def metrics_panel() -> None:
    """Fast-tier (teacher-forced) metrics of every column side by side, with deltas against corrupted."""
    st.markdown("#### Fast-tier metrics")
    if bench is None:
        st.caption("The experiment has no evaluation data.")
        return
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    left.number_input("Items per set", min_value=4, max_value=400, value=20, step=4, key=session.W_PG_SUBSET,
                      help="Evaluate on the first N items of each set (fast tier: no generation)")
    n = int(session.get(session.W_PG_SUBSET, 20))
    auto = right.toggle("Recompute on every slider move", key="w_pg_auto", value=False)
    corrupted = Point(0.0, 0.0)
    points = [here] + [p for p in compare.pinned() if p != here]
    try:
        missing = [p for p in [corrupted, *points]
                   if resources.stored_evaluation(engine, p, tier="fast", benchmark=bench, subset=n) is None]
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not read the results store", exc)
        return
    clicked = st.button("Compute metrics" + (f" ({len(missing)} points)" if len(missing) > 1 else ""),
                        key="w_pg_metrics", type="primary", disabled=not missing)
    if missing and (clicked or (auto and here in missing)):
        todo = missing if clicked else [p for p in missing if p in (corrupted, here)]
        bar = st.progress(0.0, text="evaluating")
        parts: list[tuple[str, float]] = []
        t0 = time.perf_counter()
        try:
            t = time.perf_counter()
            ref = resources.reference_stats(engine, benchmark=bench, subset=n,
                                            progress=widgets.bar_progress(bar, 0.0, 0.2, "reference: "))
            parts.append(("reference (first use: load + evaluation)", time.perf_counter() - t))
            for k, p in enumerate(todo):
                t = time.perf_counter()
                lo, hi = 0.2 + 0.8 * k / len(todo), 0.2 + 0.8 * (k + 1) / len(todo)
                resources.evaluation(engine, p, tier="fast", benchmark=bench, subset=n, reference=ref,
                                     progress=widgets.bar_progress(bar, lo, hi, f"{compare.point_title(p)}: "))
                parts.append(("corrupted" if p == corrupted else compare.point_title(p), time.perf_counter() - t))
        except widgets.CORE_ERRORS as exc:
            widgets.show_error("Evaluation failed", exc)
            return
        finally:
            bar.empty()
        session.put(session.K_METRICS_WAIT, {"total": time.perf_counter() - t0, "parts": parts, "subset": n})
        st.rerun(scope="app")  # the verdict on top reads the new utility
    current = resources.stored_evaluation(engine, here, tier="fast", benchmark=bench, subset=n)
    if current is None:
        st.caption("Not computed for this point yet.")
    else:
        session.put(session.K_LAST_METRICS, {"alpha": alpha, "beta": beta, **current.to_json()})
        base = resources.stored_evaluation(engine, corrupted, tier="fast", benchmark=bench, subset=n)
        widgets.metric_row(current.flat(), base.flat() if base is not None else None, key="pg_metrics")
    wait = session.get(session.K_METRICS_WAIT)
    if wait and wait.get("subset") == n:
        st.caption(f"The last *Compute metrics* took {labels.fmt_seconds(wait['total'])} in all: "
                   + " · ".join(f"{name} {labels.fmt_seconds(s)}" for name, s in wait["parts"])
                   + f". First {n} items per set; deltas are against the corrupted model (α = β = 0); green = "
                   "better.")
    elif current is not None:
        st.caption(f"From the results store (this point's evaluation took {labels.fmt_seconds(current.seconds)} "
                   f"when it was computed). First {n} items per set; deltas are against the corrupted model "
                   "(α = β = 0); green = better.")
    table = compare.metrics_table(engine, compare.columns(here, reference=has_ref, clean=False),
                                  benchmark=bench, subset=n, metrics=labels.HEADLINE)
    shown = [c for c in table.columns if c != "model"]
    if len(table) > 2:
        st.markdown("##### Side by side")
        named = {m: labels.metric_label(m, with_direction=False) + f" {labels.arrow(m)}" for m in shown}
        with st.container(key="pg_compare_table"):
            # Text cells: st.dataframe draws a missing number as "None", which reads like a value.
            text = table.copy()
            for m in shown:
                text[m] = ["—" if v is None or pd.isna(v) else f"{v:.3g}" for v in table[m]]
            st.dataframe(text.rename(columns=named), hide_index=True, width="stretch")
        st.caption("Stored fast-tier results at the same settings; empty = not computed yet (the button above "
                   "computes the current and pinned points). Other methods' named points come from the results "
                   "store (`msa import`, baselines).")


metrics_panel()
