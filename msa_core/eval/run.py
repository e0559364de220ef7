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

:func:`eval_settings` builds the :class:`EvalSettings` of a run: everything that changes
the numbers (data, splits, subset, template, lengths, reference source, and the model's
dtype, device type and module filter). Its hash :attr:`EvalSettings.key` keys stored
results; results carry ``settings.as_dict()`` plus the per-split ``counts`` and ``missing``
splits (which do not enter the key). :func:`lookup_settings` gives the settings a stored
evaluation of an engine has, without evaluating anything (for :meth:`ResultStore.latest`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from msa_core.eval.data import data_signature, load_muse
from msa_core.eval.openunlearning import read_reference_tr
from msa_core.eval.results import EvalResult, MetricValue
from msa_core.experiment import Experiment
from msa_core.progress import Progress, report, sub_progress
from msa_core.prompts import has_chat_template

if TYPE_CHECKING:
    from msa_core.engine import Engine
    from msa_core.eval.store import ResultStore
    from msa_core.eval.tofu import ReferenceTR

# torch-heavy modules (scoring, tofu, muse) are imported inside the functions that need
# them, so the store, sweeps' bookkeeping and `msa results` start without torch.

EVAL_VERSION = 1
MAX_LENGTH_CAP = 2048  # open-unlearning's MUSE max_length; TOFU QA pairs are far shorter
TIERS = ("fast", "full")
BENCHMARKS = ("tofu", "muse", "all")


@dataclass(frozen=True)
class ReferenceStats:
    """What metrics compare against: reference per-item forget TRs and MUSE Min-K% AUC."""

    forget_tr: Optional[dict[int, float]] = None
    muse_auc: Optional[float] = None
    tr_source: Optional[str] = None
    auc_source: Optional[str] = None


@dataclass(frozen=True)
class EvalSettings:
    """Everything that changes an evaluation's numbers; :attr:`key` is their 16-hex hash.

    ``tofu`` / ``muse`` describe the data of each benchmark evaluated (None when not
    evaluated); ``reference`` names where the reference values come from; ``model`` is the
    evaluated model's settings (:attr:`msa_core.engine.Engine.model_settings`: dtype, device
    type, module filter). :meth:`as_dict` is the JSON shape stored with every result. Rows
    stored before ``model`` was keyed stay readable; they just match no new key, because a
    row without it cannot say which dtype, device or filter produced it.
    """

    benchmark: str
    benchmarks: tuple[str, ...]
    subset: Optional[int]
    template: str
    vocab_size: int
    max_length: Optional[int]
    tofu: Optional[dict[str, Any]] = None
    muse: Optional[dict[str, Any]] = None
    reference_tr: Optional[str] = None
    reference_auc: Optional[str] = None
    model: Optional[dict[str, Any]] = None
    version: int = EVAL_VERSION
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", settings_key(self._keyed()))

    def _keyed(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "benchmark": self.benchmark,
            "benchmarks": list(self.benchmarks),
            "subset": self.subset,
            "template": self.template,
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
        }
        if self.tofu is not None:
            out["tofu"] = dict(self.tofu)
        if self.muse is not None:
            out["muse"] = dict(self.muse)
        out["reference"] = {"tr": self.reference_tr, "auc": self.reference_auc}
        if self.model is not None:
            out["model"] = dict(self.model)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The stored JSON form: the keyed fields plus ``key``."""
        return {**self._keyed(), "key": self.key}

    @property
    def lookup_key(self) -> str:
        """:func:`settings_lookup_key` of these settings."""
        return settings_lookup_key(self._keyed())


def settings_key(keyed: dict[str, Any]) -> str:
    """A 16-hex hash of the settings that change results."""
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Fields of a stored settings dict that describe the run but do not enter its key.
_UNKEYED = ("key", "counts", "missing")


def settings_lookup_key(settings: dict[str, Any]) -> str:
    """The key of a stored settings dict with reference-model sources left out.

    A reference *model's* source names its own settings key, which only evaluating (or
    loading) the reference would tell; but it follows from what the lookup key does hold:
    the reference checkpoint is in the experiment fingerprint, and its dtype, device, data
    and subset are those of the composed run. Other sources (a reference file with its
    content signature, a given number) are kept, so a different file never matches.
    """
    keyed = {k: v for k, v in settings.items() if k not in _UNKEYED}
    ref = keyed.get("reference")
    ref = ref if isinstance(ref, dict) else {}
    keyed["reference"] = {
        name: None if isinstance(ref.get(name), str) and str(ref.get(name)).startswith("model:") else ref.get(name)
        for name in ("tr", "auc")
    }
    return settings_key(keyed)


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


def _benchmarks(experiment: Experiment, benchmark: str) -> list[str]:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    have = {"tofu": experiment.data.tofu is not None, "muse": experiment.data.muse is not None}
    if benchmark != "all":
        if not have[benchmark]:
            raise ValueError(f"benchmark {benchmark!r} asked for but the experiment has no data.{benchmark} folder")
        return [benchmark]
    chosen = [b for b in ("tofu", "muse") if have[b]]
    if not chosen:
        raise ValueError("the experiment has neither data.tofu nor data.muse; nothing to evaluate")
    return chosen


def eval_settings(
    experiment: Experiment,
    tokenizer: Any,
    *,
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    max_length: Optional[int] = None,
    reference: Optional[ReferenceStats] = None,
    model: Optional[dict[str, Any]] = None,
) -> EvalSettings:
    """The :class:`EvalSettings` of an evaluation (see the module docstring).

    ``model``: the evaluated model's settings (:attr:`Engine.model_settings`, or
    :func:`model_settings_of` for a bare model). ``tier`` is validated here but is not part
    of the settings: stored results key it apart.
    """
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    if subset is not None and int(subset) < 1:
        raise ValueError(f"subset must be a positive number of items, got {subset}")
    benches = _benchmarks(experiment, benchmark)
    d = experiment.data
    from msa_core.eval.muse import KNOWMEM_MAX_NEW_TOKENS, MINK_K, VERBMEM_MAX_NEW_TOKENS
    from msa_core.eval.tofu import ROUGE_MAX_NEW_TOKENS

    tofu = muse = None
    if "tofu" in benches:
        tofu = {"path": str(d.tofu), "signature": data_signature(d.tofu), "forget_split": d.forget_split,
                "retain_split": d.retain_split, "rouge_max_new_tokens": ROUGE_MAX_NEW_TOKENS}
    if "muse" in benches:
        muse = {"path": str(d.muse), "signature": data_signature(d.muse), "mink_k": MINK_K,
                "verbmem_max_new_tokens": VERBMEM_MAX_NEW_TOKENS, "knowmem_max_new_tokens": KNOWMEM_MAX_NEW_TOKENS}
    ref = reference or ReferenceStats()
    return EvalSettings(
        benchmark=benchmark,
        benchmarks=tuple(benches),
        subset=None if subset is None else int(subset),
        template="chat" if has_chat_template(tokenizer) else "plain",
        vocab_size=len(tokenizer),
        max_length=max_length,
        tofu=tofu,
        muse=muse,
        reference_tr=ref.tr_source,
        reference_auc=ref.auc_source,
        model=None if model is None else dict(model),
    )


def model_settings_of(model: Any) -> dict[str, Any]:
    """:attr:`Engine.model_settings` for a bare model: its parameters' dtype and device type, no filter."""
    first = next(model.parameters())
    return {"dtype": str(first.dtype).replace("torch.", ""), "device": first.device.type, "module_filter": None}


def side_model_settings(engine: Engine) -> dict[str, Any]:
    """The settings of the engine's side models: its dtype and device; α/β (so the filter) do not apply."""
    return {**engine.model_settings, "module_filter": None}


def max_length_for(model: Any) -> int:
    """Longest sequence scored: the model's max positions, capped at 2048 (open-unlearning MUSE)."""
    from msa_core.eval.scoring import default_max_length

    n = default_max_length(model)
    return min(n, MAX_LENGTH_CAP) if n else MAX_LENGTH_CAP


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
    batch_size: int = 16,
    settings: Optional[EvalSettings] = None,
    fingerprint: str = "",
    label: str = "composed",
) -> EvalResult:
    """Evaluate ``model`` as it is (no composition) on the experiment's data.

    ``reference_tr`` (index → TR) enables forget quality, ``reference_auc`` PrivLeak.
    ``settings`` defaults to :func:`eval_settings` for these arguments.
    """
    from msa_core.eval.muse import evaluate_muse
    from msa_core.eval.tofu import evaluate_tofu, load_tofu_sets

    t0 = time.perf_counter()
    max_length = max_length_for(model)
    if settings is None:
        srcs = ReferenceStats(tr_source="given" if reference_tr is not None else None,
                              auc_source=None if reference_auc is None else f"given:{reference_auc:.6g}")
        settings = eval_settings(experiment, tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                                 max_length=max_length, reference=srcs, model=model_settings_of(model))
    benches = settings.benchmarks
    metrics: dict[str, MetricValue] = {}
    gens: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    missing: list[str] = []
    share = {"tofu": 0.6 if len(benches) == 2 else 1.0, "muse": 0.4 if len(benches) == 2 else 1.0}
    start = 0.0
    if "tofu" in benches:
        sets = load_tofu_sets(experiment.data, subset)
        missing.extend(sets.missing)
        counts.update({k: len(v) for k, v in sets.named().items()})
        m, g = evaluate_tofu(model, tokenizer, sets, tier=tier, reference_tr=reference_tr, batch_size=batch_size,
                             max_length=max_length, progress=sub_progress(progress, 0.0, share["tofu"]))
        metrics.update(m)
        gens.update(g)  # keyed "forget", "retain", "ra", "wf" as in TOFU_EVAL
        start = share["tofu"] if len(benches) == 2 else 0.0
    if "muse" in benches:
        data = load_muse(experiment.data.muse)  # type: ignore[arg-type]
        for name in ("privleak_forget", "privleak_holdout"):
            texts = getattr(data, name)
            if texts is not None:
                counts[name] = len(texts[:subset] if subset else texts)
        m, g = evaluate_muse(model, tokenizer, data, tier=tier, subset=subset, reference_auc=reference_auc,
                             batch_size=batch_size, max_length=max_length, progress=sub_progress(progress, start, 1.0))
        metrics.update(m)
        gens.update(g)
    report(progress, 1.0, "evaluation done")
    stored = {**settings.as_dict(), "counts": counts, "missing": missing}
    return EvalResult(None, None, tier, settings.benchmark, fingerprint, stored,
                      time.perf_counter() - t0, metrics, gens, model=label)


def reference_result(
    engine: Engine,
    *,
    benchmark: str = "all",
    subset: Optional[int] = None,
    store: Optional[ResultStore] = None,
    progress: Optional[Progress] = None,
    batch_size: int = 16,
    cache: Optional[ReferenceCache] = None,
) -> Optional[EvalResult]:
    """The reference model's (teacher-forced) evaluation.

    Read from ``store`` when it holds it (and written there when computed); with a ``cache``
    it is computed at most once per fingerprint and settings for the cache's owner.
    None when the experiment has no reference checkpoint.
    """
    model = engine.side_model("reference")
    if model is None:
        return None
    exp = engine.experiment
    settings = eval_settings(exp, engine.tokenizer, tier="fast", benchmark=benchmark, subset=subset,
                             max_length=max_length_for(model), model=side_model_settings(engine))

    def compute() -> EvalResult:
        stored = store.get(f"{engine.fingerprint}#reference", 0.0, 0.0, "fast", settings.key) if store else None
        if stored is None:
            stored = evaluate_model(model, engine.tokenizer, exp, tier="fast", benchmark=benchmark, subset=subset,
                                    progress=progress, batch_size=batch_size, settings=settings,
                                    fingerprint=engine.fingerprint, label="reference")
            if store is not None:
                store.put(stored)
        return stored

    if cache is None:
        return compute()
    return cache.get_or_compute((engine.fingerprint, settings.key), compute)


def reference_stats(reference: Union[EvalResult, ReferenceStats, None]) -> Optional[ReferenceStats]:
    """ReferenceStats from a reference model's EvalResult (or passed through)."""
    if reference is None or isinstance(reference, ReferenceStats):
        return reference
    tr = reference.metrics.get("forget_truth_ratio")
    auc = reference.metrics.get("muse_mink_auc")
    src = f"model:{reference.fingerprint}:{reference.settings_key}"
    return ReferenceStats(
        forget_tr=None if tr is None or tr.per_item is None else dict(enumerate(tr.per_item)),
        muse_auc=None if auc is None else auc.value,
        tr_source=src if tr is not None else None,
        auc_source=src if auc is not None else None,
    )


def _file_source(path: Path) -> str:
    """The reference source of an open-unlearning file: its path and content signature."""
    return f"file:{path}:{data_signature(path)}"


def resolve_reference(
    engine: Engine,
    *,
    benchmark: str = "all",
    subset: Optional[int] = None,
    store: Optional[ResultStore] = None,
    progress: Optional[Progress] = None,
    batch_size: int = 16,
    cache: Optional[ReferenceCache] = None,
) -> ReferenceStats:
    """Reference TRs from ``experiment.reference_eval`` when set (else the reference model), AUC from the model."""
    exp = engine.experiment
    benches = _benchmarks(exp, benchmark)
    file_tr = None
    if exp.reference_eval is not None and "tofu" in benches:
        file_tr = read_reference_tr(exp.reference_eval)
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
        stats = replace(stats, forget_tr=file_tr, tr_source=_file_source(exp.reference_eval))
    return stats


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
    batch_size: int = 16,
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
        result = evaluate_model(model, engine.tokenizer, engine.experiment, tier=tier, benchmark=benchmark,
                                subset=subset, progress=sub_progress(progress, 0.2, 1.0), reference_tr=ref.forget_tr,
                                reference_auc=ref.muse_auc, batch_size=batch_size, settings=settings,
                                fingerprint=engine.fingerprint)
    result = replace(result, alpha=float(alpha), beta=float(beta))
    if store is not None:
        store.put(result)
    return result


def lookup_settings(engine: Engine, *, tier: str = "fast", benchmark: str = "all",
                    subset: Optional[int] = None) -> EvalSettings:
    """The settings a stored :func:`evaluate` of ``engine`` has, found without evaluating or
    loading anything: compare their :attr:`~EvalSettings.lookup_key` with a stored row's
    (:meth:`ResultStore.latest`). The reference file's source is exact; a reference model's
    is left out of the lookup key (see :func:`settings_lookup_key`)."""
    exp = engine.experiment
    benches = _benchmarks(exp, benchmark)
    ref = ReferenceStats()
    if exp.reference_eval is not None and "tofu" in benches:
        ref = ReferenceStats(tr_source=_file_source(exp.reference_eval))
    return eval_settings(exp, engine.tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                         max_length=max_length_for(engine.model), reference=ref, model=engine.model_settings)
