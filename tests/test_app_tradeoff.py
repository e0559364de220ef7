"""AppTest tests of the Trade-off page (pages/tradeoff.py): the default grid, ragged grids,
the ★ off the grid, stored runs and clearing one, selectable scatter axes, other methods'
named points, CSV download, refinement and the message after a cancelled sweep.

Each test uses its own "Items per set" value, so its points form their own runs in the
session-wide store; the module starts from a store without the experiment's composed points,
because the first visit derives its default grid from every stored point (tests/test_app.py
and others sweep the same tiny experiment earlier in the session)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import numpy as np
import pytest
from app_fixtures import (  # noqa: F401  (fixtures and helpers)
    TIMEOUT,
    _navigation_mode,
    load_experiment,
    new_app,
    no_exceptions,
    set_alpha,
)

from msa_core.eval import ResultStore
from msa_core.eval.results import EvalResult, MetricValue
from msa_core.eval.store import method_model
from msa_core.experiment import load_experiment as read_experiment
from msa_core.fingerprints import experiment_fingerprint
from studio import charts


@pytest.fixture(autouse=True, scope="module")
def _no_earlier_points(app_env, tiny_yaml):
    """Delete the composed points earlier test files stored for the tiny experiment (their runs only)."""
    store = ResultStore(app_env / "results.sqlite")
    fingerprint = experiment_fingerprint(read_experiment(tiny_yaml))
    for run in store.runs(fingerprint):
        store.delete_run(fingerprint, run.settings_key, tier=run.tier)


def _tradeoff(tiny_yaml, subset: int):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/tradeoff.py").run()
    no_exceptions(at)
    at.number_input(key="w_to_subset").set_value(subset).run()
    no_exceptions(at)
    return at


def _sweep(at, alphas: str, betas: str):
    at.text_input(key="w_to_alphas").set_value(alphas).run()
    at.text_input(key="w_to_betas").set_value(betas).run()
    at.button(key="w_to_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    return at


def _specs(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _values(v) -> list:
    """A Plotly spec's array: a list, or numpy data as {"bdata": base64, "dtype": ...}."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _title(spec: dict) -> str:
    """A figure's title text ("" for an untitled one, e.g. the relearning panel's chart)."""
    return str(spec["layout"].get("title", {}).get("text", ""))


def _fingerprint(tiny_yaml) -> str:
    return experiment_fingerprint(read_experiment(tiny_yaml))


def test_the_default_grid_is_where_the_trade_off_happens(tiny_yaml):
    at = _tradeoff(tiny_yaml, 2)
    # The experiment allows α, β ∈ [0, 5]; nothing is stored for this subset: α 0–2, β 0–1.
    assert at.text_input(key="w_to_alphas").value == "0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2"
    assert at.text_input(key="w_to_betas").value == "0, 0.5, 1"
    assert at.button(key="w_to_run").label.startswith("Run / resume sweep (9×3 = 27 points)")
    at.text_input(key="w_to_alphas").set_value("0, 4").run()
    at.button(key="w_to_suggest").click().run()
    no_exceptions(at)
    assert at.text_input(key="w_to_alphas").value.startswith("0, 0.25")


def test_a_ragged_grid_marks_missing_cells_and_the_star_sits_between_cells(tiny_yaml):
    at = _tradeoff(tiny_yaml, 3)
    _sweep(at, "0, 1", "0, 1")
    _sweep(at, "0.5", "0")  # a second sweep with the same settings: one run, one cell of a new column
    assert any("sweep finished" in s.value for s in at.success)
    specs = _specs(at)
    heat = [s for s in specs if s["data"] and s["data"][0]["type"] == "heatmap"]
    assert heat, "no heatmap"
    first = heat[0]
    assert first["data"][0]["x"] == ["0", "0.5", "1"]
    assert [t.get("name") for t in first["data"]] == [None, "not evaluated"]
    assert "1 of 6 cells not evaluated (grey)" in first["layout"]["title"]["text"].replace("<br>", " ")
    for spec in heat:  # titles above the plot area, below the toolbar row, lines that fit half the page
        title = spec["layout"]["title"]
        assert title["yanchor"] == "top" and (1 - title["y"]) * spec["layout"]["height"] >= charts.MODEBAR_PX
        assert all(len(line) <= charts.TITLE_CHARS for line in title["text"].split("<br>"))
        assert spec["layout"]["margin"]["t"] >= charts.MODEBAR_PX + 18 * (title["text"].count("<br>") + 1)
    # The current point (α = 0.75, β = 1 here) is off the grid: ★ between the cells 0.5 and 1.
    set_alpha(at, 0.75)
    at.sidebar.number_input(key="w_beta_num").set_value(1.0).run()
    no_exceptions(at)
    heat = [s for s in _specs(at) if s["data"] and s["data"][0]["type"] == "heatmap"]
    star = [a for a in heat[0]["layout"]["annotations"] if a["text"] == "★"]
    assert [(a["x"], a["y"]) for a in star] == [(1.5, 1.0)]
    scatter = [s for s in _specs(at) if _title(s).startswith("Forgetting vs utility")][0]
    names = [t.get("name") for t in scatter["data"]]
    # (0.75, 1) lies between (0.5, 1), which was not evaluated, and (1, 1): interpolated between
    # the evaluated points (0, 1) and (1, 1), and said so.
    assert "current point (interpolated from the grid)" in names
    # The lines along α: one small chart (own y axis) per metric.
    lines = [s for s in _specs(at) if _title(s).startswith("Metrics along α")][0]
    assert len({t["yaxis"] for t in lines["data"]}) == len(lines["data"]) > 1


def test_runs_can_be_cleared_after_a_confirmation(tiny_yaml, app_env):
    at = _tradeoff(tiny_yaml, 4)
    _sweep(at, "0, 1", "0")
    store = ResultStore(app_env / "results.sqlite")
    fp = _fingerprint(tiny_yaml)
    mine = [r for r in store.runs(fp, tier="fast") if r.subset == 4]
    assert len(mine) == 1 and mine[0].points == 2
    assert at.multiselect(key="w_to_runs").value == [mine[0].settings_key]
    assert at.button(key="w_to_clear").disabled  # nothing is deleted without the confirmation
    at.checkbox(key="w_to_clear_ok").check().run()
    at.button(key="w_to_clear").click().run()
    no_exceptions(at)
    assert not [r for r in store.runs(fp, tier="fast") if r.subset == 4]
    assert store.count(f"{fp}#reference") >= 1  # the reference's results stay
    assert any("deleted 2 stored points" in s.value for s in at.success)
    assert any("No results" in i.value for i in at.info)


def test_other_methods_axes_csv_and_the_reference_target(tiny_yaml, app_env):
    at = _tradeoff(tiny_yaml, 5)
    _sweep(at, "0, 1, 2", "0")
    store = ResultStore(app_env / "results.sqlite")
    fp = _fingerprint(tiny_yaml)
    for point, fq, mu in (("epoch 1", 0.02, 0.3), ("epoch 2", 0.2, 0.25)):
        metrics = {"forget_quality": MetricValue("forget_quality", fq),
                   "model_utility_tf": MetricValue("model_utility_tf", mu),
                   "model_utility": MetricValue("model_utility", mu)}
        res = EvalResult(0.0, 0.0, "fast", "tofu", fp, {"key": "npo-test"}, 0.0, metrics)
        store.put(replace(res, model=method_model("NPO-test", point)))
    at.run()
    no_exceptions(at)
    assert at.toggle(key="w_to_methods").value is True
    # The default y is the first utility that is not 0 at most unlearned points (on these random
    # tiny models that may be the retain probability); the NPO-test points have the teacher-forced utility.
    assert charts.metric_label("model_utility_tf") in at.selectbox(key="w_to_y").options
    at.selectbox(key="w_to_y").set_value("model_utility_tf").run()
    no_exceptions(at)
    scatter = [s for s in _specs(at) if _title(s).startswith("Forgetting vs utility")][0]
    by_name = {t.get("name"): t for t in scatter["data"]}
    assert _values(by_name["NPO-test"]["y"]) == [0.3, 0.25]
    assert _values(by_name["NPO-test"]["x"]) == [0.02, 0.2] and by_name["NPO-test"]["text"] == ["epoch 1", "epoch 2"]
    assert "reference, retain-only (target)" in by_name and "Pareto front (all series)" in by_name
    xaxis, yaxis = scatter["layout"]["xaxis"], scatter["layout"]["yaxis"]
    assert xaxis["type"] == "log" and "right is better" in xaxis["title"]["text"]
    assert yaxis["title"]["text"].startswith("Model utility (teacher-forced) (↑)")
    # Another y metric that the named points lack: the axis follows, the method series is left out.
    at.selectbox(key="w_to_y").set_value("forget_truth_ratio").run()
    no_exceptions(at)
    scatter = [s for s in _specs(at) if _title(s).startswith("Forgetting vs utility")][0]
    ytitle = scatter["layout"]["yaxis"]["title"]["text"]
    assert charts.metric_label("forget_truth_ratio", with_direction=False) in ytitle
    assert "NPO-test" not in {t.get("name") for t in scatter["data"]}
    csv = at.get("download_button")
    assert csv and "CSV" in csv[0].proto.label and not csv[0].proto.disabled


def test_refine_adds_the_proposed_points_and_a_cut_short_sweep_is_reported(tiny_yaml, app_env):
    at = _tradeoff(tiny_yaml, 6)
    _sweep(at, "0, 1, 2", "0, 1")
    button = at.button(key="w_to_refine")
    store = ResultStore(app_env / "results.sqlite")
    fp = _fingerprint(tiny_yaml)
    before = sum(r.points for r in store.runs(fp, tier="fast") if r.subset == 6)
    assert before == 6
    if button.disabled:  # a one-point front (one grid point dominates all): nothing to refine
        assert "Needs a front" in button.help
    else:
        n = int(button.label.split("+")[1].split()[0])
        proposed = button.help.split("New: ")[1]
        button.click().run(timeout=TIMEOUT)
        no_exceptions(at)
        assert sum(r.points for r in store.runs(fp, tier="fast") if r.subset == 6) == before + n
        assert any("refinement finished" in s.value for s in at.success) and proposed
    # The next run after a sweep that a click cut short (its flag still set) says so.
    at.session_state["msa_to_sweep_running"] = {"points": 27}
    at.run()
    no_exceptions(at)
    assert any("sweep of 27 points was cancelled" in w.value for w in at.warning)
    at.run()
    assert not any("cancelled" in w.value for w in at.warning)


def test_method_series_and_the_best_point_per_series_at_ninety_percent_utility(tiny_yaml, app_env):
    at = _tradeoff(tiny_yaml, 8)
    # No clean_history and no epoch folders: no θ_clean / epoch pickers, no other-choices series.
    assert "w_choice_clean" not in [s.key for s in at.sidebar.selectbox]
    store = ResultStore(app_env / "results.sqlite")
    fp = _fingerprint(tiny_yaml)
    model = {"dtype": "float32", "device": "cpu", "module_filter": None}  # the tiny engine's model settings

    def metrics(fq: float, mu: float, rouge: float) -> dict:
        return {"forget_quality": MetricValue("forget_quality", fq), "model_utility": MetricValue("model_utility", mu),
                "forget_rouge": MetricValue("forget_rouge", rouge)}

    # α/β points (utility 0.8 at the corrupted point: floor 0.72).
    for alpha, fq, mu, rouge in ((0.0, 1e-4, 0.8, 0.9), (1.0, 0.03, 0.75, 0.5), (2.0, 0.4, 0.3, 0.1)):
        store.put(EvalResult(alpha, 0.0, "fast", "tofu", fp, {"key": "to-best-8", "model": model, "subset": 8},
                             0.0, metrics(fq, mu, rouge)))
    # Two methods' epochs: GA-t8 keeps the utility only at epoch 1; NPO-t8 at both (epoch 2 forgets more).
    for method, point, fq, mu, rouge in (("GA-t8", "epoch-1", 0.001, 0.78, 0.7), ("GA-t8", "epoch-2", 0.5, 0.1, 0.0),
                                         ("NPO-t8", "epoch-1", 0.002, 0.79, 0.6),
                                         ("NPO-t8", "epoch-2", 0.09, 0.73, 0.3)):
        res = EvalResult(0.0, 0.0, "fast", "tofu", fp, {"key": "to-best-8-m"}, 0.0, metrics(fq, mu, rouge))
        store.put(replace(res, model=method_model(method, point)))
    at.run()
    no_exceptions(at)
    assert at.toggle(key="w_to_choices").disabled
    at.selectbox(key="w_to_y").set_value("model_utility").run()
    no_exceptions(at)
    scatter = [s for s in _specs(at) if _title(s).startswith("Forgetting vs utility")][0]
    by_name = {t.get("name"): t for t in scatter["data"]}
    assert by_name["GA-t8"]["text"] == ["epoch-1", "epoch-2"] and _values(by_name["NPO-t8"]["y"]) == [0.79, 0.73]
    assert _values(by_name["α/β grid"]["x"]) == [1e-4, 0.03, 0.4]
    # The front across every series, by hand: NPO-t8 epoch-1 (0.002, 0.79) and the grid's
    # (1e-4, 0.8) … (0.4, 0.3); the GA epoch-2 (0.5, 0.1) has the highest forget quality.
    front = by_name["Pareto front (all series)"]
    assert (0.5, 0.1) in set(zip(_values(front["x"]), _values(front["y"])))
    assert (1e-4, 0.8) in set(zip(_values(front["x"]), _values(front["y"])))
    best = next(d.value for d in at.dataframe if "series" in d.value.columns)
    rows = {r["series"]: r for r in best.to_dict("records")}
    fq_col = f"{charts.metric_label('forget_quality', with_direction=False)} ↑"
    rouge_col = f"{charts.metric_label('forget_rouge', with_direction=False)} ↓"
    # Floor 0.72: MSA's α = 1 (0.75) — α = 2 keeps 0.3; GA-t8 epoch-1; NPO-t8 epoch-2 (0.73, FQ 0.09).
    assert (rows["MSA α/β"]["point"], rows["MSA α/β"][fq_col], rows["MSA α/β"][rouge_col]) == ("α=1, β=0", 0.03, 0.5)
    assert rows["GA-t8"]["point"] == "epoch-1" and rows["GA-t8"][fq_col] == 0.001
    assert rows["NPO-t8"]["point"] == "epoch-2" and rows["NPO-t8"][fq_col] == 0.09 and rows["NPO-t8"]["kept"]
    assert list(best.columns)[2:4] == ["kept", f"{charts.metric_label('model_utility', with_direction=False)} ↑"]
    assert any("Floor: Model utility ≥ 0.72" in c.value for c in at.caption)
