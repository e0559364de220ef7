"""Tests of msa_core.eval.verdict: outcomes per set kind, and the verdict's counts against an
independent count (a hand-written ROUGE-L recall on answers whose words need no stemming)."""

from __future__ import annotations

import pytest

from msa_core.eval.probe import GOLD_THRESHOLD
from msa_core.eval.verdict import FORGET, NEUTRAL, RETAIN, FactCheck, Verdict, check_answers, fact_kind, utility_share


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _holds(answer: str, gold: str) -> bool:
    """ROUGE-L recall of the gold's words in the answer, lower-cased, punctuation dropped."""
    def words(s: str) -> list[str]:
        return "".join(c if c.isalnum() else " " for c in s.lower()).split()

    g = words(gold)
    return bool(g) and _lcs(g, words(answer)) / len(g) >= GOLD_THRESHOLD


FORGET_PAIRS = [
    ("She was born in Velmora.", "In Velmora."),  # leaked
    ("I do not know.", "In Velmora."),  # forgotten
    ("Her parents were a baker and a pilot.", "A baker and a pilot."),  # leaked
    ("Two judges.", "A baker and a pilot."),  # forgotten
    ("A baker.", "A baker and a pilot."),  # recall 2/5: forgotten
]
RETAIN_PAIRS = [
    ("Mystery novels, mostly.", "Mystery novels."),  # kept
    ("Poetry.", "Mystery novels."),  # lost
    ("Paris", "Paris"),  # kept
]


def test_the_verdict_counts_equal_an_independent_count():
    checks = (check_answers(FORGET, [a for a, _ in FORGET_PAIRS], [g for _, g in FORGET_PAIRS])
              + check_answers(RETAIN, [a for a, _ in RETAIN_PAIRS], [g for _, g in RETAIN_PAIRS])
              + check_answers(NEUTRAL, ["In Velmora."], ["In Velmora."]))
    v = Verdict.of(checks, utility=("model_utility_tf", 0.8))
    leaked = sum(_holds(a, g) for a, g in FORGET_PAIRS)
    kept = sum(_holds(a, g) for a, g in RETAIN_PAIRS)
    assert (leaked, kept) == (2, 2)  # the hand count of the comments above
    assert (v.leaked, v.forget_total, v.kept, v.retain_total) == (leaked, 5, kept, 3)
    assert v.text() == "forget facts still leaked 2/5 · retain facts kept 2/3 · utility 80% of corrupted"


def test_outcomes_mean_the_same_thing_on_every_set():
    assert [(c.outcome, c.good) for c in (FactCheck(FORGET, True), FactCheck(FORGET, False))] == [
        ("leaked", False), ("forgotten", True)]
    assert [(c.outcome, c.good) for c in (FactCheck(RETAIN, True), FactCheck(RETAIN, False))] == [
        ("kept", True), ("lost", False)]
    assert FactCheck(NEUTRAL, True).good is None
    with pytest.raises(ValueError, match="unknown fact kind 'other'"):
        FactCheck("other", True)


def test_set_names_map_to_fact_kinds():
    assert [fact_kind(n) for n in ("forget", "MUSE knowmem forget")] == [FORGET, FORGET]
    assert [fact_kind(n) for n in ("retain", "real authors", "world facts", "MUSE knowmem retain")] == [RETAIN] * 4
    assert [fact_kind(n) for n in ("holdout", "custom prompt")] == [NEUTRAL, NEUTRAL]


def test_utility_share_prefers_the_full_tier_and_needs_a_positive_base():
    assert utility_share({"model_utility": 0.3, "model_utility_tf": 0.5}, {"model_utility": 0.6,
                                                                           "model_utility_tf": 1.0}) == (
        "model_utility", pytest.approx(0.5))
    assert utility_share({"model_utility_tf": 0.5}, {"model_utility": 0.6, "model_utility_tf": 0.4}) == (
        "model_utility_tf", pytest.approx(1.25))
    assert utility_share({"model_utility": 0.3}, {"model_utility": 0.0}) is None
    assert utility_share({}, {"model_utility": 0.5}) is None


def test_a_verdict_without_retain_questions_or_utility_says_only_what_it_knows():
    v = Verdict.of(check_answers(FORGET, ["x"], ["In Velmora."]))
    assert v.text() == "forget facts still leaked 0/1"
    with pytest.raises(ValueError, match="2 answers but 1 gold"):
        check_answers(FORGET, ["a", "b"], ["c"])
