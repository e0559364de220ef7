"""AppTest tests of the view in the URL (studio/links.py): a shared link restores the experiment,
α, β, page and question selection; bad values are warnings; a restart reloads the last experiment."""

from __future__ import annotations

import pytest
from app_fixtures import (  # noqa: F401  (fixtures and helpers)
    MAX_NEW,
    _navigation_mode,
    load_experiment,
    new_app,
    no_exceptions,
    playground,
    set_alpha,
)


def _param(at, name: str):
    value = at.query_params.get(name)
    return value[-1] if isinstance(value, list) else value


def _forget_recent(app_env) -> None:
    (app_env / "recent_experiments.json").unlink(missing_ok=True)


def test_a_shared_link_restores_experiment_point_page_and_questions(tiny_yaml, app_env):
    _forget_recent(app_env)
    at = new_app()
    at.query_params.update(experiment=str(tiny_yaml), alpha="2.5", beta="0.25", page="playground",
                           questions="forget:1,4", pins="0.5:0,4:1")
    at.session_state["w_pg_max_new"] = MAX_NEW
    at.run()
    no_exceptions(at)
    assert not at.warning, [w.value for w in at.warning]
    assert at.session_state["msa_exp_path"] == str(tiny_yaml.resolve())
    assert (at.session_state["msa_alpha"], at.session_state["msa_beta"]) == (2.5, 0.25)
    assert at.sidebar.number_input(key="w_alpha_num").value == pytest.approx(2.5)
    assert at.title[0].value.endswith("Playground")
    assert at.multiselect(key="w_pg_q_forget").value == [1, 4]
    assert at.session_state["msa_answers"]["alpha"] == 2.5 and len(at.session_state["msa_answers"]["questions"]) == 2
    assert {"pin0", "pin1"} <= set(at.session_state["msa_answers"])  # the pinned points are columns again
    # The URL keeps describing the view as it changes.
    assert {k: _param(at, k) for k in ("experiment", "alpha", "beta", "page", "questions", "pins")} == {
        "experiment": str(tiny_yaml.resolve()), "alpha": "2.5", "beta": "0.25", "page": "playground",
        "questions": "forget:1,4", "pins": "0.5:0,4:1"}
    at.button(key="w_pin_remove_0").click().run()
    assert _param(at, "pins") == "4:1"
    set_alpha(at, 3.0)
    at.multiselect(key="w_pg_q_forget").select(0).run()
    assert (_param(at, "alpha"), _param(at, "questions")) == ("3", "forget:1,4,0")
    at.switch_page("pages/probe.py").run()
    assert _param(at, "page") == "probe"


def test_bad_url_values_are_warnings_not_tracebacks(tiny_yaml, app_env, tmp_path):
    _forget_recent(app_env)
    at = new_app()
    at.query_params.update(experiment=str(tiny_yaml), alpha="banana", beta="9", page="nowhere",
                           questions="forget:x", pins="1:9")
    at.run()
    no_exceptions(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "alpha='banana' is not a number" in warnings
    assert "beta=9 is outside the experiment's range [0, 5]" in warnings
    assert "page='nowhere' names no page" in warnings
    assert "questions='forget:x'" in warnings
    assert "pinned beta=9 is outside" in warnings and at.session_state.get("msa_pinned") is None
    assert at.session_state["msa_exp_path"] == str(tiny_yaml.resolve())  # the good values still apply
    assert (at.session_state["msa_alpha"], at.session_state["msa_beta"]) == (1.0, 1.0)
    # The URL now describes what is shown (the bad values are gone).
    assert (_param(at, "alpha"), _param(at, "page")) == ("1", "experiment")
    # A missing experiment file: a warning naming it, and the first-start offer.
    _forget_recent(app_env)
    missing = tmp_path / "gone.yaml"
    at = new_app()
    at.query_params["experiment"] = str(missing)
    at.run()
    no_exceptions(at)
    assert any(str(missing) in w.value and "does not exist" in w.value for w in at.warning)
    assert at.session_state["msa_exp_path"] is None and at.button(key="w_offer_build")
    # Questions outside the set: dropped with a warning.
    at = new_app()
    at.query_params.update(experiment=str(tiny_yaml), page="playground", questions="forget:2,99")
    at.session_state["w_pg_max_new"] = MAX_NEW
    at.run()
    no_exceptions(at)
    assert at.multiselect(key="w_pg_q_forget").value == [2]
    assert any("indices past its end were dropped" in w.value for w in at.warning)


def test_a_restart_reloads_the_last_experiment(tiny_yaml, app_env):
    from studio import resources

    _forget_recent(app_env)
    load_experiment(new_app(), tiny_yaml)  # remembered as the most recent experiment
    resources._restart.clear()  # what a server restart does: a fresh process owes its first session the last one
    try:
        at = new_app().run()  # the first session after the restart, with a bare URL
        no_exceptions(at)
        assert at.session_state["msa_exp_path"] == str(tiny_yaml.resolve())
        assert _param(at, "experiment") == str(tiny_yaml.resolve())
        assert {m.label for m in at.metric} >= {"Parameters", "Device"}
        # A later session with a bare URL is a deliberate fresh start: the first-start offer.
        later = new_app().run()
        assert later.session_state["msa_exp_path"] is None and later.button(key="w_offer_build")
    finally:
        _forget_recent(app_env)
