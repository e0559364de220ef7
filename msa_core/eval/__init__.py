"""Evaluation of unlearning: TOFU and MUSE metrics, results store, α/β sweeps.

Modules: :mod:`.data` (loaders with validation), :mod:`.scoring` (batched teacher-forced
log-probs), :mod:`.metrics` (pure formulas), :mod:`.tofu` / :mod:`.muse` (benchmarks on
one model), :mod:`.results` (EvalResult, METRIC_INFO), :mod:`.run` (the top level:
``evaluate``, the reference), :mod:`.settings` (what keys a result), :mod:`.store` (SQLite), :mod:`.sweep`,
:mod:`.openunlearning` (file export/import). The ``msa eval`` / ``sweep`` / ``results``
commands live in the CLI package, which sits above this one (nothing here imports it).
"""

from importlib import import_module
from typing import Any

# These modules do not import torch; the scoring names below are loaded on first use.
from msa_core.eval.results import METRIC_INFO, METRIC_ORDER, EvalResult, MetricInfo, MetricValue, metric_info
from msa_core.eval.run import ReferenceCache, evaluate, evaluate_model, reference_result, resolve_reference
from msa_core.eval.settings import EvalSettings, ReferenceStats, eval_settings
from msa_core.eval.store import ResultStore
from msa_core.eval.sweep import parse_grid, run_sweep

_LAZY = {"PairScores", "answer_probabilities", "score_pairs", "truth_ratios"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module("msa_core.eval.scoring"), name)
    raise AttributeError(f"module 'msa_core.eval' has no attribute {name!r}")


__all__ = [
    "EvalResult",
    "EvalSettings",
    "METRIC_INFO",
    "METRIC_ORDER",
    "MetricInfo",
    "MetricValue",
    "PairScores",
    "ReferenceCache",
    "ReferenceStats",
    "ResultStore",
    "answer_probabilities",
    "eval_settings",
    "evaluate",
    "evaluate_model",
    "metric_info",
    "parse_grid",
    "reference_result",
    "resolve_reference",
    "run_sweep",
    "score_pairs",
    "truth_ratios",
]
