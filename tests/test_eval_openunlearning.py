"""open-unlearning TOFU_EVAL.json / TOFU_SUMMARY.json export and import."""

from __future__ import annotations

import json
import math

import pytest

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
    assert files["TOFU_SUMMARY.json"] == {
        "forget_quality": 0.42,
        "forget_Q_A_Prob": 0.375,
        "forget_Q_A_ROUGE": 0.5,
        "forget_truth_ratio": 0.75,
        "ra_Q_A_Prob_normalised": 0.6,
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
