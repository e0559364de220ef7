"""Top-level evaluation: a model, a side model, or the live engine at (α, β).

- :func:`evaluate_model` scores any model on the experiment's TOFU and/or MUSE data.
- :func:`reference_result` evaluates the engine's reference (retain-only) model, once per
  experiment fingerprint and settings when the caller passes a :class:`ReferenceCache`
  (and, when given, through the results store).
- :func:`resolve_reference` gathers what the metrics compare against: per-item forget
  truth ratios (from ``experiment.reference_eval`` when set, else the reference model) and
  the reference MUSE Min-K% AUC (for PrivLeak).
- :func:`evaluate` composes the engine at (α, β) and evaluates inside one
  ``engine.session`` (one critical section), optionally through a :class:`ResultStore`.

What keys a result (:class:`EvalSettings`, :func:`eval_settings`) lives in :mod:`.settings`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Optional, Union

from msa_core.eval.data import load_muse
from msa_core.eval.openunlearning import read_reference_tr
from msa_core.eval.results import EvalResult, MetricValue
from msa_core.eval.settings import (
    EvalSettings,
    ReferenceStats,
    chosen_benchmarks,
    eval_settings,
    max_length_for,
    model_settings_of,
    reference_file,
    reference_file_source,
)
from msa_core.experiment import Experiment
from msa_core.progress import Progress, report, sub_progress

if TYPE_CHECKING:
    from msa_core.engine import Engine
    from msa_core.eval.store import ResultStore
    from msa_core.eval.tofu import ReferenceTR

# torch-heavy modules (scoring, tofu, muse) are imported inside the functions that need
# them, so sweeps' bookkeeping starts without torch.


class ReferenceCache:
    """Reference-model results in memory, keyed by (fingerprint, settings key).

    The caller owns it: the CLI makes one per run, a sweep's caller one per sweep, the app
    one per process (in its resources module). Thread-safe: a second caller asking for the
    same key waits for the first one's result instead of evaluating again.
    """

    def __init__(self) -> None:
        self._results: dict[tuple[str, str], EvalResult] = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key: tuple[str, str], compute: Callable[[], EvalResult]) -> EvalResult:
        """The cached result for ``key``, computing (and keeping) it on the first call."""
        with self._lock:
            if key not in self._results:
                self._results[key] = compute()
            return self._results[key]

    def __len__(self) -> int:
        return len(self._results)


def evaluate_model(
    model: Any,
    tokenizer: Any,
    experiment: Experiment,
    *,
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    progress: Optional[Progress] = None,
    reference_tr: Optional[ReferenceTR] = None,
    reference_auc: Optional[float] = None,
    batch_size: Optional[int] = None,
    settings: Optional[EvalSettings] = None,
    fingerprint: str = "",
    label: str = "composed",
    reference_tofu_auc: Optional[float] = None,
) -> EvalResult:
    """Evaluate ``model`` as it is (no composition) on the experiment's data.

    ``reference_tr`` (index → TR) enables forget quality, ``reference_auc`` MUSE PrivLeak,
    ``reference_tofu_auc`` the reference AUC of TOFU PrivLeak (else open-unlearning's 0.5).
    ``batch_size`` None: chosen from the device's free memory (:func:`msa_core.batching.choose_batch_size`;
    16 on the CPU). ``settings`` defaults to :func:`eval_settings` for these arguments. The experiment's
    ``prompt_format`` and ``conventions`` apply (and are recorded in the settings).
    """
    from msa_core.eval.muse import evaluate_muse
    from msa_core.eval.tofu import evaluate_tofu, load_tofu_sets

    t0 = time.perf_counter()
    max_length = max_length_for(model)
    if batch_size is None:
        from msa_core.batching import choose_batch_size

        batch_size = choose_batch_size(model, max_length)
    if settings is None:
        srcs = ReferenceStats(tr_source="given" if reference_tr is not None else None,
                              auc_source=None if reference_auc is None else f"given:{reference_auc:.6g}",
                              tofu_auc_source=None if reference_tofu_auc is None else f"given:{reference_tofu_auc:.6g}")
        settings = eval_settings(experiment, tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                                 max_length=max_length, reference=srcs, model=model_settings_of(model))
    benches = settings.benchmarks
    metrics: dict[str, MetricValue] = {}
    gens: dict[str, list[str]] = {}
    details: dict[str, Any] = {}
    conventions = experiment.metric_conventions
    counts: dict[str, int] = {}
    missing: list[str] = []
    share = {"tofu": 0.6 if len(benches) == 2 else 1.0, "muse": 0.4 if len(benches) == 2 else 1.0}
    start = 0.0
    if "tofu" in benches:
        sets = load_tofu_sets(experiment.data, subset)
        missing.extend(sets.missing)
        counts.update({k: len(v) for k, v in sets.named().items()})
        if sets.holdout is not None:
            counts["holdout"] = len(sets.holdout)
        out = evaluate_tofu(model, tokenizer, sets, tier=tier, reference_tr=reference_tr,
                            reference_auc=reference_tofu_auc, batch_size=batch_size, max_length=max_length,
                            progress=sub_progress(progress, 0.0, share["tofu"]),
                            prompt_format=experiment.prompt_format, conventions=conventions)
        metrics.update(out.metrics)
        gens.update(out.generations)  # keyed "forget", "retain", "ra", "wf" as in TOFU_EVAL
        details.update(out.details)
        start = share["tofu"] if len(benches) == 2 else 0.0
    if "muse" in benches:
        data = load_muse(experiment.data.muse)  # type: ignore[arg-type]
        for name in ("privleak_forget", "privleak_holdout"):
            texts = getattr(data, name)
            if texts is not None:
                counts[name] = len(texts[:subset] if subset else texts)
        m, g = evaluate_muse(model, tokenizer, data, tier=tier, subset=subset, reference_auc=reference_auc,
                             batch_size=batch_size, max_length=max_length, progress=sub_progress(progress, start, 1.0),
                             conventions=conventions)
        metrics.update(m)
        gens.update(g)
    report(progress, 1.0, "evaluation done")
    stored = {**settings.as_dict(), "counts": counts, "missing": missing}
    return EvalResult(None, None, tier, settings.benchmark, fingerprint, stored,
                      time.perf_counter() - t0, metrics, gens, model=label, details=details)


def reference_result(
    engine: Engine,
    *,
    benchmark: str = "all",
    subset: Optional[int] = None,
    store: Optional[ResultStore] = None,
    progress: Optional[Progress] = None,
    batch_size: Optional[int] = None,
    cache: Optional[ReferenceCache] = None,
) -> Optional[EvalResult]:
    """The reference model's (teacher-forced) evaluation.

    Read from ``store`` when it holds it (and written there when computed); with a ``cache``
    it is computed at most once per fingerprint and settings for the cache's owner.
    None when the experiment has no reference checkpoint. The reference model is loaded only
    when the store lacks the result (:func:`msa_core.side_cache.reference_result`), and released
    after use on CUDA, so it costs no GPU memory while idle.
    """
    from msa_core.side_cache import reference_result as lazy_reference_result

    return lazy_reference_result(engine, benchmark=benchmark, subset=subset, store=store, progress=progress,
                                 batch_size=batch_size, cache=cache)


def reference_stats(reference: Union[EvalResult, ReferenceStats, None]) -> Optional[ReferenceStats]:
    """ReferenceStats from a reference model's EvalResult (or passed through)."""
    if reference is None or isinstance(reference, ReferenceStats):
        return reference
    tr = reference.metrics.get("forget_truth_ratio")
    auc = reference.metrics.get("muse_mink_auc")
    tofu_auc = reference.metrics.get("tofu_mink_auc")
    src = f"model:{reference.fingerprint}:{reference.settings_key}"
    return ReferenceStats(
        forget_tr=None if tr is None or tr.per_item is None else dict(enumerate(tr.per_item)),
        muse_auc=None if auc is None else auc.value,
        tr_source=src if tr is not None else None,
        auc_source=src if auc is not None else None,
        tofu_auc=None if tofu_auc is None else tofu_auc.value,
        tofu_auc_source=src if tofu_auc is not None else None,
    )


def resolve_reference(
    engine: Engine,
    *,
    benchmark: str = "all",
    subset: Optional[int] = None,
    store: Optional[ResultStore] = None,
    progress: Optional[Progress] = None,
    batch_size: Optional[int] = None,
    cache: Optional[ReferenceCache] = None,
) -> ReferenceStats:
    """Reference TRs from ``experiment.reference_eval`` when set (else the reference model), AUC from the model."""
    exp = engine.experiment
    benches = chosen_benchmarks(exp, benchmark)
    file = reference_file(exp, benches)
    file_tr = None if file is None else read_reference_tr(file)
    # The reference model is evaluated only on what the file does not provide.
    ref_bench = benchmark if file_tr is None else ("muse" if "muse" in benches else None)
    model_stats = None
    if ref_bench is not None:
        model_stats = reference_stats(
            reference_result(engine, benchmark=ref_bench, subset=subset, store=store, progress=progress,
                             batch_size=batch_size, cache=cache)
        )
    stats = model_stats or ReferenceStats()
    if file_tr is not None:
        stats = replace(stats, forget_tr=file_tr, tr_source=reference_file_source(file))
    return stats


def _yielding(engine: Engine, alpha: float, beta: float, progress: Optional[Progress]) -> Progress:
    """The evaluation's progress callback, which the scorer and the generator call after every
    batch, also hands the engine to sessions waiting for it (a slider move in another browser
    session) and recomposes at (α, β) before the next batch: a long evaluation no longer holds
    every other session for its whole length."""

    def update(fraction: float, message: str) -> None:
        engine.yield_turn(alpha, beta)
        report(progress, fraction, message)

    return update


def evaluate(
    engine: Engine,
    alpha: float,
    beta: float,
    *,
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    progress: Optional[Progress] = None,
    reference: Union[EvalResult, ReferenceStats, None] = None,
    store: Optional[ResultStore] = None,
    batch_size: Optional[int] = None,
    reference_cache: Optional[ReferenceCache] = None,
) -> EvalResult:
    """Evaluate the engine's model composed at (α, β), inside one ``engine.session``.

    ``reference``: the reference model's result or :class:`ReferenceStats`; resolved with
    :func:`resolve_reference` (through ``reference_cache`` when given) when None. With a
    ``store``, a stored point is returned as is and a new one is stored.
    """
    ref = reference_stats(reference)
    if ref is None:
        ref = resolve_reference(engine, benchmark=benchmark, subset=subset, store=store,
                                progress=sub_progress(progress, 0.0, 0.2), batch_size=batch_size,
                                cache=reference_cache)
    settings = eval_settings(engine.experiment, engine.tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                             max_length=max_length_for(engine.model), reference=ref, model=engine.model_settings)
    if store is not None:
        hit = store.get(engine.fingerprint, alpha, beta, tier, settings.key)
        if hit is not None:
            report(progress, 1.0, "loaded from the results store")
            return hit
    with engine.session(alpha, beta) as model:
        turns = _yielding(engine, alpha, beta, sub_progress(progress, 0.2, 1.0))
        result = evaluate_model(model, engine.tokenizer, engine.experiment, tier=tier, benchmark=benchmark,
                                subset=subset, progress=turns, reference_tr=ref.forget_tr,
                                reference_auc=ref.muse_auc, batch_size=batch_size, settings=settings,
                                fingerprint=engine.fingerprint, reference_tofu_auc=ref.tofu_auc)
    result = replace(result, alpha=float(alpha), beta=float(beta))
    if store is not None:
        store.put(result)
    return result
