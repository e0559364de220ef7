"""Results store (atomic, concurrent, crash-safe)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from msa_core.eval.results import EvalResult, MetricValue
from msa_core.eval.settings import settings_lookup_key
from msa_core.eval.store import ResultStore

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
    ref = EvalResult(None, None, "fast", "tofu", "fp", {"key": "k1"}, 0.1,
                     {"forget_quality": MetricValue("forget_quality", 1.0)}, model="reference")
    st.put(ref)
    st.put(_result(0.0, 0.0))
    assert st.count("fp") == 1 and st.count("fp#reference") == 1
    back = st.get("fp#reference", 0.0, 0.0, "fast", "k1")
    assert back.model == "reference" and back.alpha is None



def test_grid_with_side_models_subset_and_the_newest_point(tmp_path):
    st = ResultStore(tmp_path / "r.sqlite")
    st.put(EvalResult(None, None, "fast", "tofu", "fp", {"key": "k1"}, 0.1,
                      {"model_utility_tf": MetricValue("model_utility_tf", 0.8)}, model="reference"))
    st.put(_result(0.0, 0.0))
    small = _result(1.0, 0.0, fq=0.2, key="k2")
    st.put(EvalResult(1.0, 0.0, "fast", "tofu", "fp", {"key": "k2", "subset": 4}, 0.1, small.metrics))
    df = st.grid("fp", side_models=("reference",))
    assert list(df.columns[6:8]) == ["subset", "model"]
    assert list(df["model"]) == ["composed", "composed", "reference"]
    assert df["subset"].isna().tolist() == [True, False, True]
    assert list(st.grid("fp")["model"]) == ["composed", "composed"]  # side models only when asked for
    # latest(): the newest row of one point whose settings match the caller's lookup key.
    plain4 = {"benchmark": "tofu", "subset": 4, "model": {"dtype": "float32", "device": "cpu", "module_filter": None}}
    want = settings_lookup_key(plain4)
    assert st.latest("fp", 1.0, 0.0, tier="fast", lookup_key=want) is None  # "k2" has no model settings
    time.sleep(0.01)
    st.put(EvalResult(1.0, 0.0, "fast", "tofu", "fp", {**plain4, "key": "k3"}, 0.1, _result(1.0, 0.0, fq=0.3).metrics))
    assert st.latest("fp", 1.0, 0.0, tier="fast", lookup_key=want).flat()["forget_quality"] == 0.3
    assert st.latest("fp", 1.0, 0.0, tier="full", lookup_key=want) is None
    assert st.latest("fp", 0.0, 0.0, tier="fast", lookup_key=want) is None
    time.sleep(0.01)
    st.put(EvalResult(1.0, 0.0, "fast", "tofu", "fp", {**plain4, "key": "k4", "counts": {"forget": 4}}, 0.1,
                      _result(1.0, 0.0, fq=0.4).metrics))
    assert st.latest("fp", 1.0, 0.0, tier="fast", lookup_key=want).flat()["forget_quality"] == 0.4  # the newest


def test_latest_never_returns_a_row_of_other_model_settings(tmp_path):
    """A bf16, cuda or module-filtered row is another result: a plain float32 lookup never gets it."""
    st = ResultStore(tmp_path / "r.sqlite")
    plain = {"benchmark": "tofu", "subset": None, "model": {"dtype": "float32", "device": "cpu", "module_filter": None},
             "reference": {"tr": "model:fp:aaaa", "auc": None}}
    others = [
        {**plain, "model": {"dtype": "bfloat16", "device": "cpu", "module_filter": None}},
        {**plain, "model": {"dtype": "float32", "device": "cuda", "module_filter": None}},
        {**plain, "model": {"dtype": "float32", "device": "cpu", "module_filter": {"include": "mlp", "layers": None}}},
        {**plain, "model": {"dtype": "float32", "device": "cpu", "module_filter": {"include": None, "layers": [0, 0]}}},
        {**plain, "subset": 8},
        {**plain, "reference": {"tr": "file:/x/TOFU_EVAL.json:sig", "auc": None}},
    ]
    for i, settings in enumerate(others):
        time.sleep(0.002)
        st.put(EvalResult(1.0, 1.0, "fast", "tofu", "fp", {**settings, "key": f"other{i}"}, 0.1,
                          _result(1.0, 1.0, fq=0.7175).metrics))
    lookup = {**plain, "reference": {"tr": None, "auc": None}}  # the app cannot know the reference model's key
    assert st.latest("fp", 1.0, 1.0, tier="fast", lookup_key=settings_lookup_key(lookup)) is None
    st.put(EvalResult(1.0, 1.0, "fast", "tofu", "fp", {**plain, "key": "plain"}, 0.1,
                      _result(1.0, 1.0, fq=0.3336).metrics))
    time.sleep(0.002)
    st.put(EvalResult(1.0, 1.0, "fast", "tofu", "fp", {**others[0], "key": "bf16-newer"}, 0.1,
                      _result(1.0, 1.0, fq=0.7175).metrics))
    got = st.latest("fp", 1.0, 1.0, tier="fast", lookup_key=settings_lookup_key(lookup))
    assert got.settings_key == "plain" and got.flat()["forget_quality"] == 0.3336
    assert st.count("fp") == len(others) + 2  # every setting is its own row


def test_grid_and_best_tradeoff_keep_to_one_set_of_model_settings(tmp_path):
    """The Trade-off charts and the "Best" preset of a float32 engine never use a filtered sweep."""
    st = ResultStore(tmp_path / "r.sqlite")
    plain = {"dtype": "float32", "device": "cpu", "module_filter": None}
    mlp = {**plain, "module_filter": {"include": "mlp", "layers": None}}
    for a, fq, model in ((0.0, 0.01, plain), (1.0, 0.2, plain), (0.0, 0.01, mlp), (2.0, 0.99, mlp)):
        st.put(EvalResult(a, 0.0, "fast", "tofu", "fp", {"key": f"k-{bool(model['module_filter'])}", "model": model},
                          0.1, _result(a, 0.0, fq=fq).metrics))
    st.put(EvalResult(None, None, "fast", "tofu", "fp", {"key": "ref", "model": plain}, 0.1,
                      _result(0.0, 0.0).metrics, model="reference"))
    assert len(st.grid("fp")) == 4  # no filter: every row, with its settings key
    df = st.grid("fp", side_models=("reference",), model_settings=plain)
    assert df["model"].tolist() == ["composed", "composed", "reference"] and df["alpha"].tolist()[:2] == [0.0, 1.0]
    only_mlp = st.grid("fp", side_models=("reference",), model_settings=mlp)
    # the filter never applies to side models: the float32 cpu reference belongs to the filtered engine too
    assert only_mlp["model"].tolist() == ["composed", "composed", "reference"]
    assert only_mlp["alpha"].tolist()[:2] == [0.0, 2.0]
    bf16 = {**plain, "dtype": "bfloat16"}
    assert st.grid("fp", side_models=("reference",), model_settings=bf16).empty
    assert st.best_tradeoff("fp", keep_utility=0.0)["alpha"] == 2.0
    assert st.best_tradeoff("fp", keep_utility=0.0, model_settings=plain)["alpha"] == 1.0


class _FullStore(ResultStore):
    """A store whose database cannot grow (SQLite's max_page_count), like a full disk."""

    @contextmanager
    def _connect(self):
        with super()._connect() as con:
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            con.execute(f"PRAGMA max_page_count = {max(int(pages), 1)}")
            yield con


def test_a_full_store_reports_the_real_cause_and_its_path(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).put(_result(0.0, 0.0))
    full = _FullStore(path)
    big = _result(1.0, 0.0)
    big = EvalResult(1.0, 0.0, "fast", "tofu", "fp", {"key": "k1"}, 0.1, big.metrics,
                     generations={"forget": ["x" * 2000] * 200})
    with pytest.raises(OSError) as info:
        full.put(big)
    msg = str(info.value)
    assert str(path) in msg and "full" in msg and "α=1.0, β=0.0" in msg
    assert "no transaction is active" not in msg and "rollback" not in msg
    # nothing half-written: the old row is intact and the failed one is absent
    assert full.count("fp") == 1 and full.get("fp", 1.0, 0.0, "fast", "k1") is None
    assert full.get("fp", 0.0, 0.0, "fast", "k1") is not None


def test_best_tradeoff_keeps_most_of_the_corrupted_utility(tmp_path):
    st = ResultStore(tmp_path / "r.sqlite")
    assert st.best_tradeoff("fp") is None
    # utility 1 - α/4: α = 0 → 1.0 (the corrupted point), α = 0.4 → 0.9, α = 2 → 0.5.
    for a, fq in ((0.0, 0.01), (0.4, 0.3), (2.0, 0.9)):
        st.put(_result(a, 0.0, fq=fq))
    best = st.best_tradeoff("fp")
    assert (best["alpha"], best["forget_quality"]) == (0.4, 0.3)  # α = 2 forgets more but breaks the model
    assert st.best_tradeoff("fp", keep_utility=0.4)["alpha"] == 2.0
    assert st.best_tradeoff("fp", alpha_range=(0.0, 0.3))["alpha"] == 0.0  # only points inside the ranges
    assert st.best_tradeoff("fp", beta_range=(1.0, 2.0)) is None
    # Without the corrupted point the utility is unknown: the best forget quality wins.
    other = ResultStore(tmp_path / "o.sqlite")
    for a, fq in ((0.4, 0.3), (2.0, 0.9)):
        other.put(_result(a, 0.0, fq=fq))
    assert other.best_tradeoff("fp")["alpha"] == 2.0

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


def test_named_points_are_listed_apart_from_the_grid(tmp_path):
    from dataclasses import replace

    from msa_core.eval.store import method_model, split_method_model

    store = ResultStore(tmp_path / "r.sqlite")
    store.put(_result(1.0, 0.5, fq=0.4))
    for method, point, fq in (("NPO", "epoch 1", 0.1), ("NPO", "epoch 2", 0.2), ("GradDiff", "run_a", 0.3)):
        store.put(replace(_result(0.0, 0.0, fq=fq), model=method_model(method, point)))
    # Another experiment's named point is not listed.
    store.put(replace(_result(0.0, 0.0, fq=0.9, fp="fpx"), model=method_model("NPO", "epoch 9")))
    grid = store.grid("fp")
    assert list(grid["alpha"]) == [1.0]
    methods = store.method_grid("fp")
    assert sorted(zip(methods["method"], methods["point"], methods["forget_quality"])) == [
        ("GradDiff", "run_a", 0.3), ("NPO", "epoch 1", 0.1), ("NPO", "epoch 2", 0.2)]
    assert split_method_model(method_model("NPO", "a/b")) == ("NPO", "a/b")
    assert split_method_model("reference") is None
    with pytest.raises(ValueError, match="method name"):
        method_model("a/b", "x")
    assert store.method_grid("nothing").empty


def test_runs_are_listed_per_settings_key_and_one_can_be_deleted(tmp_path):
    from dataclasses import replace

    from msa_core.eval.store import method_model

    st = ResultStore(tmp_path / "r.sqlite")
    for a in (0.0, 1.0, 2.0):
        st.put(_result(a, 0.0, key="k1"))
    for a, b in ((0.5, 0.0), (0.5, 1.0)):
        st.put(EvalResult(a, b, "full", "tofu", "fp", {"key": "k2", "subset": 4}, 0.1, _result(a, b).metrics))
    st.put(EvalResult(None, None, "fast", "tofu", "fp", {"key": "k1"}, 0.1, {}, model="reference"))
    st.put(replace(_result(0.0, 0.0, key="k1"), model=method_model("NPO", "epoch 1")))
    st.put(_result(0.0, 0.0, key="k1", fp="other"))
    runs = st.runs("fp")
    assert [(r.tier, r.settings_key, r.points, r.subset) for r in runs] == [("full", "k2", 2, 4),
                                                                             ("fast", "k1", 3, None)]
    assert runs[1].alpha_range == (0.0, 2.0) and runs[0].beta_range == (0.0, 1.0) and runs[0].benchmark == "tofu"
    assert "3 points" in runs[1].label() and "first 4 items" in runs[0].label()
    assert [r.settings_key for r in st.runs("fp", tier="fast")] == ["k1"]
    # Deleting one run leaves the other run, the side models, named points and other experiments alone.
    assert st.delete_run("fp", "k1", tier="full") == 0
    assert st.delete_run("fp", "k1") == 3
    assert [r.settings_key for r in st.runs("fp")] == ["k2"]
    assert st.count("fp") == 2 and st.count("fp#reference") == 1 and st.count("other") == 1
    assert len(st.method_grid("fp")) == 1
    assert st.delete_run("fp", "k1") == 0


def _rows(store: ResultStore) -> dict[tuple, tuple]:
    """Every row of a store, keyed by its primary key (fingerprint, α, β, tier, settings key)."""
    with sqlite3.connect(store.path) as con:
        return {tuple(r[:5]): tuple(r[5:]) for r in con.execute("SELECT * FROM results").fetchall()}


def test_merge_is_the_union_idempotent_and_keeps_the_newest_of_a_conflict(tmp_path, monkeypatch):
    from msa_core.eval import store as store_module
    from msa_core.eval.store import results_grid

    clock = iter(float(t) for t in range(1000, 2000))
    monkeypatch.setattr(store_module.time, "time", lambda: next(clock))
    a, b = ResultStore(tmp_path / "r.rank0.sqlite"), ResultStore(tmp_path / "r.rank1.sqlite")
    a.put(_result(0.0, 0.0, fq=0.1))
    a.put(_result(2.0, 0.0, fq=0.3))
    b.put(_result(1.0, 0.0, fq=0.2))
    b.put(_result(2.0, 0.0, fq=0.35))  # the same point as a's, stored later: the newer row
    a.put(_result(1.0, 0.5, fq=0.4, key="k2"))
    b.put(_result(1.0, 0.5, fq=0.4, key="k2"))  # identical payload, stored later: not a conflict
    src_a, src_b = _rows(a), _rows(b)
    into = ResultStore(tmp_path / "merged.sqlite")

    first = into.merge_from(a.path)
    assert (first.rows, first.added, first.same, first.replaced, first.kept) == (3, 3, 0, 0, 0)
    second = into.merge_from(b.path)
    assert (second.rows, second.added, second.same, second.replaced, second.kept) == (3, 1, 1, 1, 0)
    assert second.conflicts == (("fp", 2.0, 0.0, "fast", "k1"),)
    assert "1 conflict(s) (newest kept: 1 taken from the source, 0 kept from the target)" in second.describe()
    merged = _rows(into)
    union = {**src_a, **{k: v for k, v in src_b.items() if k not in src_a or v[2] > src_a[k][2]}}
    union[("fp", 1.0, 0.5, "fast", "k2")] = src_a[("fp", 1.0, 0.5, "fast", "k2")]  # the same payload: a's row stays
    assert merged == union and len(merged) == 4
    assert into.get("fp", 2.0, 0.0, "fast", "k1").flat()["forget_quality"] == 0.35  # the newest

    again = [into.merge_from(a.path), into.merge_from(b.path)]  # twice = once
    assert _rows(into) == merged
    assert [(r.added, r.replaced) for r in again] == [(0, 0), (0, 0)]
    assert again[0].kept == 1 and again[1].same == 3  # a's older row of (2, 0) loses again, and says so
    assert _rows(a) == src_a and _rows(b) == src_b  # the sources are only read

    df = results_grid([into.get("fp", 0.0, 0.0, "fast", "k1"), into.get("fp", 1.0, 0.0, "fast", "k1")])
    assert list(df["forget_quality"]) == [0.1, 0.2]
    assert list(df.columns) == list(into.grid("fp", settings_key="k1").columns)


def test_merge_refuses_missing_foreign_and_self(tmp_path):
    into = ResultStore(tmp_path / "r.sqlite")
    with pytest.raises(FileNotFoundError, match="nope.sqlite: no such file"):
        into.merge_from(tmp_path / "nope.sqlite")
    with pytest.raises(ValueError, match="cannot merge a store into itself"):
        into.merge_from(tmp_path / "r.sqlite")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE results (x TEXT)")
    with pytest.raises(ValueError, match=r"other.sqlite is not a results store .*columns \['x'\]"):
        into.merge_from(other)
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all, just some text long enough to have a header" * 20)
    with pytest.raises(ValueError, match="notes.sqlite is not a results store"):
        into.merge_from(text)
    assert into.count() == 0
