"""Held-out scores of one model on forget items: p(gold), ROUGE-L recall of greedy answers, exact answers.

p(gold) is TOFU's answer probability (exp of the mean token NLL of the gold answer + EOS,
:func:`msa_core.eval.scoring.answer_probabilities`); ROUGE-L recall is TOFU's
(:func:`msa_core.eval.probe.gold_overlap`); an exact answer is a greedy answer equal to the
gold one after :func:`normalise` (case, spaces, end punctuation).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

from msa_core.eval.probe import gold_overlap

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or end punctuation."""
    return _SPACES.sub(" ", text).strip().rstrip(".!?;:,").strip().casefold()


def exact_answer(answer: str, gold: str) -> bool:
    """Whether ``answer`` is the gold answer (see :func:`normalise`)."""
    return bool(gold.strip()) and normalise(answer) == normalise(gold)


@dataclass(frozen=True)
class ItemScores:
    """Per-item scores of one model on some forget items (parallel lists; ``items`` are forget-set indices)."""

    items: list[int]
    p_gold: list[float]
    rouge: list[float]
    exact: list[bool]
    answers: list[str]

    def mean(self, metric: str) -> float:
        """The mean of ``metric`` ('p_gold' | 'rouge' | 'exact') over the items."""
        values = [float(v) for v in getattr(self, metric)]
        return sum(values) / len(values) if values else float("nan")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ItemScores:
        return cls([int(i) for i in raw["items"]], [float(x) for x in raw["p_gold"]],
                   [float(x) for x in raw["rouge"]], [bool(x) for x in raw["exact"]], [str(a) for a in raw["answers"]])


METRICS = ("p_gold", "rouge", "exact")


def score_items(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Any], indices: Sequence[int], *,
    max_new_tokens: int, prompt_format: Optional[str] = None,
) -> ItemScores:
    """The scores of ``model`` on ``items[i]`` for each ``i`` of ``indices`` (QAItem rows or dicts), asked
    in ``prompt_format`` (:mod:`msa_core.prompts`)."""
    from msa_core.eval.scoring import answer_probabilities
    from msa_core.generation import generate_answers

    def field(item: Any, name: str) -> str:
        return str(item[name] if isinstance(item, dict) else getattr(item, name))

    chosen = [items[i] for i in indices]
    questions = [field(it, "question") for it in chosen]
    golds = [field(it, "answer") for it in chosen]
    p = [float(x) for x in answer_probabilities(model, tokenizer, questions, golds, prompt_format=prompt_format)]
    answers = generate_answers(model, tokenizer, questions, max_new_tokens=max_new_tokens,
                               prompt_format=prompt_format)
    return ItemScores(list(indices), p, [gold_overlap(a, g) for a, g in zip(answers, golds)],
                      [exact_answer(a, g) for a, g in zip(answers, golds)], answers)
