"""Fine-tuning: the one training path of the project (``msa finetune``, ``msa init``, the demo,
the gradient-based baselines of ``msa baseline`` and the relearning attack).

- :mod:`.data` — data specs (``tofu:forget10``, ``tofu:retain90_ft``, ``muse:news/raw/forget``),
  local TOFU/MUSE loading, the reference recipe's retain sample, in-memory sets.
- :mod:`.examples` — token sequences (QA prompt masked, raw text windows) and the collator.
- :mod:`.trainer` — the ``transformers.Trainer`` subclass with the objective hook (``sft`` and the
  unlearning losses GradAscent, GradDiff, NPO), callbacks.
- :mod:`.unlearn_data` — paired forget/retain examples and their collator for those losses.
- :mod:`.train` — :class:`TrainConfig` (the reference recipe's defaults) and :func:`finetune`
  (fp32 master weights, atomic output with a card, reuse by fingerprint, resume after a kill).
- :mod:`.in_memory` — :func:`train_model`: the same training on a model held in memory (no folders).
"""

from msa_core.finetune.data import (
    DataSpec,
    TrainingData,
    load_training_data,
    parse_data_spec,
    qa_data,
    retain_ft_indices,
    text_data,
)
from msa_core.finetune.in_memory import TrainedInMemory, train_model
from msa_core.finetune.train import CARD, FinetuneOutOfMemory, FinetuneResult, TrainConfig, finetune, read_card

__all__ = [
    "CARD",
    "DataSpec",
    "FinetuneOutOfMemory",
    "FinetuneResult",
    "TrainConfig",
    "TrainedInMemory",
    "TrainingData",
    "finetune",
    "load_training_data",
    "parse_data_spec",
    "qa_data",
    "read_card",
    "retain_ft_indices",
    "text_data",
    "train_model",
]
