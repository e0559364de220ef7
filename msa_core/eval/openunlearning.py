"""Results in open-unlearning's file shapes, and open-unlearning results read back.

Export writes ``TOFU_EVAL.json`` and ``TOFU_SUMMARY.json`` (plus ``MUSE_EVAL.json`` /
``MUSE_SUMMARY.json`` when MUSE metrics are present) exactly as open-unlearning's evaluator
writes them for its default TOFU suite (``configs/eval/tofu.yaml``): every suite metric and
every pre-compute metric it caches (``forget_Q_A_PARA_Prob``, ``forget_Q_A_PERT_Prob``,
``retain_Q_A_*``, ``ra_Q_A_*``, ``wf_Q_A_*``, ``mia_min_k``, ...), each
``{"agg_value": …, "value_by_index": {"0": entry, …}}`` with open-unlearning's entries:

- probabilities ``{"prob", "avg_loss"}``; for several answers of one item (perturbed answers)
  ``{"prob": [...], "avg_loss": [...]}`` in answer order;
- option-normalised probabilities ``{"prob"}``; truth ratios, ES, EM ``{"score"}``;
- ROUGE ``{"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth", "generation"}``;
- MIA ``{"forget": {"agg_value", "value_by_index"}, "holdout": {…}, "auc", "agg_value"}`` with
  the AUC in open-unlearning's orientation (1 − ours, see :func:`msa_core.eval.metrics.muse_mia_auc`);
- ``forget_quality``, ``model_utility``, ``privleak``: ``{"agg_value"}`` (None when not computed).

``TOFU_SUMMARY.json`` holds the suite's top-level metrics (metric → agg_value, None left out).
The richer per-item entries come from :attr:`EvalResult.details`; results stored before
details existed export what their per-item numbers allow.

Import reads per-item forget truth ratios (the forget-quality reference) from an
open-unlearning ``TOFU_EVAL.json`` or the original TOFU repository's ``eval_log_forget.json`` /
``eval_log_aggregated.json``, and whole runs (TOFU_EVAL.json and/or TOFU_SUMMARY.json of any
method) into the results store as named points (:func:`import_run`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from msa_core.atomic import write_json
from msa_core.eval.data import read_json_file
from msa_core.eval.results import EvalResult, MetricValue

if TYPE_CHECKING:
    from msa_core.eval.store import ResultStore
    from msa_core.experiment import Experiment

# Our metric name → open-unlearning's (TOFU).
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
    "tofu_mink_auc": "mia_min_k",
    "tofu_privleak": "privleak",
}
MUSE_NAMES = {
    "muse_verbmem_forget": "forget_verbmem_ROUGE",
    "muse_knowmem_forget": "forget_knowmem_ROUGE",
    "muse_knowmem_retain": "retain_knowmem_ROUGE",
    "muse_privleak": "privleak",
    "muse_mink_auc": "mia_min_k",
    "muse_minkpp_auc": "mia_min_k_plus_plus",
}
# open-unlearning's default TOFU suite (configs/eval/tofu.yaml) with the pre-compute metrics its
# evaluator caches into TOFU_EVAL.json, in the order it evaluates them.
TOFU_EVAL_KEYS = (
    "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_truth_ratio", "forget_quality", "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "retain_Truth_Ratio",
    "ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
    "wf_Q_A_Prob", "wf_Q_A_PERT_Prob", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio",
    "model_utility", "mia_min_k", "privleak", "extraction_strength",
)
# The suite's top-level metrics: what its TOFU_SUMMARY.json holds (exact_memorization is an optional one).
TOFU_SUMMARY_KEYS = ("forget_truth_ratio", "forget_quality", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility",
                     "privleak", "extraction_strength", "exact_memorization")
_GEN_KEYS = {
    "forget_rouge": "forget", "retain_rouge": "retain", "ra_rouge": "ra", "wf_rouge": "wf",
    "muse_verbmem_forget": "verbmem_forget", "muse_knowmem_forget": "knowmem_forget",
    "muse_knowmem_retain": "knowmem_retain",
}
_AUC = ("muse_mink_auc", "muse_minkpp_auc", "tofu_mink_auc")
_SCORE_NAMES = ("forget_truth_ratio", "retain_truth_ratio", "ra_truth_ratio", "wf_truth_ratio",
                "extraction_strength", "exact_memorization")
_AGG_ONLY = ("forget_quality", "model_utility", "tofu_privleak", "muse_privleak")
_NORMALISED = ("ra_prob", "wf_prob")


def _num(x: Any) -> Any:
    """A JSON number (NaN/inf → None); lists element-wise; other values as they are."""
    if isinstance(x, list):
        return [_num(v) for v in x]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x) if math.isfinite(float(x)) else None
    return x


def _with_prob(entry: Any) -> Any:
    """A stored probability entry ``{"avg_loss": …}`` as open-unlearning writes it: ``{"prob", "avg_loss"}``
    with prob = exp(−avg_loss) (element-wise for lists); other entries unchanged."""
    if not isinstance(entry, dict) or "avg_loss" not in entry or "prob" in entry:
        return entry
    loss = entry["avg_loss"]
    prob = [math.exp(-x) for x in loss] if isinstance(loss, list) else math.exp(-loss)
    return {"prob": prob, **entry}


def _by_index(entries: list[Any]) -> dict[str, Any]:
    out = {}
    for i, e in enumerate(entries):
        e = _with_prob(e)
        out[str(i)] = {k: _num(v) for k, v in e.items()} if isinstance(e, dict) else e
    return out


def _mean(values: list[float]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return _num(sum(vals) / len(vals)) if vals else None


def _entry_mean(entry: dict[str, Any], key: str) -> Optional[float]:
    v = entry.get(key)
    return _mean(v) if isinstance(v, list) else _num(v)


def _legacy_entry(name: str, value: float, gen: Optional[str]) -> dict[str, Any]:
    """A per-item entry from one number (results stored before details existed)."""
    if name in _NORMALISED:
        return {"prob": _num(value)}
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


def _mia_block(forget: list[float], holdout: list[float], auc_ours: float) -> dict[str, Any]:
    def part(scores: list[float]) -> dict[str, Any]:
        by_index = {str(i): {"score": _num(v)} for i, v in enumerate(scores)}
        return {"agg_value": _mean(scores), "value_by_index": by_index}

    ou_auc = _num(1.0 - auc_ours)
    return {"forget": part(forget), "holdout": part(holdout), "auc": ou_auc, "agg_value": ou_auc}


def _metric_block(result: EvalResult, name: str) -> dict[str, Any]:
    mv = result.metrics[name]
    if name in _AUC:
        mia = result.details.get("mia_min_k") if name == "tofu_mink_auc" else None
        if isinstance(mia, dict):
            return _mia_block(list(mia["forget"]), list(mia["holdout"]), mv.value)
        counts = result.settings.get("counts", {})
        nf = int(counts.get("privleak_forget", 0))
        per = list(mv.per_item or [])
        return _mia_block(per[:nf], per[nf:], mv.value)
    ou = TOFU_NAMES.get(name) if name in TOFU_NAMES and not name.startswith("muse_") else MUSE_NAMES.get(name)
    detail = result.details.get(str(ou))
    if isinstance(detail, list):
        return {"agg_value": _num(mv.value), "value_by_index": _by_index(detail)}
    block: dict[str, Any] = {"agg_value": _num(mv.value)}
    if mv.per_item is not None and name not in _AGG_ONLY:
        gens = result.generations.get(_GEN_KEYS.get(name, ""), [])
        block["value_by_index"] = {
            str(i): _legacy_entry(name, v, gens[i] if i < len(gens) else None) for i, v in enumerate(mv.per_item)
        }
    return block


def _detail_block(entries: list[Any], key: str) -> dict[str, Any]:
    """A pre-compute probability block from detail entries: agg = mean over items of the item's mean."""
    by_index = _by_index(entries)
    return {"agg_value": _mean([_entry_mean(e, key) for e in by_index.values()]), "value_by_index": by_index}


def _tofu_eval(result: EvalResult) -> dict[str, Any]:
    ours_by_ou = {ou: ours for ours, ou in TOFU_NAMES.items()}
    blocks: dict[str, Any] = {}
    for ou in TOFU_EVAL_KEYS + ("exact_memorization",):
        ours = ours_by_ou.get(ou)
        if ours is not None and ours in result.metrics:
            blocks[ou] = _metric_block(result, ours)
        elif isinstance(result.details.get(ou), list):  # a pre-compute metric we keep only as details
            blocks[ou] = _detail_block(result.details[ou], "prob")
        elif ou == "forget_quality" and "forget_truth_ratio" in result.metrics:
            blocks[ou] = {"agg_value": None}  # open-unlearning writes None without reference logs
    return blocks


def to_open_unlearning(result: EvalResult) -> dict[str, dict[str, Any]]:
    """The files to write: {"TOFU_EVAL.json": ..., "TOFU_SUMMARY.json": ..., "MUSE_EVAL.json": ...,
    "MUSE_SUMMARY.json": ...}, for the benchmarks present in ``result``."""
    files: dict[str, dict[str, Any]] = {}
    tofu = _tofu_eval(result)
    if tofu:
        files["TOFU_EVAL.json"] = tofu
        files["TOFU_SUMMARY.json"] = {
            k: tofu[k]["agg_value"] for k in TOFU_SUMMARY_KEYS if k in tofu and tofu[k].get("agg_value") is not None
        }
    muse = {ou: _metric_block(result, ours) for ours, ou in MUSE_NAMES.items() if ours in result.metrics}
    if muse:
        files["MUSE_EVAL.json"] = muse
        files["MUSE_SUMMARY.json"] = {k: v["agg_value"] for k, v in muse.items() if v.get("agg_value") is not None}
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


def _tofu_metrics_from_eval(data: dict[str, Any], p: Path) -> dict[str, MetricValue]:
    metrics: dict[str, MetricValue] = {}
    for ours, ou in TOFU_NAMES.items():
        if ou not in data:
            continue
        block = data[ou]
        if not isinstance(block, dict) or "agg_value" not in block:
            raise KeyError(f"{p}: metric {ou!r} has no 'agg_value'")
        agg = block["agg_value"]
        if ours == "tofu_mink_auc":  # open-unlearning's orientation → ours; per item: forget then holdout scores
            per = None
            if isinstance(block.get("forget"), dict) and isinstance(block.get("holdout"), dict):
                parts = [_index_map(block[k].get("value_by_index") or {}, p, f"{ou}.{k}.value_by_index", "score")
                         if block[k].get("value_by_index") else {} for k in ("forget", "holdout")]
                per = [m[i] for m in parts for i in sorted(m)]
            metrics[ours] = MetricValue(ours, float("nan") if agg is None else 1.0 - float(agg), per)
            continue
        per = None
        if block.get("value_by_index"):
            key = "prob" if ours.endswith("_prob") else "rougeL_recall" if ours.endswith("_rouge") else "score"
            vals = _index_map(block["value_by_index"], p, f"{ou}.value_by_index", key)
            per = [vals[i] for i in sorted(vals)]
        metrics[ours] = MetricValue(ours, float("nan") if agg is None else float(agg), per)
    return metrics


def import_tofu_eval(path: Union[str, os.PathLike], *, fingerprint: str = "", model: str = "imported") -> EvalResult:
    """An :class:`EvalResult` (our metric names) from an open-unlearning TOFU_EVAL.json."""
    p = Path(path)
    data = _load(p)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object of metrics")
    metrics = _tofu_metrics_from_eval(data, p)
    if not metrics:
        raise KeyError(f"{p}: none of the open-unlearning TOFU metric names ({', '.join(TOFU_NAMES.values())})")
    return EvalResult(None, None, "imported", "tofu", fingerprint, {"source": str(p)}, 0.0, metrics, model=model)


# Files of an open-unlearning result folder that :func:`read_run` reads.
EVAL_FILE = "TOFU_EVAL.json"
SUMMARY_FILE = "TOFU_SUMMARY.json"
# Version of the imported-result settings (bump when what an import stores changes).
IMPORT_VERSION = 1


def _summary_metrics(data: Any, p: Path) -> dict[str, MetricValue]:
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object metric → value")
    out: dict[str, MetricValue] = {}
    for ours, ou in TOFU_NAMES.items():
        if ou not in data or data[ou] is None:
            continue
        try:
            value = float(data[ou])
        except (TypeError, ValueError):
            raise ValueError(f"{p}: {ou} is not a number ({data[ou]!r})") from None
        out[ours] = MetricValue(ours, 1.0 - value if ours == "tofu_mink_auc" else value)
    return out


def run_files(folder: Union[str, os.PathLike]) -> tuple[Path, list[Path]]:
    """(the folder holding the run's files, the files found): TOFU_EVAL.json and/or TOFU_SUMMARY.json
    in ``folder`` or its ``evals/`` subfolder (open-unlearning's ``saves/unlearn/<run>/evals``)."""
    base = Path(folder).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"open-unlearning result folder {base} does not exist")
    for where in (base, base / "evals"):
        found = [where / n for n in (EVAL_FILE, SUMMARY_FILE) if (where / n).is_file()]
        if found:
            return where, found
    raise FileNotFoundError(f"{base}: no {EVAL_FILE} or {SUMMARY_FILE} (nor in {base / 'evals'})")


def point_name(folder: Union[str, os.PathLike]) -> str:
    """The name a run folder gives its point: the folder's name (its parent's for an ``evals`` folder)."""
    p = Path(folder).expanduser().resolve()
    return p.parent.name if p.name == "evals" else p.name


def read_run(folder: Union[str, os.PathLike], *, fingerprint: str, method: str,
             point: Optional[str] = None) -> EvalResult:
    """One open-unlearning result folder as a named point ``method_model(method, point)`` of the
    experiment ``fingerprint``: metrics from TOFU_EVAL.json (with per-item values), else
    TOFU_SUMMARY.json; aggregates the summary has that the eval file lacks are added.

    The settings key depends only on the import kind, so importing the same (method, point)
    again replaces its row instead of adding one; the files' content signature is recorded.
    """
    from msa_core.eval.store import method_model

    where, files = run_files(folder)
    name = point or point_name(where)
    model = method_model(method, name)
    metrics: dict[str, MetricValue] = {}
    for f in files:
        data = _load(f)
        if f.name == EVAL_FILE:
            if not isinstance(data, dict):
                raise ValueError(f"{f}: expected a JSON object of metrics")
            metrics = {**_tofu_metrics_from_eval(data, f), **metrics}
        else:
            summary = _summary_metrics(data, f)
            metrics.update({k: v for k, v in summary.items() if k not in metrics})
    if not metrics:
        raise KeyError(f"{where}: none of the open-unlearning TOFU metric names ({', '.join(TOFU_NAMES.values())})")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    tier = "full" if any(k in metrics for k in ("model_utility", "forget_rouge")) else "fast"
    keyed = {"version": IMPORT_VERSION, "imported": "open-unlearning", "benchmark": "tofu"}
    settings = {**keyed, "key": hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16],
                "source": str(where.resolve()), "files": [f.name for f in files],
                "signature": digest.hexdigest()[:16]}
    return EvalResult(0.0, 0.0, tier, "tofu", fingerprint, settings, 0.0, metrics, model=model)


def import_run(store: ResultStore, experiment: Union[Experiment, str], folder: Union[str, os.PathLike],
               name: Optional[str] = None) -> EvalResult:
    """Read one open-unlearning result folder (:func:`read_run`) into ``store`` as a named point of
    ``experiment`` (an :class:`Experiment`, whose fingerprint is computed, or a fingerprint string).
    The method is ``name``, else the point's folder name. Rerunning replaces the point (no duplicate)."""
    if isinstance(experiment, str):
        fingerprint = experiment
    else:
        from msa_core.fingerprints import experiment_fingerprint

        fingerprint = experiment_fingerprint(experiment)
    where, _ = run_files(folder)
    method = (name or "").strip() or point_name(where)
    result = read_run(folder, fingerprint=fingerprint, method=method)
    store.put(result)
    return result
