"""The app's Plotly builders (studio/charts.py) over a results grid shaped like the store's."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from msa_core.targets import Point
from msa_core.vectors import LayerNorms
from studio import charts


def _grid() -> pd.DataFrame:
    rows = [{"alpha": a, "beta": b, "tier": "fast", "benchmark": "tofu", "subset": None, "model": "composed",
             "settings_key": "k1",
             "forget_quality": 1e-6 * (1 + a * 1000), "model_utility": 1.0 - a / 10, "forget_prob": 0.5 - a / 10}
            for a in (0.0, 1.0, 2.0) for b in (0.0, 1.0)]
    rows.append({**rows[0], "alpha": None, "beta": None, "model": "reference", "forget_quality": float("nan"),
                 "model_utility": 0.9})
    return pd.DataFrame(rows)


def _methods() -> pd.DataFrame:
    """Named points as ResultStore.method_grid returns them: two NPO epochs, one GradDiff run."""
    return pd.DataFrame([
        {"method": "NPO", "point": "epoch 1", "forget_quality": 1e-4, "model_utility": 0.95},
        {"method": "NPO", "point": "epoch 2", "forget_quality": 0.5, "model_utility": 0.85},
        {"method": "GradDiff", "point": "run", "forget_quality": 0.01, "model_utility": 0.2},
    ])


def test_pareto_front_is_the_set_of_undominated_points():
    g = torch.Generator().manual_seed(1)
    pts = pd.DataFrame({"fq": torch.rand(40, generator=g).tolist(), "mu": torch.rand(40, generator=g).tolist()})
    front = charts.pareto_front(pts, "fq", "mu")
    brute = {i for i, p in pts.iterrows()
             if not any((q.fq >= p.fq and q.mu >= p.mu) and (q.fq > p.fq or q.mu > p.mu) for _, q in pts.iterrows())}
    assert set(front.index) == brute
    assert list(front["fq"]) == sorted(front["fq"])


def test_pareto_front_by_direction_minimises_lower_is_better_metrics():
    pts = pd.DataFrame({"forget_rouge": [0.1, 0.5, 0.05, 0.9], "model_utility": [0.5, 0.9, 0.2, 0.95]})
    front = charts.pareto_front(pts, "forget_rouge", "model_utility", by_direction=True)
    # (0.1, 0.5) and (0.9, 0.95) and (0.5, 0.9) and (0.05, 0.2): each best on some trade-off.
    assert set(front.index) == {0, 1, 2, 3}
    pts.loc[4] = [0.04, 0.96]  # lower ROUGE and higher utility than all: dominates everything
    assert list(charts.pareto_front(pts, "forget_rouge", "model_utility", by_direction=True).index) == [4]


def test_select_rows_composed_runs_and_the_reference_row():
    df = _grid()
    picked = charts.select_rows(df, tier="fast", benchmark="tofu", subset=None)
    assert len(charts.composed(picked)) == 6
    assert charts.select_rows(df, tier="full", benchmark="tofu", subset=None).empty
    assert charts.select_rows(df, tier="fast", benchmark="tofu", subset=4).empty
    ref = charts.reference_row(picked)
    assert ref["forget_quality"] == 1.0  # the reference against itself: KS p-value 1
    assert charts.heatmap_metrics(picked, "tofu") == ["forget_quality", "model_utility", "forget_prob"]
    # A second run (another settings key) at the same points is kept apart, and can be left out.
    two = pd.concat([df, charts.composed(df).assign(settings_key="k2")], ignore_index=True)
    assert len(charts.composed(charts.select_rows(two, tier="fast", benchmark="tofu", subset=None))) == 12
    only = charts.select_rows(two, tier="fast", benchmark="tofu", subset=None, settings_keys=["k2"])
    assert set(charts.composed(only)["settings_key"]) == {"k2"} and charts.reference_row(only) is not None


def test_log_ticks_read_as_numbers():
    assert [charts.tick_text(t) for t in charts.log_ticks(1e-3, 1.0)] == ["1e-3", "0.01", "0.1", "1"]
    assert charts.log_ticks(2e-5, 3e-2)[0] == 1e-4 and charts.tick_text(1e-5) == "1e-5"
    # A short span gets 2 and 5 ticks too, inside the data's range only.
    assert charts.log_ticks(0.03, 0.6) == [0.05, 0.1, 0.2, 0.5]


def test_heatmap_ticks_title_layout_and_the_current_point_between_cells():
    df = _grid()
    fig = charts.heatmap(df, "forget_quality", Point(1.0, 0.0))
    title = fig.layout.title
    assert "log colour scale" in title.text and "better" in title.text
    # The title sits just above the plot area, below the toolbar row, and never runs wider
    # than a half-width chart: each line at most TITLE_CHARS characters.
    assert (title.yref, title.yanchor) == ("container", "top")
    assert (1 - title.y) * fig.layout.height >= charts.MODEBAR_PX  # its top is below the toolbar row
    assert all(len(line) <= charts.TITLE_CHARS for line in title.text.split("<br>"))
    lines = title.text.count("<br>") + 1
    assert fig.layout.margin.t >= charts.MODEBAR_PX + 18 * lines
    # Colour-bar ticks of log10 values read as numbers.
    bar = fig.data[0].colorbar
    assert list(bar.ticktext) == [charts.tick_text(10 ** v) for v in bar.tickvals]
    assert "1e-3" in list(bar.ticktext) and all(not t.startswith("-") for t in bar.ticktext)
    # ★ at α=1 (cell 1), β=0 (cell 0); at α=1.5, β=0.25 between the cells (1.5, 0.25).
    star = [a for a in fig.layout.annotations if a.text == "★"]
    assert len(star) == 1 and (star[0].x, star[0].y) == (1.0, 0.0)
    star = [a for a in charts.heatmap(df, "model_utility", Point(1.5, 0.25)).layout.annotations if a.text == "★"][0]
    assert (star.x, star.y) == (1.5, 0.25) and "outside" not in star.hovertext
    far = [a for a in charts.heatmap(df, "model_utility", Point(4.0, 0.0)).layout.annotations if a.text == "★"][0]
    assert far.x == 2.0 and "outside the grid" in far.hovertext
    # A closer-to-0 metric (PrivLeak) is brightest at 0, whatever side the values are on.
    leak = charts.heatmap(df.assign(muse_privleak=[-30.0, -10, 0, 5, 20, 1, None]), "muse_privleak", Point(0, 0))
    assert leak.data[0].zmid == 0 and leak.data[0].colorscale[2][1] == "#fde725"
    # Lower-is-better metrics use the reversed scale, so bright is always better.
    assert charts.heatmap(df, "forget_prob", Point(0.0, 0.0)).data[0].colorscale != \
        charts.heatmap(df, "model_utility", Point(0.0, 0.0)).data[0].colorscale


def test_a_ragged_grid_marks_its_missing_cells_instead_of_leaving_holes():
    df = _grid()
    extra = charts.composed(df).iloc[[0]].assign(alpha=0.5, beta=0.0, model_utility=0.7)  # a refinement point
    fig = charts.heatmap(pd.concat([df, extra], ignore_index=True), "model_utility", Point(0.0, 0.0))
    assert list(fig.data[0].x) == ["0", "0.5", "1", "2"] and list(fig.data[0].y) == ["0", "1"]
    grey = [t for t in fig.data if t.name == "not evaluated"]
    assert len(grey) == 1
    missing = [(x, y) for j, y in enumerate(grey[0].y) for i, x in enumerate(grey[0].x)
               if not math.isnan(grey[0].z[j][i])]
    assert missing == [("0.5", "1")]
    assert "1 of 8 cells not evaluated (grey)" in fig.layout.title.text.replace("<br>", " ")
    assert not [t for t in charts.heatmap(df, "model_utility", Point(0, 0)).data if t.name == "not evaluated"]


def test_interpolate_is_bilinear_and_honest_about_missing_corners():
    df = _grid()
    # model_utility = 1 - α/10 whatever β: linear, so interpolation is exact.
    assert charts.interpolate(df, "model_utility", 1.5, 0.5) == pytest.approx(0.85)
    # forget quality interpolates in log10: the geometric mean half-way.
    mid = charts.interpolate(df, "forget_quality", 1.5, 0.0)
    assert mid == pytest.approx(math.sqrt(1.001e-3 * 2.001e-3))
    assert charts.interpolate(df, "model_utility", 2.5, 0.0) is None  # outside the grid
    # (1, 1) not evaluated: the rectangle α ∈ [0, 2] around it is (still exact: linear in α).
    assert charts.interpolate(df.drop(index=[3]), "model_utility", 1.5, 0.5) == pytest.approx(0.85)
    # (0, 1) and (1, 1) not evaluated: no evaluated rectangle around (1.5, 0.5).
    assert charts.interpolate(df.drop(index=[1, 3]), "model_utility", 1.5, 0.5) is None


def test_default_axes_skip_a_utility_that_is_zero_at_the_unlearned_points():
    df = _grid()
    assert charts.default_axes(df) == ("forget_quality", "model_utility")
    df["model_utility_tf"] = 0.6
    zeros = df.assign(model_utility=[0.4, 0.4] + [0.0] * 4 + [0.9])  # 0 at every α > 0
    assert charts.default_axes(zeros) == ("forget_quality", "model_utility_tf")
    assert not charts.informative(zeros, "model_utility") and charts.informative(zeros, "model_utility_tf")
    assert charts.axis_choices(df)[:2] == ["forget_quality", "forget_prob"]
    assert {"model_utility", "model_utility_tf"} <= set(charts.axis_choices(df))


def test_tradeoff_scatter_draws_other_methods_the_front_across_all_and_the_target():
    df = _grid()
    x, y = charts.default_axes(df)
    fig = charts.tradeoff_scatter(df, x, y, Point(0.0, 0.0), charts.reference_row(df), methods=_methods())
    by_name = {t.name: t for t in fig.data}
    assert {"α/β grid", "NPO", "GradDiff", "corrupted (α=β=0)", "reference, retain-only (target)",
            "current point"} <= set(by_name)
    assert list(by_name["NPO"].text) == ["epoch 1", "epoch 2"] and list(by_name["NPO"].y) == [0.95, 0.85]
    # The front spans both series: NPO epoch 2 (0.5, 0.85) and the α=0 grid point (1e-6, 1.0) are on it,
    # the GradDiff point (0.01, 0.2) is dominated by NPO epoch 2.
    front = set(zip(by_name["Pareto front (all series)"].x, by_name["Pareto front (all series)"].y))
    assert (0.5, 0.85) in front and (1e-6, 1.0) in front and (0.01, 0.2) not in front
    ref = by_name["reference, retain-only (target)"]
    assert (ref.x[0], ref.y[0]) == (1.0, 0.9)
    assert fig.layout.xaxis.type == "log" and "right is better" in fig.layout.xaxis.title.text
    assert all(not t.startswith("-") for t in fig.layout.xaxis.ticktext)


def test_tradeoff_scatter_marks_the_current_point_off_the_grid():
    df = _grid()
    fig = charts.tradeoff_scatter(df, "forget_quality", "model_utility", Point(1.5, 0.5), None)
    star = [t for t in fig.data if t.name.startswith("current point")][0]
    assert star.name == "current point (interpolated from the grid)"
    assert star.y[0] == pytest.approx(0.85) and star.x[0] == pytest.approx(math.sqrt(1.001e-3 * 2.001e-3))
    stored = {"forget_quality": 0.3, "model_utility": 0.7}
    fig = charts.tradeoff_scatter(df, "forget_quality", "model_utility", Point(1.5, 0.5), None, current_row=stored)
    star = [t for t in fig.data if t.name.startswith("current point")][0]
    assert star.name == "current point (stored evaluation)" and (star.x[0], star.y[0]) == (0.3, 0.7)
    fig = charts.tradeoff_scatter(df, "forget_quality", "model_utility", Point(4.0, 0.5), None)
    assert not [t for t in fig.data if t.name.startswith("current point")]
    assert any("not evaluated" in a.text for a in fig.layout.annotations)


def test_tradeoff_scatter_draws_each_run_as_its_own_series_and_reverses_lower_is_better_axes():
    df = _grid()
    two = pd.concat([df, charts.composed(df).assign(settings_key="k2", model_utility=0.5)], ignore_index=True)
    fig = charts.tradeoff_scatter(two, "forget_prob", "model_utility", Point(0, 0), None,
                                  run_names={"k1": "first", "k2": "second"})
    names = [t.name for t in fig.data]
    assert "α/β run first" in names and "α/β run second" in names
    assert fig.layout.xaxis.autorange == "reversed" and "axis reversed" in fig.layout.xaxis.title.text


def test_alpha_lines_give_each_metric_its_own_axis():
    df = _grid()
    df["muse_privleak"] = [-30.0 + a for a in (0, 0, 1, 1, 2, 2)] + [None]
    lines = charts.alpha_lines(df, ["forget_quality", "model_utility", "muse_privleak"], beta=0.9, alpha=1.5)
    assert lines.layout.title.text.startswith("Metrics along α at β = 1")
    assert [t.yaxis for t in lines.data] == ["y", "y2", "y3"]  # three separate y axes
    assert list(lines.data[1].x) == [0.0, 1.0, 2.0] and list(lines.data[2].y) == [-30.0, -29.0, -28.0]
    assert lines.layout.yaxis.type == "log" and "1e-3" in list(lines.layout.yaxis.ticktext)
    vlines = [s for s in lines.layout.shapes if s.x0 == s.x1]
    assert [s.x0 for s in vlines] == [1.5, 1.5, 1.5]  # the current α on every chart
    assert [(s.y0, s.yref) for s in lines.layout.shapes if s.y0 == s.y1] == [(0, "y3")]  # PrivLeak's target


def test_layer_norms_figure():
    rows = [LayerNorms("embed", 1.0, 2.0, 0.5, 1), LayerNorms("L0", 3.0, 1.0, -0.2, 4)]
    fig = charts.layer_norms_figure(rows)
    assert [list(t.x) for t in fig.data] == [["embed", "L0"]] * 3
    assert list(fig.data[2].y) == [0.5, -0.2]
    assert tuple(fig.layout.yaxis2.range) == (-1, 1)


@pytest.mark.parametrize("name", ["forget_quality", "model_utility"])
def test_heatmap_metrics_have_values(name):
    assert name in charts.heatmap_metrics(_grid(), "all")


def test_tradeoff_scatter_with_a_metric_only_the_named_points_have():
    df = _grid().drop(columns=["model_utility"]).assign(model_utility_tf=0.5)
    fig = charts.tradeoff_scatter(df, "forget_quality", "model_utility", Point(0, 0), None, methods=_methods())
    by_name = {t.name: t for t in fig.data}
    assert len(by_name["α/β grid"].x) == 0 and list(by_name["NPO"].y) == [0.95, 0.85]


def _choice_grid(shift: float) -> pd.DataFrame:
    """Composed rows of another θ_clean choice: same corrupted point (α = β = 0), other trade-off."""
    return pd.DataFrame([{"alpha": a, "beta": 0.0, "model": "composed", "settings_key": "k9",
                          "forget_quality": 1e-5 * 10 ** (a * shift), "model_utility": 1.0 - a * 0.02}
                         for a in (0.0, 1.0, 2.0)])


def test_the_scatter_draws_other_choices_and_their_points_join_the_pareto_front():
    other = _choice_grid(3.0)  # FQ 1e-5, 1e-2, 10 at utility 1, 0.98, 0.96: dominates the grid's α=2 point
    fig = charts.tradeoff_scatter(_grid(), "forget_quality", "model_utility", Point(1.0, 0.0), None,
                                  choice_series={"θ_clean=pretrain-e10, e_f=final, e_r=final": other},
                                  grid_name="α/β grid · θ_clean=default")
    by_name = {t.name: t for t in fig.data}
    assert "α/β grid · θ_clean=default" in by_name
    series = by_name["θ_clean=pretrain-e10, e_f=final, e_r=final"]
    assert list(series.x) == list(other["forget_quality"]) and list(series.text)[1] == "α=1, β=0"
    front = by_name["Pareto front (all series)"]
    # Every grid point has FQ ≤ 2.001e-3 and utility ≤ 1; the choice's (10, 0.96) and (1e-2, 0.98)
    # beat all grid points but the corrupted ones at utility 1; the front: (1e-5, 1), (1e-2, .98), (10, .96)
    # (the grid's own α=0 points tie at FQ 1e-6 < 1e-5 with the same utility, so they are dominated).
    assert sorted(zip(front.x, front.y)) == [(1e-5, 1.0), (1e-2, 0.98), (10.0, 0.96)]


def test_best_points_keep_ninety_percent_of_the_corrupted_utility_per_series():
    grid = charts.composed(_grid())
    corrupted = grid[(grid["alpha"] == 0) & (grid["beta"] == 0)].iloc[0]
    assert charts.utility_floor(corrupted) == ("model_utility", pytest.approx(0.9))
    table = charts.best_points({"MSA": grid, "other": _choice_grid(3.0)}, _methods(), corrupted)
    rows = {r["series"]: r for r in table.to_dict("records")}
    # MSA: utility 1 − α/10 ≥ 0.9 keeps α ≤ 1; the best FQ there is α = 1: 1e-6 · 1001.
    assert rows["MSA"]["point"] == "α=1, β=0" and rows["MSA"]["forget_quality"] == pytest.approx(1.001e-3)
    # The other choice keeps its utility everywhere (≥ 0.96): its α = 2 point (FQ 10) wins.
    assert rows["other"]["point"] == "α=2, β=0" and rows["other"]["forget_quality"] == pytest.approx(10.0)
    # NPO epoch 2 (FQ 0.5) falls below 0.9 utility (0.85): epoch 1 is its best kept point.
    assert rows["NPO"]["point"] == "epoch 1" and rows["NPO"]["model_utility"] == 0.95
    # GradDiff's one run keeps 0.2: no point qualifies, said so, no numbers.
    assert rows["GradDiff"]["point"] == "none keeps the utility" and not rows["GradDiff"]["kept"]
    assert math.isnan(rows["GradDiff"]["forget_quality"])
    assert list(table.columns)[:4] == ["series", "point", "kept", "model_utility"]
    # Without the corrupted point stored there is no floor: the best forget quality of every point.
    loose = {r["series"]: r for r in charts.best_points({}, _methods(), None).to_dict("records")}
    assert loose["NPO"]["point"] == "epoch 2" and loose["GradDiff"]["kept"]


def test_the_scatter_draws_other_series_when_the_current_choice_has_no_points():
    other = _choice_grid(3.0)
    fig = charts.tradeoff_scatter(pd.DataFrame(), "forget_quality", "model_utility", Point(1.0, 0.0), None,
                                  methods=_methods(), choice_series={"θ_clean=early, e_f=final, e_r=final": other})
    names = [t.name for t in fig.data]
    assert "α/β grid" not in names and "θ_clean=early, e_f=final, e_r=final" in names and "NPO" in names
    front = {(x, y) for t in fig.data if t.name == "Pareto front (all series)" for x, y in zip(t.x, t.y)}
    # early (1e-5, 1), (1e-2, .98), (10, .96) against NPO (1e-4, .95), (0.5, .85), GradDiff (0.01, 0.2)
    assert front == {(1e-5, 1.0), (1e-2, 0.98), (10.0, 0.96)}
