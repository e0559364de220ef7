"""The ``transformers.Trainer`` subclass and callbacks behind :func:`msa_core.finetune.finetune`.

- :data:`OBJECTIVES` maps an objective name to its loss, so every method shares one training
  path (schedule, accumulation, mixed precision, resume, saving): ``"sft"`` (next-token
  cross-entropy on the trained tokens) and the gradient-based unlearning baselines with
  open-unlearning's definitions, on paired batches (``forget_*`` / ``retain_*`` tensors,
  :mod:`msa_core.finetune.unlearn_data`):

  - ``"GradAscent"``: −NLL(forget), the model's mean answer-token cross-entropy negated;
  - ``"GradDiff"``: γ·(−NLL(forget)) + a·NLL(retain);
  - ``"NPO"``: γ·(−(2/β)·mean(log σ(β·(s_θ − s_ref)))) + a·NLL(retain), where s_θ / s_ref are the
    per-sequence *summed* answer-token NLLs of the trained and the reference (θ_corrupted)
    model (open-unlearning's ``compute_dpo_loss`` with only "lose" inputs). The reference sums
    are constants, computed once before training and carried in the batch (``forget_ref_nll``).

  γ, a and β are the objective's parameters (``forget_weight``, ``retain_weight``, ``beta``;
  :func:`make_objective`). Paired batches carry no ``labels`` key, so the Trainer averages the
  micro-batch losses over gradient accumulation (open-unlearning's behaviour).
- :class:`ProgressReporter` turns Trainer events into :mod:`msa_core.progress` calls.
- :class:`EpochExporter` keeps each epoch's weights as a complete HF folder
  (``epoch-1``, ``epoch-2``, …) by hard-linking the model files of the checkpoint the
  Trainer has just written (copying where links are not possible).
"""

from __future__ import annotations

import functools
import math
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


def sequence_nll(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed next-token NLL of the labelled tokens (``IGNORE_INDEX`` left out), shape (batch,)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.dtype != torch.float64:
        logits = logits.float()  # bf16 autocast logits: the cross-entropy in fp32, as transformers' own loss
    shifted = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1, :].transpose(1, 2), shifted,
                                            ignore_index=-100, reduction="none")
    return nll.sum(dim=-1)


def _mean_nll(model: torch.nn.Module, inputs: dict[str, torch.Tensor], part: str) -> torch.Tensor:
    """The model's own causal-LM loss (mean over the labelled tokens of the batch) on ``part``'s tensors."""
    try:
        ids, mask, labels = (inputs[f"{part}_{n}"] for n in ("input_ids", "attention_mask", "labels"))
    except KeyError as exc:
        raise KeyError(f"unlearning objective: the batch has no {exc.args[0]!r} tensor "
                       "(paired forget/retain batches come from msa_core.finetune.unlearn_data)") from None
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _grad_ascent_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      num_items_in_batch: Optional[torch.Tensor]) -> torch.Tensor:
    return -_mean_nll(model, inputs, "forget")


def _grad_diff_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Optional[torch.Tensor],
                    *, forget_weight: float = 1.0, retain_weight: float = 1.0) -> torch.Tensor:
    return forget_weight * -_mean_nll(model, inputs, "forget") + retain_weight * _mean_nll(model, inputs, "retain")


def npo_forget_loss(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO's forget term: −(2/β)·mean(log σ(β·(nll − ref_nll))) over per-sequence summed NLLs."""
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(beta * (nll - ref_nll)).mean()


def _npo_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Optional[torch.Tensor],
              *, beta: float = 0.1, forget_weight: float = 1.0, retain_weight: float = 1.0) -> torch.Tensor:
    if "forget_ref_nll" not in inputs:
        raise KeyError("NPO: the batch has no 'forget_ref_nll' tensor (the reference model's summed NLLs; "
                       "msa_core.finetune.unlearn_data.add_reference_nll)")
    nll = sequence_nll(model, inputs["forget_input_ids"], inputs["forget_attention_mask"], inputs["forget_labels"])
    forget = npo_forget_loss(nll, inputs["forget_ref_nll"].to(nll.dtype), beta)
    return forget_weight * forget + retain_weight * _mean_nll(model, inputs, "retain")


OBJECTIVES: dict[str, Objective] = {
    "sft": _sft_loss,
    "GradAscent": _grad_ascent_loss,
    "GradDiff": _grad_diff_loss,
    "NPO": _npo_loss,
}
# The parameters each objective takes (make_objective), with open-unlearning's defaults.
OBJECTIVE_PARAMS: dict[str, dict[str, float]] = {
    "sft": {},
    "GradAscent": {},
    "GradDiff": {"forget_weight": 1.0, "retain_weight": 1.0},
    "NPO": {"beta": 0.1, "forget_weight": 1.0, "retain_weight": 1.0},
}
# Objectives whose batches are paired forget/retain tensors (and which need a retain set).
PAIRED_OBJECTIVES = ("GradAscent", "GradDiff", "NPO")
NEEDS_RETAIN = ("GradDiff", "NPO")
NEEDS_REFERENCE_NLL = ("NPO",)


def make_objective(name: str, params: Optional[dict[str, float]] = None) -> Objective:
    """The loss of objective ``name`` with ``params`` (its :data:`OBJECTIVE_PARAMS`; missing ones
    take the defaults). ValueError naming an unknown objective or parameter, or a bad value."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r} is not one of {sorted(OBJECTIVES)}")
    given = dict(params or {})
    unknown = sorted(set(given) - set(OBJECTIVE_PARAMS[name]))
    if unknown:
        raise ValueError(f"objective {name!r} takes no parameter {', '.join(unknown)} "
                         f"(it takes: {', '.join(OBJECTIVE_PARAMS[name]) or 'none'})")
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"objective {name!r}: parameter {key} must be a finite number, got {value!r}")
    if "beta" in given and given["beta"] <= 0:
        raise ValueError(f"objective {name!r}: beta must be > 0, got {given['beta']!r}")
    if not given:
        return OBJECTIVES[name]
    return functools.partial(OBJECTIVES[name], **{k: float(v) for k, v in given.items()})

# Files of a Trainer checkpoint that are training state, not part of the model folder.
_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")
_STATE_PREFIXES = ("rng_state", "optimizer", "global_step")


class MsaTrainer(Trainer):
    """A Trainer whose loss is the named objective of :data:`OBJECTIVES` (with ``objective_params``)."""

    def __init__(self, *args: Any, objective: str = "sft", objective_params: Optional[dict[str, float]] = None,
                 **kwargs: Any) -> None:
        self.objective = make_objective(objective, objective_params)
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
