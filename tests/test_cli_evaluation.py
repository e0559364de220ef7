"""msa_core.cli.evaluation: `msa eval`, `msa sweep`, `msa results` end to end on tiny real checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace

from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    write_muse,
    write_tofu,
)

from msa_core.experiment import DataConfig, save_experiment


def test_eval_sweep_results_commands(tmp_path, cache_dir, capsys):
    from tiny import make_checkpoints

    from msa_core.cli import main

    exp = make_checkpoints(tmp_path / "ckpt")
    exp = replace(exp, data=DataConfig(tofu=write_tofu(tmp_path / "tofu"), muse=write_muse(tmp_path / "muse")))
    path = str(save_experiment(exp, tmp_path / "ckpt" / "experiment.yaml"))
    out, ou = tmp_path / "res.json", tmp_path / "ou"

    rc = main(["eval", path, "--alpha", "1", "--beta", "0.5", "--subset", "2", "--json", str(out),
               "--open-unlearning-dir", str(ou), "--quiet", "--device", "cpu"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert (res["alpha"], res["beta"], res["tier"]) == (1.0, 0.5, "fast")
    assert 0.0 <= res["metrics"]["forget_quality"] <= 1.0 and "muse_privleak" in res["metrics"]
    assert len(res["per_item"]["forget_truth_ratio"]) == 2
    assert json.loads((ou / "TOFU_SUMMARY.json").read_text())["forget_quality"] == res["metrics"]["forget_quality"]
    human = capsys.readouterr().out
    assert "Forget quality" in human and "higher is better (ideal 1)" in human

    rc = main(["sweep", path, "--alphas", "0,1", "--betas", "0", "--subset", "2", "--quiet", "--device", "cpu",
               "--json", str(tmp_path / "sweep.json")])
    assert rc == 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["alpha"], r["beta"]) for r in sweep] == [(0.0, 0.0), (1.0, 0.0)]
    capsys.readouterr()

    assert main(["results", path, "--json", "-"]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert sorted((r["alpha"], r["beta"]) for r in stored) == [(0.0, 0.0), (1.0, 0.0), (1.0, 0.5)]
    assert main(["results", path]) == 0
    table = capsys.readouterr().out
    assert "3 stored point(s)" in table and "forget_quality" in table

    assert main(["eval", path, "--alpha", "99", "--quiet", "--device", "cpu"]) == 2
    assert "alpha=99.0 is outside" in capsys.readouterr().err

    # `--json -`: stdout is the JSON alone (the stored point comes back from the store)
    assert main(["eval", path, "--alpha", "1", "--beta", "0.5", "--subset", "2", "--json", "-", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["metrics"] == res["metrics"] and captured.err == ""
    assert main(["sweep", path, "--alphas", "0:1:1", "--subset", "2", "--json", "-", "--device", "cpu"]) == 0
    assert [(r["alpha"], r["beta"]) for r in json.loads(capsys.readouterr().out)] == [(0.0, 0.0), (1.0, 0.0)]
    assert main(["sweep", path, "--alphas", "0,9", "--quiet", "--device", "cpu"]) == 2
    assert "--alphas: 9 is outside the range [0, 5]" in capsys.readouterr().err
