"""Word-level differences between two texts, for showing what an answer changed.

:func:`word_diff` splits both texts on whitespace and aligns the words with
:class:`difflib.SequenceMatcher` (no junk heuristics, so short answers are compared word for
word); the result is a list of :class:`Piece` runs, each unchanged, added or removed.
Pure Python, no model and no Streamlit: the app colours the runs, tests count them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

SAME, ADDED, REMOVED = "same", "added", "removed"


@dataclass(frozen=True)
class Piece:
    """A run of consecutive words with the same fate: ``kind`` is 'same', 'added' or 'removed'."""

    kind: str
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def word_diff(before: str, after: str) -> list[Piece]:
    """The runs that turn ``before`` into ``after``, in reading order (a replaced run is its
    removed words followed by its added words). Whitespace differences are not changes."""
    old, new = before.split(), after.split()
    pieces: list[Piece] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pieces.append(Piece(SAME, tuple(new[j1:j2])))
            continue
        if i2 > i1:
            pieces.append(Piece(REMOVED, tuple(old[i1:i2])))
        if j2 > j1:
            pieces.append(Piece(ADDED, tuple(new[j1:j2])))
    return pieces


def changed_words(pieces: list[Piece]) -> tuple[list[str], list[str]]:
    """(removed words, added words) of a diff, each in reading order."""
    removed = [w for p in pieces if p.kind == REMOVED for w in p.words]
    added = [w for p in pieces if p.kind == ADDED for w in p.words]
    return removed, added
