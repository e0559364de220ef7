"""Per-item probes of one model: answers, p(gold), truth ratios, and whether a fact survived.

The target is a :class:`~msa_core.targets.Point` (the unlearned model at (α, β)) or a
:class:`~msa_core.targets.Side` (a named checkpoint), turned into a model by
:func:`msa_core.targets.model_for`. These functions return plain lists and memoise nothing:
the app keeps its own per-question memos (``studio/resources.py``).

:func:`entity_groups` groups QA items by the person they are about (TOFU lists an author's
questions together), and :func:`gold_overlap` says whether an answer still holds a gold fact.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from msa_core.eval.metrics import rouge_l_recall
from msa_core.targets import Point, Target, model_for

if TYPE_CHECKING:
    from msa_core.engine import Engine

# ROUGE-L recall at or above which an answer counts as still holding the gold fact: TOFU
# answers are one sentence, so 0.6 means most of the fact's words came back in order.
GOLD_THRESHOLD = 0.6


@dataclass(frozen=True)
class TimedAnswers:
    """Greedy answers of one target, and where the time went (compose is 0 for side models)."""

    texts: list[str]
    compose_seconds: float
    generate_seconds: float


def generate_for(
    engine: Engine, target: Target, prompts: Sequence[str], *, max_new_tokens: int, raw: bool = False
) -> TimedAnswers:
    """Greedy continuations of ``prompts`` by ``target``'s model.

    ``raw=False`` asks each prompt as a question in the QA format the models were trained
    with; ``raw=True`` continues the text as given (extraction prompts).
    """
    from msa_core.generation import generate_answers, generate_text

    generate = generate_text if raw else generate_answers
    t0 = time.perf_counter()
    with model_for(engine, target) as model:
        t1 = time.perf_counter()
        fmt = {} if raw else {"prompt_format": engine.experiment.prompt_format}
        texts = generate(model, engine.tokenizer, list(prompts), max_new_tokens=max_new_tokens, **fmt)
    t2 = time.perf_counter()
    # Entering a Point's session is the recomposition; a side model's first use is a load, shown as generation.
    compose = t1 - t0 if isinstance(target, Point) else 0.0
    return TimedAnswers(texts, compose, t2 - t0 - compose)


def gold_probabilities(
    engine: Engine, target: Target, questions: Sequence[str], golds: Sequence[str]
) -> list[float]:
    """p(gold | question) for each pair (exp of the mean token NLL, TOFU's convention)."""
    from msa_core.eval.scoring import answer_probabilities

    if len(questions) != len(golds):
        raise ValueError(f"gold_probabilities: {len(questions)} questions but {len(golds)} gold answers")
    with model_for(engine, target) as model:
        return [float(p) for p in answer_probabilities(model, engine.tokenizer, list(questions), list(golds),
                                                       prompt_format=engine.experiment.prompt_format)]


def truth_ratio_values(engine: Engine, target: Target, items: Sequence[Any]) -> list[float]:
    """Per-item truth ratio TR = P(perturbed) / P(paraphrased or gold answer).

    ``items``: :class:`~msa_core.eval.questions.QAItem` rows (or dicts) with perturbed answers;
    KeyError names the first item without them.
    """
    from msa_core.eval.scoring import truth_ratios

    with model_for(engine, target) as model:
        return [float(t) for t in truth_ratios(model, engine.tokenizer, list(items),
                                               prompt_format=engine.experiment.prompt_format)]


def gold_overlap(answer: str, gold: str) -> float:
    """ROUGE-L recall of ``answer`` against ``gold`` (stemmed, TOFU's ROUGE convention); 0 when either is blank."""
    if not gold.strip() or not answer.strip():
        return 0.0
    return float(rouge_l_recall(gold, answer))


def holds_gold(answer: str, gold: str) -> bool:
    """Whether ``answer`` still contains the gold fact (overlap ≥ :data:`GOLD_THRESHOLD`)."""
    return gold_overlap(answer, gold) >= GOLD_THRESHOLD


# ----------------------------------------------------------------------------- entities
_NAME_RE = re.compile(r"[A-Z][\w'’\-]*(?:\s+(?:(?:de|da|del|van|von|der|al|el|bin|la|le)\s+)?[A-Z][\w'’\-]*){1,3}")
_LEADING = {"What", "Who", "Where", "When", "How", "Which", "Why", "Can", "Could", "Is", "Are", "Was", "Were",
            "Did", "Does", "Do", "Has", "Have", "In", "The", "A", "An", "Tell", "Question", "Answer", "Yes", "No"}


def _names(text: str) -> list[str]:
    out = []
    for m in _NAME_RE.finditer(text):
        words = m.group(0).split()
        while words and words[0] in _LEADING:
            words = words[1:]
        name = re.sub(r"(['’]s|[.,'’])$", "", " ".join(words))
        if len(name.split()) >= 2:
            out.append(name)
    return out


def _text(item: Any) -> str:
    if isinstance(item, dict):
        return f"{item.get('question', '')} {item.get('answer', '')}"
    return f"{item.question} {item.answer}"


def entity_groups(items: Sequence[Any], min_count: int = 3) -> list[tuple[str, list[int]]]:
    """Group QA items (QAItem rows or dicts) by the person they are about: (name, item indices), in order.

    A name is a run of 2–4 capitalised words found in the question or answer; each item goes
    to its most frequent name seen in at least ``min_count`` items (and in at least 30% as
    many items as the most frequent name), else to the previous item's entity (TOFU lists
    an author's questions together). The current entity wins while its name is mentioned,
    and a new one starts only when at least two of the next three items mention it.
    """
    texts = [_text(it) for it in items]
    per_item = [_names(t) for t in texts]
    freq: dict[str, int] = {}
    for names in per_item:
        for n in set(names):
            freq[n] = freq.get(n, 0) + 1
    threshold = max(min_count, int(0.3 * max(freq.values(), default=0)))
    groups: dict[str, list[int]] = {}
    current: Optional[str] = None
    for i, names in enumerate(per_item):
        # Switch entity only for a frequent name that the next items keep mentioning.
        good = [n for n in names if freq[n] >= threshold
                and sum(n in later for later in per_item[i + 1 : i + 4]) >= min(2, len(per_item) - i - 1)]
        if good and (current is None or current not in texts[i]):
            current = max(good, key=lambda n: (freq[n], -names.index(n)))
        groups.setdefault(current or "(unnamed)", []).append(i)
    return list(groups.items())
