"""The ``transformers.Trainer`` subclass and callbacks behind :func:`msa_core.finetune.finetune`.

- :data:`OBJECTIVES` maps an objective name to its loss. Only ``"sft"`` (next-token
  cross-entropy on the trained tokens) exists today; gradient-based unlearning baselines
  (GradAscent, GradDiff, NPO) and the relearning attack add theirs here, so every method
  shares one training path (schedule, accumulation, mixed precision, resume, saving).
- :class:`ProgressReporter` turns Trainer events into :mod:`msa_core.progress` calls.
- :class:`EpochExporter` keeps each epoch's weights as a complete HF folder
  (``epoch-1``, ``epoch-2``, …) by hard-linking the model files of the checkpoint the
  Trainer has just written (copying where links are not possible).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback

from msa_core.progress import Progress, report

# loss(model, inputs, num_items_in_batch) -> scalar loss. "sft" is the model's own causal-LM
# loss, token-weighted across gradient-accumulation micro-batches via num_items_in_batch.
Objective = Callable[[torch.nn.Module, dict[str, torch.Tensor], Optional[torch.Tensor]], torch.Tensor]


def _sft_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
              num_items_in_batch: Optional[torch.Tensor]) -> torch.Tensor:
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    return model(**inputs, **kwargs).loss


OBJECTIVES: dict[str, Objective] = {"sft": _sft_loss}

# Files of a Trainer checkpoint that are training state, not part of the model folder.
_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")
_STATE_PREFIXES = ("rng_state", "optimizer", "global_step")


class MsaTrainer(Trainer):
    """A Trainer whose loss is the named objective of :data:`OBJECTIVES`."""

    def __init__(self, *args: Any, objective: str = "sft", **kwargs: Any) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r} is not one of {sorted(OBJECTIVES)}")
        self.objective = OBJECTIVES[objective]
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Optional[torch.Tensor] = None) -> Any:
        if return_outputs:  # evaluation paths; training never asks for outputs
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = self.objective(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss.detach()):
            raise ValueError(f"training loss became {loss.item()} at step {self.state.global_step}; lower --lr")
        return loss


class ProgressReporter(TrainerCallback):
    """Reports training progress (fraction of optimizer steps) to a Progress callback."""

    def __init__(self, progress: Optional[Progress], label: str, epochs: int, steps_per_epoch: int) -> None:
        self.progress = progress
        self.label = label
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.last_loss: Optional[float] = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.max_steps:
            report(self.progress, state.global_step / state.max_steps, f"{self.label}: starting")

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[dict[str, float]] = None,
               **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.max_steps:
            return
        epoch = min(self.epochs, -(-state.global_step // self.steps_per_epoch))  # ceil: the epoch this step ends in
        loss = "" if self.last_loss is None else f", loss {self.last_loss:.3f}"
        report(self.progress, min(1.0, state.global_step / state.max_steps),
               f"{self.label}: epoch {epoch}/{self.epochs}{loss}")


def model_files(checkpoint: Path) -> list[Path]:
    """The files of a Trainer checkpoint that make up the HF model folder (weights, config, tokenizer)."""
    return sorted(
        p for p in checkpoint.iterdir()
        if p.is_file() and p.name not in _STATE_FILES and not p.name.startswith(_STATE_PREFIXES)
    )


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same filesystem: no bytes copied), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class EpochExporter(TrainerCallback):
    """After each epoch's checkpoint, puts its model files in ``folder/epoch-K`` (complete HF folders)."""

    def __init__(self, folder: Path, steps_per_epoch: int) -> None:
        self.folder = folder
        self.steps_per_epoch = steps_per_epoch

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        epoch = -(-state.global_step // self.steps_per_epoch)  # ceil: the last epoch may be short
        target = self.folder / f"epoch-{epoch}"
        if target.exists():
            shutil.rmtree(target)
        partial = self.folder / f".epoch-{epoch}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        for f in model_files(checkpoint):
            link_or_copy(f, partial / f.name)
        os.replace(partial, target)  # an epoch folder appears complete or not at all
