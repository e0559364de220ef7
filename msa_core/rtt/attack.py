"""One relearning attack: a fresh fp32 copy of a model, fine-tuned on the training folds.

The copy is taken under the engine's lock (a Point is composed there first), so the
engine's working model and side models are never trained or left changed; the attacked
model is dropped when the caller is done with it. Training is
:func:`msa_core.finetune.train_model`, the training code of ``msa finetune``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from msa_core.progress import Progress
from msa_core.rtt.settings import AttackSettings
from msa_core.targets import Target, model_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from msa_core.engine import Engine
    from msa_core.finetune import TrainedInMemory


def fresh_copy(engine: Engine, target: Target) -> PreTrainedModel:
    """An independent fp32 copy of ``target``'s model (on the engine's device), in eval mode."""
    with model_for(engine, target) as model:
        clone = copy.deepcopy(model)
    clone.float()
    clone.requires_grad_(False)
    return clone.eval()


def attack(
    model: PreTrainedModel, engine: Engine, items: Sequence[Any], train_indices: Sequence[int], lr: float,
    settings: AttackSettings, *, progress: Optional[Progress] = None, label: str = "attack",
) -> TrainedInMemory:
    """Fine-tune ``model`` (a :func:`fresh_copy`) in place on the QA pairs ``items[train_indices]``."""
    # Imported here: the training stack (transformers.Trainer, accelerate) takes seconds to import,
    # and pages that only read stored attacks should not pay for it.
    from msa_core.finetune import qa_data, train_model

    def field(item: Any, name: str) -> str:
        return str(item[name] if isinstance(item, dict) else getattr(item, name))

    pairs = [(field(items[i], "question"), field(items[i], "answer")) for i in train_indices]
    data = qa_data("rtt:train_folds", pairs)
    return train_model(model, engine.tokenizer, data, settings.train_config(lr), progress=progress, label=label,
                       prompt_format=engine.experiment.prompt_format)
