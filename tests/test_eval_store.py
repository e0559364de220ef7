"""Results store (atomic, concurrent, crash-safe) and resumable sweeps."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from eval_fixtures import eval_single_thread  # noqa: F401  (autouse: one torch thread)
from eval_fixtures import FakeEngine, make_experiment, make_tokenizer, write_tofu
from msa_core.eval.results import EvalResult, MetricValue
from msa_core.eval.store import ResultStore
from msa_core.eval.sweep import grid_points, parse_grid, run_sweep

REPO = Path(__file__).resolve().parents[1]


def _result(a: float, b: float, *, fq: float = 0.5, tier: str = "fast", key: str = "k1", fp: str = "fp") -> EvalResult:
    metrics = {
        "forget_quality": MetricValue("forget_quality", fq),
        "forget_truth_ratio": MetricValue("forget_truth_ratio", 0.6 + a / 10, [0.5, 0.7]),
        "model_utility_tf": MetricValue("model_utility_tf", 1.0 - a / 4),
    }
    return EvalResult(a, b, tier, "tofu", fp, {"key": key}, 0.1, metrics)


def test_put_get_has_grid_and_replace(tmp_path):
    st = ResultStore(tmp_path / "r.sqlite")
    assert st.get("fp", 0, 0, "fast", "k1") is None and not st.has("fp", 0, 0, "fast", "k1")
    st.put(_result(0.3, 0.0, fq=0.1))
    st.put(_result(1.0, 0.5, fq=0.9))
    got = st.get("fp", 0.1 + 0.2, 0.0, "fast", "k1")  # float keys are normalised
    assert got is not None and got.flat()["forget_quality"] == 0.1
    assert got.metrics["forget_truth_ratio"].per_item == [0.5, 0.7]
    st.put(_result(1.0, 0.5, fq=0.95))  # same key: replaced, not duplicated
    assert st.count("fp") == 2 and st.get("fp", 1.0, 0.5, "fast", "k1").flat()["forget_quality"] == 0.95
    assert st.get("fp", 1.0, 0.5, "full", "k1") is None and st.get("fp", 1.0, 0.5, "fast", "k2") is None
    df = st.grid("fp")
    assert list(df[["alpha", "beta"]].itertuples(index=False, name=None)) == [(0.3, 0.0), (1.0, 0.5)]
    assert list(df.columns[:6]) == ["alpha", "beta", "tier", "benchmark", "settings_key", "seconds"]
    assert {"forget_quality", "forget_truth_ratio", "model_utility_tf"} <= set(df.columns)
    assert st.grid("other").empty
    best = st.best_point("fp")
    assert (best["alpha"], best["forget_quality"]) == (1.0, 0.95)
    best_util = st.best_point("fp", metric="model_utility_tf")
    assert best_util["alpha"] == 0.3
    assert st.best_point("fp", min_values={"model_utility_tf": 0.9})["alpha"] == 0.3
    assert st.best_point("fp", min_values={"model_utility_tf": 2.0}) is None
    with pytest.raises(ValueError, match="settings key"):
        st.put(EvalResult(0, 0, "fast", "tofu", "fp", {}, 0.0, {}))


def test_reference_rows_are_kept_apart(tmp_path):
    st = ResultStore(tmp_path / "r.sqlite")
    ref = EvalResult(None, None, "fast", "tofu", "fp", {"key": "k1"}, 0.1, {"forget_quality": MetricValue("forget_quality", 1.0)}, model="reference")
    st.put(ref)
    st.put(_result(0.0, 0.0))
    assert st.count("fp") == 1 and st.count("fp#reference") == 1
    back = st.get("fp#reference", 0.0, 0.0, "fast", "k1")
    assert back.model == "reference" and back.alpha is None


WRITER = textwrap.dedent(
    """
    from msa_core.eval.results import EvalResult, MetricValue
    from msa_core.eval.store import ResultStore
    st = ResultStore({db!r})
    i = 0
    print("ready", flush=True)
    while {forever} or i < {n}:
        a = round(100 + {wid} + i * 0.001, 6)
        metrics = {{name: MetricValue(name, 0.01 * (i % 100), [0.5, 0.7])
                   for name in ("forget_quality", "forget_truth_ratio", "model_utility_tf")}}
        st.put(EvalResult(a, 0.0, "fast", "tofu", "fp", {{"key": "k1"}}, 0.1, metrics))
        i += 1
    """
)


def _writer(db: Path, wid: int, n: int, forever: bool = False) -> subprocess.Popen:
    code = WRITER.format(db=str(db), wid=wid, n=n, forever=forever)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE)


def test_concurrent_writers_and_a_killed_writer_leave_a_sound_store(tmp_path):
    db = tmp_path / "r.sqlite"
    st = ResultStore(db)
    procs = [_writer(db, 0, 40), _writer(db, 1, 0, forever=True)]
    for p in procs:
        assert p.stdout.readline().strip() == b"ready"
    errors = []

    def thread_writer(k: int) -> None:
        try:
            for i in range(15):
                st.put(_result(200 + k + i * 0.01, 1.0))
                st.grid("fp")  # readers interleave with writers
        except (OSError, sqlite3.Error) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert procs[0].wait(timeout=120) == 0
    time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)  # a crash in the middle of its writes
    procs[1].wait(timeout=30)
    assert not errors
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = st.results("fp")  # every stored row parses completely
    alphas = [r.alpha for r in rows]
    assert len(alphas) == len(set(alphas)) == st.count("fp")
    assert sum(1 for a in alphas if 100 <= a < 101) == 40
    assert sum(1 for a in alphas if 200 <= a < 203) == 45
    assert all(len(r.metrics) == 3 for r in rows)


def test_parse_grid_and_points():
    assert parse_grid("0,0.5,1") == [0.0, 0.5, 1.0]
    assert parse_grid("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    for bad in ("", "0,x", "1:0:0.5", "0:1", "nan"):
        with pytest.raises(ValueError, match="--alphas"):
            parse_grid(bad, name="--alphas")
    assert grid_points([0, 1], [0, 0.5, 0.5]) == [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)]


class _Crash(FakeEngine):
    """Raises KeyboardInterrupt (Ctrl-C) when composing the n-th point."""

    def __init__(self, *a, crash_at: int, **kw):
        super().__init__(*a, **kw)
        self.crash_at = crash_at

    def session(self, alpha, beta):
        if len(self.sessions) == self.crash_at:
            raise KeyboardInterrupt
        return super().session(alpha, beta)


def test_sweep_resumes_after_interrupt_without_loss_or_duplicates(tmp_path):
    from msa_core.eval.evaluate import clear_reference_cache

    exp = make_experiment(tmp_path, tofu=write_tofu(tmp_path / "tofu", n_forget=3, n_retain=2, n_util=2))
    tok = make_tokenizer()
    st = ResultStore(tmp_path / "r.sqlite")
    alphas, betas = [0.0, 1.0, 2.0], [0.0, 0.5]
    clear_reference_cache()
    eng = _Crash(exp, tok, crash_at=2)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(eng, st, alphas, betas, benchmark="tofu", on_point=lambda r, s: seen.append((r.alpha, r.beta, s)))
    assert st.count("fp-test") == 2 and seen == [(0.0, 0.0, False), (0.0, 0.5, False)]
    assert st.count("fp-test#reference") == 1  # the reference is stored once, with the point results

    clear_reference_cache()  # a fresh process: nothing in memory
    eng2 = FakeEngine(exp, tok)
    seen.clear()
    progress = []
    res = run_sweep(eng2, st, alphas, betas, benchmark="tofu", progress=lambda f, m: progress.append(f),
                    on_point=lambda r, s: seen.append((r.alpha, r.beta, s)))
    assert eng2.sessions == [(1.0, 0.0), (1.0, 0.5), (2.0, 0.0), (2.0, 0.5)]  # only the missing points
    assert [(r.alpha, r.beta) for r in res] == grid_points(alphas, betas)
    assert [s for *_, s in seen] == [True, True, False, False, False, False]
    assert st.count("fp-test") == 6 and st.count("fp-test#reference") == 1
    assert progress[-1] == 1.0 and progress == sorted(progress)
    again = run_sweep(eng2, st, alphas, betas, benchmark="tofu")  # all stored: nothing recomputed
    assert len(eng2.sessions) == 4 and [r.flat() for r in again] == [r.flat() for r in res]
    with pytest.raises(ValueError, match="alpha"):
        run_sweep(eng2, st, [99.0], [0.0], benchmark="tofu")
