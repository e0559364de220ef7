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


def test_eval_says_when_its_result_comes_from_the_store(tmp_path, cache_dir, capsys):
    import time

    from tiny import make_checkpoints

    from msa_core.cli import main

    exp = make_checkpoints(tmp_path / "ckpt")
    exp = replace(exp, data=DataConfig(tofu=write_tofu(tmp_path / "tofu")))
    path = str(save_experiment(exp, tmp_path / "ckpt" / "experiment.yaml"))
    argv = ["eval", path, "--alpha", "1", "--subset", "2", "--quiet", "--device", "cpu"]
    assert main([*argv, "--json", str(tmp_path / "first.json")]) == 0
    first = json.loads((tmp_path / "first.json").read_text())
    head = capsys.readouterr().out.splitlines()[0]
    assert first["from_store"] is False and first["stored_at"] is None
    assert f"computed in {first['seconds']:.2f} s (this command: " in head and "stored" not in head
    assert first["command_seconds"] >= first["seconds"]  # the whole wait, loading included
    assert main([*argv, "--json", str(tmp_path / "second.json")]) == 0
    second = json.loads((tmp_path / "second.json").read_text())
    head = capsys.readouterr().out.splitlines()[0]
    assert second["from_store"] is True and second["metrics"] == first["metrics"]
    assert second["stored_at"].startswith(time.strftime("%Y-%m-%d"))
    assert f"stored result, computed in {first['seconds']:.2f} s on {second['stored_at']}" in head
    assert main([*argv, "--no-store", "--json", str(tmp_path / "third.json")]) == 0  # no store: computed again
    assert json.loads((tmp_path / "third.json").read_text())["from_store"] is False


def _grid():
    import pandas as pd

    fast = {"forget_quality": 0.5, "model_utility_tf": 0.61, "forget_truth_ratio": 0.7, "forget_prob": 0.2,
            "retain_prob": 0.9, "extraction_strength": 0.1, "exact_memorization": 0.3, "ra_prob": 0.4}
    full = {**fast, "model_utility": 0.55, "forget_rouge": 0.25, "retain_rouge": 0.8}
    rows = [{"alpha": a, "beta": 0.0, "tier": "fast", "benchmark": "tofu", "settings_key": "f" * 16, "seconds": 1.0,
             "subset": None, "model": "composed", **fast} for a in (0.0, 1.5)]
    rows.append({"alpha": 1.0, "beta": 0.5, "tier": "full", "benchmark": "tofu", "settings_key": "e" * 16,
                 "seconds": 2.0, "subset": 2, "model": "composed", **full})
    return pd.DataFrame(rows)


def _tables(text: str) -> list[list[str]]:
    return [block.strip("\n").splitlines() for block in text.strip("\n").split("\n\n")]


def test_results_print_one_tier_at_a_time_with_compact_columns(capsys):
    from msa_core.cli.evaluation import print_table

    print_table(_grid())
    fast, full = _tables(capsys.readouterr().out)
    assert fast[0] == "tier fast · benchmark tofu · all items · 2 point(s) · settings ffffffff"
    assert fast[1].split() == ["alpha", "beta", "FQ", "MU_tf", "fgt_TR", "fgt_p", "ret_p", "ES"]
    assert [line.split()[:2] for line in fast[2:4]] == [["0", "0"], ["1.5", "0"]]
    assert fast[4].startswith("  FQ = forget_quality, MU_tf = model_utility_tf")
    assert full[0] == "tier full · benchmark tofu · first 2 items · 1 point(s) · settings eeeeeeee"
    assert full[1].split() == ["alpha", "beta", "FQ", "MU", "fgt_R", "ret_R", "fgt_TR"]
    assert full[2].split() == ["1", "0.5", "0.5", "0.55", "0.25", "0.8", "0.7"]
    assert max(len(line) for line in fast[:4] + full[:3]) <= 100


def test_results_columns_and_all_columns(capsys):
    from msa_core.cli.evaluation import print_table

    print_table(_grid(), columns=["ra_prob", "forget_quality"])
    fast, full = _tables(capsys.readouterr().out)
    assert fast[1].split() == full[1].split() == ["alpha", "beta", "ra_prob", "FQ"]
    print_table(_grid(), all_columns=True)
    fast, full = _tables(capsys.readouterr().out)
    assert "exact_memorization" in fast[1].split() and "MU" not in fast[1].split()  # only columns with values
    assert {"exact_memorization", "MU", "fgt_R"} <= set(full[1].split())


def test_results_merge_combines_stores_once_and_reports_conflicts(tmp_path, cache_dir, capsys):
    from msa_core.cli import main
    from msa_core.eval.results import EvalResult, MetricValue
    from msa_core.eval.store import ResultStore

    def point(a: float, fq: float) -> EvalResult:
        return EvalResult(a, 0.0, "fast", "tofu", "fp", {"key": "k"}, 0.1,
                          {"forget_quality": MetricValue("forget_quality", fq)})

    r0, r1 = ResultStore(tmp_path / "r.rank0.sqlite"), ResultStore(tmp_path / "r.rank1.sqlite")
    r0.put(point(0.0, 0.1))
    r0.put(point(1.0, 0.2))
    r1.put(point(2.0, 0.3))
    r1.put(point(1.0, 0.25))  # the same point, stored later: the newest wins
    into = tmp_path / "merged.sqlite"
    argv = ["results", "--merge", str(r0.path), str(r1.path), "--into", str(into)]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{r0.path}: 2 row(s), 2 added, 0 already there, 0 conflict(s)"
    assert out[1] == (f"{r1.path}: 2 row(s), 1 added, 0 already there, 1 conflict(s) "
                      "(newest kept: 1 taken from the source, 0 kept from the target)")
    assert out[2] == f"{into}: 4 row(s) written, 3 row(s) in all"
    merged = ResultStore(into)
    assert [(r.alpha, r.get("forget_quality")) for r in merged.results("fp")] == [(0.0, 0.1), (1.0, 0.25), (2.0, 0.3)]

    assert main([*argv, "--json", "-"]) == 0  # twice = once
    again = json.loads(capsys.readouterr().out)
    assert again["rows"] == 3 and [s["added"] + s["replaced"] for s in again["sources"]] == [0, 0]
    assert again["sources"][0]["kept"] == 1  # rank 0's older row of α=1 loses again, and says so

    assert main(["results", "--merge", str(tmp_path / "missing.sqlite"), "--into", str(into)]) == 2
    assert "--merge " in capsys.readouterr().err
    assert main(["results", "--merge", str(into), "--into", str(into)]) == 2
    assert "this is the --into store itself" in capsys.readouterr().err
    assert main(["results", "--into", str(into)]) == 2
    assert "--into: only with --merge" in capsys.readouterr().err
    assert ResultStore(into).count() == 3


def test_sweep_and_results_of_a_clean_choice_are_their_own_rows(tmp_path, cache_dir, capsys):
    """`msa sweep --clean LABEL` stores under that choice's fingerprint: `msa results` without the
    option does not list those points, `msa results --clean LABEL` does."""
    from tiny import make_checkpoints

    from msa_core.cli import main
    from msa_core.experiment import CleanCandidate

    exp = make_checkpoints(tmp_path / "ckpt")
    ck = exp.checkpoints
    exp = replace(exp, data=DataConfig(tofu=write_tofu(tmp_path / "tofu")),
                  clean_history=(CleanCandidate("swap", ck.clean, ck.retain, ck.forget),))
    path = str(save_experiment(exp, tmp_path / "ckpt" / "experiment.yaml"))
    store = str(tmp_path / "r.sqlite")
    assert main(["sweep", path, "--alphas", "1", "--betas", "0", "--subset", "2", "--quiet", "--device", "cpu",
                 "--clean", "swap", "--store", store]) == 0
    capsys.readouterr()
    assert main(["results", path, "--store", store, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["results", path, "--store", store, "--clean", "swap", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["alpha"], r["beta"]) for r in rows] == [(1.0, 0.0)]
