"""TOFU evaluation of one model: probabilities, truth ratios, forget quality, ES/EM, ROUGE, utility.

All teacher-forced sequences of an evaluation (every split's answer, paraphrased and
perturbed answers) are collected in one :class:`~msa_core.eval.scoring.PairBook` and
scored in a single batched pass, so no sequence is scored twice. The full tier adds
greedy answers (200 new tokens) for ROUGE-L recall and the 9-number model utility. With a
holdout split, forget vs holdout Min-K% AUC and PrivLeak (open-unlearning's ``mia_min_k`` /
``privleak`` for TOFU). Per-item values that are richer than one number (the perturbed
answers' lists, the ROUGE fields) are returned in open-unlearning's entry shapes.

Metric definitions are DESIGN section 5 / open-unlearning's (see :mod:`.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from msa_core.conventions import DEFAULT_CONVENTIONS
from msa_core.eval import metrics as M
from msa_core.eval.data import TofuSplit, find_split_file, load_tofu_split, perturbed_split_name
from msa_core.eval.results import MetricValue
from msa_core.eval.scoring import PairBook, encode_qa_cached, score_pairs
from msa_core.experiment import DataConfig
from msa_core.progress import Progress, report, sub_progress
from msa_core.prompts import OPEN_UNLEARNING_TOFU_GENERATION, encode_prompt, qa_prompt

# open-unlearning's TOFU generation settings (greedy, 200 new tokens, cut at EOS).
ROUGE_MAX_NEW_TOKENS = int(OPEN_UNLEARNING_TOFU_GENERATION["max_new_tokens"])
# open-unlearning's TOFU Min-K% (configs/eval/tofu_metrics/mia_min_k.yaml: k: 0.4).
MINK_K = 0.4
# open-unlearning's privleak ref_value: the AUC assumed for the reference model when none is given.
OPEN_UNLEARNING_REF_AUC = 0.5
RA_SPLIT = "real_authors_perturbed"
WF_SPLIT = "world_facts_perturbed"
ReferenceTR = Union[Mapping[int, float], Sequence[float]]


@dataclass(frozen=True)
class TofuSets:
    """The splits one TOFU evaluation reads (retain / real authors / world facts / holdout may be absent)."""

    forget: TofuSplit
    retain: Optional[TofuSplit]
    ra: Optional[TofuSplit]
    wf: Optional[TofuSplit]
    missing: tuple[str, ...] = ()
    holdout: Optional[TofuSplit] = None

    def named(self) -> dict[str, TofuSplit]:
        """The QA splits by key ("forget", "retain", "ra", "wf"); the holdout (MIA only) is not among them."""
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
    """The forget (required), retain, real-authors, world-facts and holdout splits, first ``subset`` rows."""
    if data.tofu is None:
        raise ValueError("the experiment has no TOFU data folder (data.tofu)")
    folder = Path(data.tofu)
    forget = load_tofu_split(folder, perturbed_split_name(data.forget_split)).head(subset)
    missing: list[str] = []
    retain = _optional(folder, perturbed_split_name(data.retain_split), missing)
    ra = _optional(folder, RA_SPLIT, missing)
    wf = _optional(folder, WF_SPLIT, missing)
    holdout = _optional(folder, data.holdout_split, missing)
    return TofuSets(
        forget=forget,
        retain=retain.head(subset) if retain else None,
        ra=ra.head(subset) if ra else None,
        wf=wf.head(subset) if wf else None,
        missing=tuple(missing),
        holdout=holdout.head(subset) if holdout else None,
    )


def reference_values(reference_tr: Optional[ReferenceTR], n_items: int) -> Optional[list[float]]:
    """The reference per-item forget TRs that forget quality compares with: all of them.

    As open-unlearning's ``ks_test`` does, every reference value is used whatever subset of
    the forget set was evaluated (``n_items`` is kept for callers; it does not select).
    """
    if reference_tr is None:
        return None
    ref = dict(reference_tr) if isinstance(reference_tr, Mapping) else dict(enumerate(reference_tr))
    return [float(v) for _, v in sorted(ref.items())] or None


def _eos_trimmed(correct: np.ndarray, cont: Sequence[int], eos: Optional[int]) -> np.ndarray:
    # open-unlearning drops the EOS prediction for ES/EM ("-1 to ignore eos prediction").
    return correct[:-1] if eos is not None and len(cont) and cont[-1] == eos else correct


def _prob_entry(nll: float) -> dict[str, float]:
    """open-unlearning's probability entry, stored as its ``avg_loss`` only (the export adds
    prob = exp(−avg_loss), as open-unlearning computes it), which halves what the store keeps."""
    return {"avg_loss": float(nll)}


def _list_entry(nlls: Sequence[float]) -> dict[str, list[float]]:
    """:func:`_prob_entry` for several answers of one item (a list in answer order)."""
    return {"avg_loss": [float(x) for x in nlls]}


@dataclass(frozen=True)
class TofuOutput:
    """What one TOFU evaluation produced: metrics, generations by split, and per-item details
    in open-unlearning's entry shapes (:attr:`msa_core.eval.results.EvalResult.details`)."""

    metrics: dict[str, MetricValue]
    generations: dict[str, list[str]]
    details: dict[str, Any]


# Our split keys → open-unlearning's metric-name prefixes.
OU_PREFIX = {"forget": "forget", "retain": "retain", "ra": "ra", "wf": "wf"}


def evaluate_tofu(
    model: Any,
    tokenizer: Any,
    sets: TofuSets,
    *,
    tier: str = "fast",
    reference_tr: Optional[ReferenceTR] = None,
    reference_auc: Optional[float] = None,
    batch_size: int = 16,
    max_length: Optional[int] = None,
    progress: Optional[Progress] = None,
    prompt_format: Optional[str] = None,
    conventions: Optional[Mapping[str, str]] = None,
) -> TofuOutput:
    """TOFU metrics of ``model`` on ``sets`` (see :class:`TofuOutput`).

    ``reference_tr``: the reference model's per-item forget truth ratios (index → TR) for
    forget quality; without it forget quality is not reported. ``reference_auc``: the reference
    model's TOFU Min-K% AUC (our orientation) for PrivLeak; without it open-unlearning's default
    0.5 is used. ``prompt_format`` / ``conventions``: :mod:`msa_core.prompts` /
    :mod:`msa_core.conventions` (defaults: "auto" and open-unlearning's conventions).
    """
    conv = {**DEFAULT_CONVENTIONS, **dict(conventions or {})}
    book = PairBook()
    plan: dict[str, list[tuple[int, Optional[int], list[int]]]] = {}

    def enc(q: str, a: str) -> int:
        return book.add(*encode_qa_cached(tokenizer, q, a, prompt_format))

    for key, split in sets.named().items():
        rows = []
        for it in split.items:
            a = enc(it.question, it.answer)
            para = enc(it.question, it.paraphrased_answer) if it.paraphrased_answer else None
            pert = [enc(it.question, w) for w in it.perturbed_answers]
            rows.append((a, para, pert))
        plan[key] = rows
    holdout = [enc(it.question, it.answer) for it in sets.holdout.items] if sets.holdout is not None else []
    gen_share = 0.0 if tier == "fast" else 0.6
    sc = score_pairs(
        model,
        tokenizer,
        book.pairs,
        batch_size=batch_size,
        want=("argmax", "token_logprobs"),
        max_length=max_length,
        progress=sub_progress(progress, 0.0, 1.0 - gen_share),
    )
    nll, prob = sc.nll, sc.prob
    out: dict[str, MetricValue] = {}
    details: dict[str, Any] = {}

    def put(name: str, value: float, per_item: Optional[list[float]] = None) -> None:
        out[name] = MetricValue(name, float(value), per_item)

    for key, rows in plan.items():
        ou = OU_PREFIX[key]
        details[f"{ou}_Q_A_Prob"] = [_prob_entry(nll[a]) for a, _, _ in rows]
        if all(para is not None for _, para, _ in rows):
            details[f"{ou}_Q_A_PARA_Prob"] = [_prob_entry(nll[para]) for _, para, _ in rows]  # type: ignore[index]
        if rows and rows[0][2]:
            details[f"{ou}_Q_A_PERT_Prob"] = [_list_entry([nll[w] for w in pert]) for _, _, pert in rows]

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
    es = [M.extraction_strength(c, conv["extraction_strength"]) for c in corr]
    em = [M.exact_memorization(c) for c in corr]
    put("extraction_strength", M.mean(es), es)
    put("exact_memorization", M.mean(em), em)

    # forget vs holdout membership (open-unlearning's mia_min_k and privleak for TOFU)
    if holdout:
        def mink(i: int) -> float:
            lp = M.min_k_tokens(sc.token_logprobs[i], conv["min_k"])  # type: ignore[index]
            return M.min_k_score(lp, MINK_K) if lp.size else 0.0  # no scored token: 0, as open-unlearning

        s_forget = [mink(a) for a, _, _ in f]
        s_holdout = [mink(h) for h in holdout]
        auc = M.muse_mia_auc(s_forget, s_holdout)
        put("tofu_mink_auc", auc, s_forget + s_holdout)
        details["mia_min_k"] = {"forget": s_forget, "holdout": s_holdout}
        put("tofu_privleak", M.privleak(auc, OPEN_UNLEARNING_REF_AUC if reference_auc is None else reference_auc))

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
                prompt_format=prompt_format,
            )
            generations[key] = answers
            entries = []
            for it, g in zip(split.items, answers):
                prompt_ids = encode_prompt(tokenizer, qa_prompt(tokenizer, it.question, prompt_format))
                text = tokenizer.decode(prompt_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
                entries.append({**M.rouge_fields(it.answer, g), "input": text, "ground_truth": it.answer,
                                "generation": g})
            details[f"{OU_PREFIX[key]}_Q_A_ROUGE"] = entries
            rouge = [e["rougeL_recall"] for e in entries]
            put(f"{key}_rouge", M.mean(rouge), rouge)
        parts = [f"{s}_{m}" for s in ("retain", "ra", "wf") for m in ("prob", "rouge", "truth_ratio")]
        if all(k in out for k in parts):
            put("model_utility", M.harmonic_mean([out[k].value for k in parts]))
    report(progress, 1.0, "TOFU done")
    return TofuOutput(out, generations, details)
