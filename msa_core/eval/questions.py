"""The question sets a person browses (the app's Playground and Probe pages, or a script).

:func:`load_question_sets` reads an experiment's TOFU folder (forget, retain, real authors,
world facts, holdout) and MUSE knowmem pairs through :mod:`msa_core.eval.data`'s validating
loaders, and returns each set as :class:`QAItem` rows. A set that cannot be read is
reported in ``problems`` instead of failing the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from msa_core.eval import data as evdata
from msa_core.experiment import DataConfig


@dataclass(frozen=True)
class QAItem:
    """One question with its gold answer and, when the data has them, TOFU's extras."""

    question: str
    answer: str
    paraphrased_answer: Optional[str] = None
    perturbed_answers: tuple[str, ...] = ()
    paraphrased_question: Optional[str] = None


@dataclass(frozen=True)
class QuestionSets:
    """Set name → items, in display order, and one line per set that could not be read."""

    sets: dict[str, list[QAItem]]
    problems: tuple[str, ...] = ()


def _raw_paraphrased_questions(path: Path) -> list[Optional[str]]:
    """TOFU's optional ``paraphrased_question`` per row; [] when unreadable.

    NOTE: a second read of the split file because data.TofuItem does not keep this
    field (the metrics never use it); remove when the loader keeps it.
    """
    if path.suffix != ".json":
        return []
    try:
        text = path.read_text(encoding="utf-8")
        try:
            rows = json.loads(text)
        except ValueError:  # JSON lines (the loader accepted them, so they parse line by line)
            rows = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    except (OSError, ValueError):
        return []
    if not isinstance(rows, list):
        return []
    return [r.get("paraphrased_question") if isinstance(r, dict) else None for r in rows]


def _tofu_sets(tofu: Path, data: DataConfig) -> tuple[dict[str, list[QAItem]], list[str]]:
    # Each set prefers the split with perturbed answers (truth ratios need them) where one exists.
    wanted = (("forget", [evdata.perturbed_split_name(data.forget_split), data.forget_split]),
              ("retain", [data.retain_split, evdata.perturbed_split_name(data.retain_split)]),
              ("real authors", ["real_authors_perturbed", "real_authors"]),
              ("world facts", ["world_facts_perturbed", "world_facts"]),
              ("holdout", [data.holdout_split, evdata.perturbed_split_name(data.holdout_split)]))
    sets: dict[str, list[QAItem]] = {}
    problems: list[str] = []
    for name, candidates in wanted:
        last: Optional[BaseException] = None
        for split in dict.fromkeys(candidates):
            try:
                loaded = evdata.load_tofu_split(tofu, split)
            except FileNotFoundError as exc:
                last = exc
                continue
            except (ValueError, KeyError, OSError) as exc:
                last = exc
                break
            paras = _raw_paraphrased_questions(Path(loaded.source))
            sets[name] = [QAItem(it.question, it.answer, it.paraphrased_answer, tuple(it.perturbed_answers),
                                 paras[i] if i < len(paras) else None)
                          for i, it in enumerate(loaded.items)]
            last = None
            break
        if last is not None:
            problems.append(f"{name}: {last.args[0] if isinstance(last, KeyError) else last}")
    return sets, problems


def load_question_sets(data: DataConfig) -> QuestionSets:
    """The experiment's browsable question sets: TOFU forget / retain / real authors / world
    facts / holdout (from ``data.tofu``) and MUSE knowmem forget / retain (from ``data.muse``)."""
    sets: dict[str, list[QAItem]] = {}
    problems: list[str] = []
    if data.tofu is not None:
        sets, problems = _tofu_sets(data.tofu, data)
    if data.muse is not None:
        try:
            md = evdata.load_muse(data.muse)
        except (ValueError, KeyError, OSError) as exc:
            problems.append(f"MUSE: {exc}")
        else:
            for name, pairs in (("MUSE knowmem forget", md.knowmem_forget), ("MUSE knowmem retain", md.knowmem_retain)):
                if pairs:
                    sets[name] = [QAItem(q, a) for q, a in pairs]
    return QuestionSets(sets, tuple(problems))
