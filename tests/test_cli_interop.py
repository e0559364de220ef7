"""msa_core.cli.interop: `msa import` reads open-unlearning result folders into the store, once."""

from __future__ import annotations

import json

from msa_core.experiment import save_experiment


def _run(folder, fq, mu):
    folder.mkdir(parents=True)
    (folder / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": fq, "model_utility": mu}))
    return str(folder)


def test_import_command_stores_named_points_and_a_rerun_adds_none(tiny_experiment, tmp_path, capsys):
    from msa_core.cli import main
    from msa_core.eval.store import ResultStore
    from msa_core.fingerprints import experiment_fingerprint

    path = str(save_experiment(tiny_experiment, tmp_path / "experiment.yaml"))
    db = str(tmp_path / "r.sqlite")
    runs = [_run(tmp_path / "npo_e1", 0.01, 0.6), _run(tmp_path / "npo_e2", 0.2, 0.5)]
    assert main(["import", *runs, path, "--name", "NPO", "--store", db, "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [p["model"] for p in payload] == ["method:NPO/npo_e1", "method:NPO/npo_e2"]
    assert main(["import", *runs, path, "--name", "NPO", "--store", db, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 open-unlearning run(s) imported" in out and "forget_quality=0.2" in out
    grid = ResultStore(db).method_grid(experiment_fingerprint(tiny_experiment))
    assert list(grid["point"]) == ["npo_e1", "npo_e2"] and list(grid["model_utility"]) == [0.6, 0.5]
    assert main(["import", str(tmp_path / "missing"), path, "--store", db]) == 2
    assert "missing" in capsys.readouterr().err
