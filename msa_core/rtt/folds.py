"""Entity folds of the forget set: every item of one entity (TOFU author, demo author) in one fold.

Entities come from :func:`msa_core.eval.probe.entity_groups`. Folds are balanced by item
count (largest entity first, into the fold with the fewest items; ties to the lower
index), so the split is deterministic for a given forget set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from msa_core.eval.probe import entity_groups

# Folds when none are asked for: one per entity up to this many (the demo's 3 authors: 3 folds;
# TOFU forget10's 40 authors: 5 folds of 8), so a default attack costs at most 5 held-out rounds.
DEFAULT_MAX_FOLDS = 5


@dataclass(frozen=True)
class Fold:
    """One fold: its index, the entities it holds and their item indices (sorted)."""

    index: int
    entities: tuple[str, ...]
    items: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.items)


def entity_folds(items: Sequence[Any], k: Optional[int] = None) -> list[Fold]:
    """Split ``items`` (QAItem rows or dicts) into ``k`` folds by entity (None: one per entity, at
    most :data:`DEFAULT_MAX_FOLDS`).

    ``k`` larger than the number of entities is capped to it. ValueError when the items hold
    fewer than two entities (nothing to hold out) or ``k`` < 2.
    """
    groups = entity_groups(items)
    if len(groups) < 2:
        raise ValueError(f"the forget set ({len(items)} items) names {len(groups)} entity; "
                         "the relearning attack needs at least two to hold one out")
    if k is None:
        k = min(len(groups), DEFAULT_MAX_FOLDS)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"folds must be an integer >= 2, got {k!r}")
    k = min(k, len(groups))
    members: list[list[int]] = [[] for _ in range(k)]  # group indices per fold
    sizes = [0] * k
    for g in sorted(range(len(groups)), key=lambda g: (-len(groups[g][1]), g)):
        target = min(range(k), key=lambda f: (sizes[f], f))
        members[target].append(g)
        sizes[target] += len(groups[g][1])
    folds = []
    for f, gs in enumerate(members):
        gs.sort()
        folds.append(Fold(f, tuple(groups[g][0] for g in gs), tuple(sorted(i for g in gs for i in groups[g][1]))))
    return folds


def fold_of_entity(folds: Sequence[Fold], entity: str) -> Optional[Fold]:
    """The fold holding ``entity``, or None."""
    return next((f for f in folds if entity in f.entities), None)
