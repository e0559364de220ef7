"""``msa rtt`` (msa_core.cli.rtt): options, the JSON payload, the store, and errors before loading."""

from __future__ import annotations

import json

import pytest
from app_fixtures import make_tiny_app_experiment

from msa_core.cli import main


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return make_tiny_app_experiment(tmp_path_factory.mktemp("rtt_cli") / "exp")


def test_rtt_prints_json_stores_runs_and_a_rerun_computes_nothing(experiment, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MSA_CACHE_DIR", str(tmp_path / "cache"))
    store = tmp_path / "results.sqlite"
    args = ["rtt", experiment, "--alpha", 1, "--beta", 0.5, "--quick", "--epochs", 1, "--max-new-tokens", 4,
            "--lrs", "1e-3,3e-4", "--device", "cpu", "--store", store]
    rc, out, _ = _run(capsys, *args, "--json", "-")
    assert rc == 0
    payload = json.loads(out)
    assert payload["computed"] == 9  # 3 models × fold 0 × (unattacked, 2 lrs)
    assert payload["settings"]["epochs"] == 1 and payload["settings"]["lrs"] == [3e-4, 1e-3]
    assert [f["entities"] for f in payload["folds"]] == [["Ana Lenz"], ["Bo Kress"]]
    assert payload["held_out"] == [0]
    rows = {(r["model"], r["lr"]) for r in payload["sweep"]}
    assert rows == {(m, lr) for m in ("corrupted", "reference", "unlearned") for lr in (0.0, 3e-4, 1e-3)}
    assert set(payload["best_lr"]) == {"corrupted", "reference", "unlearned"}
    # Recovery from the sweep rows at each model's best lr per metric (None where the endpoints are within 1e-3).
    for metric in ("p_gold", "rouge", "exact"):
        best = {m: max(r[metric] for r in payload["sweep"] if r["model"] == m and r["lr"] > 0)
                for m in payload["best_lr"]}
        assert all(next(r[metric] for r in payload["sweep"] if r["model"] == m and r["lr"] == lrs[metric])
                   == best[m] for m, lrs in payload["best_lr"].items())
        lo, hi = best["reference"], best["corrupted"]
        got = payload["recovery"]["unlearned"][metric]
        if abs(hi - lo) < 1e-3:
            assert got is None
        else:
            assert got == pytest.approx((best["unlearned"] - lo) / (hi - lo))
    rc, out, err = _run(capsys, *args)
    assert rc == 0 and "nothing recomputed" in err and "(0 run(s) computed" in out
    assert "recovery at each model's best lr" in out


@pytest.mark.parametrize("extra, message", [
    (["--lrs", "1e-3,fast"], "--lrs must be comma-separated numbers"),
    (["--epochs", "0"], "AttackSettings.epochs"),
    (["--folds", "1"], "AttackSettings.folds"),
    (["--alpha", "99"], "alpha"),
])
def test_bad_options_are_one_line_errors_before_the_model_loads(experiment, capsys, extra, message):
    argv = ["rtt", experiment, "--alpha", "1", "--device", "cpu", "--store", "/nonexistent/dir/x.sqlite", *extra]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and message in err and err.count("\n") == 1
