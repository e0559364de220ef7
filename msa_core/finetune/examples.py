"""Training sets as token sequences, and the collator that batches them.

- QA pairs go through :func:`msa_core.prompts.encode_qa` (the one QA format: the base model's
  chat template, else ``Question: …\\nAnswer:``); prompt tokens are labelled ``-100`` (not
  trained), answer tokens and the closing EOS are trained. A pair longer than ``max_length``
  is an error naming it (the reference recipe truncates, which silently drops the EOS).
- Raw texts become BOS + text + EOS and are cut into consecutive ``max_length`` windows, as
  MUSE's own fine-tuning chunks its corpus; every token is trained.
- :class:`Collator` right-pads a batch: padding has attention 0 and label ``-100``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

from msa_core.finetune.data import TrainingData
from msa_core.prompts import encode_qa

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids and labels (IGNORE_INDEX where not trained)."""

    input_ids: list[int]
    labels: list[int]


def qa_examples(
    tokenizer: PreTrainedTokenizerBase, data: TrainingData, max_length: int, prompt_format: Optional[str] = None
) -> list[Example]:
    """One example per QA pair in ``prompt_format`` (:mod:`msa_core.prompts`): prompt masked, answer + EOS trained."""
    out = []
    for i, (q, a) in enumerate(data.pairs):
        p_ids, a_ids = encode_qa(tokenizer, q, a, prompt_format)
        ids = p_ids + a_ids
        if len(ids) > max_length:
            raise ValueError(
                f"{data.name}: pair {i} ({q[:40]!r}) is {len(ids)} tokens, longer than max_length={max_length}; "
                "raise --max-length"
            )
        out.append(Example(ids, [IGNORE_INDEX] * len(p_ids) + a_ids))
    return out


def text_examples(
    tokenizer: PreTrainedTokenizerBase, data: TrainingData, max_length: int
) -> list[Example]:
    """BOS + text + EOS per text, cut into ``max_length`` windows; every token trained."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{data.name}: the tokenizer has no eos_token_id; raw texts end with EOS")
    bos = [int(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []
    out = []
    for text in data.texts:
        ids = bos + list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [int(tokenizer.eos_token_id)]
        for start in range(0, len(ids), max_length):
            window = ids[start:start + max_length]
            if len(window) > 1:  # a lone token has nothing to predict
                out.append(Example(window, list(window)))
    return out


def build_examples(
    tokenizer: PreTrainedTokenizerBase, data: Sequence[TrainingData], max_length: int,
    prompt_format: Optional[str] = None,
) -> list[Example]:
    """Every set of ``data`` as examples, in order (the Trainer's sampler shuffles them); QA pairs in
    ``prompt_format`` (default "auto")."""
    out: list[Example] = []
    for d in data:
        out.extend(qa_examples(tokenizer, d, max_length, prompt_format) if d.kind == "qa"
                   else text_examples(tokenizer, d, max_length))
    if not out:
        raise ValueError(f"no training examples in {', '.join(d.name for d in data) or 'the data'}")
    return out


@dataclass(frozen=True)
class Collator:
    """Right-padded tensors: input_ids, attention_mask, labels (padding ignored)."""

    pad_id: int

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(ex["labels"], dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def as_dataset(examples: Sequence[Example], with_length: bool = False) -> Any:
    """The examples as a ``datasets.Dataset`` (columns input_ids, labels[, length])."""
    import datasets

    columns: dict[str, list[Any]] = {
        "input_ids": [ex.input_ids for ex in examples],
        "labels": [ex.labels for ex in examples],
    }
    if with_length:
        columns["length"] = [len(ex.input_ids) for ex in examples]
    return datasets.Dataset.from_dict(columns)
