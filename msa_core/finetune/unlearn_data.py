"""Paired forget/retain training data for the gradient-based unlearning baselines.

Like open-unlearning's ``ForgetRetainDataset`` (anchor "forget"): one row per forget example,
each paired with a retain example drawn at random; here the draw is seeded
(``numpy.random.default_rng(seed).integers``) and fixed for the run, so a rerun trains on the
same pairs. Both sides are encoded as :mod:`msa_core.finetune.examples` encodes QA pairs (the
experiment's ``prompt_format``; prompt tokens labelled ``-100``).

- :func:`unlearning_data` — the experiment's forget set and retain set as :class:`TrainingData`.
- :func:`paired_rows` / :func:`paired_dataset` — the rows the Trainer iterates.
- :class:`PairedCollator` — right-padded ``forget_*`` / ``retain_*`` tensors (and ``forget_ref_nll``).
- :func:`add_reference_nll` — NPO's reference sums: the summed answer NLL of each forget example
  under the model as loaded (θ_corrupted, before any step), in eval mode and under the same
  autocast as training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from msa_core.finetune.data import TrainingData, available_tofu_splits, load_training_data
from msa_core.finetune.examples import IGNORE_INDEX, Example

if TYPE_CHECKING:
    from msa_core.experiment import Experiment

PAIR_SEED = 42
_FORGET = re.compile(r"^forget(\d{2})(?:_perturbed)?$")


def _pick_split(folder: Path, candidates: Sequence[str], what: str) -> str:
    have = available_tofu_splits(folder)
    for name in candidates:
        if name in have:
            return name
    raise FileNotFoundError(
        f"{what}: none of the TOFU splits {', '.join(candidates)} is in {folder}; it holds: {', '.join(have) or 'none'}"
    )


def unlearning_splits(experiment: Experiment) -> tuple[str, str]:
    """(forget split, retain split) the baselines train on, from the experiment's TOFU folder:
    the forget split (``forgetXX``, else its ``_perturbed`` file), and for ``forgetXX`` the
    complementary ``retain{100−XX}`` (open-unlearning's TOFU pairing, e.g. forget10 ↔ retain90)
    when the folder has it, else the experiment's ``retain_split``."""
    folder = experiment.data.tofu
    if folder is None:
        raise ValueError(f"experiment {experiment.name!r}: the unlearning baselines train on TOFU data; "
                         "the experiment file has no data.tofu folder")
    folder = Path(folder)
    split = experiment.data.forget_split
    forget = _pick_split(folder, [split, f"{split}_perturbed"], f"experiment {experiment.name!r} forget set")
    m = _FORGET.fullmatch(split)
    retain_candidates = [f"retain{100 - int(m.group(1))}"] if m and 0 < int(m.group(1)) < 100 else []
    retain_candidates.append(experiment.data.retain_split)
    retain = _pick_split(folder, retain_candidates, f"experiment {experiment.name!r} retain set")
    return forget, retain


def unlearning_data(experiment: Experiment) -> tuple[TrainingData, TrainingData]:
    """The forget and retain training sets of :func:`unlearning_splits`, loaded."""
    forget, retain = unlearning_splits(experiment)
    folder = Path(experiment.data.tofu)  # type: ignore[arg-type]  # checked by unlearning_splits
    return load_training_data(f"tofu:{forget}", folder), load_training_data(f"tofu:{retain}", folder)


def pair_indices(n_forget: int, n_retain: int, seed: int = PAIR_SEED) -> list[int]:
    """For each forget example, the index of its retain partner (uniform, with replacement, seeded)."""
    if n_forget < 1 or n_retain < 1:
        raise ValueError(f"pairing needs at least one forget and one retain example, got {n_forget} and {n_retain}")
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).integers(0, n_retain, size=n_forget)]


def paired_rows(forget: Sequence[Example], retain: Optional[Sequence[Example]],
                seed: int = PAIR_SEED) -> dict[str, list[Any]]:
    """Columns of the paired dataset: ``forget_input_ids``, ``forget_labels`` and, with a retain set,
    ``retain_input_ids``, ``retain_labels`` (the partner of :func:`pair_indices`)."""
    if not forget:
        raise ValueError("no forget examples to unlearn")
    cols: dict[str, list[Any]] = {"forget_input_ids": [ex.input_ids for ex in forget],
                                  "forget_labels": [ex.labels for ex in forget]}
    if retain is not None:
        partner = pair_indices(len(forget), len(retain), seed)
        cols["retain_input_ids"] = [retain[j].input_ids for j in partner]
        cols["retain_labels"] = [retain[j].labels for j in partner]
    return cols


def paired_dataset(columns: dict[str, list[Any]]) -> Any:
    """The columns as a ``datasets.Dataset``."""
    import datasets

    return datasets.Dataset.from_dict(columns)


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


@dataclass(frozen=True)
class PairedCollator:
    """Right-padded ``{part}_input_ids`` / ``_attention_mask`` / ``_labels`` for part forget (and
    retain when the rows have it); ``forget_ref_nll`` as float64 when present."""

    pad_id: int

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for part in ("forget", "retain"):
            if f"{part}_input_ids" not in batch[0]:
                continue
            ids = [ex[f"{part}_input_ids"] for ex in batch]
            out[f"{part}_input_ids"] = _pad(ids, self.pad_id)
            out[f"{part}_labels"] = _pad([ex[f"{part}_labels"] for ex in batch], IGNORE_INDEX)
            out[f"{part}_attention_mask"] = _pad([[1] * len(r) for r in ids], 0)
        if "forget_ref_nll" in batch[0]:
            out["forget_ref_nll"] = torch.tensor([float(ex["forget_ref_nll"]) for ex in batch], dtype=torch.float64)
        return out


def reference_nll(model: torch.nn.Module, rows: dict[str, list[Any]], pad_id: int, *, batch_size: int = 8,
                  device: Optional[torch.device] = None, bf16_autocast: bool = False) -> list[float]:
    """The summed answer NLL of every forget row under ``model`` (eval mode, no grad; the model's
    training mode is restored), computed on ``device`` under bf16 autocast when asked."""
    from msa_core.finetune.trainer import sequence_nll

    collate = PairedCollator(pad_id)
    was_training = model.training
    dev = device if device is not None else next(model.parameters()).device
    model.eval()
    out: list[float] = []
    n = len(rows["forget_input_ids"])
    try:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16_autocast):
            for start in range(0, n, batch_size):
                chunk = range(start, min(n, start + batch_size))
                batch = collate([{"forget_input_ids": rows["forget_input_ids"][i],
                                  "forget_labels": rows["forget_labels"][i]} for i in chunk])
                nll = sequence_nll(model, batch["forget_input_ids"].to(dev), batch["forget_attention_mask"].to(dev),
                                   batch["forget_labels"].to(dev))
                out.extend(float(x) for x in nll.double().cpu())
    finally:
        model.train(was_training)
    return out


def add_reference_nll(model: torch.nn.Module, rows: dict[str, list[Any]], pad_id: int, *, batch_size: int = 8,
                      device: Optional[torch.device] = None, bf16_autocast: bool = False) -> dict[str, list[Any]]:
    """``rows`` with the ``forget_ref_nll`` column (:func:`reference_nll`) added."""
    return {**rows, "forget_ref_nll": reference_nll(model, rows, pad_id, batch_size=batch_size, device=device,
                                                    bf16_autocast=bf16_autocast)}


__all__ = ["PAIR_SEED", "PairedCollator", "add_reference_nll", "pair_indices", "paired_dataset", "paired_rows",
           "reference_nll", "unlearning_data", "unlearning_splits"]
