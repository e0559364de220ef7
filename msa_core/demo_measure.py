"""Measuring the demo: greedy QA scores and the (α, β) grid of recomposed models.

:func:`qa_scores` answers questions greedily and reports mean ROUGE-L recall (Google
``rouge_score``, stemmer on, reference = gold answer) and the rate of answers that
contain the gold answer. :func:`compose_state` applies the MSA formula to state dicts in
fp32; :func:`measure_demo` loads an experiment's checkpoints with safetensors, merges them
itself (independently of :mod:`msa_core.engine`) and scores every grid point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from msa_core.experiment import load_experiment
from msa_core.progress import Progress, report

# The (α, β) grid of measure_demo.
DEFAULT_ALPHAS = (0.5, 1.0, 1.5, 2.0, 3.0)
DEFAULT_BETAS = (0.0, 0.5, 1.0)


def answer_questions(model: Any, tokenizer: Any, questions: Sequence[str], *, max_new_tokens: int = 32,
                     batch_size: int = 64) -> list[str]:
    """Greedy answers in the QA format (via :func:`msa_core.generation.generate_answers`)."""
    from msa_core.generation import generate_answers

    return generate_answers(model, tokenizer, list(questions), max_new_tokens=max_new_tokens, batch_size=batch_size)


def _words(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def qa_scores(model: Any, tokenizer: Any, items: Sequence[dict[str, Any]], *,
              max_new_tokens: int = 32) -> dict[str, Any]:
    """Mean ROUGE-L recall and contains-gold rate of greedy answers to ``items``."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    preds = answer_questions(model, tokenizer, [it["question"] for it in items], max_new_tokens=max_new_tokens)
    recall = [scorer.score(it["answer"], p)["rougeL"].recall for it, p in zip(items, preds)]
    contains = [_words(it["answer"]) in _words(p) for it, p in zip(items, preds)]
    n = max(1, len(items))
    return {"rougeL_recall": sum(recall) / n, "contains_gold": sum(contains) / n, "n": len(items),
            "answers": preds}


def compose_state(states: dict[str, dict[str, torch.Tensor]], alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """θ_corrupted − α(θ_forget − θ_clean) + β(θ_retain − θ_clean), computed in fp32."""
    c0, c, f, r = (states[k] for k in ("clean", "corrupted", "forget", "retain"))
    out = {}
    for name, tc in c.items():
        for role, sd in (("clean", c0), ("forget", f), ("retain", r)):
            if name not in sd or sd[name].shape != tc.shape:
                raise KeyError(f"tensor {name!r}: missing or of another shape in the {role} checkpoint")
        t0 = c0[name].float()
        out[name] = tc.float() - alpha * (f[name].float() - t0) + beta * (r[name].float() - t0)
    return out


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors weight files")
    state: dict[str, torch.Tensor] = {}
    for fp in files:
        state.update({k: v.float() for k, v in load_file(str(fp)).items()})
    return state


def _read_items(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"evaluation split {path} does not exist")
    items = json.loads(path.read_text(encoding="utf-8"))
    ok = isinstance(items, list) and all(isinstance(it, dict) and "question" in it and "answer" in it for it in items)
    if not ok:
        raise ValueError(f"{path}: expected a list of {{question, answer}} items")
    return items


def measure_demo(experiment_path: Path, alphas: Sequence[float] = DEFAULT_ALPHAS,
                 betas: Sequence[float] = DEFAULT_BETAS, *, max_new_tokens: int = 32,
                 progress: Optional[Progress] = None, num_threads: Optional[int] = 1) -> dict[str, Any]:
    """Forget/retain ROUGE-L recall of clean, corrupted, reference and every (α, β) point.

    Models are merged here from the safetensors files (fp32), answers are greedy. The
    result has ``rows`` (one per model or grid point) and ``claim``: the grid points
    that lower forget recall to at most half of the corrupted model's while keeping
    retain recall within 20% of it. ``num_threads`` torch threads are used meanwhile (1 by
    default: faster for the demo's tiny model, and far faster on a shared CPU).
    """
    from transformers.utils import logging as hf_logging

    old_threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    hf_logging.disable_progress_bar()
    try:
        return _measure(Path(experiment_path), alphas, betas, max_new_tokens=max_new_tokens, progress=progress)
    finally:
        torch.set_num_threads(old_threads)
        if bars:
            hf_logging.enable_progress_bar()


def _measure(experiment_path: Path, alphas: Sequence[float], betas: Sequence[float], *, max_new_tokens: int,
             progress: Optional[Progress]) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exp = load_experiment(experiment_path)
    if exp.data.tofu is None:
        raise ValueError(f"{experiment_path}: data.tofu is not set; nothing to measure on")
    splits = {"forget": _read_items(exp.data.tofu / f"{exp.data.forget_split}.json"),
              "retain": _read_items(exp.data.tofu / f"{exp.data.retain_split}.json")}
    folders = exp.checkpoints.as_dict()
    states = {role: _load_state(folder) for role, folder in folders.items()}
    tokenizer = AutoTokenizer.from_pretrained(folders["corrupted"])
    model = AutoModelForCausalLM.from_pretrained(folders["corrupted"], dtype=torch.float32).eval()
    points: list[tuple[str, Optional[float], Optional[float]]] = [
        (r, None, None) for r in ("corrupted", "clean", "reference") if r in states]
    points += [("msa", float(a), float(b)) for a in alphas for b in betas]
    rows = []
    for i, (name, a, b) in enumerate(points):
        report(progress, i / len(points), f"measuring {name}" + ("" if a is None else f" α={a:g} β={b:g}"))
        model.load_state_dict(states[name] if a is None else compose_state(states, a, b))
        row: dict[str, Any] = {"model": name, "alpha": a, "beta": b}
        for split, items in splits.items():
            sc = qa_scores(model, tokenizer, items, max_new_tokens=max_new_tokens)
            row[f"{split}_rougeL_recall"] = round(sc["rougeL_recall"], 4)
            row[f"{split}_contains_gold"] = round(sc["contains_gold"], 4)
        rows.append(row)
    report(progress, 1.0, "measured")
    corr = rows[0]
    claim = [r for r in rows if r["model"] == "msa"
             and r["forget_rougeL_recall"] <= 0.5 * corr["forget_rougeL_recall"]
             and r["retain_rougeL_recall"] >= 0.8 * corr["retain_rougeL_recall"]]
    return {"experiment": str(exp.source), "rows": rows, "claim": claim}


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
