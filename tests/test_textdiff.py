"""Tests of msa_core.textdiff: the word diff marks exactly the words that changed."""

from __future__ import annotations

import pytest

from msa_core.textdiff import ADDED, REMOVED, SAME, Piece, changed_words, word_diff


def _rebuild(pieces: list[Piece], keep: tuple[str, ...]) -> list[str]:
    return [w for p in pieces if p.kind in keep for w in p.words]


@pytest.mark.parametrize(
    ("before", "after", "removed", "added"),
    [
        ("Ana Lenz was born in Velmora.", "Ana Lenz was born in Tarsk.", ["Velmora."], ["Tarsk."]),
        ("She writes mystery novels.", "She writes poetry and mystery novels.", [], ["poetry", "and"]),
        ("A baker and a pilot.", "A pilot.", ["baker", "and", "a"], []),
        ("same   words\nhere", "same words here", [], []),
        ("", "new answer", [], ["new", "answer"]),
        ("old answer", "", ["old", "answer"], []),
    ],
)
def test_the_diff_marks_exactly_the_changed_words(before, after, removed, added):
    pieces = word_diff(before, after)
    assert changed_words(pieces) == (removed, added)
    # Unchanged + added words read the new text, unchanged + removed words the old one, in order.
    assert _rebuild(pieces, (SAME, ADDED)) == after.split()
    assert _rebuild(pieces, (SAME, REMOVED)) == before.split()


def test_a_replaced_run_is_its_removed_words_then_its_added_words():
    pieces = word_diff("born in Velmora in 1960", "born in Tarsk in 1960")
    assert [(p.kind, p.text) for p in pieces] == [
        (SAME, "born in"), (REMOVED, "Velmora"), (ADDED, "Tarsk"), (SAME, "in 1960")]


def test_an_unchanged_answer_has_no_marked_words():
    pieces = word_diff("In Velmora.", "In Velmora.")
    assert [p.kind for p in pieces] == [SAME]
    assert changed_words(pieces) == ([], [])
