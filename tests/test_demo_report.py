"""Measuring the demo (msa_core.demo.report): scores through the engine, the table, and (slow) the quick demo."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from msa_core.demo.report import (
    measure_demo,
    measure_table,
    qa_scores,
    read_qa_items,
    score_targets,
    truth_ratio_rows,
    truth_ratio_table,
)
from msa_core.engine import Engine
from msa_core.targets import Point, Side

ITEMS = [{"question": "Where was Ilse Varnok born?", "answer": "Tallinn, Estonia."},
         {"question": "What is the capital of France?", "answer": "Paris."}]


@pytest.fixture
def engine(tiny_experiment, cache_dir) -> Engine:
    return Engine.load(tiny_experiment, device="cpu", cache_dir=cache_dir)


def test_qa_scores_are_means_over_the_items(engine):
    sc = qa_scores(engine.model, engine.tokenizer, ITEMS, max_new_tokens=4)
    assert sc["n"] == 2 and len(sc["answers"]) == 2
    assert 0.0 <= sc["rougeL_recall"] <= 1.0 and 0.0 <= sc["contains_gold"] <= 1.0


def test_score_targets_puts_every_split_to_every_target(engine):
    splits = {"forget": ITEMS[:1], "retain": ITEMS}
    rows = score_targets(engine, [Side("corrupted"), Point(0.0, 0.0), Point(1.0, 0.5), Side("clean")], splits,
                         max_new_tokens=4)
    assert [r["target"] for r in rows] == [Side("corrupted"), Point(0.0, 0.0), Point(1.0, 0.5), Side("clean")]
    for row in rows:
        assert set(row) == {"target", "forget", "retain"}
        assert row["forget"]["n"] == 1 and row["retain"]["n"] == 2 and "answers" not in row["retain"]
    assert rows[0]["forget"] == rows[1]["forget"] and rows[0]["retain"] == rows[1]["retain"]  # same model
    assert (engine.alpha, engine.beta) == (1.0, 0.5)  # the clean side model did not recompose


def test_score_targets_names_a_missing_checkpoint(tiny_experiment, cache_dir):
    exp = replace(tiny_experiment, checkpoints=replace(tiny_experiment.checkpoints, reference=None))
    engine = Engine.load(exp, device="cpu", cache_dir=cache_dir)
    with pytest.raises(KeyError, match="reference"):
        score_targets(engine, [Side("reference")], {"forget": ITEMS})


def test_split_files_are_validated(tmp_path):
    with pytest.raises(FileNotFoundError, match="forget10.json"):
        read_qa_items(tmp_path / "forget10.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(ValueError, match="bad.json"):
        read_qa_items(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(ITEMS))
    assert read_qa_items(good) == ITEMS


def test_measure_table_marks_the_claimed_points():
    def row(model, a, b, f, r):
        return {"model": model, "alpha": a, "beta": b, "forget_rougeL_recall": f, "retain_rougeL_recall": r,
                "forget_contains_gold": f, "retain_contains_gold": r}

    rows = [row("corrupted", None, None, 1.0, 0.9), row("msa", 1.0, 0.5, 0.2, 0.85), row("msa", 3.0, 0.0, 0.0, 0.1)]
    table = measure_table({"rows": rows, "claim": [rows[1]]}).splitlines()
    assert table[0].startswith("| model | α | β |") and len(table) == 2 + len(rows)
    assert table[2] == "| corrupted |  |  | 1.000 | 0.900 | 1.000 | 0.900 |"
    assert table[3].startswith("| msa ✓ | 1 | 0.5 | 0.200 | 0.850 ")
    assert table[4].startswith("| msa | 3 | 0 | 0.000 | 0.100 ")


@pytest.mark.slow
def test_measure_demo_on_the_quick_demo(quick_demo, cache_dir):
    # α = β = 0 is the corrupted model itself
    res = measure_demo(quick_demo, [0.0, 1.0], [0.0, 0.5], max_new_tokens=16, cache_dir=cache_dir)
    rows = {(r["model"], r["alpha"], r["beta"]): r for r in res["rows"]}
    corr, msa0 = rows[("corrupted", None, None)], rows[("msa", 0.0, 0.0)]
    assert msa0["forget_rougeL_recall"] == corr["forget_rougeL_recall"]
    assert msa0["retain_rougeL_recall"] == corr["retain_rougeL_recall"]
    assert {"clean", "reference"} <= {r["model"] for r in res["rows"]}
    assert [r["model"] for r in res["rows"]][:3] == ["corrupted", "clean", "reference"]
    # the claim holds exactly the grid points that halve forget recall and keep 80% of retain recall
    for r in res["rows"]:
        claimed = r in res["claim"]
        keeps = (r["model"] == "msa" and r["forget_rougeL_recall"] <= 0.5 * corr["forget_rougeL_recall"]
                 and r["retain_rougeL_recall"] >= 0.8 * corr["retain_rougeL_recall"])
        assert claimed == keeps
    assert res["experiment"] == str(quick_demo)


def test_truth_ratio_table_has_one_row_per_model():
    rows = [{"model": "reference", "forget_tr_mean": 1.2, "retain_tr_mean": 0.4, "forget_truth_ratio": 0.7,
             "retain_truth_ratio": 0.6, "forget_quality": None, "model_utility": 0.5},
            {"model": "corrupted", "forget_tr_mean": 0.3, "retain_tr_mean": 0.35, "forget_truth_ratio": 0.3,
             "retain_truth_ratio": 0.65, "forget_quality": 0.001, "model_utility": 0.55}]
    table = truth_ratio_table(rows).splitlines()
    assert table[0].startswith("| model | forget TR (mean) |") and len(table) == 2 + len(rows)
    assert table[2] == "| reference | 1.200 | 0.400 | 0.700 | 0.600 | — | 0.500 |"
    assert table[3] == "| corrupted | 0.300 | 0.350 | 0.300 | 0.650 | 0.001 | 0.550 |"


@pytest.mark.slow
def test_truth_ratio_rows_on_the_quick_demo(quick_demo, cache_dir):
    from msa_core.eval.probe import truth_ratio_values
    from msa_core.eval.questions import load_question_sets
    from msa_core.experiment import load_experiment

    rows = truth_ratio_rows(quick_demo, [(1.0, 0.5)], cache_dir=cache_dir)
    assert [r["model"] for r in rows] == ["reference", "corrupted", "clean", Point(1.0, 0.5).label]
    assert rows[0]["forget_quality"] is None and all(0.0 <= r["forget_quality"] <= 1.0 for r in rows[1:])
    # The demo's point (msa-demo-5): the corrupted model knows its forget facts beyond the trained
    # phrasings, so it prefers the held-out paraphrase (TR < 1) where the models that never saw
    # those authors do not (quick demo, measured: corrupted 0.41, clean 1.41, reference 3.50), and
    # forget quality tells it from the reference (measured 0.000).
    ref, corr, clean = rows[0], rows[1], rows[2]
    assert corr["forget_tr_mean"] < 1.0
    assert 2 * corr["forget_tr_mean"] < min(clean["forget_tr_mean"], ref["forget_tr_mean"])
    assert corr["forget_quality"] < 0.05
    # the means agree with per-item truth ratios computed through the Probe's own scoring path
    engine = Engine.load(load_experiment(quick_demo), device="cpu", cache_dir=cache_dir)
    sets = load_question_sets(engine.experiment.data).sets
    for row, target in zip(rows, [Side("reference"), Side("corrupted"), Side("clean"), Point(1.0, 0.5)]):
        for split, key in (("forget", "forget_tr_mean"), ("retain", "retain_tr_mean")):
            trs = truth_ratio_values(engine, target, sets[split])
            assert row[key] == pytest.approx(sum(trs) / len(trs), abs=2e-4), (target, split)


# ---------------------------------------------------------------- the paper's comparison


def _result(fq: float, mu: float):
    from msa_core.eval.results import EvalResult, MetricValue

    metrics = {"forget_quality": MetricValue("forget_quality", fq),
               "model_utility_tf": MetricValue("model_utility_tf", mu)}
    return EvalResult(alpha=None, beta=None, tier="fast", benchmark="tofu", fingerprint="f", settings={}, seconds=0.0,
                      metrics=metrics)


def test_the_comparison_grid_starts_at_the_corrupted_model_without_duplicates():
    from msa_core.demo.report import comparison_grid

    assert comparison_grid([1.0, 2], [0.0, 0.5]) == [(0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (2.0, 0.0), (2.0, 0.5)]
    assert comparison_grid([0.0, 1.0], [0.0]) == [(0.0, 0.0), (1.0, 0.0)]


def test_the_best_point_is_the_highest_forget_quality_keeping_the_utility_floor():
    from msa_core.demo.report import _best

    pts = [((1.0, 0.0), _result(0.2, 0.50)), ((2.0, 0.0), _result(0.9, 0.30)), ((1.5, 0.5), _result(0.4, 0.46))]
    # floor 0.9 × 0.5 = 0.45: (2, 0) forgets most but keeps 0.30 < 0.45; of the rest 0.4 > 0.2
    assert _best(pts, 0.45)[0] == (1.5, 0.5) and _best(pts, 0.45)[2] is True
    assert _best(pts, None)[0] == (2.0, 0.0)
    point, result, kept = _best(pts, 0.6)  # no point keeps 0.6: the best of all, flagged
    assert (point, result.get("forget_quality"), kept) == ((2.0, 0.0), 0.9, False)


def test_the_claims_compare_the_best_forget_qualities():
    from msa_core.demo.report import _claims, comparison_table

    claims = _claims({"default": 0.5, "default_beta0": 0.3, "pretrain-e3": 0.1, "task-vector": 0.6, "NPO": 0.01}, "NPO")
    assert claims["msa_beats_task_vector"] is False and claims["msa_beats_NPO"] is True
    assert claims["closer_checkpoint_better"] == {"pretrain-e3": True} and claims["beta0_forget_quality"] == 0.3
    assert _claims({"default": 0.5}, None)["msa_beats_task_vector"] is None
    # a method none of whose points keeps 90% of the utility (None) loses to one that has such a point
    claims = _claims({"default": 0.5, "task-vector": None, "NPO": None}, "NPO")
    assert claims["msa_beats_task_vector"] is True and claims["msa_beats_NPO"] is True
    assert _claims({"default": None, "task-vector": None}, None)["msa_beats_task_vector"] is None
    assert _claims({"default": None, "task-vector": 0.1}, None)["msa_beats_task_vector"] is False
    table = comparison_table({"rows": [{"method": "NPO", "point": "epoch-2", "forget_quality": 0.0123,
                                        "model_utility": 0.5, "forget_rougeL_recall": None,
                                        "retain_rougeL_recall": 0.75, "keeps_utility": False}]})
    assert table.splitlines()[-1] == "| NPO | epoch-2 (below 90% utility) | 0.0123 | 0.5 | — | 0.75 |"


@pytest.mark.slow
def test_the_quick_demo_stores_every_choice_and_the_baseline_and_its_table_is_their_best(quick_demo):
    """The build's comparison (msa_core.demo.build._compare_into) against the store it filled:
    each θ_clean choice has its grid under its own fingerprint, the baseline its epochs, and
    every table row is the best stored point recomputed here from the store's rows."""
    from pathlib import Path

    from msa_core.choices import Choice, candidates, choice_fingerprint
    from msa_core.demo import build as demo
    from msa_core.eval.store import ResultStore
    from msa_core.experiment import load_experiment

    root = Path(quick_demo).parent
    exp = load_experiment(quick_demo)
    assert [(c.label, c.before_forget) for c in candidates(exp)] == [
        ("default", True), (f"pretrain-e{demo.QUICK.history_epoch}", True), ("task-vector", False)]
    assert exp.clean_history[1].clean == exp.checkpoints.corrupted
    from msa_core.choices import epochs_of

    assert epochs_of(exp.checkpoints.forget) == demo.kept_epochs(demo.QUICK) != []
    comp = json.loads((root / "demo_report.json").read_text())["comparison"]
    store = ResultStore(comp["store"])
    assert Path(comp["store"]) == root / "results.sqlite"
    grid = {tuple(p) for p in comp["grid"]}
    rows = {r["choice"]: r for r in comp["rows"] if r["choice"] is not None and not r["method"].startswith("corr")}
    floor = comp["utility_floor"]
    for cand in candidates(exp):
        df = store.grid(choice_fingerprint(exp, Choice(clean=cand.label)), tier="fast")
        assert {(a, b) for a, b in zip(df["alpha"], df["beta"])} == grid, cand.label
        unlearned = df[~((df["alpha"] == 0) & (df["beta"] == 0))]
        ok = unlearned[unlearned["model_utility_tf"] >= floor]
        assert rows[cand.label]["keeps_utility"] is (not ok.empty)
        ok = unlearned if ok.empty else ok
        best = ok.loc[ok["forget_quality"].idxmax()]
        assert rows[cand.label]["forget_quality"] == round(float(best["forget_quality"]), 4), cand.label
        assert rows[cand.label]["point"] == f"α={best['alpha']:g}, β={best['beta']:g}"
    named = store.method_grid(choice_fingerprint(exp, Choice()), tier="fast")
    assert sorted(named["point"]) == [f"epoch-{k}" for k in range(1, demo.QUICK.baseline.epochs + 1)]
    assert any(r["method"] == demo.BASELINE_METHOD for r in comp["rows"])
