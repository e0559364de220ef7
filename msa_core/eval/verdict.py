"""The one-glance verdict on an unlearned model: which facts leaked, which survived, what utility is left.

Every question is of one :func:`fact_kind`: a *forget* fact (should be gone), a *retain* fact
(should survive: retain set, real authors, world facts, MUSE knowmem retain) or *neutral*
(holdout questions and typed prompts, where neither outcome is the goal). :class:`FactCheck`
turns "the answer still holds the gold fact" (:func:`msa_core.eval.probe.holds_gold`) into an
outcome whose colour means the same on every set: *leaked* and *lost* are bad, *forgotten* and
*kept* are good. :class:`Verdict` counts them over forget and retain questions together and
adds the stored utility as a share of the corrupted model's:
"forget facts still leaked k/n · retain facts kept k/n · utility x% of corrupted".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from msa_core.eval.probe import holds_gold
from msa_core.eval.store import UTILITY_METRICS

FORGET, RETAIN, NEUTRAL = "forget", "retain", "neutral"
# Set names of msa_core.eval.questions.load_question_sets whose facts should survive unlearning.
RETAIN_SETS = ("retain", "real authors", "world facts", "MUSE knowmem retain")
FORGET_SETS = ("forget", "MUSE knowmem forget")

# outcome → (is it the desired outcome?, words shown)
OUTCOMES: dict[str, tuple[Optional[bool], str]] = {
    "leaked": (False, "forget fact still leaked"),
    "forgotten": (True, "forget fact gone"),
    "kept": (True, "retain fact kept"),
    "lost": (False, "retain fact lost"),
    "present": (None, "contains the gold answer"),
    "absent": (None, "gold answer absent"),
}


def fact_kind(set_name: str) -> str:
    """'forget', 'retain' or 'neutral' for a question set's name (see the module docstring)."""
    if set_name in FORGET_SETS:
        return FORGET
    if set_name in RETAIN_SETS:
        return RETAIN
    return NEUTRAL


@dataclass(frozen=True)
class FactCheck:
    """One answer judged against its gold answer on a set of ``kind``."""

    kind: str
    holds: bool

    def __post_init__(self) -> None:
        if self.kind not in (FORGET, RETAIN, NEUTRAL):
            raise ValueError(f"unknown fact kind {self.kind!r}; expected forget, retain or neutral")

    @property
    def outcome(self) -> str:
        """'leaked' / 'forgotten' (forget), 'kept' / 'lost' (retain), 'present' / 'absent' (neutral)."""
        if self.kind == FORGET:
            return "leaked" if self.holds else "forgotten"
        if self.kind == RETAIN:
            return "kept" if self.holds else "lost"
        return "present" if self.holds else "absent"

    @property
    def good(self) -> Optional[bool]:
        """True for the desired outcome, False for the undesired one, None on neutral questions."""
        return OUTCOMES[self.outcome][0]

    @property
    def words(self) -> str:
        return OUTCOMES[self.outcome][1]


def check_answers(kind: str, answers: Sequence[str], golds: Sequence[str]) -> list[FactCheck]:
    """A :class:`FactCheck` per (answer, gold) pair; ValueError when the lengths differ."""
    if len(answers) != len(golds):
        raise ValueError(f"check_answers: {len(answers)} answers but {len(golds)} gold answers")
    return [FactCheck(kind, holds_gold(a, g)) for a, g in zip(answers, golds)]


def utility_share(current: Mapping[str, float], corrupted: Mapping[str, float]) -> Optional[tuple[str, float]]:
    """(metric, current / corrupted) for the first utility metric both results hold with a
    positive corrupted value, else None."""
    for name in UTILITY_METRICS:
        now, base = current.get(name), corrupted.get(name)
        if now is not None and base is not None and base > 0:
            return name, float(now) / float(base)
    return None


@dataclass(frozen=True)
class Verdict:
    """Counts over forget and retain questions, and the utility share (None when not computed)."""

    leaked: int
    forget_total: int
    kept: int
    retain_total: int
    utility: Optional[tuple[str, float]] = None

    @classmethod
    def of(cls, checks: Sequence[FactCheck], utility: Optional[tuple[str, float]] = None) -> Verdict:
        """Count ``checks`` (neutral ones are ignored)."""
        forget = [c for c in checks if c.kind == FORGET]
        retain = [c for c in checks if c.kind == RETAIN]
        return cls(sum(c.holds for c in forget), len(forget), sum(c.holds for c in retain), len(retain), utility)

    def parts(self) -> list[str]:
        """The verdict's phrases, e.g. ['forget facts still leaked 2/10', 'retain facts kept 9/10', ...]."""
        out = []
        if self.forget_total:
            out.append(f"forget facts still leaked {self.leaked}/{self.forget_total}")
        if self.retain_total:
            out.append(f"retain facts kept {self.kept}/{self.retain_total}")
        if self.utility is not None:
            out.append(f"utility {100 * self.utility[1]:.0f}% of corrupted")
        return out

    def text(self) -> str:
        return " · ".join(self.parts())
