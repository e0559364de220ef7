"""Measuring the demo: greedy QA scores of named models and of (α, β) points.

:func:`qa_scores` answers questions greedily (:func:`msa_core.generation.generate_answers`)
and reports the mean ROUGE-L recall (:func:`msa_core.eval.metrics.rouge_l_recall`,
reference = gold answer) and the rate of answers that contain the gold answer.
:func:`score_targets` puts every split to every :mod:`msa_core.targets` target through
the engine (the same recomposition the app and the CLI use); :func:`measure_demo` does
that for an experiment file over an (α, β) grid, and :func:`measure_table` renders the
result as Markdown; :func:`truth_ratio_rows` / :func:`truth_ratio_table` give the TOFU truth
ratios (and forget quality, model utility) of the side models and chosen points. The
measured numbers of the full demo are in README.md ("The embedded demo and what it shows");
each build also writes its own into ``demo_report.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from msa_core.engine import Engine
from msa_core.eval.metrics import rouge_l_recall
from msa_core.experiment import load_experiment
from msa_core.generation import generate_answers
from msa_core.progress import Progress, report
from msa_core.targets import Point, Side, Target, has_model, model_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The (α, β) grid of measure_demo.
DEFAULT_ALPHAS = (0.5, 1.0, 1.5, 2.0, 3.0)
DEFAULT_BETAS = (0.0, 0.5, 1.0)
# measure_demo's claim: forget recall at most this share of the corrupted model's ...
CLAIM_FORGET_AT_MOST = 0.5
# ... while retain recall keeps at least this share of it.
CLAIM_RETAIN_AT_LEAST = 0.8

QAItem = dict[str, Any]  # at least {"question": str, "answer": str}


def _words(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def qa_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[QAItem], *,
              max_new_tokens: int = 32) -> dict[str, Any]:
    """Mean ROUGE-L recall and contains-gold rate of greedy answers to ``items``.

    Returns ``{"rougeL_recall": float, "contains_gold": float, "n": int, "answers": [str]}``
    (both means 0.0 for no items).
    """
    preds = generate_answers(model, tokenizer, [it["question"] for it in items], max_new_tokens=max_new_tokens)
    recall = [rouge_l_recall(it["answer"], p) for it, p in zip(items, preds)]
    contains = [_words(it["answer"]) in _words(p) for it, p in zip(items, preds)]
    n = max(1, len(items))
    return {"rougeL_recall": sum(recall) / n, "contains_gold": sum(contains) / n, "n": len(items),
            "answers": preds}


def score_targets(engine: Engine, targets: Sequence[Target], splits: dict[str, Sequence[QAItem]], *,
                  max_new_tokens: int = 32, progress: Optional[Progress] = None) -> list[dict[str, Any]]:
    """One row per target: its QA scores on every split, answers left out.

    A row is ``{"target": Target, "<split>": {"rougeL_recall", "contains_gold", "n"}, ...}``.
    Targets the experiment has no checkpoint for raise KeyError naming the role (check with
    :func:`msa_core.targets.has_model` first to skip them).
    """
    rows = []
    for i, target in enumerate(targets):
        report(progress, i / max(1, len(targets)), f"measuring {target.label}")
        row: dict[str, Any] = {"target": target}
        with model_for(engine, target) as model:
            for split, items in splits.items():
                sc = qa_scores(model, engine.tokenizer, items, max_new_tokens=max_new_tokens)
                row[split] = {k: v for k, v in sc.items() if k != "answers"}
        rows.append(row)
    report(progress, 1.0, "measured")
    return rows


def read_qa_items(path: Path) -> list[QAItem]:
    """A TOFU-format split file as a list of items with ``question`` and ``answer``."""
    if not path.is_file():
        raise FileNotFoundError(f"evaluation split {path} does not exist")
    items = json.loads(path.read_text(encoding="utf-8"))
    ok = isinstance(items, list) and all(isinstance(it, dict) and "question" in it and "answer" in it for it in items)
    if not ok:
        raise ValueError(f"{path}: expected a list of {{question, answer}} items")
    return items


def measure_demo(experiment_path: Path, alphas: Sequence[float] = DEFAULT_ALPHAS,
                 betas: Sequence[float] = DEFAULT_BETAS, *, max_new_tokens: int = 32,
                 progress: Optional[Progress] = None, num_threads: Optional[int] = 1,
                 cache_dir: Optional[Path] = None) -> dict[str, Any]:
    """Forget/retain ROUGE-L recall of corrupted, clean, reference and every (α, β) point.

    The models come from one fp32 CPU :class:`~msa_core.engine.Engine` (vectors from the
    cache in ``cache_dir``, the default cache when None); answers are greedy. The result
    has ``rows`` (one per model or grid point: ``model``, ``alpha``, ``beta``,
    ``<split>_rougeL_recall``, ``<split>_contains_gold``) and ``claim``: the grid points
    that lower forget recall to at most half of the corrupted model's while keeping retain
    recall within 20% of it. ``num_threads`` torch threads are used meanwhile (1 by
    default: faster for the demo's tiny model, and far faster on a shared CPU).
    """
    from transformers.utils import logging as hf_logging

    exp = load_experiment(experiment_path)
    if exp.data.tofu is None:
        raise ValueError(f"{experiment_path}: data.tofu is not set; nothing to measure on")
    splits = {"forget": read_qa_items(exp.data.tofu / f"{exp.data.forget_split}.json"),
              "retain": read_qa_items(exp.data.tofu / f"{exp.data.retain_split}.json")}
    old_threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    hf_logging.disable_progress_bar()
    try:
        engine = Engine.load(exp, device="cpu", dtype=torch.float32, cache_dir=cache_dir)
        sides: list[Target] = [Side(r) for r in ("corrupted", "clean", "reference") if has_model(engine, Side(r))]
        points: list[Target] = [Point(a, b) for a in alphas for b in betas]
        scored = score_targets(engine, sides + points, splits, max_new_tokens=max_new_tokens, progress=progress)
    finally:
        torch.set_num_threads(old_threads)
        if bars:
            hf_logging.enable_progress_bar()
    rows = [_flat_row(r, tuple(splits)) for r in scored]
    corr = rows[0]
    claim = [r for r in rows if r["model"] == "msa"
             and r["forget_rougeL_recall"] <= CLAIM_FORGET_AT_MOST * corr["forget_rougeL_recall"]
             and r["retain_rougeL_recall"] >= CLAIM_RETAIN_AT_LEAST * corr["retain_rougeL_recall"]]
    return {"experiment": str(exp.source), "rows": rows, "claim": claim}


def truth_ratio_rows(experiment_path: Path, points: Sequence[tuple[float, float]] = ((1.0, 0.5),), *,
                     num_threads: Optional[int] = 1, cache_dir: Optional[Path] = None) -> list[dict[str, Any]]:
    """TOFU truth ratios of the reference, corrupted and clean models and of ``points`` (fast tier).

    One row per model: ``model`` (the target's label), ``forget_tr_mean`` / ``retain_tr_mean``
    (mean per-item TR = P(perturbed) / P(paraphrased answer): below 1 the model prefers the
    true paraphrase, about 1 it cannot tell them apart), ``forget_truth_ratio`` (TOFU's score,
    mean min(TR, 1/TR)), ``retain_truth_ratio`` (mean max(0, 1 − TR)), ``forget_quality``
    (KS p-value against the reference model's forget TRs; None for the reference itself) and
    ``model_utility`` (teacher-forced model utility). The reference model comes first: its
    truth ratios are what forget quality compares with, so the experiment must name one.
    """
    from transformers.utils import logging as hf_logging

    from msa_core.eval.run import evaluate_model

    exp = load_experiment(experiment_path)
    if exp.data.tofu is None or exp.checkpoints.reference is None:
        raise ValueError(f"{experiment_path}: truth ratios need data.tofu and checkpoints.reference")
    old_threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    hf_logging.disable_progress_bar()
    rows: list[dict[str, Any]] = []
    try:
        engine = Engine.load(exp, device="cpu", dtype=torch.float32, cache_dir=cache_dir)
        targets: list[Target] = [Side("reference"), Side("corrupted"), Side("clean")]
        targets += [Point(a, b) for a, b in points]
        ref_tr: Optional[list[float]] = None
        for target in targets:
            with model_for(engine, target) as model:
                result = evaluate_model(model, engine.tokenizer, exp, tier="fast", benchmark="tofu",
                                        reference_tr=ref_tr)
            m = result.metrics
            forget_tr = list(m["forget_truth_ratio"].per_item or [])
            if ref_tr is None:
                ref_tr = forget_tr
            rows.append({
                "model": target.label,
                "forget_tr_mean": round(sum(forget_tr) / len(forget_tr), 4),
                "retain_tr_mean": round(_mean(m["retain_truth_ratio"].per_item), 4),
                "forget_truth_ratio": round(m["forget_truth_ratio"].value, 4),
                "retain_truth_ratio": round(m["retain_truth_ratio"].value, 4),
                "forget_quality": round(m["forget_quality"].value, 4) if "forget_quality" in m else None,
                "model_utility": round(m["model_utility_tf"].value, 4) if "model_utility_tf" in m else None,
            })
    finally:
        torch.set_num_threads(old_threads)
        if bars:
            hf_logging.enable_progress_bar()
    return rows


def _mean(values: Optional[Sequence[float]]) -> float:
    return sum(values) / len(values) if values else float("nan")


def truth_ratio_table(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`truth_ratio_rows` as a Markdown table."""
    def cell(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    keys = ("forget_tr_mean", "retain_tr_mean", "forget_truth_ratio", "retain_truth_ratio", "forget_quality",
            "model_utility")
    lines = ["| model | forget TR (mean) | retain TR (mean) | forget truth-ratio score | retain truth-ratio score "
             "| forget quality | model utility (fast) |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join([str(r["model"]), *(cell(r[k]) for k in keys)]) + " |" for r in rows]
    return "\n".join(lines)


def _flat_row(row: dict[str, Any], splits: Sequence[str]) -> dict[str, Any]:
    target = row["target"]
    if isinstance(target, Point):
        out: dict[str, Any] = {"model": "msa", "alpha": target.alpha, "beta": target.beta}
    else:
        out = {"model": target.role, "alpha": None, "beta": None}
    for split in splits:
        out[f"{split}_rougeL_recall"] = round(row[split]["rougeL_recall"], 4)
        out[f"{split}_contains_gold"] = round(row[split]["contains_gold"], 4)
    return out


def measure_table(result: dict[str, Any]) -> str:
    """The rows of :func:`measure_demo` as a Markdown table (claim points marked with ✓)."""
    claimed = {(r["alpha"], r["beta"]) for r in result.get("claim", [])}
    lines = ["| model | α | β | forget ROUGE-L recall | retain ROUGE-L recall | forget contains gold "
             "| retain contains gold |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        a = "" if r["alpha"] is None else f"{r['alpha']:g}"
        b = "" if r["beta"] is None else f"{r['beta']:g}"
        mark = " ✓" if (r["alpha"], r["beta"]) in claimed and r["model"] == "msa" else ""
        lines.append(f"| {r['model']}{mark} | {a} | {b} | {r['forget_rougeL_recall']:.3f} "
                     f"| {r['retain_rougeL_recall']:.3f} | {r['forget_contains_gold']:.3f} "
                     f"| {r['retain_contains_gold']:.3f} |")
    return "\n".join(lines)
