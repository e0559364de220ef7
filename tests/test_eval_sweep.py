"""msa_core.eval.sweep: the one grid parser, grid points, and resumable sweeps through a real tiny Engine."""

from __future__ import annotations

import tracemalloc

import pytest
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_engine,
    record_sessions,
    write_tofu,
)

from msa_core.eval.run import ReferenceCache
from msa_core.eval.store import ResultStore
from msa_core.eval.sweep import grid_points, parse_grid, run_sweep


def test_parse_grid_and_points():
    assert parse_grid("0,0.5,1") == [0.0, 0.5, 1.0]
    assert parse_grid("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    for bad in ("", "0,x", "1:0:0.5", "0:1", "nan"):
        with pytest.raises(ValueError, match="--alphas"):
            parse_grid(bad, name="--alphas")
    assert grid_points([0, 1], [0, 0.5, 0.5]) == [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)]


def test_parse_grid_sorts_and_removes_duplicates():
    assert parse_grid(" 1, 0.5,0,0.5 , 1.0") == [0.0, 0.5, 1.0]
    assert parse_grid(f"0.3,{0.1 + 0.2!r}") == [0.3]  # float noise is one value
    assert parse_grid("0:1:0.1")[-1] == 1.0 and len(parse_grid("0:1:0.1")) == 11  # the stop survives float error
    assert parse_grid("2:2:1") == [2.0]


def test_parse_grid_refuses_nan_and_inf_bounds():
    for bad in ("0:inf:1", "nan:1:0.5", "0:1:nan", "-inf:0:1", "0,inf", "1,-inf"):
        with pytest.raises(ValueError, match="values: .* is not finite"):
            parse_grid(bad)


def test_parse_grid_refuses_too_many_points_before_building_them():
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"has 500000001 values, more than the 10000 allowed"):
            parse_grid("0:5:1e-8")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # the 5e8-point list was never built
    with pytest.raises(ValueError, match="--betas: .*11 values, more than the 10 allowed"):
        parse_grid("0:10:1", name="--betas", max_points=10)
    with pytest.raises(ValueError, match="3 values, more than the 2 allowed"):
        parse_grid("0,1,2", max_points=2)
    assert parse_grid("0:9:1", max_points=10) == [float(i) for i in range(10)]


def test_parse_grid_refuses_values_outside_the_range():
    with pytest.raises(ValueError, match=r"alpha: 6 is outside the range \[0, 5\]"):
        parse_grid("0,2,6", name="alpha", within=(0.0, 5.0))
    with pytest.raises(ValueError, match=r"-0.5 is outside the range \[0, 5\]"):
        parse_grid("-0.5:1:0.5", within=(0.0, 5.0))
    assert parse_grid("0:5:2.5", within=(0.0, 5.0)) == [0.0, 2.5, 5.0]  # the bounds are inside


def test_sweep_resumes_after_interrupt_without_loss_or_duplicates(tmp_path):
    eng = make_engine(tmp_path, tofu=write_tofu(tmp_path / "tofu", n_forget=3, n_retain=2, n_util=2))
    fp = eng.fingerprint
    st = ResultStore(tmp_path / "r.sqlite")
    alphas, betas = [0.0, 1.0, 2.0], [0.0, 0.5]
    record_sessions(eng, crash_at=2)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(eng, st, alphas, betas, benchmark="tofu", on_point=lambda r, s: seen.append((r.alpha, r.beta, s)),
                  reference_cache=ReferenceCache())
    assert st.count(fp) == 2 and seen == [(0.0, 0.0, False), (0.0, 0.5, False)]
    assert st.count(f"{fp}#reference") == 1  # the reference is stored once, with the point results

    del eng.session  # drop the crashing wrapper: the engine's own session again
    sessions = record_sessions(eng)
    cache = ReferenceCache()  # a fresh process: nothing in memory
    seen.clear()
    progress = []
    res = run_sweep(eng, st, alphas, betas, benchmark="tofu", progress=lambda f, m: progress.append(f),
                    on_point=lambda r, s: seen.append((r.alpha, r.beta, s)), reference_cache=cache)
    assert sessions == [(1.0, 0.0), (1.0, 0.5), (2.0, 0.0), (2.0, 0.5)]  # only the missing points
    assert [(r.alpha, r.beta) for r in res] == grid_points(alphas, betas)
    assert [s for *_, s in seen] == [True, True, False, False, False, False]
    assert st.count(fp) == 6 and st.count(f"{fp}#reference") == 1
    assert progress[-1] == 1.0 and progress == sorted(progress)
    again = run_sweep(eng, st, alphas, betas, benchmark="tofu", reference_cache=cache)  # all stored
    assert len(sessions) == 4 and [r.flat() for r in again] == [r.flat() for r in res]
    with pytest.raises(ValueError, match="alpha"):
        run_sweep(eng, st, [99.0], [0.0], benchmark="tofu")


def test_a_sweep_of_a_bf16_or_filtered_engine_does_not_reuse_the_plain_sweep(tmp_path):
    """Issue 16 case 4: the sweep's skip-if-stored check keys the model's dtype and module filter."""
    from msa_core.engine import Engine, ModuleFilter

    plain = make_engine(tmp_path, tofu=write_tofu(tmp_path / "tofu", n_forget=3, n_retain=2, n_util=2))
    store, cache = ResultStore(tmp_path / "results.sqlite"), ReferenceCache()
    run_sweep(plain, store, [0.5, 1.0], [0.0], benchmark="tofu", subset=2, reference_cache=cache)
    for kwargs in ({"dtype": "bfloat16"}, {"module_filter": ModuleFilter(include="mlp")}):
        other = Engine.load(plain.experiment, device="cpu", cache_dir=tmp_path / "cache", **kwargs)
        calls = record_sessions(other)
        seen: list[bool] = []
        run_sweep(other, store, [0.5, 1.0], [0.0], benchmark="tofu", subset=2, reference_cache=cache,
                  on_point=lambda _r, was_stored, seen=seen: seen.append(was_stored))
        assert calls == [(0.5, 0.0), (1.0, 0.0)] and seen == [False, False], kwargs
    assert store.count(plain.fingerprint) == 6
    calls = record_sessions(plain)
    run_sweep(plain, store, [0.5, 1.0], [0.0], benchmark="tofu", subset=2, reference_cache=cache)
    assert calls == []  # its own points are still found
