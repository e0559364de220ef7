"""What an attack does: :class:`AttackSettings`, and the ``quick`` preset the app runs.

Every field changes the result, so all of them (with the training recipe they imply) are
part of the store key (:meth:`AttackSettings.key`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from msa_core.finetune import TrainConfig


# Learning rates of the sweep for small models (the embedded demo, < SMALL_MODEL_PARAMETERS):
# they were trained at 7e-4 … 2e-3 (msa_core/demo/build.py); at 1e-5 a 4-epoch attack moves
# nothing measurable (the corrupted model's held-out p(gold) stays at its unattacked value), so
# the sweep spans the decade below their own training lr. Measured numbers: README "Is it really gone?".
SMALL_MODEL_LRS = (1e-4, 3e-4, 1e-3)
# The quick setting's one lr: the middle of the small-model sweep. On the quick demo (4 epochs)
# it left the corrupted model's held-out facts intact (ROUGE-L 0.9 before and after) while
# 1e-3 knocked them down to 0.5, which would move the 100 % end of the recovery scale.
QUICK_LR = 3e-4
# For real 1B–8B models: around TOFU's own fine-tuning lr (1e-5), as the paper sweeps lr.
LARGE_MODEL_LRS = (1e-5, 3e-5, 1e-4)
SMALL_MODEL_PARAMETERS = 100_000_000
# An attack is a short fine-tune: a few epochs on the training folds (the paper's RTT is short).
DEFAULT_EPOCHS = 4
# The demo's fine-tunes use batch 8; TOFU's recipe uses 4 per device.
DEFAULT_BATCH_SIZE = 4
# TOFU's ROUGE generation length (msa_core.eval.tofu.ROUGE_MAX_NEW_TOKENS): answers end at EOS.
DEFAULT_MAX_NEW_TOKENS = 200


def default_lrs(parameter_count: int) -> tuple[float, ...]:
    """The lr sweep for a model of ``parameter_count`` parameters (see the constants above)."""
    return SMALL_MODEL_LRS if parameter_count < SMALL_MODEL_PARAMETERS else LARGE_MODEL_LRS


@dataclass(frozen=True)
class AttackSettings:
    """One relearning attack.

    ``folds``: entity folds of the forget set (None: one per entity, at most 5). ``rounds``: how many
    folds are held out in turn (fold 0, 1, …; None: every fold). ``lrs``: the sweep (None:
    :func:`default_lrs` of the model). ``epochs``, ``batch_size``, ``seed``: the fine-tune
    (other values: :class:`~msa_core.finetune.TrainConfig`'s reference recipe, warm-up 1 epoch).
    ``max_new_tokens``: greedy answer length for ROUGE and exact answers.
    """

    folds: Optional[int] = None
    rounds: Optional[int] = None
    epochs: int = DEFAULT_EPOCHS
    lrs: Optional[tuple[float, ...]] = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 42
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        for name in ("folds", "rounds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"AttackSettings.{name} must be an integer >= 1 or None, got {value!r}")
        if self.folds is not None and self.folds < 2:
            raise ValueError(f"AttackSettings.folds must be >= 2 (one fold is held out), got {self.folds}")
        for name in ("epochs", "batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AttackSettings.{name} must be an integer >= 1, got {value!r}")
        if self.lrs is not None:
            lrs = tuple(float(x) for x in self.lrs)
            if not lrs or any(not (math.isfinite(x) and x > 0) for x in lrs):
                raise ValueError(f"AttackSettings.lrs must be positive numbers, got {self.lrs!r}")
            object.__setattr__(self, "lrs", tuple(sorted(set(lrs))))

    @classmethod
    def quick(cls, **overrides: Any) -> AttackSettings:
        """The app's setting: two folds, one held out, one lr (:data:`QUICK_LR`) — on the demo a sixth
        of the default sweep's runs (per model: 1 held-out fold × (unattacked + 1 lr) instead of 3 × 4)."""
        values: dict[str, Any] = {"folds": 2, "rounds": 1, "lrs": (QUICK_LR,)}
        values.update(overrides)
        return cls(**values)

    def resolved(self, parameter_count: int) -> AttackSettings:
        """These settings with ``lrs`` filled in for a model of ``parameter_count`` parameters."""
        return self if self.lrs is not None else replace(self, lrs=default_lrs(parameter_count))

    def train_config(self, lr: float, num_threads: Optional[int] = None) -> TrainConfig:
        """The fine-tune of one attack at ``lr`` (not resumable: an attack is short, and a killed
        run resumes per fold and lr from the store instead)."""
        # Imported here: msa_core.finetune loads the training stack (transformers.Trainer), seconds.
        from msa_core.finetune import TrainConfig

        return TrainConfig(epochs=self.epochs, lr=float(lr), batch_size=self.batch_size, seed=self.seed,
                           num_threads=num_threads, resumable=False)

    def key(self) -> dict[str, Any]:
        """Everything that changes a stored run except the fold and lr of the row: these settings
        and the training recipe (TrainConfig's key without its lr). ``rounds`` and ``lrs`` only
        choose which rows are computed (each row is keyed by its fold and lr), so they are left out
        and runs are shared between sweeps that overlap."""
        recipe = self.train_config(1.0).key()
        recipe.pop("lr")
        values = asdict(self)
        values.pop("rounds")
        values.pop("lrs")
        return {"settings": values, "recipe": recipe}
