"""Metric conventions where open-unlearning's code and the papers differ, as named settings.

Every evaluation records the conventions it used (``settings.conventions``, part of the
settings key), so numbers computed under different conventions are never mixed. The
defaults follow open-unlearning's code, because users compare against its numbers; the
alternatives reproduce the papers. An experiment file may choose them::

    conventions:
      extraction_strength: paper      # default: open-unlearning
      min_k: muse-paper               # default: open-unlearning
      knowmem_prompt: fit-context     # default: open-unlearning

- ``extraction_strength``: ``"open-unlearning"`` gives 1/L when only the last answer token
  is wrong (its loop stops at k = L−1); ``"paper"`` gives 0 (Carlini et al.'s definition,
  DESIGN section 5).
- ``min_k`` (Min-K% / Min-K%++ scores): ``"open-unlearning"`` drops the last scored token of
  each text (its ``tokenwise_logprobs`` "-1 to ignore eos prediction"), ``"muse-paper"``
  scores every text token (the MUSE paper's code).
- ``knowmem_prompt``: ``"open-unlearning"`` keeps the first 512 tokens of a KnowMem few-shot
  prompt (its QADataset ``max_length: 512`` with the tokenizer's right-side truncation),
  ``"fit-context"`` keeps the last tokens that fit the model's positions with room for the
  answer (so the question itself is never cut).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

CONVENTIONS: dict[str, tuple[str, ...]] = {
    "extraction_strength": ("open-unlearning", "paper"),
    "min_k": ("open-unlearning", "muse-paper"),
    "knowmem_prompt": ("open-unlearning", "fit-context"),
}
DEFAULT_CONVENTIONS: dict[str, str] = {name: choices[0] for name, choices in CONVENTIONS.items()}
# open-unlearning's MUSE KnowMem QADataset max_length (configs/data/datasets/MUSE_*_knowmem.yaml).
OPEN_UNLEARNING_KNOWMEM_MAX_TOKENS = 512


def check_conventions(raw: Optional[Mapping[str, Any]], where: str = "conventions") -> dict[str, str]:
    """The full conventions mapping (defaults filled in) from ``raw``; ValueError naming the bad field."""
    if raw is None:
        return dict(DEFAULT_CONVENTIONS)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping of convention → choice, got {type(raw).__name__}")
    out = dict(DEFAULT_CONVENTIONS)
    for name, value in raw.items():
        if name not in CONVENTIONS:
            raise ValueError(f"{where}: unknown convention {name!r}; known: {', '.join(CONVENTIONS)}")
        if value not in CONVENTIONS[name]:
            raise ValueError(f"{where}.{name}: {value!r} is not one of {', '.join(CONVENTIONS[name])}")
        out[name] = str(value)
    return out
