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

:func:`measure_comparison` is the paper's comparison on an experiment with a checkpoint
history: per θ_clean choice (the default, earlier checkpoints, the task vector) a fast-tier
TOFU grid of (α, β) points, and optionally a gradient baseline's epochs
(:func:`msa_core.baselines.run_baseline`), all stored in a results store (the Trade-off
page's series); its rows are the best point per method (highest forget quality keeping
≥ 90% of the corrupted model's utility) with that point's greedy ROUGE-L recall on the
forget and retain QA (the fast tier has no ROUGE: :func:`qa_scores`, as the build report).
:func:`comparison_table` renders them as Markdown.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from msa_core.engine import Engine
from msa_core.eval.metrics import rouge_l_recall
from msa_core.experiment import load_experiment
from msa_core.generation import generate_answers
from msa_core.progress import Progress, report, sub_progress
from msa_core.targets import Point, Side, Target, has_model, model_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from msa_core.eval.results import EvalResult
    from msa_core.eval.store import ResultStore
    from msa_core.finetune import TrainConfig

log = logging.getLogger(__name__)

# The (α, β) grid of measure_demo.
DEFAULT_ALPHAS = (0.5, 1.0, 1.5, 2.0, 3.0)
DEFAULT_BETAS = (0.0, 0.5, 1.0)
# measure_comparison's grid per θ_clean choice (α = β = 0, the corrupted model, is added) ...
COMPARE_ALPHAS = (0.5, 1.0, 1.5, 2.0)
COMPARE_BETAS = (0.0, 0.5)
# ... its tier and benchmark: the Trade-off page's defaults, so the stored points show at first start.
COMPARE_TIER = "fast"
COMPARE_BENCHMARK = "tofu"
# The best point of a method keeps at least this share of the corrupted model's utility (as the store's).
COMPARE_KEEP_UTILITY = 0.9
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


# ---------------------------------------------------------------- the paper's comparison


@dataclass(frozen=True)
class BaselineSpec:
    """A gradient baseline for :func:`measure_comparison`: method (``msa_core.baselines.BASELINE_METHODS``),
    its training settings and the folder its epochs go to."""

    method: str
    config: TrainConfig
    out_dir: Path


def comparison_grid(alphas: Sequence[float], betas: Sequence[float]) -> list[tuple[float, float]]:
    """(0, 0) — the corrupted model, the utility every best point is held to — then ``alphas`` × ``betas``."""
    pts = [(0.0, 0.0)] + [(float(a), float(b)) for a in alphas for b in betas]
    return list(dict.fromkeys(pts))


def _value(result: EvalResult, name: str) -> Optional[float]:
    metric = result.metrics.get(name)
    return None if metric is None or metric.value is None else float(metric.value)


def _best(results: Sequence[tuple[Any, EvalResult]], floor: Optional[float]) -> tuple[Any, EvalResult, bool]:
    """(point, result, kept) with the highest forget quality among results whose utility ≥ ``floor``
    (kept True); when none keeps it, the highest forget quality of all (kept False)."""
    def fq(item: tuple[Any, EvalResult]) -> float:
        v = _value(item[1], "forget_quality")
        return float("-inf") if v is None else v

    kept = [it for it in results if floor is None or (_value(it[1], "model_utility_tf") or 0.0) >= floor]
    pick = max(kept or results, key=fq)
    return pick[0], pick[1], bool(kept)


def _row(method: str, point: str, result: EvalResult, kept: bool, rouge: dict[str, dict[str, Any]],
         **extra: Any) -> dict[str, Any]:
    def r4(v: Optional[float]) -> Optional[float]:
        return None if v is None else round(v, 4)

    return {"method": method, "point": point, **extra,
            "forget_quality": r4(_value(result, "forget_quality")),
            "model_utility": r4(_value(result, "model_utility_tf")),
            "forget_rougeL_recall": r4(rouge["forget"]["rougeL_recall"]),
            "retain_rougeL_recall": r4(rouge["retain"]["rougeL_recall"]),
            "keeps_utility": kept}


def _method_name(candidate: Any) -> str:
    from msa_core.choices import TASK_VECTOR_LABEL

    if candidate.label == TASK_VECTOR_LABEL:
        return "task vector (θ_clean = θ_corrupted)"
    if candidate.label == "default":
        return "MSA (final θ_clean)"
    return f"MSA (θ_clean = {candidate.label})"


def measure_comparison(experiment_path: Path, store: ResultStore, *, alphas: Sequence[float] = COMPARE_ALPHAS,
                       betas: Sequence[float] = COMPARE_BETAS, baseline: Optional[BaselineSpec] = None,
                       max_new_tokens: int = 32, cache_dir: Optional[Path] = None, num_threads: Optional[int] = 1,
                       progress: Optional[Progress] = None) -> dict[str, Any]:
    """Every θ_clean choice's :func:`comparison_grid` (and ``baseline``'s epochs), fast tier on
    TOFU, stored in ``store``; the best point per method as table rows (see the module docstring).

    Points already in ``store`` are reused (a rerun evaluates nothing new); the vectors of each
    choice go to ``cache_dir`` (the default cache when None). Returns ``{"rows": [...],
    "claims": {...}, "grid": [[α, β], ...], "tier", "benchmark", "utility_floor", "seconds"}``;
    a row is ``method``, ``point``, ``forget_quality``, ``model_utility`` (teacher-forced),
    greedy ``forget_rougeL_recall`` / ``retain_rougeL_recall`` and ``keeps_utility``.
    """
    from transformers.utils import logging as hf_logging

    from msa_core.checkpoints import load_model
    from msa_core.choices import Choice, candidates, use_choice
    from msa_core.eval.sweep import run_points

    t0 = time.perf_counter()
    exp = load_experiment(experiment_path)
    if exp.data.tofu is None:
        raise ValueError(f"{experiment_path}: data.tofu is not set; nothing to compare on")
    splits = {"forget": read_qa_items(exp.data.tofu / f"{exp.data.forget_split}.json"),
              "retain": read_qa_items(exp.data.tofu / f"{exp.data.retain_split}.json")}
    grid = comparison_grid(alphas, betas)
    cands = candidates(exp)
    steps = len(cands) + (baseline is not None)
    old_threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    hf_logging.disable_progress_bar()
    rows: list[dict[str, Any]] = []
    best_fq: dict[str, Optional[float]] = {}
    try:
        engine = Engine.load(exp, device="cpu", dtype=torch.float32, cache_dir=cache_dir)
        floor: Optional[float] = None
        for i, cand in enumerate(cands):
            span = sub_progress(progress, i / steps, (i + 1) / steps)
            choice = Choice(clean=cand.label)
            if not choice.is_default:
                use_choice(engine, choice, cache_dir=cache_dir, progress=sub_progress(span, 0.0, 0.2))
            report(span, 0.2, f"{choice.label()}: {len(grid)} points")
            results = run_points(engine, store, grid, tier=COMPARE_TIER, benchmark=COMPARE_BENCHMARK,
                                 progress=sub_progress(span, 0.2, 0.9))
            if floor is None:  # α = β = 0 is θ_corrupted, the same model for every choice
                corrupted = results[0]
                base_mu = _value(corrupted, "model_utility_tf")
                floor = None if base_mu is None else COMPARE_KEEP_UTILITY * base_mu
                with model_for(engine, Point(0.0, 0.0)) as model:
                    rouge = {k: qa_scores(model, engine.tokenizer, v, max_new_tokens=max_new_tokens)
                             for k, v in splits.items()}
                rows.append(_row("corrupted (α = β = 0)", "θ_corrupted", corrupted, True, rouge,
                                 choice="default", alpha=0.0, beta=0.0))
            (a, b), result, kept = _best(list(zip(grid[1:], results[1:])), floor)
            with model_for(engine, Point(a, b)) as model:
                rouge = {k: qa_scores(model, engine.tokenizer, v, max_new_tokens=max_new_tokens)
                         for k, v in splits.items()}
            rows.append(_row(_method_name(cand), f"α={a:g}, β={b:g}", result, kept, rouge,
                             choice=cand.label, alpha=a, beta=b, before_forget=cand.before_forget, step=cand.step))
            if cand.label == "default":
                beta0 = _best([(p, r) for p, r in zip(grid[1:], results[1:]) if p[1] == 0.0], floor)
                best_fq["default_beta0"] = _value(beta0[1], "forget_quality") if beta0[2] else None
            best_fq[cand.label] = rows[-1]["forget_quality"] if kept else None
        if baseline is not None:
            from msa_core.baselines import run_baseline

            span = sub_progress(progress, len(cands) / steps, 1.0)
            report(span, 0.0, f"{baseline.method}: training and evaluating each epoch")
            use_choice(engine, Choice(), cache_dir=cache_dir)  # stored under the experiment's own fingerprint
            run_baseline(exp, baseline.method, baseline.config, out_dir=baseline.out_dir, store=store,
                         tier=COMPARE_TIER, benchmark=COMPARE_BENCHMARK, cache_dir=cache_dir,
                         progress=sub_progress(span, 0.0, 0.9))
            named = _baseline_results(store, engine.fingerprint, baseline.method)
            if named:
                point, result, kept = _best(named, floor)
                model = load_model(Path(baseline.out_dir) / point, device="cpu", dtype=torch.float32)
                rouge = {k: qa_scores(model, engine.tokenizer, v, max_new_tokens=max_new_tokens)
                         for k, v in splits.items()}
                del model
                rows.append(_row(baseline.method, point, result, kept, rouge, choice=None,
                                 epochs=baseline.config.epochs, lr=baseline.config.lr))
                best_fq[baseline.method] = rows[-1]["forget_quality"] if kept else None
            report(span, 1.0, f"{baseline.method}: done")
    finally:
        torch.set_num_threads(old_threads)
        if bars:
            hf_logging.enable_progress_bar()
    return {"rows": rows, "claims": _claims(best_fq, baseline.method if baseline else None),
            "grid": [list(p) for p in grid], "tier": COMPARE_TIER, "benchmark": COMPARE_BENCHMARK,
            "utility_floor": None if floor is None else round(floor, 4), "seconds": round(time.perf_counter() - t0, 2)}


def _baseline_results(store: ResultStore, fingerprint: str, method: str) -> list[tuple[str, EvalResult]]:
    """(point name, result) of ``method``'s named points stored for ``fingerprint`` (fast tier, TOFU)."""
    from msa_core.eval.store import method_model

    out = []
    for epoch in range(1, 1000):
        name = f"epoch-{epoch}"
        found = [r for r in store.results(f"{fingerprint}#{method_model(method, name)}", tier=COMPARE_TIER)
                 if r.benchmark == COMPARE_BENCHMARK]
        if not found:
            break
        out.append((name, found[-1]))  # the newest (results come oldest first)
    return out


def _claims(best_fq: dict[str, Optional[float]], method: Optional[str]) -> dict[str, Any]:
    """The paper's comparative claims as measured: ``best_fq`` maps each measured method to its
    best forget quality at ≥ 90% of the corrupted model's utility, None when none of its points
    keeps that utility (it then loses to any method that has one). A claim is None when a side
    of it was not measured, or neither side keeps the utility."""
    def beats(a: str, b: str) -> Optional[bool]:
        if a not in best_fq or b not in best_fq:
            return None
        x, y = best_fq[a], best_fq[b]
        if x is None or y is None:
            return None if x is None and y is None else y is None
        return x > y

    earlier = [k for k in best_fq if k not in ("default", "default_beta0", "task-vector", method)]
    out: dict[str, Any] = {
        "msa_beats_task_vector": beats("default", "task-vector"),
        "closer_checkpoint_better": ({k: beats("default", k) for k in earlier} or None),
        "beta0_forget_quality": best_fq.get("default_beta0"),
        "best_forget_quality": {k: v for k, v in best_fq.items() if k != "default_beta0"},
    }
    if method is not None:
        out[f"msa_beats_{method}"] = beats("default", method)
    return out


def comparison_table(result: dict[str, Any]) -> str:
    """:func:`measure_comparison`'s rows as a Markdown table (method × best FQ / MU / ROUGE)."""
    def cell(v: Any) -> str:
        return "—" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| method | best point | forget quality | model utility (fast) | forget ROUGE-L recall (greedy) "
             "| retain ROUGE-L recall (greedy) |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mark = "" if r["keeps_utility"] else " (below 90% utility)"
        lines.append(f"| {r['method']} | {r['point']}{mark} | {cell(r['forget_quality'])} | {cell(r['model_utility'])} "
                     f"| {cell(r['forget_rougeL_recall'])} | {cell(r['retain_rougeL_recall'])} |")
    return "\n".join(lines)
