"""The settings of an evaluation: everything that changes its numbers, and the hashes that key
stored results.

:func:`eval_settings` builds the :class:`EvalSettings` of a run: the data (paths and content
signatures, splits), subset, prompt format (``template``: :func:`msa_core.prompts.format_name` of
the experiment's ``prompt_format``), lengths, the metric conventions (:mod:`msa_core.conventions`),
where the reference values come from (:class:`ReferenceStats` sources) and the model's dtype,
device type and module filter. Its
hash :attr:`EvalSettings.key` keys stored results; results carry ``settings.as_dict()`` plus
the per-split ``counts`` and ``missing`` splits (which do not enter the key).
:func:`lookup_settings` gives the settings a stored evaluation of an engine has, without
evaluating anything (for :meth:`ResultStore.latest`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from msa_core.eval.data import data_signature
from msa_core.experiment import Experiment
from msa_core.prompts import format_name

if TYPE_CHECKING:
    from msa_core.engine import Engine

# torch-heavy modules (scoring, tofu, muse) are imported inside the functions that need
# them, so the store and `msa results` start without torch.

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
    tofu_auc: Optional[float] = None  # the reference's TOFU forget-vs-holdout Min-K% AUC (TOFU PrivLeak)
    tofu_auc_source: Optional[str] = None


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
    conventions: Optional[dict[str, str]] = None
    reference_tofu_auc: Optional[str] = None
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
        if self.tofu is not None:
            # TOFU PrivLeak's reference AUC: the reference model's, else open-unlearning's default 0.5.
            out["reference"]["tofu_auc"] = self.reference_tofu_auc
        if self.model is not None:
            out["model"] = dict(self.model)
        if self.conventions is not None:
            out["conventions"] = dict(self.conventions)
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
    names = ("tr", "auc", "tofu_auc") if "tofu_auc" in ref else ("tr", "auc")
    keyed["reference"] = {
        name: None if isinstance(ref.get(name), str) and str(ref.get(name)).startswith("model:") else ref.get(name)
        for name in names
    }
    return settings_key(keyed)


def chosen_benchmarks(experiment: Experiment, benchmark: str) -> list[str]:
    """The benchmarks ``benchmark`` ("tofu", "muse", "all") means for this experiment's data."""
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
    benches = chosen_benchmarks(experiment, benchmark)
    d = experiment.data
    from msa_core.eval.muse import KNOWMEM_MAX_NEW_TOKENS, MINK_K, VERBMEM_MAX_NEW_TOKENS
    from msa_core.eval.tofu import MINK_K as TOFU_MINK_K
    from msa_core.eval.tofu import ROUGE_MAX_NEW_TOKENS

    tofu = muse = None
    if "tofu" in benches:
        tofu = {"path": str(d.tofu), "signature": data_signature(d.tofu), "forget_split": d.forget_split,
                "retain_split": d.retain_split, "rouge_max_new_tokens": ROUGE_MAX_NEW_TOKENS,
                "holdout_split": d.holdout_split, "mink_k": TOFU_MINK_K,
                # forget quality's KS test reads every reference item, whatever the subset (open-unlearning)
                "forget_quality_reference": "all items"}
    if "muse" in benches:
        muse = {"path": str(d.muse), "signature": data_signature(d.muse), "mink_k": MINK_K,
                "verbmem_max_new_tokens": VERBMEM_MAX_NEW_TOKENS, "knowmem_max_new_tokens": KNOWMEM_MAX_NEW_TOKENS}
    ref = reference or ReferenceStats()
    return EvalSettings(
        benchmark=benchmark,
        benchmarks=tuple(benches),
        subset=None if subset is None else int(subset),
        template=format_name(tokenizer, experiment.prompt_format),
        vocab_size=len(tokenizer),
        max_length=max_length,
        tofu=tofu,
        muse=muse,
        reference_tr=ref.tr_source,
        reference_auc=ref.auc_source,
        model=None if model is None else dict(model),
        conventions=experiment.metric_conventions,
        reference_tofu_auc=_tofu_auc_source(d, ref) if tofu is not None else None,
    )


def _tofu_auc_source(data: Any, ref: ReferenceStats) -> Optional[str]:
    """Where TOFU PrivLeak's reference AUC comes from: the reference's, else open-unlearning's default
    0.5; None when the TOFU folder has no holdout split (no PrivLeak then)."""
    from msa_core.eval.data import find_split_file
    from msa_core.eval.tofu import OPEN_UNLEARNING_REF_AUC

    try:
        find_split_file(Path(data.tofu), data.holdout_split)
    except FileNotFoundError:
        return None
    return ref.tofu_auc_source or f"default:{OPEN_UNLEARNING_REF_AUC}"


def model_settings_of(model: Any) -> dict[str, Any]:
    """:attr:`Engine.model_settings` for a bare model: its parameters' dtype and device type, no filter."""
    first = next(model.parameters())
    return {"dtype": str(first.dtype).replace("torch.", ""), "device": first.device.type, "module_filter": None}


def side_model_settings(engine: Engine) -> dict[str, Any]:
    """The settings of the engine's side models: its dtype and device. α/β (so the module filter)
    and the vectors' storage dtype do not touch them (clean and reference are loaded as they are)."""
    settings = {**engine.model_settings, "module_filter": None}
    settings.pop("vector_dtype", None)
    return settings


def max_length_for(model: Any) -> int:
    """Longest sequence scored: the model's max positions, capped at 2048 (open-unlearning MUSE)."""
    from msa_core.eval.scoring import default_max_length

    n = default_max_length(model)
    return min(n, MAX_LENGTH_CAP) if n else MAX_LENGTH_CAP


def reference_file(exp: Experiment, benches: Sequence[str]) -> Optional[Path]:
    """The open-unlearning file whose forget truth ratios stand in for the reference model's:
    the experiment's ``reference_eval`` when it names one and the run covers TOFU, else None."""
    return exp.reference_eval if exp.reference_eval is not None and "tofu" in benches else None


def reference_file_source(path: Path) -> str:
    """The reference source of an open-unlearning file: its path and content signature."""
    return f"file:{path}:{data_signature(path)}"


def lookup_settings(engine: Engine, *, tier: str = "fast", benchmark: str = "all",
                    subset: Optional[int] = None) -> EvalSettings:
    """The settings a stored :func:`evaluate` of ``engine`` has, found without evaluating or
    loading anything: compare their :attr:`~EvalSettings.lookup_key` with a stored row's
    (:meth:`ResultStore.latest`). The reference file's source is exact; a reference model's
    is left out of the lookup key (see :func:`settings_lookup_key`)."""
    exp = engine.experiment
    benches = chosen_benchmarks(exp, benchmark)
    file = reference_file(exp, benches)
    ref = ReferenceStats() if file is None else ReferenceStats(tr_source=reference_file_source(file))
    if file is None and exp.checkpoints.reference is not None and "tofu" in benches:
        # the TOFU PrivLeak AUC will come from the reference model (its source leaves the lookup key)
        ref = replace(ref, tofu_auc_source="model:")
    return eval_settings(exp, engine.tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                         max_length=max_length_for(engine.model), reference=ref, model=engine.model_settings)
