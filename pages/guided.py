"""Guided demo page: MSA unlearning told in six screens for people who do not tune α and β.

A fact the model knows → raise α → the fact is gone (and what the model says instead) →
retained facts intact → the trade-off curve and where we stand → "is it really gone?".
Each screen is one sentence over one picture, computed by the same engine and memos as the
Playground (answers are memoised per question, so the guide and the Playground share them).
The step lives in session state (:data:`studio.session.K_GUIDE_STEP`); Next/Back move it.
Moving from the first screen to the second sets the point to the best stored one (else the
paper's α = β = 1) when the session is still at α = 0; the sidebar's sliders stay live.
"""

from __future__ import annotations

import importlib.util
import shlex
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from msa_core.eval import run_sweep
from msa_core.eval.probe import GOLD_THRESHOLD, gold_overlap
from msa_core.eval.questions import QAItem
from msa_core.eval.verdict import FORGET, RETAIN
from msa_core.targets import Point, Side
from studio import answer_cards, charts, glossary, labels, resources, session, widgets

STEPS = ("A fact the model knows", "Raise α", "The fact is gone", "Retained facts intact",
         "The trade-off and where we stand", "Is it really gone?")
# Forget questions scanned for a fact the corrupted model states: a few, so the first screen
# costs at most a few short generations (memoised: the Playground reuses them).
POOL = 8
# Retain questions shown on the "intact" screen: three cards fit one screen at 1400×900.
RETAIN_SHOWN = 3
# The curve's quick sweep: fast tier on the first 20 items per set (seconds per point on the
# demo) over 5 values of α at the current β.
CURVE_SUBSET, CURVE_POINTS = 20, 5


@dataclass(frozen=True)
class Fact:
    """The forget-set fact the guide follows, and how well the corrupted model states it."""

    item: QAItem
    corrupted_answer: str
    overlap: float


def step() -> int:
    return int(min(max(session.get(session.K_GUIDE_STEP, 0), 0), len(STEPS) - 1))


def demo_point(engine_best: Point | None, alpha_range: tuple[float, float],
               beta_range: tuple[float, float]) -> Point:
    """Where the guide moves α: the best stored point, else the paper's (1, 1), inside the ranges."""
    p = engine_best or Point(1.0, 1.0)
    return Point(min(max(p.alpha, alpha_range[0]), alpha_range[1]), min(max(p.beta, beta_range[0]), beta_range[1]))


def go_to(index: int, point: Point | None = None) -> None:
    """on_click of Next/Back: change the step (and, leaving the first screen at α = 0, the point)."""
    session.put(session.K_GUIDE_STEP, index)
    if point is not None and session.point().alpha == 0.0:
        session.set_point(point.alpha, point.beta)


engine = widgets.require_engine()
exp = engine.experiment
here = session.point()
max_new = int(session.get(session.W_PG_MAX_NEW, 48))
has_ref = exp.checkpoints.reference is not None
st.title(":material/slideshow: Guided demo")
i = step()
st.progress((i + 1) / len(STEPS), text=f"Step {i + 1} of {len(STEPS)}: {STEPS[i]}")
sets = resources.question_sets(engine).sets
forget = [it for it in sets.get("forget", []) if it.answer]
retain = [it for it in sets.get("retain", []) if it.answer]


def say(sentence: str) -> None:
    """The step's one sentence, large."""
    with st.container(key="guide_sentence"):
        st.markdown(f"### {sentence}")


def answers(target: Point | Side, questions: list[str]) -> list[str]:
    return resources.answers(engine, target, questions, max_new).texts


def the_fact() -> Fact | None:
    """The first forget question the corrupted model answers best (highest ROUGE-L recall of its gold)."""
    pool = forget[:POOL]
    if not pool:
        return None
    said = answers(Side("corrupted"), [it.question for it in pool])
    scores = [gold_overlap(a, it.answer) for a, it in zip(said, pool)]
    k = int(np.argmax(scores))
    return Fact(pool[k], said[k], scores[k])


def answer_card(title: str, answer: str, gold: str, *, forget_set: bool, key: str,
                baseline: str | None = None) -> None:
    """An answer card as the Playground draws it (:func:`studio.answer_cards.answer_card`): green =
    the outcome unlearning wants, red = a forget fact leaked or a retain fact lost; words changed
    since ``baseline`` (the corrupted model's answer) are marked."""
    with st.container(border=True, key=f"{key}_card"):
        answer_cards.answer_card(title, answer, key=key, gold=gold, kind=FORGET if forget_set else RETAIN,
                                 baseline=baseline)


def question_header(item: QAItem) -> None:
    st.markdown(f"**Q.** {labels.md_escape(item.question)}  \nGold answer: `{item.answer}`")


def step_fact(fact: Fact | None) -> None:
    if fact is None:
        say("This experiment has no forget questions, so there is no fact to follow.")
        return
    if fact.overlap >= GOLD_THRESHOLD:
        say(f"Before unlearning, the model knows a fact it should forget: asked “{fact.item.question}”, it answers "
            "with the gold fact.")
    else:
        say(f"Before unlearning, the model is asked about a fact it should forget; its best answer among the first "
            f"{min(POOL, len(forget))} forget questions recalls {fact.overlap:.0%} of the gold words.")
    question_header(fact.item)
    answer_card("Corrupted model (before unlearning)", fact.corrupted_answer, fact.item.answer, forget_set=True,
                key="guide_corrupted")


def step_alpha() -> None:
    say(f"Unlearning subtracts α times the forget vector τ_f from the weights: here α = {here.alpha:g} "
        f"(and β = {here.beta:g} adds back the retain vector).")
    st.latex(r"\theta = \theta_{corrupted} - \alpha\,(\theta_{forget} - \theta_{clean})"
             r" + \beta\,(\theta_{retain} - \theta_{clean})")
    st.caption("No training happens: the weights are recomposed in place from three fine-tunes, in milliseconds to "
               "seconds. Move α and β in the sidebar at any time; every screen follows them.")


def step_gone(fact: Fact | None) -> None:
    if fact is None:
        say("This experiment has no forget questions to show.")
        return
    q = fact.item.question
    now = answers(here, [q])[0]
    if gold_overlap(now, fact.item.answer) >= GOLD_THRESHOLD:
        say(f"At α = {here.alpha:g} the model still states the fact: raise α in the sidebar until it is gone.")
    else:
        say(f"At α = {here.alpha:g} the fact is gone; asked the same question, the model now says "
            f"“{now.strip().rstrip('.')}”.")
    question_header(fact.item)
    st.caption(answer_cards.legend(True))
    cols = st.columns(3 if has_ref else 2)
    with cols[0]:
        answer_card("Before (corrupted)", fact.corrupted_answer, fact.item.answer, forget_set=True,
                    key="guide_before")
    with cols[1]:
        answer_card(f"After (α = {here.alpha:g}, β = {here.beta:g})", now, fact.item.answer, forget_set=True,
                    key="guide_after", baseline=fact.corrupted_answer)
    if has_ref:
        with cols[2]:
            answer_card("A model that never saw it (reference)", answers(Side("reference"), [q])[0],
                        fact.item.answer, forget_set=True, key="guide_reference")


def step_retain() -> None:
    items = retain[:RETAIN_SHOWN]
    if not items:
        say("This experiment has no retain questions to check.")
        return
    qs = [it.question for it in items]
    before, after = answers(Side("corrupted"), qs), answers(here, qs)
    known = [gold_overlap(b, it.answer) >= GOLD_THRESHOLD for b, it in zip(before, items)]
    kept = [k and gold_overlap(a, it.answer) >= GOLD_THRESHOLD for k, a, it in zip(known, after, items)]
    n_kept, n_known = sum(kept), sum(known)
    verdict = ("Facts it should keep are intact" if n_kept == n_known
               else "Most facts it should keep survive" if 2 * n_kept >= n_known else "Facts it should keep suffer")
    say(f"{verdict}: at α = {here.alpha:g}, {n_kept} of the {n_known} retain facts the model knew (of {len(items)} "
        "asked) are still stated.")
    st.caption(answer_cards.legend(True))
    # One column per question, the "after" answer with the words changed since "before" marked:
    # the whole screen fits 1400×900.
    for k, (col, it, b, a) in enumerate(zip(st.columns(len(items)), items, before, after)):
        with col:
            question_header(it)
            answer_card(f"After (α = {here.alpha:g}, β = {here.beta:g}) vs before", a, it.answer,
                        forget_set=False, key=f"guide_retain_after_{k}", baseline=b)


def curve_rows(benchmark: str) -> tuple[pd.DataFrame, int | None]:
    """The stored fast-tier rows to draw: the Trade-off page's (all items) if any, else the guide's subset."""
    df = resources.results_grid(engine, "fast")
    for subset in (None, CURVE_SUBSET):
        rows = charts.select_rows(df, tier="fast", benchmark=benchmark, subset=subset)
        if len(charts.composed(rows)) >= 3:
            return rows, subset
    return charts.select_rows(df, tier="fast", benchmark=benchmark, subset=CURVE_SUBSET), CURVE_SUBSET


def curve_alphas() -> list[float]:
    hi = min(exp.alpha_range[1], max(2.0 * here.alpha, 1.0))
    values = set(np.round(np.linspace(max(exp.alpha_range[0], 0.0), hi, CURVE_POINTS), 3).tolist()) | {here.alpha}
    return sorted(float(v) for v in values)


def step_curve() -> None:
    choices = widgets.benchmark_choices(exp)
    if not choices:
        say("This experiment has no evaluation data, so there is no trade-off curve to draw.")
        return
    bench = choices[0]
    say("Every point trades forgetting against usefulness; the ★ is where we stand, the green diamond is a model "
        "that never saw the forget set.")
    chart = st.container()  # drawn after the button below, which may add points first
    alphas = curve_alphas()
    try:
        rows, subset = curve_rows(bench)
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Could not read the results store", exc)
        return
    x, y = charts.default_axes(rows) if not rows.empty else (None, None)
    if st.button(f"{'Add to' if x and y else 'Compute'} the curve: {len(alphas)} values of α at β = {here.beta:g} "
                 f"(fast tier, first {CURVE_SUBSET} items per set)", key="w_guide_curve",
                 type="secondary" if x and y else "primary"):
        with chart:
            bar = st.progress(0.0, text="evaluating")
        try:
            run_sweep(engine, resources.results_store(), alphas, [here.beta], tier="fast", benchmark=bench,
                      subset=CURVE_SUBSET, progress=widgets.bar_progress(bar),
                      reference_cache=resources.reference_cache())
        except widgets.CORE_ERRORS as exc:
            bar.empty()
            widgets.show_error("Evaluation failed", exc)
            return
        st.rerun()  # redraw with the new points (and the button as "Add to the curve")
    with chart:
        if not (x and y):
            st.info("No trade-off points are stored for this experiment yet: compute the curve below, or run a "
                    "sweep on the Trade-off page.")
            return
        fig = charts.tradeoff_scatter(rows, x, y, here, charts.reference_row(rows))
        # Shorter than on the Trade-off page: sentence, chart and buttons fit one 1400×900 screen.
        fig.update_layout(height=400)
        st.plotly_chart(fig, key="guide_curve", config={"displaylogo": False})
        items = "all items" if subset is None else f"the first {subset} items per set"
        st.caption(f"{len(charts.composed(rows))} stored points (fast tier, {bench}, {items}). "
                   f"[{labels.metric_label(x, with_direction=False)}]({glossary.link(x)}) and "
                   f"[{labels.metric_label(y, with_direction=False)}]({glossary.link(y)}) are explained in the "
                   "Glossary.")


def step_really_gone() -> None:
    say("Is it removed or only hidden? A relearning attack fine-tunes the unlearned model on some forgotten facts "
        "and checks whether the others come back.")
    st.markdown(
        "A model that truly never learned a fact cannot recover it from *other* facts; a model that only hides "
        "it often can (Deeb & Roger, “Do unlearning methods remove information from language model weights?”). "
        "The attack splits the forget set by author, fine-tunes on all authors but one and measures the held-out "
        "author's answers, on the unlearned, corrupted and reference models alike: 0% recovery = as if never "
        "learned, 100% = back to the corrupted model.")
    src = shlex.quote(str(exp.source)) if exp.source else "EXPERIMENT.yaml"
    st.markdown("Run it for this point from the command line (`--quick`: 2 folds, 3 epochs, one learning rate):")
    st.code(f"msa rtt {src} --alpha {here.alpha:g} --beta {here.beta:g} --quick", language="bash")
    if importlib.util.find_spec("studio.rtt_panel") is not None:
        st.page_link("pages/tradeoff.py", label="See the relearning results on the Trade-off page",
                     icon=":material/insights:")
    st.caption("Without training, the Probe page's paraphrased questions and free-form extraction prompts about "
               "one author give a first look at hidden knowledge.")
    st.page_link("pages/probe.py", label="Open the Probe page", icon=":material/search:")


def draw(index: int) -> None:
    if index == 0:
        step_fact(the_fact())
    elif index == 1:
        step_alpha()
    elif index == 2:
        step_gone(the_fact())
    elif index == 3:
        step_retain()
    elif index == 4:
        step_curve()
    else:
        step_really_gone()


try:
    with st.spinner("Asking the models…"):
        draw(i)
except widgets.CORE_ERRORS as exc:
    widgets.show_error("The guided demo could not ask the models", exc)


def best_or_none() -> Point | None:
    try:
        return resources.best_point(engine)
    except widgets.CORE_ERRORS:
        return None


target = demo_point(best_or_none() if i == 0 else None, exp.alpha_range, exp.beta_range)
back, nxt = st.columns(2)
back.button("← Back", key="w_guide_back", disabled=i == 0, on_click=go_to, args=(i - 1,), width="stretch")
if i < len(STEPS) - 1:
    nxt.button(f"Next: {STEPS[i + 1]} →", key="w_guide_next", type="primary", on_click=go_to,
               args=(i + 1, target if i == 0 else None), width="stretch")
else:
    nxt.button("Start again", key="w_guide_restart", on_click=go_to, args=(0,), width="stretch")
