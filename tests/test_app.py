"""Streamlit AppTest tests for the entrypoint and every page of the MSA Studio app.

A tiny experiment (five random 2-layer Llama checkpoints from ``tiny.py`` plus a tiny
TOFU-format data folder) is built once per test session into a private MSA_CACHE_DIR, so
these run on the CPU in seconds per page. The quick embedded demo, built through the
first-start button, is covered by a ``slow`` test.

Pure helpers are tested beside their modules (tests/test_studio_*.py, test_eval_probe.py,
test_eval_questions.py, test_eval_store.py); this file drives the pages.

Over ~400 lines on purpose: it mirrors app.py, whose pages only run inside it (the shared
sidebar and session state come from app.py), and every flow shares the session-scoped tiny
experiment and the AppTest helpers below; split it per page if a page's flows outgrow it.

NOTE on ``pages/``: AppTest resets Streamlit's "v1 pages/ folder" flag before every run,
so from the second run on it would execute the page alone, without app.py. A real server
clears that flag for good at the first ``st.navigation`` call; the ``_navigation_mode``
fixture reproduces that. Remove it with studio.widgets.page_guard (same cause).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from app_fixtures import (  # noqa: F401  (fixtures and helpers)
    APP,
    MAX_NEW,
    ROOT,
    TIMEOUT,
    _navigation_mode,
    independent_answers,
    load_experiment,
    make_tiny_app_experiment,
    new_app,
    no_exceptions,
    playground,
    set_alpha,
    submit_experiment,
)
from safetensors.torch import load_file
from tiny import make_checkpoints


# ----------------------------------------------------------------------------- entrypoint
def test_first_start_offers_the_demo(app_env):
    at = new_app().run()
    no_exceptions(at)
    assert at.title[0].value.endswith("Experiment")
    assert at.button(key="w_offer_build").label == "Build the embedded demo"
    # MSA_DEMO_QUICK=1 makes the quick demo the default choice; the offer is the one build control.
    assert at.radio(key="w_offer_kind").value == "quick"
    assert not [b for b in at.sidebar.button if b.key == "w_demo_build"]
    # Every page without an experiment shows the offer, not an error.
    for page in ("playground", "tradeoff", "probe", "export"):
        at.switch_page(f"pages/{page}.py").run()
        no_exceptions(at)
        assert at.button(key="w_offer_build")


def test_bad_experiment_path_shows_error(app_env, tmp_path):
    at = new_app().run()
    at.sidebar.radio(key="w_exp_source").set_value("Experiment file").run()
    missing = tmp_path / "nope.yaml"
    assert any(str(missing) in e and "does not exist" in e for e in submit_experiment(at, missing))
    # Malformed YAML and a file missing its checkpoints each get a readable error naming the problem.
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert any("not valid YAML" in e for e in submit_experiment(at, bad))
    partial = tmp_path / "partial.yaml"
    partial.write_text("name: x\ncheckpoints:\n  clean: a\n")
    assert any("checkpoints.corrupted is missing" in e for e in submit_experiment(at, partial))
    # The app is still usable: still no experiment, the demo offer is still there.
    assert at.session_state["msa_exp_path"] is None
    assert at.button(key="w_offer_build")


def test_mismatched_checkpoints_show_error(app_env, tmp_path):
    """Checkpoints of different shapes: loading fails with st.error naming the tensor, no traceback."""
    a = make_checkpoints(tmp_path / "a", seed=5)
    torch.manual_seed(0)
    from tiny import save_model, tiny_config
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(a.checkpoints.clean)
    wide = LlamaForCausalLM(tiny_config(len(tok), layers=3))
    save_model(wide, tok, tmp_path / "a" / "retain")
    at = new_app().run()
    at.sidebar.radio(key="w_exp_source").set_value("Experiment file").run()
    submit_experiment(at, tmp_path / "a" / "experiment.yaml")
    errors = " ".join(e.value for e in at.error)
    assert "not compatible" in errors and "retain" in errors
    assert at.session_state["msa_exp_path"] is None
    assert at.button(key="w_offer_build")


def test_experiment_page_after_loading(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert metrics["Vectors"] in ("computed", "from cache")
    params = sum(t.numel() for t in load_file(str(Path(tiny_yaml).parent / "corrupted" / "model.safetensors")).values())
    assert metrics["Parameters"] == f"{params / 1e6:.2f} M"
    assert any("compatible" in s.value for s in at.success)
    assert at.get("plotly_chart"), "per-layer norm chart missing"
    # The sidebar shows the engine and the vector cache.
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "Vectors:" in captions and f"Device `{metrics['Device']}`" in captions


def test_sliders_number_inputs_presets_and_page_switch(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    at.sidebar.slider(key="w_alpha_slider").set_value(2.5).run()
    assert at.sidebar.number_input(key="w_alpha_num").value == pytest.approx(2.5)
    at.sidebar.number_input(key="w_beta_num").set_value(0.123).run()
    assert at.session_state["msa_beta"] == pytest.approx(0.123)
    # The values survive a page switch (the widgets live in the entrypoint).
    at.switch_page("pages/export.py").run()
    no_exceptions(at)
    assert at.session_state["msa_alpha"] == pytest.approx(2.5)
    assert at.sidebar.number_input(key="w_beta_num").value == pytest.approx(0.123)
    at.sidebar.button(key="w_preset_corrupted").click().run()
    assert (at.session_state["msa_alpha"], at.session_state["msa_beta"]) == (0.0, 0.0)
    at.sidebar.button(key="w_preset_paper").click().run()
    assert (at.session_state["msa_alpha"], at.session_state["msa_beta"]) == (1.0, 1.0)
    assert at.sidebar.slider(key="w_alpha_slider").value == pytest.approx(1.0)
    # An out-of-range value is refused by the widget itself (the range comes from the experiment).
    assert at.sidebar.number_input(key="w_alpha_num").max == pytest.approx(5.0)


def test_playground_slider_changes_only_the_unlearned_column(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    at.sidebar.button(key="w_preset_corrupted").click().run()
    playground(at)
    at.number_input(key="w_pg_max_new").set_value(MAX_NEW).run()
    no_exceptions(at)
    first = dict(at.session_state["msa_answers"])
    assert first["alpha"] == 0.0 and len(first["questions"]) == 3
    # At (0, 0) the unlearned model is the corrupted one.
    assert first["unlearned"] == first["corrupted"]
    assert {"reference", "clean"} <= set(first)
    set_alpha(at, 5.0)
    second = dict(at.session_state["msa_answers"])
    assert second["alpha"] == 5.0
    assert second["corrupted"] == first["corrupted"]
    assert second["unlearned"] != first["unlearned"]
    assert second["unlearned"] == independent_answers(tiny_yaml, 5.0, 0.0, second["questions"])
    # Gold answers, the gold-fact marks and p(gold) are drawn for every column.
    md = " ".join(m.value for m in at.markdown)
    assert "Gold: `In Velmora.`" in md and ("forget fact gone" in md or "forget fact still leaked" in md)
    assert sum("p(gold | q)" in c.value for c in at.caption) == 3 * 4
    assert any("compose" in c.value and "generation" in c.value for c in at.caption)


def test_playground_custom_prompt_and_metrics_panel(tiny_yaml, app_env):
    at = load_experiment(new_app(), tiny_yaml)
    playground(at)
    at.number_input(key="w_pg_max_new").set_value(MAX_NEW).run()
    at.selectbox(key="w_pg_source").set_value("custom prompt").run()
    at.text_area(key="w_pg_custom").set_value("Who is Ana Lenz?").run()
    no_exceptions(at)
    assert at.session_state["msa_answers"]["questions"] == ["Who is Ana Lenz?"]
    at.number_input(key="w_pg_subset").set_value(4).run()
    at.button(key="w_pg_metrics").click().run()
    no_exceptions(at)
    labels = [m.label for m in at.metric]
    assert any(label.startswith("Forget quality") for label in labels)
    last = at.session_state["msa_last_metrics"]
    assert last["alpha"] == 1.0 and "forget_truth_ratio" in last["metrics"]
    # Both points went to the results store that `msa eval` and the Trade-off page use.
    from msa_core.eval import ResultStore

    store = ResultStore(app_env / "results.sqlite")
    from msa_core.eval.settings import settings_lookup_key

    want = settings_lookup_key(last["settings"])  # same model settings, data, subset and benchmark
    assert store.latest(last["fingerprint"], 0.0, 0.0, tier="fast", lookup_key=want) is not None
    here = store.latest(last["fingerprint"], 1.0, 1.0, tier="fast", lookup_key=want)
    assert here is not None and here.settings_key == last["settings"]["key"]
    # A fresh session reads them back from the store: the tiles show without computing.
    again = playground(load_experiment(new_app(), tiny_yaml))
    again.number_input(key="w_pg_subset").set_value(4).run()
    no_exceptions(again)
    assert any(m.label.startswith("Forget quality") for m in again.metric)


def test_probe_page(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/probe.py").run()
    no_exceptions(at)
    assert at.selectbox(key="w_probe_entity_forget").options[0].startswith("Ana Lenz (3 QA pairs)")
    at.button(key="w_probe_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    shown = at.session_state["msa_probe_shown"]
    assert shown["golds"] == ["In Velmora.", "Mystery novels.", "A baker and a pilot."]
    assert {"corrupted", "unlearned", "reference"} <= set(shown["answers"])
    assert all(0 <= p <= 1 for p in shown["p_gold"]["corrupted"])
    assert all(t > 0 for t in shown["tr"]["unlearned"])
    # Paraphrased questions and the extraction prompts are answered too.
    assert any(m.value.replace("\\", "").startswith("**P1.** Tell me:") for m in at.markdown)
    assert any("Tell me everything about Ana Lenz" in m.value for m in at.markdown)


def test_tradeoff_sweep_fills_the_charts(tiny_yaml, app_env):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/tradeoff.py").run()
    no_exceptions(at)
    at.text_input(key="w_to_alphas").set_value("0, 5").run()
    at.text_input(key="w_to_betas").set_value("0").run()
    at.button(key="w_to_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    charts = at.get("plotly_chart")
    assert len(charts) >= 3  # heatmaps + scatter + lines
    from msa_core.eval import ResultStore
    from msa_core.experiment import load_experiment as read_experiment
    from msa_core.fingerprints import experiment_fingerprint

    fp = experiment_fingerprint(read_experiment(tiny_yaml))
    df = ResultStore(app_env / "results.sqlite").grid(fp)
    assert {(0.0, 0.0), (5.0, 0.0)} <= set(zip(df["alpha"], df["beta"]))
    # The "best" preset now points at a stored point.
    at.run()
    assert not at.sidebar.button(key="w_preset_best").disabled
    # MUSE data: its own sweep and heatmaps (Min-K% AUC, PrivLeak), titles saying which way is better.
    at.radio(key="w_to_bench").set_value("muse").run()
    at.button(key="w_to_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    titles = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "MUSE PrivLeak" in titles and "closer to 0 is better" in titles
    # The grid is parsed like `msa sweep --alphas`: sorted, duplicates removed, ranges checked.
    at.text_input(key="w_to_alphas").set_value("2, 0,0.5 ,2").run()
    assert at.button(key="w_to_run").label.startswith("Run / resume sweep (3×1 = 3 points)")
    at.text_input(key="w_to_alphas").set_value("0:1:0.5").run()
    assert at.button(key="w_to_run").label.startswith("Run / resume sweep (3×1")
    at.text_input(key="w_to_alphas").set_value("6").run()
    assert any("outside" in e.value for e in at.error)
    # A bad grid value is an error, not a traceback.
    at.text_input(key="w_to_alphas").set_value("0, banana").run()
    no_exceptions(at)
    assert any("banana" in e.value for e in at.error)


def test_export_page_writes_a_model_and_refuses_to_overwrite(tiny_yaml, tmp_path):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/export.py").run()
    no_exceptions(at)
    out = tmp_path / "unlearned"
    at.text_input(key="w_export_out").set_value(str(out)).run()
    at.button(key="w_export_btn").click().run()
    no_exceptions(at)
    assert (out / "config.json").is_file() and (out / "msa.json").is_file() and (out / "README.md").is_file()
    info = json.loads((out / "msa.json").read_text())
    assert (info["alpha"], info["beta"]) == (1.0, 1.0)
    code = at.code[0].value
    assert f"msa compose {tiny_yaml} --alpha 1 --beta 1 --out {out}" in code
    at.button(key="w_export_btn").click().run()
    no_exceptions(at)
    assert any("already exists" in e.value for e in at.error)
    at.button(key="w_export_metrics").click().run()
    no_exceptions(at)
    assert at.get("download_button")


# ----------------------------------------------------------------------------- resilience (issue 16)
def test_an_unexpected_load_error_shows_once_and_leaves_a_usable_app(app_env, tiny_yaml, tmp_path):
    """Case 17: a TypeError from deep inside loading (not a core error type) is one readable error,
    the experiment choice is cleared, and choosing another experiment then works."""
    from msa_core.engine import Engine

    make_checkpoints(tmp_path / "fresh", seed=11)  # not loaded by this process yet
    fresh = tmp_path / "fresh" / "experiment.yaml"
    at = new_app().run()
    at.sidebar.radio(key="w_exp_source").set_value("Experiment file").run()
    with pytest.MonkeyPatch.context() as mp:

        def broken(*args, **kwargs):
            raise TypeError("LlamaConfig.__init__() got an unexpected keyword argument 'rope_kind'")

        mp.setattr(Engine, "load", classmethod(broken))
        submit_experiment(at, fresh)  # asserts no exception escaped
        errors = [e.value for e in at.error]
        assert len(errors) == 1, errors
        assert f"Could not load experiment {fresh}" in errors[0] and "TypeError" in errors[0]
        assert "rope_kind" in errors[0]
        assert at.session_state["msa_exp_path"] is None
        assert at.title[0].value.endswith("Experiment") and at.button(key="w_offer_build")
        at.run()  # no traceback loop: a rerun is quiet and still usable
        no_exceptions(at)
        assert at.session_state["msa_exp_path"] is None and len(at.error) == 1
    assert not submit_experiment(at, tiny_yaml)  # another experiment now loads
    assert not at.error and at.session_state["msa_exp_path"] == str(tiny_yaml.resolve())
    assert {m.label for m in at.metric} >= {"Parameters", "Device", "Dtype"}


def test_device_select_offers_only_this_machines_devices(tiny_yaml):
    """Case 16 (app): the Device select lists 'auto' plus available_devices(); a device the
    machine lacks (a stale session value) is reset to auto instead of crashing the page."""
    from msa_core.engine import available_devices

    at = load_experiment(new_app(), tiny_yaml)
    select = at.selectbox(key="w_msa_device")
    assert select.options == ["auto", *available_devices()]
    assert at.selectbox(key="w_msa_dtype").options == ["auto", "float32", "bfloat16", "float16"]
    at.session_state["msa_device"] = "cuda:99"
    at.run()
    no_exceptions(at)
    assert at.session_state["msa_device"] == "auto" and at.selectbox(key="w_msa_device").value == "auto"
    # the same for the Vectors and Placement selects: back on their first option, not on "auto"
    at.session_state["msa_vector_dtype"] = "int4"
    at.session_state["msa_placement"] = "auto"  # offered only with several GPUs
    at.run()
    no_exceptions(at)
    assert at.session_state["msa_vector_dtype"] == "float32" and at.session_state["msa_placement"] == "one device"


def test_a_bad_device_or_dtype_is_one_clear_error(app_env, tmp_path):
    """Case 16 (app): loading with a device this machine lacks, or an unknown dtype, shows one
    error naming it (and the available devices); the app stays usable."""
    from msa_core.engine import available_devices

    make_checkpoints(tmp_path / "fresh", seed=12)
    fresh = tmp_path / "fresh" / "experiment.yaml"
    for key, value, expected in (("msa_device", "cuda:99", "device 'cuda:99' is not available on this machine"),
                                 ("msa_dtype", "int8", "unknown model dtype 'int8'")):
        at = new_app().run()
        at.sidebar.radio(key="w_exp_source").set_value("Experiment file").run()
        at.sidebar.text_input(key="w_exp_path_input").set_value(str(fresh)).run()
        at.session_state[key] = value  # what no widget offers (e.g. a session from another machine)
        at.sidebar.button(key="w_exp_load").click().run()
        no_exceptions(at)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and expected in errors[0], errors
        if key == "msa_device":
            assert "available devices: " + ", ".join(available_devices()) in errors[0]
        assert at.session_state["msa_exp_path"] is None and at.button(key="w_offer_build")
        assert at.session_state[key] == "auto"  # the Experiment page put its select back on a valid choice


@pytest.mark.slow
def test_first_start_builds_the_quick_demo(app_env):
    pytest.importorskip("msa_core.demo")
    at = new_app().run()
    at.button(key="w_offer_build").click().run(timeout=900)
    no_exceptions(at)
    at.run(timeout=600)
    no_exceptions(at)
    assert at.session_state["msa_exp_path"].endswith("experiment.yaml")
    assert "demo" in at.session_state["msa_exp_path"]
    assert {m.label for m in at.metric} >= {"Parameters", "Vectors"}
