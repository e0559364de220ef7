"""Pure metric formulas (numbers in, numbers out), matching open-unlearning's conventions.

Nothing here touches a model. Every function takes plain floats / sequences and returns
floats or lists, so each can be checked against hand-computed values:

- probabilities and truth ratios from mean per-token NLLs (TOFU),
- the two truth-ratio aggregators, KS forget quality, harmonic-mean model utility,
- extraction strength / exact memorization from per-token argmax correctness,
- Min-K% and Min-K%++ scores, ROC AUC (with ties), PrivLeak,
- ROUGE-L (recall for TOFU, F1 for MUSE) and MUSE's answer cut rules.

The small epsilons (1e-10) are open-unlearning's, kept so numbers agree to the last digit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import stats

EPS = 1e-10
MUSE_STOPS = ("\n\n", "\nQuestion", "Question:")


def prob_from_nll(nll: float) -> float:
    """p = exp(−mean NLL)."""
    return math.exp(-nll)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; ValueError on an empty sequence (an empty split is a data error)."""
    if len(values) == 0:
        raise ValueError("cannot average an empty list of values")
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def normalized_prob(p_correct: float, p_wrong: Sequence[float]) -> float:
    """p_c / (p_c + Σ_j p_wrong_j) (open-unlearning ``probability_w_options``)."""
    return float(p_correct / (p_correct + float(np.sum(p_wrong)) + EPS))


def truth_ratio(nll_true: float, nll_wrong: Sequence[float]) -> float:
    """TR = P_pert / P_true with P_pert = exp(−mean_j NLL_j) (geometric mean over wrong answers).

    ``nll_true`` is the paraphrased answer's mean NLL on TOFU forget/retain, the original
    answer's on real authors / world facts.
    """
    if len(nll_wrong) == 0:
        raise ValueError("truth ratio needs at least one perturbed answer")
    p_wrong = math.exp(-float(np.mean(np.asarray(nll_wrong, dtype=np.float64))))
    p_true = math.exp(-nll_true)
    return p_wrong / (p_true + EPS)


def tr_closer_to_1(trs: Sequence[float]) -> float:
    """Forget-set truth-ratio score: mean min(TR, 1/TR)."""
    a = np.asarray(trs, dtype=np.float64)
    if a.size == 0:
        raise ValueError("truth-ratio score of an empty list")
    return float(np.mean(np.minimum(a, 1.0 / (a + EPS))))


def tr_true_better(trs: Sequence[float]) -> float:
    """Retain / real authors / world facts truth-ratio score: mean max(0, 1 − TR)."""
    a = np.asarray(trs, dtype=np.float64)
    if a.size == 0:
        raise ValueError("truth-ratio score of an empty list")
    return float(np.mean(np.maximum(0.0, 1.0 - a)))


def forget_quality(model_tr: Sequence[float], reference_tr: Sequence[float]) -> float:
    """p-value of the two-sided two-sample KS test between per-item forget truth ratios."""
    if len(model_tr) == 0 or len(reference_tr) == 0:
        raise ValueError("forget quality needs non-empty truth-ratio lists for the model and the reference")
    return float(stats.ks_2samp(np.asarray(model_tr, float), np.asarray(reference_tr, float)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """``scipy.stats.hmean`` (0 if any value is 0); ValueError on negatives or an empty list."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("harmonic mean of an empty list")
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise ValueError(f"harmonic mean needs finite non-negative values, got {list(values)}")
    if np.any(a == 0):
        return 0.0
    return float(stats.hmean(a))


def exact_memorization(correct: Sequence[bool]) -> float:
    """EM: fraction of answer tokens whose teacher-forced argmax equals the label (0 if none)."""
    n = len(correct)
    return float(sum(bool(c) for c in correct)) / n if n else 0.0


def extraction_strength(correct: Sequence[bool], convention: str = "open-unlearning") -> float:
    """ES = 1 − k*/L, k* the smallest offset such that every prediction from k* on is correct.

    All correct → 1; empty → 0. When the last token is wrong there is no such offset:
    ``convention="open-unlearning"`` (default, its code's loop stops at k = L−1) gives 1/L,
    ``convention="paper"`` (k* = L, DESIGN section 5) gives 0. See :mod:`msa_core.conventions`.
    """
    if convention not in ("open-unlearning", "paper"):
        raise ValueError(f"extraction_strength convention must be 'open-unlearning' or 'paper', got {convention!r}")
    n = len(correct)
    if n == 0:
        return 0.0
    k = n
    while k > 0 and bool(correct[k - 1]):
        k -= 1
    if k == n and convention == "open-unlearning":
        k = n - 1
    return 1.0 - k / n


def min_k_tokens(token_logprobs: Sequence[float], convention: str = "open-unlearning") -> np.ndarray:
    """The token log-probs a Min-K% score reads: ``"open-unlearning"`` drops the last one (its
    ``tokenwise_logprobs``), ``"muse-paper"`` keeps every one (the MUSE paper's code)."""
    if convention not in ("open-unlearning", "muse-paper"):
        raise ValueError(f"min_k convention must be 'open-unlearning' or 'muse-paper', got {convention!r}")
    a = np.asarray(token_logprobs, dtype=np.float64)
    return a[:-1] if convention == "open-unlearning" else a


def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-K%: −mean of the lowest ⌊k·L⌋ (at least 1) token log-probs (higher = less likely)."""
    a = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    if a.size == 0:
        raise ValueError("Min-K% of an empty text (no scored tokens)")
    n = max(1, int(k * a.size))
    return float(-np.mean(a[:n]))


def min_k_pp_values(token_logprobs: Sequence[float], mu: Sequence[float], var: Sequence[float]) -> np.ndarray:
    """Per-token Min-K%++ values z_t = (log p_t(x_t) − μ_t) / σ_t, σ_t² clamped ≥ 1e-6."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    m = np.asarray(mu, dtype=np.float64)
    v = np.maximum(np.asarray(var, dtype=np.float64), 1e-6)
    return (lp - m) / np.sqrt(v)


def min_k_pp_score(token_logprobs: Sequence[float], mu: Sequence[float], var: Sequence[float], k: float = 0.4) -> float:
    """Min-K%++: −mean of the lowest ⌊k·L⌋ (at least 1) z_t values."""
    return min_k_score(min_k_pp_values(token_logprobs, mu, var), k)


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counting ½ (as sklearn)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"roc_auc: {y.size} labels but {s.size} scores")
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0 or pos.size + neg.size != y.size:
        raise ValueError("roc_auc needs labels in {0, 1} with both classes present")
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # average ranks handle ties
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def muse_mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """AUC of forget vs holdout in MUSE's orientation: y = 0 forget, 1 holdout, ``roc_auc(y, −score)``.

    With Min-K% scores (higher = less likely) a model that memorised the forget texts
    gets ≈0, one that never saw them ≈0.5. Equals 1 − open-unlearning's ``mia_min_k`` AUC.
    """
    y = [0] * len(forget_scores) + [1] * len(holdout_scores)
    s = [-float(x) for x in forget_scores] + [-float(x) for x in holdout_scores]
    return roc_auc(y, s)


def privleak(auc: float, auc_reference: float) -> float:
    """PrivLeak = (AUC − AUC_ref) / AUC_ref × 100 (MUSE orientation; ≈0 ideal, negative = under-unlearned)."""
    return (float(auc) - float(auc_reference)) / (float(auc_reference) + EPS) * 100.0


@lru_cache(maxsize=4)
def _scorer(kind: str):  # noqa: ANN202 - rouge_score has no types
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def rouge_l_recall(reference: str, prediction: str) -> float:
    """ROUGE-L recall (``rouge_score``, stemmer on) of ``prediction`` against ``reference``."""
    return float(_scorer("rougeL").score(reference, prediction)["rougeL"].recall)


def rouge_fields(reference: str, prediction: str) -> dict[str, float]:
    """open-unlearning's ROUGE entry numbers: rouge1_recall, rougeL_f1, rougeL_recall (stemmer on)."""
    scores = _scorer2().score(reference, prediction)
    return {"rouge1_recall": float(scores["rouge1"].recall), "rougeL_f1": float(scores["rougeL"].fmeasure),
            "rougeL_recall": float(scores["rougeL"].recall)}


@lru_cache(maxsize=1)
def _scorer2():  # noqa: ANN202 - rouge_score has no types
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_l_f1(reference: str, prediction: str) -> float:
    """ROUGE-L F1 (``rouge_score``, stemmer on)."""
    return float(_scorer("rougeL").score(reference, prediction)["rougeL"].fmeasure)


def muse_cut(text: str, stops: Sequence[str] = MUSE_STOPS) -> str:
    """MUSE's answer cut: keep the text before the first of "\\n\\n", "\\nQuestion", "Question:"; strip."""
    for stop in stops:
        text = text.split(stop)[0]
    return text.strip()


def few_shot_prompt(icl: Sequence[tuple[str, str]], question: str) -> str:
    """MUSE KnowMem prompt: ``Question: …\\nAnswer: …\\n\\n`` per example, then the question."""
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
    return f"{shots}Question: {question}\nAnswer:"

