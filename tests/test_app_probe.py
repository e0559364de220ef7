"""AppTest tests of the Probe page laid out per question (issue 15): one card per model, pinned
points included, the truth ratio explained in the right direction, numbers equal to the core's."""

from __future__ import annotations

import statistics

import pytest
from app_fixtures import (  # noqa: F401  (fixtures and helpers)
    TIMEOUT,
    _navigation_mode,
    load_experiment,
    new_app,
    no_exceptions,
    set_alpha,
)


def _probe(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/probe.py").run()
    no_exceptions(at)
    return at


def test_each_question_is_a_card_with_one_answer_card_per_model(tiny_yaml):
    at = _probe(tiny_yaml)
    at.multiselect(key=next(m.key for m in at.multiselect if m.key.startswith("w_probe_models_"))).select(
        "clean").run()
    at.button(key="w_probe_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    shown = at.session_state["msa_probe_shown"]
    assert len(shown["questions"]) == 3
    for i in range(len(shown["questions"])):
        card = at.main.get_by_key(f"probe_q_{i}")
        assert card.markdown[0].value.startswith(f"**Q{i + 1}.**")
        assert card.markdown[1].value == f"Gold: `{shown['golds'][i]}`"
        models = [c.value for c in card.caption if not c.value.startswith(("p(gold", "TR"))]
        assert models == ["Corrupted (α=β=0)", "Unlearned (α=1, β=1)", "Reference (retain-only)", "Clean (θ_clean)"]
        numbers = [c.value for c in card.caption if c.value.startswith("p(gold")]
        assert numbers == [f"p(gold | q) = {shown['p_gold'][k][i]:.3g} · TR = {shown['tr'][k][i]:.3g}"
                           for k in ("corrupted", "unlearned", "reference", "clean")]
    # No wide table any more: the summary has one row per model and a handful of columns.
    summary = at.main.get_by_key("probe_summary").dataframe[0].value
    assert list(summary["model"]) == ["Corrupted (α=β=0)", "Unlearned (α=1, β=1)", "Reference (retain-only)",
                                      "Clean (θ_clean)"]
    assert len(summary.columns) == 5
    assert summary["median TR"].tolist() == pytest.approx(
        [statistics.median(shown["tr"][k]) for k in ("corrupted", "unlearned", "reference", "clean")])


def test_the_truth_ratio_is_explained_in_the_right_direction(tiny_yaml):
    at = _probe(tiny_yaml)
    text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "TR = P(perturbed) / P(paraphrased)" in text
    assert "**TR < 1**: the true answer is preferred" in text and "**TR > 1**: the wrong answers are preferred" in text
    assert "TR ≈ 1 = it cannot tell (forgotten)" not in text  # the old, wrong caption
    # The ratio shown is the core's TR = P(perturbed) / P(paraphrased), on a separately loaded engine.
    from msa_core.engine import Engine
    from msa_core.eval.probe import truth_ratio_values
    from msa_core.eval.questions import load_question_sets
    from msa_core.experiment import load_experiment as read_experiment
    from msa_core.targets import Point, Side

    at.button(key="w_probe_run").click().run(timeout=TIMEOUT)
    shown = at.session_state["msa_probe_shown"]
    engine = Engine.load(read_experiment(tiny_yaml))
    items = load_question_sets(engine.experiment.data).sets["forget"][:3]
    assert shown["tr"]["corrupted"] == pytest.approx(truth_ratio_values(engine, Side("corrupted"), items), rel=1e-4)
    assert shown["tr"]["unlearned"] == pytest.approx(truth_ratio_values(engine, Point(1.0, 1.0), items), rel=1e-4)


def test_pinned_points_are_probe_columns_too(tiny_yaml):
    at = _probe(tiny_yaml)
    set_alpha(at, 2.0)
    at.button(key="w_pin_add").click().run()
    set_alpha(at, 4.0)
    at.button(key="w_probe_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    shown = at.session_state["msa_probe_shown"]
    assert "pin0" in shown["answers"]
    assert shown["answers"]["pin0"] != shown["answers"]["unlearned"]
    assert any(c.value == "Pinned α=2, β=1" for c in at.main.get_by_key("probe_q_0").caption)
