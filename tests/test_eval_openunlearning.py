"""open-unlearning TOFU_EVAL.json / TOFU_SUMMARY.json export and import."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_experiment,
    make_model,
    make_tokenizer,
    write_tofu,
)

from msa_core.eval.openunlearning import export_open_unlearning, import_tofu_eval, read_reference_tr, to_open_unlearning
from msa_core.eval.results import EvalResult, MetricValue


def _result() -> EvalResult:
    mv = lambda n, v, p=None: MetricValue(n, v, p)  # noqa: E731
    metrics = {
        "forget_quality": mv("forget_quality", 0.42),
        "forget_prob": mv("forget_prob", 0.375, [0.5, 0.25]),
        "forget_truth_ratio": mv("forget_truth_ratio", 0.75, [0.5, 1.0]),
        "forget_rouge": mv("forget_rouge", 0.5, [1.0, 0.0]),
        "ra_prob": mv("ra_prob", 0.6, [0.6]),
        "model_utility": mv("model_utility", 0.3),
        "extraction_strength": mv("extraction_strength", 0.5, [1.0, 0.0]),
        "muse_mink_auc": mv("muse_mink_auc", 0.25, [1.0, 2.0, 3.0]),
        "muse_privleak": mv("muse_privleak", -50.0),
        "muse_knowmem_forget": mv("muse_knowmem_forget", 0.5, [0.5]),
    }
    settings = {"key": "k", "counts": {"privleak_forget": 1, "privleak_holdout": 2}}
    return EvalResult(
        1.0, 0.5, "full", "all", "fp", settings, 2.0, metrics, {"forget": ["gen a", "gen b"], "knowmem_forget": ["x"]}
    )


def test_shapes_and_names():
    files = to_open_unlearning(_result())
    assert set(files) == {"TOFU_EVAL.json", "TOFU_SUMMARY.json", "MUSE_EVAL.json", "MUSE_SUMMARY.json"}
    ev = files["TOFU_EVAL.json"]
    assert ev["forget_quality"] == {"agg_value": 0.42}
    assert ev["forget_Q_A_Prob"]["value_by_index"]["1"] == {"prob": 0.25, "avg_loss": pytest.approx(math.log(4))}
    assert ev["forget_truth_ratio"]["value_by_index"] == {"0": {"score": 0.5}, "1": {"score": 1.0}}
    assert ev["forget_Q_A_ROUGE"]["value_by_index"]["0"] == {"rougeL_recall": 1.0, "generation": "gen a"}
    assert ev["ra_Q_A_Prob_normalised"]["agg_value"] == 0.6
    assert ev["ra_Q_A_Prob_normalised"]["value_by_index"] == {"0": {"prob": 0.6}}  # no avg_loss, as open-unlearning
    # the summary holds the suite's top-level metrics only (pre-compute ones stay in TOFU_EVAL.json)
    assert files["TOFU_SUMMARY.json"] == {
        "forget_quality": 0.42,
        "forget_Q_A_Prob": 0.375,
        "forget_Q_A_ROUGE": 0.5,
        "forget_truth_ratio": 0.75,
        "model_utility": 0.3,
        "extraction_strength": 0.5,
    }
    mu = files["MUSE_EVAL.json"]
    assert mu["mia_min_k"]["agg_value"] == 0.75  # open-unlearning orientation: 1 − MUSE's
    assert mu["mia_min_k"]["forget"]["value_by_index"] == {"0": {"score": 1.0}}
    assert mu["mia_min_k"]["holdout"]["value_by_index"] == {"0": {"score": 2.0}, "1": {"score": 3.0}}
    assert files["MUSE_SUMMARY.json"]["privleak"] == -50.0
    assert mu["forget_knowmem_ROUGE"]["value_by_index"]["0"] == {"rougeL_f1": 0.5, "generation": "x"}


def test_export_refuses_non_empty_folder_and_round_trips(tmp_path):
    out = tmp_path / "ou"
    written = export_open_unlearning(_result(), out)
    assert sorted(p.name for p in written) == [
        "MUSE_EVAL.json",
        "MUSE_SUMMARY.json",
        "TOFU_EVAL.json",
        "TOFU_SUMMARY.json",
    ]
    with pytest.raises(FileExistsError, match="not empty"):
        export_open_unlearning(_result(), out)
    export_open_unlearning(_result(), out, overwrite=True)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    back = import_tofu_eval(out / "TOFU_EVAL.json")
    orig = _result()
    for name in ("forget_quality", "forget_prob", "forget_truth_ratio", "forget_rouge", "ra_prob", "model_utility"):
        assert back.metrics[name].value == pytest.approx(orig.metrics[name].value)
        assert back.metrics[name].per_item == orig.metrics[name].per_item
    assert read_reference_tr(out / "TOFU_EVAL.json") == {0: 0.5, 1: 1.0}
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError):
        export_open_unlearning(_result(), tmp_path / "afile")


def test_read_reference_tr_formats_and_errors(tmp_path):
    tofu = tmp_path / "eval_log_forget.json"
    tofu.write_text(json.dumps({"truth_ratio": {"0": 1.4, "1": 0.7}, "avg_gt_loss": {"0": 1.0}}))
    assert read_reference_tr(tofu) == {0: 1.4, 1: 0.7}
    agg = tmp_path / "eval_log_aggregated.json"
    agg.write_text(json.dumps({"eval_log_forget.json": {"truth_ratio": {"3": 2.0}}}))
    assert read_reference_tr(agg) == {3: 2.0}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": {"0": {"score": "x"}}}}))
    with pytest.raises(ValueError, match=r"bad.json: forget_truth_ratio.value_by_index\['0'\]"):
        read_reference_tr(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model_utility": {"agg_value": 1}}))
    with pytest.raises(KeyError, match="other.json"):
        read_reference_tr(other)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_reference_tr(tmp_path / "missing.json")
    assert import_tofu_eval(other).flat() == {"model_utility": 1.0}
    other.write_text(json.dumps({"foo": {"agg_value": 1}}))
    with pytest.raises(KeyError, match="none of the open-unlearning"):
        import_tofu_eval(other)


def test_full_disk_on_export_names_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    import msa_core.atomic as atomic

    real_fsync = atomic.os.fsync
    calls = []

    def fsync(fd):
        calls.append(1)
        if len(calls) == 2:  # the second file hits a full disk once its bytes are written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(OSError, match="TOFU_SUMMARY.json failed: No space left on device"):
        export_open_unlearning(_result(), tmp_path / "ou")
    names = sorted(p.name for p in (tmp_path / "ou").iterdir())
    assert names == ["TOFU_EVAL.json"]  # complete file kept; no partial or temp file
    assert json.loads((tmp_path / "ou" / "TOFU_EVAL.json").read_text())["forget_quality"] == {"agg_value": 0.42}


# ---------------------------------------------------------------- a real evaluation, exported


@pytest.fixture(scope="module")
def full_result(tmp_path_factory):
    """A full-tier TOFU evaluation of a tiny random model (short generations), with a reference file."""
    import msa_core.eval.tofu as tofu_mod
    from msa_core.eval.run import evaluate_model

    root = tmp_path_factory.mktemp("ou")
    exp = make_experiment(root, tofu=write_tofu(root / "tofu", n_forget=5))
    tok = make_tokenizer()
    old = tofu_mod.ROUGE_MAX_NEW_TOKENS
    tofu_mod.ROUGE_MAX_NEW_TOKENS = 5  # keep generation short; ROUGE fields are what is checked
    try:
        res = evaluate_model(make_model(len(tok), seed=2), tok, exp, tier="full", benchmark="tofu",
                             reference_tr={i: 0.3 + 0.2 * i for i in range(5)})
    finally:
        tofu_mod.ROUGE_MAX_NEW_TOKENS = old
    return exp, res


# open-unlearning's default TOFU suite as written to TOFU_EVAL.json: entry keys of value_by_index
# (None = no value_by_index; "mia" = the MIA block)
DEFAULT_SUITE = {
    "forget_Q_A_PARA_Prob": {"prob", "avg_loss"},
    "forget_Q_A_PERT_Prob": {"prob", "avg_loss"},
    "forget_truth_ratio": {"score"},
    "forget_quality": None,
    "forget_Q_A_Prob": {"prob", "avg_loss"},
    "forget_Q_A_ROUGE": {"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth", "generation"},
    "retain_Q_A_Prob": {"prob", "avg_loss"},
    "retain_Q_A_ROUGE": {"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth", "generation"},
    "retain_Q_A_PARA_Prob": {"prob", "avg_loss"},
    "retain_Q_A_PERT_Prob": {"prob", "avg_loss"},
    "retain_Truth_Ratio": {"score"},
    "ra_Q_A_Prob": {"prob", "avg_loss"},
    "ra_Q_A_PERT_Prob": {"prob", "avg_loss"},
    "ra_Q_A_Prob_normalised": {"prob"},
    "ra_Q_A_ROUGE": {"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth", "generation"},
    "ra_Truth_Ratio": {"score"},
    "wf_Q_A_Prob": {"prob", "avg_loss"},
    "wf_Q_A_PERT_Prob": {"prob", "avg_loss"},
    "wf_Q_A_Prob_normalised": {"prob"},
    "wf_Q_A_ROUGE": {"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth", "generation"},
    "wf_Truth_Ratio": {"score"},
    "model_utility": None,
    "mia_min_k": "mia",
    "privleak": None,
    "extraction_strength": {"score"},
}


def test_export_has_every_key_of_the_default_suite_in_its_shape(full_result, tmp_path):
    exp, res = full_result
    export_open_unlearning(res, tmp_path / "ou")
    ev = json.loads((tmp_path / "ou" / "TOFU_EVAL.json").read_text())
    counts = res.settings["counts"]
    n_of = {"forget": counts["forget"], "retain": counts["retain"], "ra": counts["ra"], "wf": counts["wf"],
            "extraction": counts["forget"]}
    for key, entry_keys in DEFAULT_SUITE.items():
        assert key in ev, key
        block = ev[key]
        assert "agg_value" in block, key
        if entry_keys is None:
            assert set(block) == {"agg_value"}, key
        elif entry_keys == "mia":
            assert set(block) == {"forget", "holdout", "auc", "agg_value"} and block["auc"] == block["agg_value"]
            for part, n in (("forget", counts["forget"]), ("holdout", counts["holdout"])):
                scores = [v["score"] for v in block[part]["value_by_index"].values()]
                assert len(scores) == n and block[part]["agg_value"] == pytest.approx(sum(scores) / n)
        else:
            vbi = block["value_by_index"]
            assert list(vbi) == [str(i) for i in range(n_of[key.split("_")[0]])], key
            assert all(set(e) == entry_keys for e in vbi.values()), key
    # perturbed answers: one list per item, one value per perturbed answer, prob = exp(−avg_loss)
    rows = json.loads((exp.data.tofu / "forget10_perturbed.json").read_text())
    for i, e in ev["forget_Q_A_PERT_Prob"]["value_by_index"].items():
        n_pert = len(rows[int(i)]["perturbed_answer"])
        assert len(e["prob"]) == len(e["avg_loss"]) == n_pert
        assert e["prob"] == pytest.approx([math.exp(-x) for x in e["avg_loss"]])
    # ROUGE entries: the ground truth is the data's answer, the numbers rouge_score's on (gt, generation)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for i, e in ev["forget_Q_A_ROUGE"]["value_by_index"].items():
        assert e["ground_truth"] == rows[int(i)]["answer"] and e["generation"] == res.generations["forget"][int(i)]
        sc = scorer.score(e["ground_truth"], e["generation"])
        assert e["rouge1_recall"] == pytest.approx(sc["rouge1"].recall)
        assert e["rougeL_f1"] == pytest.approx(sc["rougeL"].fmeasure)
        assert e["rougeL_recall"] == pytest.approx(sc["rougeL"].recall)
        assert rows[int(i)]["question"] in e["input"]
    assert ev["privleak"]["agg_value"] == pytest.approx(res.metrics["tofu_privleak"].value)
    summary = json.loads((tmp_path / "ou" / "TOFU_SUMMARY.json").read_text())
    assert set(summary) == {"forget_truth_ratio", "forget_quality", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                            "model_utility", "privleak", "extraction_strength", "exact_memorization"}
    assert all(summary[k] == ev[k]["agg_value"] for k in summary)


def _ou_truth_ratio(correct_avg_losses, wrong_avg_losses, aggregator):
    """open-unlearning's truth_ratio metric (src/evals/metrics/memorization.py), written out again:
    per-item losses → mean over the wrong answers → exp(−·) → wrong / (correct + 1e-10)."""
    correct = np.array(correct_avg_losses, dtype=np.float64)
    wrong = np.array(wrong_avg_losses, dtype=np.float64)
    wrong = wrong.mean(axis=tuple(range(1, wrong.ndim)))
    tr = np.exp(-wrong) / (np.exp(-correct) + 1e-10)
    if aggregator == "closer_to_1_better":
        return tr, float(np.mean(np.minimum(tr, 1 / (tr + 1e-10))))
    return tr, float(np.mean(np.maximum(0, 1 - tr)))


def test_open_unlearning_truth_ratio_formula_on_the_export_gives_the_exported_truth_ratio(full_result, tmp_path):
    _, res = full_result
    ev = to_open_unlearning(res)["TOFU_EVAL.json"]
    for correct, wrong, tr_key, agg in (
        ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_truth_ratio", "closer_to_1_better"),
        ("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "retain_Truth_Ratio", "true_better"),
        ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "ra_Truth_Ratio", "true_better"),
        ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob", "wf_Truth_Ratio", "true_better"),
    ):
        idx = list(ev[correct]["value_by_index"])
        c = [ev[correct]["value_by_index"][i]["avg_loss"] for i in idx]
        w = [ev[wrong]["value_by_index"][i]["avg_loss"] for i in idx]
        per, value = _ou_truth_ratio(c, w, agg)
        exported = [ev[tr_key]["value_by_index"][i]["score"] for i in idx]
        np.testing.assert_allclose(exported, per, rtol=1e-9)
        assert ev[tr_key]["agg_value"] == pytest.approx(value, rel=1e-9), tr_key
    # the ks_test on the exported truth ratios against the reference ones gives the exported forget quality
    from scipy.stats import ks_2samp

    tr = [v["score"] for v in ev["forget_truth_ratio"]["value_by_index"].values()]
    assert ev["forget_quality"]["agg_value"] == pytest.approx(ks_2samp(tr, [0.3 + 0.2 * i for i in range(5)]).pvalue)
    # probability_w_options on the exported pre-compute values gives the exported normalised probability
    for split in ("ra", "wf"):
        vbi = ev[f"{split}_Q_A_Prob"]["value_by_index"]
        pert = ev[f"{split}_Q_A_PERT_Prob"]["value_by_index"]
        probs = [vbi[i]["prob"] / (vbi[i]["prob"] + sum(pert[i]["prob"]) + 1e-10) for i in vbi]
        normalised = ev[f"{split}_Q_A_Prob_normalised"]["value_by_index"].values()
        assert [e["prob"] for e in normalised] == pytest.approx(probs)


# ---------------------------------------------------------------- import of result folders as named points


def _minimal_run(folder):
    """A hand-written open-unlearning run: TOFU_EVAL.json + TOFU_SUMMARY.json as its evaluator writes them."""
    folder.mkdir(parents=True)
    ev = {
        "forget_truth_ratio": {"agg_value": 0.6, "value_by_index": {"0": {"score": 0.5}, "1": {"score": 0.9}}},
        "forget_Q_A_PERT_Prob": {"agg_value": 0.2, "value_by_index": {
            "0": {"prob": [0.1, 0.3], "avg_loss": [2.3, 1.2]}, "1": {"prob": [0.2, 0.2], "avg_loss": [1.6, 1.6]}}},
        "forget_quality": {"agg_value": 0.03},
        "mia_min_k": {"forget": {"agg_value": 2.0, "value_by_index": {"0": {"score": 2.0}}},
                      "holdout": {"agg_value": 3.0, "value_by_index": {"0": {"score": 3.0}}},
                      "auc": 0.8, "agg_value": 0.8},
        "privleak": {"agg_value": -60.0},
        "extraction_strength": {"agg_value": 0.1, "value_by_index": {"0": {"score": 0.1}, "1": {"score": 0.1}}},
    }
    (folder / "TOFU_EVAL.json").write_text(json.dumps(ev))
    (folder / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": 0.03, "model_utility": 0.55,
                                                          "privleak": -60.0, "extraction_strength": 0.1}))
    return folder


def test_import_puts_an_exported_run_and_a_hand_written_one_on_the_method_grid(full_result, tmp_path):
    from msa_core.eval.openunlearning import import_run
    from msa_core.eval.store import ResultStore

    _, res = full_result
    store = ResultStore(tmp_path / "r.sqlite")
    ours = tmp_path / "msa_alpha1"
    export_open_unlearning(res, ours)
    a = import_run(store, "fp1", ours, "MSA-export")
    npo = _minimal_run(tmp_path / "tofu_NPO_epoch5" / "evals")
    b = import_run(store, "fp1", tmp_path / "tofu_NPO_epoch5", "NPO")  # finds the evals/ folder
    c = import_run(store, "fp1", _minimal_run(tmp_path / "GradDiff-run"))  # method = folder name
    grid = store.method_grid("fp1")
    assert list(grid["method"]) == ["GradDiff-run", "MSA-export", "NPO"]
    assert list(grid["point"]) == ["GradDiff-run", "msa_alpha1", "tofu_NPO_epoch5"]
    row = grid[grid["method"] == "MSA-export"].iloc[0]
    for name in ("forget_quality", "forget_truth_ratio", "model_utility", "extraction_strength", "tofu_privleak"):
        assert row[name] == pytest.approx(res.metrics[name].value), name
    assert row["tofu_mink_auc"] == pytest.approx(res.metrics["tofu_mink_auc"].value)  # back to our orientation
    assert a.metrics["forget_truth_ratio"].per_item == pytest.approx(res.metrics["forget_truth_ratio"].per_item)
    n = grid[grid["method"] == "NPO"].iloc[0]
    assert n["model_utility"] == 0.55 and n["forget_quality"] == 0.03 and n["tofu_privleak"] == -60.0
    assert n["tofu_mink_auc"] == pytest.approx(0.2) and n["source"] == str(npo.resolve())
    assert b.metrics["forget_pert_prob"].per_item == pytest.approx([0.2, 0.2])  # per-item lists → their mean
    assert b.tier == "full" and c.model == "method:GradDiff-run/GradDiff-run"
    # idempotent: importing again (even after the files changed) replaces the point, no duplicate
    (npo / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": 0.5, "model_utility": 0.6}))
    import_run(store, "fp1", tmp_path / "tofu_NPO_epoch5", "NPO")
    import_run(store, "fp1", ours, "MSA-export")
    again = store.method_grid("fp1")
    assert len(again) == 3 and again[again["method"] == "NPO"].iloc[0]["model_utility"] == 0.6
    assert store.method_grid("other-fp").empty


def test_import_of_a_summary_only_folder_and_errors_name_the_folder(tmp_path):
    from msa_core.eval.openunlearning import import_run
    from msa_core.eval.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    only = tmp_path / "rmu"
    only.mkdir()
    (only / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": 0.2, "forget_Q_A_Prob": 0.4}))
    res = import_run(store, "fp", only, "RMU")
    assert res.flat() == {"forget_quality": 0.2, "forget_prob": 0.4} and res.tier == "fast"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_run(store, "fp", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TOFU_EVAL.json or TOFU_SUMMARY.json"):
        import_run(store, "fp", tmp_path / "empty")
    (only / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": "high"}))
    with pytest.raises(ValueError, match="TOFU_SUMMARY.json: forget_quality is not a number"):
        import_run(store, "fp", only)
    with pytest.raises(ValueError, match="may not contain"):
        import_run(store, "fp", tmp_path / "rmu", "a/b")
