"""Evaluation of unlearning: TOFU and MUSE metrics, results store, α/β sweeps.

Modules: :mod:`.data` (loaders with validation), :mod:`.scoring` (batched teacher-forced
log-probs), :mod:`.metrics` (pure formulas), :mod:`.tofu` / :mod:`.muse` (benchmarks on
one model), :mod:`.results` (EvalResult, METRIC_INFO), :mod:`.evaluate` (top level),
:mod:`.store` (SQLite), :mod:`.sweep`, :mod:`.openunlearning` (file export/import),
:mod:`.cli_commands` (``msa eval`` / ``sweep`` / ``results``).
"""

from importlib import import_module
from typing import Any

# `evaluate` is bound here, eagerly, because the submodule msa_core.eval.evaluate shares its
# name: binding the function once at package import keeps `from msa_core.eval import evaluate`
# the function whatever is imported later. These modules do not import torch; the scoring
# names below are loaded on first use.
from msa_core.eval.evaluate import (
    ReferenceStats,
    eval_settings,
    evaluate,
    evaluate_model,
    reference_result,
    resolve_reference,
)
from msa_core.eval.results import METRIC_INFO, METRIC_ORDER, EvalResult, MetricInfo, MetricValue, metric_info
from msa_core.eval.store import ResultStore
from msa_core.eval.sweep import run_sweep

_LAZY = {"PairScores", "answer_probabilities", "score_pairs", "truth_ratios"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module("msa_core.eval.scoring"), name)
    raise AttributeError(f"module 'msa_core.eval' has no attribute {name!r}")


__all__ = [
    "EvalResult",
    "METRIC_INFO",
    "METRIC_ORDER",
    "MetricInfo",
    "MetricValue",
    "PairScores",
    "ReferenceStats",
    "ResultStore",
    "answer_probabilities",
    "eval_settings",
    "evaluate",
    "evaluate_model",
    "metric_info",
    "reference_result",
    "resolve_reference",
    "run_sweep",
    "score_pairs",
    "truth_ratios",
]
