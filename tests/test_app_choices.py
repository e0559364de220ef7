"""AppTest tests of the θ_clean / e_f / e_r pickers (studio.widgets.choice_controls) and of other
choices' series on the Trade-off page.

The experiment is the tiny app experiment plus a checkpoint history: candidate ``early`` (its own
θ_clean, forget and retain fine-tunes), the task-vector baseline (θ_clean = θ_corrupted) and an
``epoch-1`` folder in the default forget fine-tune. The engine the app loaded is read from the
process-wide cache (AppTest runs the app in this process) and checked against a float64 oracle
over the checkpoint files of the chosen folders.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from app_fixtures import (  # noqa: F401  (fixtures and helpers)
    _navigation_mode,
    load_experiment,
    make_tiny_app_experiment,
    new_app,
    no_exceptions,
    set_alpha,
)
from safetensors.torch import load_file
from tiny import rewrite_weights, weights_file

from msa_core import choices as C
from msa_core.choices import Choice, choice_fingerprint, experiment_for
from msa_core.eval import ResultStore
from msa_core.eval.results import EvalResult, MetricValue
from msa_core.experiment import CleanCandidate, save_experiment
from msa_core.experiment import load_experiment as read_experiment
from msa_core.fingerprints import experiment_fingerprint
from studio import labels, resources


def _perturbed_copy(src: Path, dst: Path, seed: int) -> Path:
    """A complete model folder at ``dst``: ``src`` with every tensor moved by small noise."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("epoch-*"))
    g = torch.Generator().manual_seed(seed)
    rewrite_weights(dst, lambda sd: {k: (v + 0.01 * torch.randn(v.shape, generator=g)).contiguous()
                                     for k, v in sd.items()})
    return dst


@pytest.fixture(scope="module")
def history_yaml(app_env, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("choices_app") / "exp"
    path = make_tiny_app_experiment(root)
    exp = read_experiment(path)
    ck = exp.checkpoints
    hist = root / "history"
    early = CleanCandidate("early", _perturbed_copy(ck.clean, hist / "early", 1),
                           _perturbed_copy(ck.forget, hist / "early-forget", 2),
                           _perturbed_copy(ck.retain, hist / "early-retain", 3), before_forget=True, step=10)
    task = CleanCandidate("task-vector", ck.corrupted, _perturbed_copy(ck.corrupted, hist / "tv-forget", 4),
                          _perturbed_copy(ck.corrupted, hist / "tv-retain", 5), before_forget=False, step=40)
    _perturbed_copy(ck.forget, Path(ck.forget) / "epoch-1", 6)  # the default forget fine-tune kept epoch 1
    save_experiment(replace(exp, clean_history=(early, task)), path)
    return path


def _engine(path: Path):
    """The engine the app loaded for ``path`` (st.cache_resource is process-wide)."""
    slot = resources._engine_slot(str(path), path.stat().st_mtime_ns, "auto", "auto", "float32", "one device")
    assert slot.engine is not None, "the app has not loaded the experiment"
    return slot.engine


def _oracle(exp, choice: Choice, alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """θ_c − α(θ_f − θ_clean) + β(θ_r − θ_clean) in float64 from the chosen folders' files."""
    ck = experiment_for(exp, choice).checkpoints
    t = {role: load_file(str(weights_file(getattr(ck, role)))) for role in ("clean", "corrupted", "forget", "retain")}
    return {k: t["corrupted"][k].double() - alpha * (t["forget"][k].double() - t["clean"][k].double())
            + beta * (t["retain"][k].double() - t["clean"][k].double()) for k in t["corrupted"]}


def _assert_weights(engine, exp, choice: Choice, alpha: float, beta: float) -> None:
    want = _oracle(exp, choice, alpha, beta)
    with engine.session(alpha, beta) as model:
        got = {k: v.detach().double() for k, v in model.state_dict().items()}
    checked = 0
    for name, value in want.items():
        if name in got:
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)
            checked += 1
    assert checked >= len(want) - 1  # every tensor of the file (a tied head may be absent from the model)


def test_the_pickers_switch_theta_clean_and_epochs_and_keep_alpha_beta(history_yaml):
    C.clear_memo()
    exp = read_experiment(history_yaml)
    at = load_experiment(new_app(), history_yaml)
    at.run()
    no_exceptions(at)
    clean = at.sidebar.selectbox(key="w_choice_clean")
    assert clean.options == ["default (the experiment's checkpoints) · before forget data",
                             "early · step 10 · before forget data", "task-vector · step 40 · after forget data"]
    assert clean.value == "default"
    assert at.sidebar.selectbox(key="w_choice_ef").options == ["final", "epoch 1"]
    assert at.sidebar.selectbox(key="w_choice_er").disabled  # the retain fine-tune kept no epochs
    engine = _engine(history_yaml)
    base = experiment_fingerprint(exp)
    assert engine.fingerprint == base and engine.choice is None
    set_alpha(at, 0.5)
    key_before = resources.model_key(engine)

    at.sidebar.selectbox(key="w_choice_clean").set_value("early").run()
    no_exceptions(at)
    early = Choice("early")
    assert engine.choice == early and engine.fingerprint == choice_fingerprint(exp, early) != base
    assert resources.model_key(engine) != key_before  # every memo keyed by the engine follows the choice
    assert at.sidebar.number_input(key="w_alpha_num").value == 0.5  # α and β stay
    assert at.sidebar.number_input(key="w_beta_num").value == 1.0
    assert any("Using θ_clean=early, e_f=final, e_r=final" in c.value for c in at.sidebar.caption)
    # "early" kept no epochs: both epoch pickers are disabled and show the final model.
    assert at.sidebar.selectbox(key="w_choice_ef").options == ["final"]
    _assert_weights(engine, exp, early, 0.5, 1.0)

    at.sidebar.selectbox(key="w_choice_clean").set_value("default").run()
    at.sidebar.selectbox(key="w_choice_ef").set_value("epoch 1").run()
    no_exceptions(at)
    epoch = Choice("default", forget_epoch=1)
    assert engine.choice == epoch and engine.fingerprint == choice_fingerprint(exp, epoch)
    assert engine.fingerprint not in (base, choice_fingerprint(exp, early))
    _assert_weights(engine, exp, epoch, 0.5, 1.0)

    # The task-vector baseline: θ_clean = θ_corrupted, so at α = β = 0 and at any point the
    # weights follow θ_c − α τ_f + β τ_r with τ taken from θ_corrupted.
    at.sidebar.selectbox(key="w_choice_clean").set_value("task-vector · step 40 · after forget data").run()
    no_exceptions(at)
    task = Choice("task-vector")
    assert engine.choice == task
    assert at.sidebar.selectbox(key="w_choice_ef").value == "final"  # epoch 1 belongs to the default only
    _assert_weights(engine, exp, task, 0.5, 1.0)

    # Back to the default: the experiment's own fingerprint and weights again.
    at.sidebar.selectbox(key="w_choice_clean").set_value("default").run()
    no_exceptions(at)
    assert engine.choice is None and engine.fingerprint == base
    _assert_weights(engine, exp, Choice(), 0.5, 1.0)

    # A choice that does not exist (a shared link naming epoch 9): the error names it and lists the
    # available epochs; the engine keeps its choice.
    at.session_state["msa_pending_choice"] = Choice("default", forget_epoch=9)
    at.run()
    no_exceptions(at)
    errors = [e.value for e in at.sidebar.error]
    assert any("epoch-9" in e and "available epochs: final, 1" in e for e in errors), errors
    assert engine.choice is None and engine.fingerprint == base


def test_other_choices_are_their_own_series_with_their_best_point(history_yaml, app_env):
    exp = read_experiment(history_yaml)
    at = load_experiment(new_app(), history_yaml)
    engine = _engine(history_yaml)
    store = ResultStore(app_env / "results.sqlite")
    model = engine.model_settings
    subset = 7

    def put(fingerprint: str, alpha: float, fq: float, mu: float) -> None:
        metrics = {"forget_quality": MetricValue("forget_quality", fq),
                   "model_utility": MetricValue("model_utility", mu)}
        store.put(EvalResult(alpha, 0.0, "fast", "tofu", fingerprint,
                             {"key": f"k-{fingerprint}", "model": model, "subset": subset}, 0.0, metrics))

    base, early = experiment_fingerprint(exp), choice_fingerprint(exp, Choice("early"))
    for alpha, fq, mu in ((0.0, 1e-4, 0.5), (1.0, 1e-2, 0.46), (2.0, 0.3, 0.2)):
        put(base, alpha, fq, mu)
    for alpha, fq, mu in ((0.0, 1e-4, 0.5), (1.0, 0.05, 0.47), (2.0, 0.6, 0.4)):
        put(early, alpha, fq, mu)
    at.switch_page("pages/tradeoff.py").run()
    at.number_input(key="w_to_subset").set_value(subset).run()
    no_exceptions(at)
    assert at.toggle(key="w_to_choices").value is True
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    scatter = [s for s in specs if str(s["layout"].get("title", {}).get("text", "")).startswith("Forgetting vs")][0]
    names = [t.get("name") for t in scatter["data"]]
    assert "MSA α/β · θ_clean=default, e_f=final, e_r=final" in names
    assert "θ_clean=early, e_f=final, e_r=final" in names
    best = next(d.value for d in at.dataframe if "series" in d.value.columns)
    rows = {r["series"]: r for r in best.to_dict("records")}
    # Floor: 0.9 × the corrupted model's utility 0.5 = 0.45. Default: α = 1 (FQ 0.01; α = 2 keeps 0.2).
    assert rows["MSA α/β · θ_clean=default, e_f=final, e_r=final"]["point"] == "α=1, β=0"
    # early: α = 2 keeps 0.4 < 0.45, so α = 1 (FQ 0.05) — better than the default's best.
    assert rows["θ_clean=early, e_f=final, e_r=final"]["point"] == "α=1, β=0"
    fq = f"{labels.metric_label('forget_quality', with_direction=False)} {labels.arrow('forget_quality')}"
    assert rows["θ_clean=early, e_f=final, e_r=final"][fq] == pytest.approx(0.05)
    at.toggle(key="w_to_choices").set_value(False).run()
    no_exceptions(at)
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    scatter = [s for s in specs if str(s["layout"].get("title", {}).get("text", "")).startswith("Forgetting vs")][0]
    assert "θ_clean=early, e_f=final, e_r=final" not in [t.get("name") for t in scatter["data"]]


def test_a_choice_round_trips_through_url_parameters(monkeypatch):
    from studio import session

    asked = {}
    monkeypatch.setattr(session, "put", lambda key, value: asked.__setitem__(key, value))
    for choice in (Choice("early", forget_epoch=3), Choice("task-vector"), Choice("default", None, 2)):
        params = session.choice_params(choice)
        session.request_choice_from_params(params)
        assert asked.pop(session.K_PENDING_CHOICE) == choice
    assert session.choice_params(Choice()) == {} and session.choice_params(None) == {}
    session.request_choice_from_params({"alpha": "1"})  # no choice parameter: nothing asked
    assert not asked
    with pytest.raises(ValueError, match="ef="):
        session.request_choice_from_params({"clean": "early", "ef": "three"})
