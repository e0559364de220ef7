"""TOFU evaluation of one model: probabilities, truth ratios, forget quality, ES/EM, ROUGE, utility.

All teacher-forced sequences of an evaluation (every split's answer, paraphrased and
perturbed answers) are collected in one :class:`~msa_core.eval.scoring.PairBook` and
scored in a single batched pass, so no sequence is scored twice. The full tier adds
greedy answers (200 new tokens) for ROUGE-L recall and the 9-number model utility.

Metric definitions are DESIGN section 5 / open-unlearning's (see :mod:`.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from msa_core.eval import metrics as M
from msa_core.eval.data import TofuSplit, find_split_file, load_tofu_split, perturbed_split_name
from msa_core.eval.results import MetricValue
from msa_core.eval.scoring import PairBook, encode_qa_cached, score_pairs
from msa_core.experiment import DataConfig
from msa_core.progress import Progress, report, sub_progress

ROUGE_MAX_NEW_TOKENS = 200
RA_SPLIT = "real_authors_perturbed"
WF_SPLIT = "world_facts_perturbed"
ReferenceTR = Union[Mapping[int, float], Sequence[float]]


@dataclass(frozen=True)
class TofuSets:
    """The splits one TOFU evaluation reads (retain / real authors / world facts may be absent)."""

    forget: TofuSplit
    retain: Optional[TofuSplit]
    ra: Optional[TofuSplit]
    wf: Optional[TofuSplit]
    missing: tuple[str, ...] = ()

    def named(self) -> dict[str, TofuSplit]:
        out = {"forget": self.forget, "retain": self.retain, "ra": self.ra, "wf": self.wf}
        return {k: v for k, v in out.items() if v is not None}


def _optional(folder: Path, split: str, missing: list[str]) -> Optional[TofuSplit]:
    try:
        find_split_file(folder, split)
    except FileNotFoundError:
        missing.append(split)
        return None
    return load_tofu_split(folder, split)


def load_tofu_sets(data: DataConfig, subset: Optional[int] = None) -> TofuSets:
    """The forget (required), retain, real-authors and world-facts perturbed splits, first ``subset`` rows."""
    if data.tofu is None:
        raise ValueError("the experiment has no TOFU data folder (data.tofu)")
    folder = Path(data.tofu)
    forget = load_tofu_split(folder, perturbed_split_name(data.forget_split)).head(subset)
    missing: list[str] = []
    retain = _optional(folder, perturbed_split_name(data.retain_split), missing)
    ra = _optional(folder, RA_SPLIT, missing)
    wf = _optional(folder, WF_SPLIT, missing)
    return TofuSets(
        forget=forget,
        retain=retain.head(subset) if retain else None,
        ra=ra.head(subset) if ra else None,
        wf=wf.head(subset) if wf else None,
        missing=tuple(missing),
    )


def reference_values(reference_tr: Optional[ReferenceTR], n_items: int) -> Optional[list[float]]:
    """The reference per-item forget TRs to compare with items 0..n_items−1.

    Values whose index is among the evaluated items are used (so a subset is compared with
    the same subset); when none overlap, all reference values are used.
    """
    if reference_tr is None:
        return None
    ref = dict(reference_tr) if isinstance(reference_tr, Mapping) else dict(enumerate(reference_tr))
    if not ref:
        return None
    matched = [float(v) for k, v in sorted(ref.items()) if int(k) < n_items]
    return matched if matched else [float(v) for _, v in sorted(ref.items())]


def _eos_trimmed(correct: np.ndarray, cont: Sequence[int], eos: Optional[int]) -> np.ndarray:
    # open-unlearning drops the EOS prediction for ES/EM ("-1 to ignore eos prediction").
    return correct[:-1] if eos is not None and len(cont) and cont[-1] == eos else correct


def evaluate_tofu(
    model: Any,
    tokenizer: Any,
    sets: TofuSets,
    *,
    tier: str = "fast",
    reference_tr: Optional[ReferenceTR] = None,
    batch_size: int = 16,
    max_length: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> tuple[dict[str, MetricValue], dict[str, list[str]]]:
    """TOFU metrics of ``model`` on ``sets``: (metrics by name, generations by split).

    ``reference_tr``: the reference model's per-item forget truth ratios (index → TR) for
    forget quality; without it forget quality is not reported.
    """
    book = PairBook()
    plan: dict[str, list[tuple[int, Optional[int], list[int]]]] = {}
    for key, split in sets.named().items():
        rows = []
        for it in split.items:
            a = book.add(*encode_qa_cached(tokenizer, it.question, it.answer))
            para = None
            if it.paraphrased_answer:
                para = book.add(*encode_qa_cached(tokenizer, it.question, it.paraphrased_answer))
            pert = [book.add(*encode_qa_cached(tokenizer, it.question, w)) for w in it.perturbed_answers]
            rows.append((a, para, pert))
        plan[key] = rows
    gen_share = 0.0 if tier == "fast" else 0.6
    sc = score_pairs(
        model,
        tokenizer,
        book.pairs,
        batch_size=batch_size,
        want=("argmax",),
        max_length=max_length,
        progress=sub_progress(progress, 0.0, 1.0 - gen_share),
    )
    nll, prob = sc.nll, sc.prob
    out: dict[str, MetricValue] = {}

    def put(name: str, value: float, per_item: Optional[list[float]] = None) -> None:
        out[name] = MetricValue(name, float(value), per_item)

    # forget set
    f = plan["forget"]
    p_answer = [prob[a] for a, _, _ in f]
    put("forget_prob", M.mean(p_answer), p_answer)
    if all(para is not None for _, para, _ in f):
        p_para = [prob[para] for _, para, _ in f]  # type: ignore[index]
        put("forget_para_prob", M.mean(p_para), p_para)
        p_pert = [float(np.mean([prob[w] for w in pert])) for _, _, pert in f]
        put("forget_pert_prob", M.mean(p_pert), p_pert)
        tr = [M.truth_ratio(nll[para], [nll[w] for w in pert]) for _, para, pert in f]  # type: ignore[index]
        put("forget_truth_ratio", M.tr_closer_to_1(tr), tr)
        ref = reference_values(reference_tr, len(tr))
        if ref:
            put("forget_quality", M.forget_quality(tr, ref))
    eos = tokenizer.eos_token_id
    corr = [_eos_trimmed(sc.argmax_correct[a], book.pairs[a][1], eos) for a, _, _ in f]  # type: ignore[index]
    es = [M.extraction_strength(c) for c in corr]
    em = [M.exact_memorization(c) for c in corr]
    put("extraction_strength", M.mean(es), es)
    put("exact_memorization", M.mean(em), em)

    # retain: probability of the answer, truth ratio against the paraphrase (true_better)
    if "retain" in plan:
        r = plan["retain"]
        p_r = [prob[a] for a, _, _ in r]
        put("retain_prob", M.mean(p_r), p_r)
        tr_r = [M.truth_ratio(nll[para if para is not None else a], [nll[w] for w in pert]) for a, para, pert in r]
        put("retain_truth_ratio", M.tr_true_better(tr_r), tr_r)
    # real authors / world facts: option-normalised probability, TR against the answer
    for key in ("ra", "wf"):
        if key in plan:
            rows = plan[key]
            pn = [M.normalized_prob(prob[a], [prob[w] for w in pert]) for a, _, pert in rows]
            put(f"{key}_prob", M.mean(pn), pn)
            trs = [M.truth_ratio(nll[a], [nll[w] for w in pert]) for a, _, pert in rows]
            put(f"{key}_truth_ratio", M.tr_true_better(trs), trs)

    tf_parts = ["retain_prob", "retain_truth_ratio", "ra_prob", "ra_truth_ratio", "wf_prob", "wf_truth_ratio"]
    if all(k in out for k in tf_parts):
        put("model_utility_tf", M.harmonic_mean([out[k].value for k in tf_parts]))

    generations: dict[str, list[str]] = {}
    if tier == "full":
        from msa_core.generation import generate_answers

        splits = sets.named()
        for n, (key, split) in enumerate(splits.items()):
            lo = 1.0 - gen_share + gen_share * n / len(splits)
            report(progress, lo, f"generating TOFU {key} answers")
            answers = generate_answers(
                model,
                tokenizer,
                [it.question for it in split.items],
                max_new_tokens=ROUGE_MAX_NEW_TOKENS,
                batch_size=batch_size,
                progress=sub_progress(progress, lo, lo + gen_share / len(splits)),
            )
            generations[key] = answers
            rouge = [M.rouge_l_recall(it.answer, g) for it, g in zip(split.items, answers)]
            put(f"{key}_rouge", M.mean(rouge), rouge)
        parts = [f"{s}_{m}" for s in ("retain", "ra", "wf") for m in ("prob", "rouge", "truth_ratio")]
        if all(k in out for k in parts):
            put("model_utility", M.harmonic_mean([out[k].value for k in parts]))
    report(progress, 1.0, "TOFU done")
    return out, generations
