"""Sweeps over several processes (msa_core.eval.distributed): `msa sweep --processes 2` on CPU
(accelerate launch → torchrun, gloo, 127.0.0.1 only) against a one-process sweep, a process killed
mid-sweep and the rerun, per-rank stores and `msa results --merge`."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    write_tofu,
)

from msa_core.eval.distributed import ProcessGroup, launch_command, rank_store_path, split_points
from msa_core.experiment import DataConfig, save_experiment

ALPHAS, BETAS = "0,1,2", "0,0.5"
GRID = [(a, b) for a in (0.0, 1.0, 2.0) for b in (0.0, 0.5)]


@pytest.fixture
def sweep_exp(tmp_path, cache_dir) -> str:
    """A tiny experiment with a small TOFU folder (seconds per point)."""
    from tiny import make_checkpoints

    exp = make_checkpoints(tmp_path / "ckpt")
    exp = replace(exp, data=DataConfig(tofu=write_tofu(tmp_path / "tofu", n_forget=3, n_retain=2, n_util=2)))
    return str(save_experiment(exp, tmp_path / "ckpt" / "experiment.yaml"))


def _argv(exp: str, store: Path, *extra: str) -> list[str]:
    return ["sweep", exp, "--alphas", ALPHAS, "--betas", BETAS, "--benchmark", "tofu", "--device", "cpu",
            "--store", str(store), *extra]


def _composed_rows(path: Path) -> list[tuple[float, float, str]]:
    """(α, β, settings key) of every composed-model row of a store (side models excluded)."""
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT alpha, beta, settings_key FROM results WHERE fingerprint NOT LIKE '%#%'"
                           " ORDER BY alpha, beta").fetchall()
    return [(float(a), float(b), str(k)) for a, b, k in rows]


def _metrics(payload: list[dict]) -> dict[tuple[float, float], dict[str, float]]:
    return {(r["alpha"], r["beta"]): r["metrics"] for r in payload}


def test_split_points_are_disjoint_and_cover_the_todo_list():
    todo = [(float(i), 0.0) for i in range(7)]
    shares = [split_points(todo, i, 3) for i in range(3)]
    assert shares == [[todo[0], todo[3], todo[6]], [todo[1], todo[4]], [todo[2], todo[5]]]
    assert sorted(p for s in shares for p in s) == todo
    assert split_points(todo[:1], 1, 2) == []
    with pytest.raises(ValueError, match="process index 2 is not within 0..1"):
        split_points(todo, 2, 2)
    assert rank_store_path(Path("/x/cache/results.sqlite"), 3) == Path("/x/cache/results.rank3.sqlite")
    # 16 processes, 8 on this host: two hosts, so each rank writes its own store.
    assert ProcessGroup(9, 16, 1, 8, "cuda:1", None).multi_node
    assert not ProcessGroup(1, 2, 1, 2, "cpu", None).multi_node
    cmd = launch_command(4, ["sweep", "e.yaml"], port=29999, python="py")
    assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"] and cmd[-4:] == ["-m", "msa_core", "sweep", "e.yaml"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and cmd[cmd.index("--main_process_ip") + 1] == "127.0.0.1"
    with pytest.raises(ValueError, match="at least 2 processes"):
        launch_command(1, [], port=1)


def test_processes_refuse_a_single_device_and_no_store(sweep_exp, tmp_path, capsys):
    from msa_core.cli import main

    assert main(_argv(sweep_exp, tmp_path / "r.sqlite", "--processes", "2", "--no-store")) == 2
    assert "--no-store: the processes of a sweep share their work through the results store" in capsys.readouterr().err
    argv = _argv(sweep_exp, tmp_path / "r.sqlite", "--processes", "2")
    argv[argv.index("cpu")] = "cuda:1"
    assert main(argv) == 2
    assert "--device cuda:1: with several processes each takes cuda:<local rank>" in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()  # refused before anything started


def test_two_processes_survive_a_killed_process_and_the_rerun_completes_the_grid(sweep_exp, tmp_path, monkeypatch,
                                                                               capfd):
    from msa_core.cli import main

    # Process 1 (RANK 1) exits right after storing its first point: a process killed mid-sweep.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent("""
        import os
        if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("MSA_TEST_EXIT_RANK"):
            from msa_core.eval import store

            _put = store.ResultStore.put

            def _put_then_exit(self, result):
                _put(self, result)
                if result.model == "composed":
                    os._exit(7)

            store.ResultStore.put = _put_then_exit
    """))
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("MSA_TEST_EXIT_RANK", "1")
    store = tmp_path / "shared.sqlite"
    assert main(_argv(sweep_exp, store, "--processes", "2", "--quiet")) == 1
    err = capfd.readouterr().err
    after_kill = _composed_rows(store)
    assert 1 <= len(after_kill) < len(GRID)
    assert f"a process failed (exit status 1); {len(after_kill)} of 6 grid point(s) are stored" in err

    monkeypatch.delenv("MSA_TEST_EXIT_RANK")
    out = tmp_path / "two.json"
    assert main(_argv(sweep_exp, store, "--processes", "2", "--quiet", "--json", str(out))) == 0
    rows = _composed_rows(store)
    assert [(a, b) for a, b, _ in rows] == GRID  # the full grid, each point once, one settings key
    assert len({k for _, _, k in rows}) == 1
    two = json.loads(out.read_text())
    assert [(r["alpha"], r["beta"]) for r in two] == GRID  # the main process reports the whole grid in order
    kept = {(a, b) for a, b, _ in after_kill}
    with sqlite3.connect(store) as con:  # the points stored before the kill were not evaluated again
        assert con.execute("SELECT COUNT(*) FROM results WHERE fingerprint LIKE '%#reference'").fetchone()[0] == 1
    assert kept <= set(GRID)


def test_per_rank_stores_merge_into_the_whole_grid(sweep_exp, tmp_path, capfd):
    from msa_core.cli import main

    store = tmp_path / "results.sqlite"
    assert main(_argv(sweep_exp, store, "--processes", "2", "--store-per-rank", "--quiet",
                      "--json", str(tmp_path / "sweep.json"))) == 0
    assert not store.exists()  # each rank wrote its own file
    ranks = [rank_store_path(store, r) for r in (0, 1)]
    parts = [_composed_rows(p) for p in ranks]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted((a, b) for a, b, _ in parts[0] + parts[1]) == GRID
    capfd.readouterr()

    merge = ["results", "--merge", *map(str, ranks), "--into", str(store), "--json", "-"]
    assert main(merge) == 0
    report = json.loads(capfd.readouterr().out)
    # Each rank stored its points and the reference's row; the second reference row is the same key.
    first, second = report["sources"]
    assert (first["rows"], first["added"]) == (len(parts[0]) + 1, len(parts[0]) + 1)
    assert (second["rows"], second["added"]) == (len(parts[1]) + 1, len(parts[1]))
    assert second["same"] + second["replaced"] + second["kept"] == 1
    assert _composed_rows(store) == sorted(parts[0] + parts[1])
    with sqlite3.connect(store) as con:
        before = con.execute("SELECT * FROM results ORDER BY fingerprint, alpha, beta").fetchall()
    assert main(merge) == 0  # twice = once
    again = json.loads(capfd.readouterr().out)
    assert [s["added"] + s["replaced"] for s in again["sources"]] == [0, 0]
    with sqlite3.connect(store) as con:
        assert con.execute("SELECT * FROM results ORDER BY fingerprint, alpha, beta").fetchall() == before
    two = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["alpha"], r["beta"]) for r in two] == GRID  # gathered from both ranks' stores

    # The same grid in one process: the same settings key and the same metrics.
    assert main(_argv(sweep_exp, tmp_path / "one.sqlite", "--quiet", "--json", str(tmp_path / "one.json"))) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert {r["settings"]["key"] for r in one} == {k for _, _, k in _composed_rows(store)}
    m1, m2 = _metrics(one), _metrics(two)
    assert m1.keys() == m2.keys() == set(GRID)
    for point in GRID:
        assert m2[point] == pytest.approx(m1[point], rel=1e-9, abs=1e-12), point
