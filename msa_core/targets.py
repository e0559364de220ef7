"""Which model a question is put to: the unlearned model at a point (α, β), or a named model.

A :class:`Point` is the engine's working model recomposed at (α, β); a :class:`Side` is one
of the experiment's named checkpoints. ``Side("corrupted")`` is the point (0, 0) of the same
engine (θ_corrupted itself, no extra memory); the other roles are separate read-only models
that the engine loads on first use. :func:`model_for` is the one place that turns a target
into a model, for the app's pages and the CLI alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from msa_core.engine import Engine

# Named models a Side may stand for; 'corrupted' is served by the engine itself.
SIDE_MODEL_ROLES = ("corrupted", "reference", "clean", "forget", "retain")


@dataclass(frozen=True)
class Point:
    """The unlearned model θ_c − α·τ_f + β·τ_r at (alpha, beta)."""

    alpha: float
    beta: float

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, value)

    @property
    def label(self) -> str:
        return f"unlearned(α={self.alpha:g}, β={self.beta:g})"


@dataclass(frozen=True)
class Side:
    """A named model of the experiment: 'corrupted', 'reference', 'clean', 'forget' or 'retain'."""

    role: str

    def __post_init__(self) -> None:
        if self.role not in SIDE_MODEL_ROLES:
            raise ValueError(f"unknown model role {self.role!r}; expected one of {', '.join(SIDE_MODEL_ROLES)}")

    @property
    def label(self) -> str:
        return self.role


Target = Union[Point, Side]


def has_model(engine: Engine, target: Target) -> bool:
    """Whether the experiment can answer for ``target`` (only optional checkpoints can be missing)."""
    if isinstance(target, Point) or target.role == "corrupted":
        return True
    return getattr(engine.experiment.checkpoints, target.role) is not None


@contextmanager
def model_for(engine: Engine, target: Target) -> Iterator[PreTrainedModel]:
    """The model to use for ``target``; a Point (and 'corrupted') holds the engine's lock
    for the whole block, so no other caller can recompose the weights in the middle.

    KeyError names the role when the experiment has no such checkpoint.
    """
    if isinstance(target, Point):
        with engine.session(target.alpha, target.beta) as model:
            yield model
        return
    if target.role == "corrupted":
        with engine.session(0.0, 0.0) as model:
            yield model
        return
    model = engine.side_model(target.role)
    if model is None:
        raise KeyError(f"experiment {engine.experiment.name!r} has no {target.role} checkpoint")
    yield model
