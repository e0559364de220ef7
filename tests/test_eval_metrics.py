"""Every metric formula against hand-computed numbers (msa_core.eval.metrics, results)."""

from __future__ import annotations

import math

import pytest

from msa_core.eval import metrics as M
from msa_core.eval.results import METRIC_INFO, EvalResult, MetricValue


def test_probability_and_normalised_probability():
    assert M.prob_from_nll(0.0) == 1.0
    assert M.prob_from_nll(math.log(4)) == pytest.approx(0.25)
    # p_c / (p_c + Σ p_wrong) = 0.5 / (0.5 + 0.25 + 0.25)
    assert M.normalized_prob(0.5, [0.25, 0.25]) == pytest.approx(0.5)
    assert M.normalized_prob(0.2, [0.3, 0.1, 0.4]) == pytest.approx(0.2)


def test_truth_ratio_is_geometric_mean_of_perturbed_over_true():
    # P_pert = exp(-(2+4)/2) = e^-3, P_true = e^-1  →  TR = e^-2
    assert M.truth_ratio(1.0, [2.0, 4.0]) == pytest.approx(math.exp(-2.0), rel=1e-9)
    # perturbed as likely as the truth → 1
    assert M.truth_ratio(0.7, [0.7, 0.7, 0.7]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.truth_ratio(1.0, [])


def test_truth_ratio_aggregators():
    # forget: mean min(TR, 1/TR) = mean(0.5, 0.5, 1.0)
    assert M.tr_closer_to_1([0.5, 2.0, 1.0]) == pytest.approx(2 / 3, abs=1e-9)
    # retain / RA / WF: mean max(0, 1 − TR) = mean(0.5, 0, 0.75)
    assert M.tr_true_better([0.5, 2.0, 0.25]) == pytest.approx(1.25 / 3)
    with pytest.raises(ValueError):
        M.tr_closer_to_1([])


def test_forget_quality_ks_pvalue():
    assert M.forget_quality([0.3, 0.7, 1.2], [0.3, 0.7, 1.2]) == pytest.approx(1.0)
    # disjoint samples of 3 and 3: D = 1, exact two-sided p = 2 / C(6,3) = 0.1
    assert M.forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        M.forget_quality([], [1.0])


def test_harmonic_mean_model_utility():
    assert M.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    nine = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert M.harmonic_mean(nine) == pytest.approx(9 / sum(1 / x for x in nine))
    assert M.harmonic_mean([0.5, 0.0, 0.9]) == 0.0
    with pytest.raises(ValueError):
        M.harmonic_mean([0.5, -0.1])


def test_exact_memorization_and_extraction_strength_edges():
    t, f = True, False
    assert M.exact_memorization([t, f, t, t]) == 0.75
    assert M.exact_memorization([]) == 0.0
    assert M.extraction_strength([t, t, t, t]) == 1.0  # k* = 0
    assert M.extraction_strength([t, f, t, t]) == 0.5  # k* = 2 → 1 − 2/4
    assert M.extraction_strength([f, t, t, t]) == 0.75  # k* = 1
    # last wrong: open-unlearning's loop stops at k = L−1 (1/L, the default); the paper's k* = L gives 0
    assert M.extraction_strength([t, t, t, f]) == 0.25
    assert M.extraction_strength([t, t, t, f], "paper") == 0.0
    assert M.extraction_strength([f]) == 1.0 and M.extraction_strength([f], "paper") == 0.0
    with pytest.raises(ValueError, match="convention"):
        M.extraction_strength([t], "other")
    assert M.extraction_strength([t]) == 1.0
    assert M.extraction_strength([]) == 0.0


def test_min_k_percent():
    # L = 5, k = 0.4 → the 2 lowest log-probs −5, −4 → 4.5
    assert M.min_k_score([-1, -2, -3, -4, -5], 0.4) == pytest.approx(4.5)
    # L = 2 → ⌊0.8⌋ = 0 → at least one token
    assert M.min_k_score([-0.5, -3.0], 0.4) == pytest.approx(3.0)
    assert M.min_k_score([-2.0], 0.4) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        M.min_k_score([], 0.4)


def test_min_k_plus_plus():
    lp, mu, var = [-1.0, -2.0, -3.0], [-1.0, -1.0, -2.0], [1.0, 4.0, 0.25]
    z = M.min_k_pp_values(lp, mu, var)  # (lp − μ)/σ = 0, −0.5, −2
    assert list(z) == pytest.approx([0.0, -0.5, -2.0])
    assert M.min_k_pp_score(lp, mu, var, 0.4) == pytest.approx(2.0)  # ⌊1.2⌋ = 1 lowest
    # σ² clamps at 1e-6: (−1 − 0)/1e-3
    assert M.min_k_pp_values([-1.0], [0.0], [0.0])[0] == pytest.approx(-1000.0)
    assert M.min_k_pp_values([-1.0], [0.0], [-5.0])[0] == pytest.approx(-1000.0)


def test_roc_auc_and_muse_orientation():
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)  # sklearn's doc example
    assert M.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # ties count ½
    assert M.roc_auc([1, 1, 0], [3, 2, 1]) == 1.0
    with pytest.raises(ValueError):
        M.roc_auc([1, 1], [0.1, 0.2])
    # Min-K scores: forget texts far likelier (lower score) than holdout → memorised → AUC 0
    assert M.muse_mia_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert M.muse_mia_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert M.muse_mia_auc([1.0, 3.0], [1.0, 3.0]) == 0.5


def test_privleak_sign():
    assert M.privleak(0.25, 0.5) == pytest.approx(-50.0)  # under-unlearned: negative
    assert M.privleak(0.5, 0.5) == pytest.approx(0.0)
    assert M.privleak(0.75, 0.5) == pytest.approx(50.0)  # over-unlearned: positive


def test_rouge_helpers():
    # LCS("the cat sat on the mat", "the cat sat") = 3 → recall 3/6, precision 1, F1 2/3
    assert M.rouge_l_recall("the cat sat on the mat", "the cat sat") == pytest.approx(0.5)
    assert M.rouge_l_f1("the cat sat on the mat", "the cat sat") == pytest.approx(2 / 3)
    assert M.rouge_l_recall("she was running", "she was runs") == pytest.approx(1.0)  # stemmer on
    assert M.rouge_l_recall("Paris", "") == 0.0


def test_muse_cut_rules_and_few_shot_prompt():
    assert M.muse_cut(" Paris\n\nQuestion: next?") == "Paris"
    assert M.muse_cut("Paris\nQuestion: next?") == "Paris"
    assert M.muse_cut("1472 Question: again") == "1472"
    assert M.muse_cut("  10 women and 10 men \n") == "10 women and 10 men"
    assert M.muse_cut("a\nb") == "a\nb"
    p = M.few_shot_prompt([("Q1?", "A1"), ("Q2?", "A2")], "Q3?")
    assert p == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer:"


def test_metric_info_covers_every_promised_key():
    promised = [
        "forget_quality",
        "model_utility",
        "forget_truth_ratio",
        "forget_prob",
        "forget_rouge",
        "retain_prob",
        "retain_rouge",
        "retain_truth_ratio",
        "ra_prob",
        "ra_rouge",
        "ra_truth_ratio",
        "wf_prob",
        "wf_rouge",
        "wf_truth_ratio",
        "extraction_strength",
        "exact_memorization",
        "muse_verbmem_forget",
        "muse_knowmem_forget",
        "muse_knowmem_retain",
        "muse_privleak",
        "muse_mink_auc",
    ]
    for name in promised:
        info = METRIC_INFO[name]
        assert info.direction in ("higher", "lower", "closer_to_1", "closer_to_0", "closer_to_ideal")
        assert info.label and info.description and info.tier in ("fast", "full")
    assert METRIC_INFO["forget_quality"].ideal == 1.0 and METRIC_INFO["forget_quality"].direction == "higher"
    assert METRIC_INFO["muse_privleak"].direction == "closer_to_0"
    assert METRIC_INFO["muse_mink_auc"].badness(0.5) < METRIC_INFO["muse_mink_auc"].badness(0.1)
    assert METRIC_INFO["forget_prob"].badness(0.1) < METRIC_INFO["forget_prob"].badness(0.9)


def test_eval_result_json_round_trip():
    r = EvalResult(
        1.0,
        0.5,
        "fast",
        "tofu",
        "fp",
        {"key": "k"},
        1.5,
        {
            "forget_prob": MetricValue("forget_prob", 0.25, [0.5, 0.0]),
            "forget_quality": MetricValue("forget_quality", float("nan")),
        },
        {"forget": ["a", "b"]},
    )
    j = r.to_json()
    assert j["metrics"] == {"forget_prob": 0.25, "forget_quality": None}  # NaN → null
    assert j["per_item"] == {"forget_prob": [0.5, 0.0]}
    back = EvalResult.from_json(j)
    assert back.flat()["forget_prob"] == 0.25 and back.alpha == 1.0 and back.generations == {"forget": ["a", "b"]}
    assert math.isnan(back.flat()["forget_quality"])
    with pytest.raises(KeyError, match="tier"):
        EvalResult.from_json({"metrics": {}}, where="x.json")
