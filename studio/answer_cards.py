"""One model's answer to one question, drawn the same way on the Playground and the Probe.

Colours mean the same thing on every question set (:mod:`msa_core.eval.verdict`): red = the
undesired outcome (a forget fact leaked, a retain fact lost), green = the desired one (a forget
fact gone, a retain fact kept), grey = neither is the goal (holdout questions, typed prompts).
"What changed" marks, word by word (:func:`msa_core.textdiff.word_diff`), how an answer differs
from the corrupted model's: added words highlighted in the answer's outcome colour, removed
words struck through in grey.
"""

from __future__ import annotations

from typing import Optional

import streamlit as st

from msa_core.eval.probe import GOLD_THRESHOLD, gold_overlap
from msa_core.eval.verdict import FactCheck
from msa_core.textdiff import ADDED, REMOVED, word_diff
from studio import labels

COLOURS = {True: "green", False: "red", None: "gray"}
# The highlight of added words when the answer has no gold to judge it by.
NEUTRAL_HIGHLIGHT = "blue"


def outcome_colour(check: Optional[FactCheck]) -> str:
    return COLOURS[None if check is None else check.good]


def outcome_mark(check: FactCheck, overlap: float) -> str:
    """'● forget fact still leaked · ROUGE-L recall 0.83' in the outcome's colour (● = the gold
    fact is in the answer, ○ = it is not)."""
    dot = "●" if check.holds else "○"
    return f":{outcome_colour(check)}[**{dot} {check.words}**] · ROUGE-L recall {overlap:.2f}"


def diff_markdown(before: str, after: str, highlight: str) -> str:
    """``after`` as markdown with the words added since ``before`` on a ``highlight`` background
    and the removed ones struck through in grey (model text escaped)."""
    parts = []
    for piece in word_diff(before, after):
        text = labels.md_escape(piece.text)
        if piece.kind == ADDED:
            parts.append(f":{highlight}-background[{text}]")
        elif piece.kind == REMOVED:
            parts.append(f":gray[~~{text}~~]")
        else:
            parts.append(text)
    return " ".join(parts)


def answer_card(
    title: str, answer: str, *, key: str, gold: str = "", kind: str = "neutral", baseline: Optional[str] = None,
    prob: Optional[float] = None, truth_ratio: Optional[float] = None,
) -> Optional[FactCheck]:
    """Draw one answer in the current container: title, the answer (diffed against ``baseline``
    when given), its outcome mark when there is a gold answer, p(gold) and TR when given.
    Returns the answer's :class:`FactCheck` (None without a gold answer)."""
    check = None
    overlap = 0.0
    if gold:
        overlap = gold_overlap(answer, gold)
        check = FactCheck(kind, overlap >= GOLD_THRESHOLD)
    st.caption(title)
    with st.container(key=f"{key}_text"):
        if not answer and not baseline:
            st.markdown("_(empty answer)_")
        elif baseline is not None:
            highlight = NEUTRAL_HIGHLIGHT if check is None or check.good is None else outcome_colour(check)
            st.markdown(diff_markdown(baseline, answer, highlight) or "_(empty answer)_")
        else:
            st.markdown(labels.md_escape(answer))
    if check is not None:
        st.markdown(outcome_mark(check, overlap))
    numbers = []
    if prob is not None:
        numbers.append(f"p(gold | q) = {prob:.3g}")
    if truth_ratio is not None:
        numbers.append(f"TR = {truth_ratio:.3g}")
    if numbers:
        st.caption(" · ".join(numbers))
    return check


def legend(diff: bool) -> str:
    """The one-line key to the colours (and the diff marks when shown)."""
    text = (":green[**green**] = the desired outcome (a forget fact gone, a retain fact kept) · "
            ":red[**red**] = a forget fact leaked or a retain fact lost · ● the answer holds the gold fact, "
            "○ it does not")
    if diff:
        text += (" · what changed against the corrupted model: :gray-background[added words] in the answer's "
                 "colour, :gray[~~removed words~~]")
    return text
