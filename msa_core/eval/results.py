"""Evaluation results and what each metric means.

:class:`EvalResult` is what every evaluation returns: one :class:`MetricValue` per
metric (aggregate + per-item values), the point (α, β), tier, benchmark, experiment
fingerprint and the settings that produced it. :data:`METRIC_INFO` states, for each
metric name, a label, which direction is better and the ideal value, so the app and the
CLI can print them next to every number.

Directions: ``higher`` / ``lower`` (better), ``closer_to_1`` / ``closer_to_0``, and
``closer_to_ideal`` (better the closer to ``ideal``, e.g. an AUC whose ideal is 0.5).
An ``ideal`` of None means "the reference (retain-only) model's value": there is no
absolute target, only the model that never saw the forget data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

DIRECTIONS = ("higher", "lower", "closer_to_1", "closer_to_0", "closer_to_ideal")


@dataclass(frozen=True)
class MetricInfo:
    """How to read one metric."""

    label: str
    direction: str
    ideal: Optional[float]
    description: str
    tier: str  # "fast" (teacher-forced) or "full" (needs generation)
    benchmark: str  # "tofu" or "muse"

    def direction_text(self) -> str:
        """A short human phrase, e.g. "higher is better (ideal 1)"."""
        ideal = "reference model's value" if self.ideal is None else f"{self.ideal:g}"
        if self.direction == "higher":
            return f"higher is better (ideal {ideal})"
        if self.direction == "lower":
            return f"lower is better (ideal {ideal})"
        if self.direction == "closer_to_1":
            return "closer to 1 is better"
        if self.direction == "closer_to_0":
            return "closer to 0 is better"
        return f"closer to {ideal} is better"

    def badness(self, value: float) -> float:
        """A number that is smaller for better values (for ranking points)."""
        if self.direction == "higher":
            return -value
        if self.direction == "lower":
            return value
        fallback = self.ideal if self.ideal is not None else 0.0
        target = {"closer_to_1": 1.0, "closer_to_0": 0.0}.get(self.direction, fallback)
        return abs(value - target)


def _m(label: str, direction: str, ideal: Optional[float], desc: str, tier: str, bench: str = "tofu") -> MetricInfo:
    return MetricInfo(label, direction, ideal, desc, tier, bench)


_REF = " The retain-only reference model shows what 'never learned' looks like."
METRIC_INFO: dict[str, MetricInfo] = {
    "forget_quality": _m("Forget quality", "higher", 1.0,
        "KS-test p-value between this model's and the reference model's per-item forget-set truth ratios "
        "(1 = indistinguishable from a model that never saw the forget set).", "fast"),
    "model_utility": _m("Model utility", "higher", 1.0,
        "Harmonic mean of probability, ROUGE-L recall and truth-ratio score on retain, real authors and "
        "world facts (9 numbers).", "full"),
    "model_utility_tf": _m("Model utility (teacher-forced)", "higher", 1.0,
        "Harmonic mean of the 6 teacher-forced parts of model utility (probability and truth-ratio score "
        "on retain, real authors, world facts); the fast-tier stand-in for model utility.", "fast"),
    "forget_truth_ratio": _m("Forget truth ratio", "higher", None,
        "Mean of min(TR, 1/TR) with TR = P(perturbed)/P(paraphrased) on the forget set; higher = the model "
        "no longer prefers the true answer." + _REF, "fast"),
    "forget_prob": _m("Forget probability", "lower", None,
        "Mean p(answer | question) on the forget set (EOS counted)." + _REF, "fast"),
    "forget_para_prob": _m("Forget paraphrase probability", "lower", None,
        "Mean p(paraphrased answer | question) on the forget set." + _REF, "fast"),
    "forget_pert_prob": _m("Forget perturbed probability", "closer_to_ideal", None,
        "Mean p(perturbed answer | question) over the forget set's wrong answers." + _REF, "fast"),
    "forget_rouge": _m("Forget ROUGE-L", "lower", None,
        "ROUGE-L recall of greedy answers (200 new tokens) against the forget-set answers." + _REF, "full"),
    "retain_prob": _m("Retain probability", "higher", 1.0, "Mean p(answer | question) on the retain set.", "fast"),
    "retain_rouge": _m("Retain ROUGE-L", "higher", 1.0, "ROUGE-L recall of greedy answers on the retain set.", "full"),
    "retain_truth_ratio": _m("Retain truth ratio", "higher", 1.0,
        "Mean max(0, 1 − TR) on the retain set (higher = true answer preferred).", "fast"),
    "ra_prob": _m("Real authors probability", "higher", 1.0,
        "Mean normalised p_true / (p_true + Σ p_wrong) on real-authors questions.", "fast"),
    "ra_rouge": _m("Real authors ROUGE-L", "higher", 1.0, "ROUGE-L recall of greedy answers on real authors.", "full"),
    "ra_truth_ratio": _m("Real authors truth ratio", "higher", 1.0, "Mean max(0, 1 − TR) on real authors.", "fast"),
    "wf_prob": _m("World facts probability", "higher", 1.0,
        "Mean normalised p_true / (p_true + Σ p_wrong) on world-facts questions.", "fast"),
    "wf_rouge": _m("World facts ROUGE-L", "higher", 1.0, "ROUGE-L recall of greedy answers on world facts.", "full"),
    "wf_truth_ratio": _m("World facts truth ratio", "higher", 1.0, "Mean max(0, 1 − TR) on world facts.", "fast"),
    "extraction_strength": _m("Extraction strength", "lower", None,
        "Forget set: 1 − k*/L, k* the earliest answer position after which every teacher-forced argmax "
        "prediction is right. When the last answer token is wrong: 1/L by default (open-unlearning's code), "
        "0 with the 'paper' convention (conventions.extraction_strength in the experiment file)." + _REF, "fast"),
    "exact_memorization": _m("Exact memorization", "lower", None,
        "Forget set: fraction of answer tokens the model predicts exactly (teacher-forced argmax)." + _REF, "fast"),
    "muse_verbmem_forget": _m("MUSE VerbMem (forget)", "lower", None,
        "ROUGE-L F1 of 128-token greedy continuations of forget passages." + _REF, "full", "muse"),
    "muse_knowmem_forget": _m("MUSE KnowMem (forget)", "lower", None,
        "ROUGE-L F1 of few-shot answers (32 tokens) to forget-set questions. Long few-shot prompts keep their "
        "first 512 tokens by default (open-unlearning), or the last tokens that fit the model's positions with "
        "conventions.knowmem_prompt: fit-context." + _REF, "full", "muse"),
    "muse_knowmem_retain": _m("MUSE KnowMem (retain)", "higher", 1.0,
        "ROUGE-L F1 of few-shot answers to retain-set questions (utility preservation).", "full", "muse"),
    "muse_mink_auc": _m("MUSE Min-K% AUC", "closer_to_ideal", 0.5,
        "ROC AUC of forget vs holdout texts by the Min-40% score in MUSE's orientation "
        "(≈0 = forget texts memorised, 0.5 = indistinguishable). The score leaves out each text's last token "
        "by default (open-unlearning's code); conventions.min_k: muse-paper scores every token (the MUSE "
        "paper's code). open-unlearning's files write 1 − this value.", "fast", "muse"),
    "muse_minkpp_auc": _m("MUSE Min-K%++ AUC", "closer_to_ideal", 0.5,
        "As Min-K% AUC with the Min-K%++ (vocabulary-normalised) score.", "fast", "muse"),
    "muse_privleak": _m("MUSE PrivLeak", "closer_to_0", 0.0,
        "(AUC − AUC_reference) / AUC_reference × 100; strongly negative = under-unlearned, "
        "strongly positive = over-unlearned.", "fast", "muse"),
    "tofu_mink_auc": _m("TOFU Min-K% AUC", "closer_to_ideal", 0.5,
        "ROC AUC of forget vs holdout answers (TOFU holdout split) by the Min-40% score over answer tokens, in "
        "MUSE's orientation (≈0 = forget answers memorised, 0.5 = indistinguishable). The EOS token is left out "
        "by default (open-unlearning's code; conventions.min_k). open-unlearning's mia_min_k is 1 − this value.",
        "fast"),
    "tofu_privleak": _m("TOFU PrivLeak", "closer_to_0", 0.0,
        "(AUC − AUC_reference) / AUC_reference × 100 on TOFU forget vs holdout; the reference AUC is the "
        "reference model's, else 0.5 (open-unlearning's default). Strongly negative = under-unlearned.", "fast"),
}

# The flat names the app and the JSON export promise (in display order).
METRIC_ORDER = list(METRIC_INFO)


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` for ``name``; KeyError naming it when unknown."""
    try:
        return METRIC_INFO[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRIC_ORDER)}") from None


@dataclass(frozen=True)
class MetricValue:
    """One metric: its aggregate and (when it has them) per-item values, in data order."""

    name: str
    value: float
    per_item: Optional[list[float]] = None


def _clean(x: Any) -> Any:
    """NaN/inf become None so the JSON is standard."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass(frozen=True)
class EvalResult:
    """Everything one evaluation produced; see the module docstring."""

    alpha: Optional[float]
    beta: Optional[float]
    tier: str
    benchmark: str
    fingerprint: str
    settings: dict[str, Any]
    seconds: float
    metrics: dict[str, MetricValue]
    generations: dict[str, list[str]] = field(default_factory=dict)
    model: str = "composed"  # "composed", or the side-model role ("reference", "clean", ...)
    # Per-item structures richer than one number per item, in open-unlearning's entry shapes
    # (open-unlearning metric name → one entry per item, e.g. the perturbed answers' lists);
    # see :mod:`msa_core.eval.openunlearning`.
    details: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """metric name → aggregate value."""
        return {k: v.value for k, v in self.metrics.items()}

    def get(self, name: str, default: Optional[float] = None) -> Optional[float]:
        """The aggregate of ``name``, or ``default`` when it was not computed."""
        mv = self.metrics.get(name)
        return default if mv is None else mv.value

    @property
    def settings_key(self) -> str:
        """The hash of the settings (:attr:`msa_core.eval.settings.EvalSettings.key`)."""
        return str(self.settings.get("key", ""))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: flat ``metrics`` and ``per_item`` objects plus the point and settings."""
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "tier": self.tier,
            "benchmark": self.benchmark,
            "fingerprint": self.fingerprint,
            "model": self.model,
            "seconds": self.seconds,
            "settings": self.settings,
            "metrics": {k: _clean(float(v.value)) for k, v in self.metrics.items()},
            "per_item": {
                k: [_clean(float(x)) for x in v.per_item] for k, v in self.metrics.items() if v.per_item is not None
            },
            "generations": self.generations,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str = "result") -> EvalResult:
        """Inverse of :meth:`to_json`; KeyError naming the missing field."""
        for key in ("tier", "benchmark", "fingerprint", "metrics"):
            if key not in data:
                raise KeyError(f"{where}: missing field {key!r}")
        per_item = data.get("per_item") or {}
        metrics = {}
        for name, value in data["metrics"].items():
            pi = per_item.get(name)
            metrics[name] = MetricValue(
                name,
                float("nan") if value is None else float(value),
                None if pi is None else [float("nan") if x is None else float(x) for x in pi],
            )
        return cls(
            alpha=None if data.get("alpha") is None else float(data["alpha"]),
            beta=None if data.get("beta") is None else float(data["beta"]),
            tier=str(data["tier"]),
            benchmark=str(data["benchmark"]),
            fingerprint=str(data["fingerprint"]),
            settings=dict(data.get("settings") or {}),
            seconds=float(data.get("seconds") or 0.0),
            metrics=metrics,
            generations={k: list(v) for k, v in (data.get("generations") or {}).items()},
            model=str(data.get("model") or "composed"),
            details=dict(data.get("details") or {}),
        )
