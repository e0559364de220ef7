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
from msa_core.eval.sweep import default_grid, eta_text, grid_points, parse_grid, refine_points, run_sweep


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


def test_default_grid_spans_where_the_trade_off_happens():
    # Nothing stored: α ∈ [0, 2], β ∈ [0, 1] in round steps, inside the experiment's ranges.
    assert default_grid((0.0, 5.0), (0.0, 5.0)) == ([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], [0.0, 0.5, 1.0])
    assert default_grid((0.0, 1.0), (0.0, 0.4), n_alpha=5) == ([0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.2, 0.4])
    # Utility (best over β) falls below half the corrupted model's at α = 3: the grid ends there.
    utility = {0.0: 0.5, 1.0: 0.45, 2.0: 0.3, 3.0: 0.2, 4.0: 0.01, 5.0: 0.0}
    stored = [(a, b, u * (1 - b / 10)) for a, u in utility.items() for b in (0.0, 1.0)]
    alphas, betas = default_grid((0.0, 5.0), (0.0, 5.0), stored)
    assert (alphas[0], alphas[-1], len(alphas)) == (0.0, 3.0, 7) and betas == [0.0, 0.5, 1.0]
    # Utility never collapsed up to α = 1: look further (1.5 × the largest stored α, at least 2).
    flat = [(a, 0.0, 0.5) for a in (0.0, 0.5, 1.0)]
    assert default_grid((0.0, 5.0), (0.0, 5.0), flat)[0][-1] == 2.0
    flat = [(a, 0.0, 0.5) for a in (0.0, 2.0, 3.0)]
    assert default_grid((0.0, 4.0), (0.0, 5.0), flat)[0][-1] == 4.0  # 4.5 clipped to the range
    # NaN utilities and a single stored α are ignored.
    assert default_grid((0.0, 5.0), (0.0, 5.0), [(0.0, 0.0, float("nan")), (1.0, 0.0, 0.5)])[0][-1] == 2.0


def test_refine_points_adds_points_around_the_bend_of_the_front():
    """A front with a known knee at α = 2: flat utility up to there, then utility collapses for
    little more forgetting. The first proposals are the midpoints on both sides of the knee."""
    curve = {0.0: (0.0, 1.0), 1.0: (1.0, 0.98), 2.0: (2.0, 0.95), 3.0: (2.2, 0.5), 4.0: (2.4, 0.1)}
    rows = [(a, 0.0, x, y) for a, (x, y) in curve.items()]
    new = refine_points(rows)
    assert new[:2] == [(1.5, 0.0), (2.5, 0.0)]
    assert set(new) == {(0.5, 0.0), (1.5, 0.0), (2.5, 0.0), (3.5, 0.0)}
    assert len(refine_points(rows, max_new=1)) == 1
    # Dominated points (here at β = 1) never steer the refinement; stored points are not proposed again.
    worse = rows + [(a, 1.0, x - 0.5, y - 0.5) for a, (x, y) in curve.items()]
    assert refine_points(worse)[:2] == [(1.5, 0.0), (2.5, 0.0)]
    assert (1.5, 0.0) not in refine_points(rows + [(1.5, 0.0, 1.5, 0.97)])
    # The knee moved along β: the midpoint is in (α, β) between the front neighbours.
    bent = [(0.0, 0.0, 0.0, 1.0), (1.0, 0.0, 1.0, 0.98), (2.0, 1.0, 2.0, 0.95), (3.0, 1.0, 2.2, 0.1)]
    assert refine_points(bent)[:2] == [(1.5, 0.5), (2.5, 1.0)]
    assert refine_points([(0.0, 0.0, 0.0, 1.0)]) == []  # a one-point front has no bend


def test_eta_text():
    assert eta_text(0.2) == "about 1 s left" and eta_text(42.4) == "about 42 s left"
    assert eta_text(200) == "about 3 min left"


def test_a_stopped_sweep_keeps_its_points_and_resumes(tmp_path):
    eng = make_engine(tmp_path, tofu=write_tofu(tmp_path / "tofu", n_forget=3, n_retain=2, n_util=2))
    st, cache = ResultStore(tmp_path / "r.sqlite"), ReferenceCache()
    calls = record_sessions(eng)
    asked = []
    messages = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) > 2

    res = run_sweep(eng, st, [0.0, 1.0, 2.0], [0.0], benchmark="tofu", subset=2, reference_cache=cache,
                    should_stop=stop_after_two, progress=lambda f, m: messages.append(m))
    assert [(r.alpha, r.beta) for r in res] == [(0.0, 0.0), (1.0, 0.0)] and st.count(eng.fingerprint) == 2
    assert "sweep stopped after 2 of 3 points" in messages[-1]
    # Each evaluated point with points still to evaluate carries an estimate of the time left.
    done = [m for m in messages if ": done (" in m]
    assert len(done) == 2 and all(m.endswith(" s left)") for m in done), done
    calls.clear()
    messages.clear()
    res = run_sweep(eng, st, [0.0, 1.0, 2.0], [0.0], benchmark="tofu", subset=2, reference_cache=cache,
                    progress=lambda f, m: messages.append(m))
    assert calls == [(2.0, 0.0)] and len(res) == 3 and st.count(eng.fingerprint) == 3
    assert [m for m in messages if ": done (" in m] == ["α=2 β=0: done (3/3)"]  # the last point: no estimate
