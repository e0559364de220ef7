"""Results in open-unlearning's file shapes, and reference truth ratios read back from them.

Export writes ``TOFU_EVAL.json`` (metric → {"agg_value", "value_by_index": {"0": {...}}})
and ``TOFU_SUMMARY.json`` (metric → agg_value), plus ``MUSE_EVAL.json`` /
``MUSE_SUMMARY.json`` when MUSE metrics are present, under open-unlearning's metric
names (``forget_Q_A_Prob``, ``forget_truth_ratio``, ``ra_Q_A_Prob_normalised``, ...).
MIA AUCs are written in open-unlearning's orientation (1 − ours, see
:func:`msa_core.eval.metrics.muse_mia_auc`).

Import reads per-item forget truth ratios (the forget-quality reference) from an
open-unlearning ``TOFU_EVAL.json`` (``forget_truth_ratio.value_by_index``) or from the
original TOFU repository's ``eval_log_forget.json`` / ``eval_log_aggregated.json``
(``truth_ratio``), and whole results from a ``TOFU_EVAL.json``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Union

from msa_core.atomic import write_json
from msa_core.eval.data import read_json_file
from msa_core.eval.results import EvalResult, MetricValue

TOFU_NAMES = {
    "forget_quality": "forget_quality",
    "forget_prob": "forget_Q_A_Prob",
    "forget_para_prob": "forget_Q_A_PARA_Prob",
    "forget_pert_prob": "forget_Q_A_PERT_Prob",
    "forget_rouge": "forget_Q_A_ROUGE",
    "forget_truth_ratio": "forget_truth_ratio",
    "retain_prob": "retain_Q_A_Prob",
    "retain_rouge": "retain_Q_A_ROUGE",
    "retain_truth_ratio": "retain_Truth_Ratio",
    "ra_prob": "ra_Q_A_Prob_normalised",
    "ra_rouge": "ra_Q_A_ROUGE",
    "ra_truth_ratio": "ra_Truth_Ratio",
    "wf_prob": "wf_Q_A_Prob_normalised",
    "wf_rouge": "wf_Q_A_ROUGE",
    "wf_truth_ratio": "wf_Truth_Ratio",
    "model_utility": "model_utility",
    "extraction_strength": "extraction_strength",
    "exact_memorization": "exact_memorization",
}
MUSE_NAMES = {
    "muse_verbmem_forget": "forget_verbmem_ROUGE",
    "muse_knowmem_forget": "forget_knowmem_ROUGE",
    "muse_knowmem_retain": "retain_knowmem_ROUGE",
    "muse_privleak": "privleak",
    "muse_mink_auc": "mia_min_k",
    "muse_minkpp_auc": "mia_min_k_plus_plus",
}
_GEN_KEYS = {
    "forget_rouge": "forget", "retain_rouge": "retain", "ra_rouge": "ra", "wf_rouge": "wf",
    "muse_verbmem_forget": "verbmem_forget", "muse_knowmem_forget": "knowmem_forget",
    "muse_knowmem_retain": "knowmem_retain",
}
_AUC = ("muse_mink_auc", "muse_minkpp_auc")


def _num(x: float) -> Optional[float]:
    return float(x) if math.isfinite(float(x)) else None


def _entry(name: str, value: float, gen: Optional[str]) -> dict[str, Any]:
    if name.endswith("_prob"):
        return {"prob": _num(value), "avg_loss": _num(-math.log(value)) if value > 0 else None}
    if name in ("forget_rouge", "retain_rouge", "ra_rouge", "wf_rouge"):
        e: dict[str, Any] = {"rougeL_recall": _num(value)}
    elif name.startswith("muse_") and name not in _AUC:
        e = {"rougeL_f1": _num(value)}
    else:
        return {"score": _num(value)}
    if gen is not None:
        e["generation"] = gen
    return e


def _metric_block(result: EvalResult, name: str) -> dict[str, Any]:
    mv = result.metrics[name]
    if name in _AUC:
        counts = result.settings.get("counts", {})
        nf = int(counts.get("privleak_forget", 0))
        per = mv.per_item or []
        split = lambda vals: {str(i): {"score": _num(v)} for i, v in enumerate(vals)}  # noqa: E731
        return {
            "agg_value": _num(1.0 - mv.value),
            "auc": _num(1.0 - mv.value),
            "forget": {"value_by_index": split(per[:nf])},
            "holdout": {"value_by_index": split(per[nf:])},
        }
    block: dict[str, Any] = {"agg_value": _num(mv.value)}
    if mv.per_item is not None:
        gens = result.generations.get(_GEN_KEYS.get(name, ""), [])
        block["value_by_index"] = {
            str(i): _entry(name, v, gens[i] if i < len(gens) else None) for i, v in enumerate(mv.per_item)
        }
    return block


def to_open_unlearning(result: EvalResult) -> dict[str, dict[str, Any]]:
    """The files to write: {"TOFU_EVAL.json": ..., "TOFU_SUMMARY.json": ..., "MUSE_EVAL.json": ...,
    "MUSE_SUMMARY.json": ...}, for the benchmarks present in ``result``."""
    files: dict[str, dict[str, Any]] = {}
    for prefix, names in (("TOFU", TOFU_NAMES), ("MUSE", MUSE_NAMES)):
        ev = {ou: _metric_block(result, ours) for ours, ou in names.items() if ours in result.metrics}
        if ev:
            files[f"{prefix}_EVAL.json"] = ev
            files[f"{prefix}_SUMMARY.json"] = {k: v["agg_value"] for k, v in ev.items()}
    return files


def export_open_unlearning(
    result: EvalResult, out_dir: Union[str, os.PathLike], *, overwrite: bool = False
) -> list[Path]:
    """Write the open-unlearning files for ``result`` into ``out_dir``; returns the paths written.

    An existing non-empty folder is refused (FileExistsError) unless ``overwrite``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass overwrite=True to replace its files")
    files = to_open_unlearning(result)
    if not files:
        raise ValueError("the result has no TOFU or MUSE metrics to export")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, payload in files.items():
        write_json(out / name, payload)
        written.append(out / name)
    return written


def _load(path: Path) -> Any:
    return read_json_file(path, "reference evaluation file")


def _index_map(raw: Any, path: Path, field: str, value_key: Optional[str]) -> dict[int, float]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: field {field!r} must be a non-empty object index → value")
    out = {}
    for k, v in raw.items():
        val = v.get(value_key) if isinstance(v, dict) and value_key else v
        if isinstance(val, list):  # per-answer lists: mean, as open-unlearning's aggregate_to_1D
            val = sum(val) / len(val) if val else None
        try:
            out[int(k)] = float(val)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {field}[{k!r}] is not a number ({v!r})") from None
    return out


def read_reference_tr(path: Union[str, os.PathLike]) -> dict[int, float]:
    """Per-item forget truth ratios (index → TR) from an open-unlearning or TOFU evaluation file."""
    p = Path(path)
    data = _load(p)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object")
    if "forget_truth_ratio" in data:
        block = data["forget_truth_ratio"]
        if not isinstance(block, dict) or "value_by_index" not in block:
            raise KeyError(f"{p}: forget_truth_ratio has no 'value_by_index'")
        return _index_map(block["value_by_index"], p, "forget_truth_ratio.value_by_index", "score")
    if "eval_log_forget.json" in data:  # TOFU eval_log_aggregated.json
        data = data["eval_log_forget.json"]
    if isinstance(data, dict) and "truth_ratio" in data:  # TOFU eval_log_forget.json
        return _index_map(data["truth_ratio"], p, "truth_ratio", None)
    raise KeyError(f"{p}: no 'forget_truth_ratio.value_by_index' (open-unlearning) or 'truth_ratio' (TOFU) field")


def import_tofu_eval(path: Union[str, os.PathLike], *, fingerprint: str = "", model: str = "imported") -> EvalResult:
    """An :class:`EvalResult` (our metric names) from an open-unlearning TOFU_EVAL.json."""
    p = Path(path)
    data = _load(p)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object of metrics")
    metrics: dict[str, MetricValue] = {}
    for ours, ou in TOFU_NAMES.items():
        if ou not in data:
            continue
        block = data[ou]
        if not isinstance(block, dict) or "agg_value" not in block:
            raise KeyError(f"{p}: metric {ou!r} has no 'agg_value'")
        per = None
        if "value_by_index" in block:
            key = "prob" if ours.endswith("_prob") else "rougeL_recall" if ours.endswith("_rouge") else "score"
            vals = _index_map(block["value_by_index"], p, f"{ou}.value_by_index", key)
            per = [vals[i] for i in sorted(vals)]
        agg = block["agg_value"]
        metrics[ours] = MetricValue(ours, float("nan") if agg is None else float(agg), per)
    if not metrics:
        raise KeyError(f"{p}: none of the open-unlearning TOFU metric names ({', '.join(TOFU_NAMES.values())})")
    return EvalResult(None, None, "imported", "tofu", fingerprint, {"source": str(p)}, 0.0, metrics, model=model)
