"""``train_model``: the fine-tune of :func:`msa_core.finetune.finetune`, on a model already in memory.

For callers that train many short runs from models they hold (the relearning attack,
:mod:`msa_core.rtt`): no base folder, no output folder, no card, no resume. Everything
that changes the weights is shared with ``finetune``: the examples and collator, the
``MsaTrainer`` with its objective, the Trainer arguments (schedule, warm-up, clipping,
seed, bf16 autocast on a GPU) and fp32 master weights (the model is converted to fp32 in
place). The caller owns the model: pass a copy when the original must stay as it was.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from msa_core.finetune.data import TrainingData
from msa_core.finetune.examples import Collator, as_dataset, build_examples
from msa_core.finetune.train import (
    FinetuneOutOfMemory,
    TrainConfig,
    _oom_advice,
    _training_args,
    schedule_steps,
    uses_bf16_autocast,
)
from msa_core.finetune.trainer import MsaTrainer, ProgressReporter
from msa_core.progress import Progress, report

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TrainedInMemory:
    """What :func:`train_model` did: optimizer steps, per-epoch mean losses, wall seconds, examples."""

    steps: int
    epoch_losses: tuple[float, ...]
    seconds: float
    examples: int


def train_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TrainingData | Sequence[TrainingData],
    config: TrainConfig,
    *,
    progress: Optional[Progress] = None,
    label: str = "training",
    prompt_format: Optional[str] = None,
) -> TrainedInMemory:
    """Fine-tune ``model`` in place on ``data`` with ``config`` (see the module docstring); the
    model is left in fp32 and eval mode. QA pairs are encoded in ``prompt_format``
    (:mod:`msa_core.prompts`; None: the default). ValueError for empty data or ``save_every_epoch``
    (there is no folder to save epochs into); :class:`FinetuneOutOfMemory` with settings that fit."""
    started = time.perf_counter()
    sets = [data] if isinstance(data, TrainingData) else list(data)
    if not sets:
        raise ValueError(f"{label}: no training data given")
    if config.save_every_epoch:
        raise ValueError(f"{label}: save_every_epoch needs an output folder; use finetune()")
    from msa_core.finetune.trainer import PAIRED_OBJECTIVES

    if config.objective in PAIRED_OBJECTIVES:
        raise ValueError(f"{label}: objective {config.objective!r} trains on paired forget/retain batches; "
                         "use msa_core.baselines.run_baseline")
    examples = build_examples(tokenizer, sets, config.max_length, prompt_format)
    old_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        steps_per_epoch, warmup_steps = schedule_steps(len(examples), config)
        model.float()  # fp32 master weights whatever the caller's dtype (finetune's rule)
        model.requires_grad_(True)
        model.train()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with tempfile.TemporaryDirectory(prefix="msa-train-") as work:
            # Nothing is saved: the Trainer only needs a folder to name.
            args = _training_args(Path(work), dataclasses.replace(config, resumable=False), warmup_steps,
                                  uses_bf16_autocast(config))
            trainer = MsaTrainer(
                model=model, args=args, train_dataset=as_dataset(examples, config.group_by_length),
                data_collator=Collator(int(pad)), processing_class=tokenizer, objective=config.objective,
            )
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # it prints log dicts on stdout
            trainer.add_callback(ProgressReporter(progress, label, config.epochs, steps_per_epoch))
            try:
                trainer.train()
            except torch.OutOfMemoryError:
                raise FinetuneOutOfMemory(
                    f"out of memory in {label} with batch_size={config.batch_size}, max_length={config.max_length}: "
                    f"try {_oom_advice(config)}"
                ) from None
            losses = tuple(float(h["loss"]) for h in trainer.state.log_history if "loss" in h and "epoch" in h)
            steps = int(trainer.state.global_step)
    finally:
        torch.set_num_threads(old_threads)
        model.requires_grad_(False)
        model.eval()
    report(progress, 1.0, f"{label}: done")
    return TrainedInMemory(steps, losses, time.perf_counter() - started, len(examples))


__all__ = ["TrainedInMemory", "train_model"]
