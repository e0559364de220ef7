"""The app's Plotly builders (studio/charts.py) over a results grid shaped like the store's."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from msa_core.targets import Point
from msa_core.vectors import LayerNorms
from studio import charts


def _grid() -> pd.DataFrame:
    rows = [{"alpha": a, "beta": b, "tier": "fast", "benchmark": "tofu", "subset": None, "model": "composed",
             "forget_quality": 1e-6 * (1 + a * 1000), "model_utility": 1.0 - a / 10, "forget_prob": 0.5 - a / 10}
            for a in (0.0, 1.0, 2.0) for b in (0.0, 1.0)]
    rows.append({**rows[0], "alpha": None, "beta": None, "model": "reference", "forget_quality": float("nan"),
                 "model_utility": 0.9})
    return pd.DataFrame(rows)


def test_pareto_front_is_the_set_of_undominated_points():
    g = torch.Generator().manual_seed(1)
    pts = pd.DataFrame({"fq": torch.rand(40, generator=g).tolist(), "mu": torch.rand(40, generator=g).tolist()})
    front = charts.pareto_front(pts, "fq", "mu")
    brute = {i for i, p in pts.iterrows()
             if not any((q.fq >= p.fq and q.mu >= p.mu) and (q.fq > p.fq or q.mu > p.mu) for _, q in pts.iterrows())}
    assert set(front.index) == brute
    assert list(front["fq"]) == sorted(front["fq"])


def test_select_rows_composed_and_the_reference_row():
    df = _grid()
    picked = charts.select_rows(df, tier="fast", benchmark="tofu", subset=None)
    assert len(charts.composed(picked)) == 6
    assert charts.select_rows(df, tier="full", benchmark="tofu", subset=None).empty
    assert charts.select_rows(df, tier="fast", benchmark="tofu", subset=4).empty
    ref = charts.reference_row(picked)
    assert ref["forget_quality"] == 1.0  # the reference against itself: KS p-value 1
    assert charts.heatmap_metrics(picked, "tofu") == ["forget_quality", "model_utility", "forget_prob"]


def test_heatmap_marks_the_current_point_and_says_which_way_is_better():
    df = _grid()
    fig = charts.heatmap(df, "forget_quality", Point(1.0, 0.0))
    assert "log10" in fig.layout.title.text and "better" in fig.layout.title.text
    assert [t.name for t in fig.data if t.type == "scatter"] == ["current point"]
    assert len(charts.heatmap(df, "model_utility", Point(0.5, 0.0)).data) == 1  # off-grid point: no star
    # Lower-is-better metrics use the reversed scale, so bright is always better.
    assert charts.heatmap(df, "forget_prob", Point(0.0, 0.0)).data[0].colorscale != \
        charts.heatmap(df, "model_utility", Point(0.0, 0.0)).data[0].colorscale


def test_tradeoff_scatter_and_alpha_lines():
    df = _grid()
    x, y = charts.tradeoff_axes(df)
    assert (x, y) == ("forget_quality", "model_utility")
    fig = charts.tradeoff_scatter(df, x, y, Point(0.0, 0.0), charts.reference_row(df))
    names = {t.name for t in fig.data}
    assert {"grid points", "corrupted (α=β=0)", "reference (ideal)", "current point"} <= names
    assert fig.layout.xaxis.type == "log" and "right is better" in fig.layout.xaxis.title.text
    lines = charts.alpha_lines(df, ["forget_quality", "model_utility"], beta=0.9)
    assert lines.layout.title.text == "Metrics along α at β = 1"
    assert list(lines.data[1].x) == [0.0, 1.0, 2.0]


def test_layer_norms_figure():
    rows = [LayerNorms("embed", 1.0, 2.0, 0.5, 1), LayerNorms("L0", 3.0, 1.0, -0.2, 4)]
    fig = charts.layer_norms_figure(rows)
    assert [list(t.x) for t in fig.data] == [["embed", "L0"]] * 3
    assert list(fig.data[2].y) == [0.5, -0.2]
    assert tuple(fig.layout.yaxis2.range) == (-1, 1)


@pytest.mark.parametrize("name", ["forget_quality", "model_utility"])
def test_heatmap_metrics_have_values(name):
    assert name in charts.heatmap_metrics(_grid(), "all")
