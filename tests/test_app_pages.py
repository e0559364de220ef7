"""AppTest tests of the Experiment page's first screen and the Export page (issue 15's smaller fixes)."""

from __future__ import annotations

import json
import shlex

from app_fixtures import _navigation_mode, load_experiment, new_app, no_exceptions  # noqa: F401


def _sidebar_keys(at, kind: str) -> list[str]:
    return [w.key for w in getattr(at.sidebar, kind)]


def test_first_screen_has_one_demo_build_control_and_the_sidebar_uses_its_wording(app_env, tiny_yaml):
    from studio.widgets import DEMO_BUILD_LABEL, DEMO_SIZES

    at = new_app().run()
    no_exceptions(at)
    assert at.title[0].value.endswith("Experiment")
    offer = at.button(key="w_offer_build")
    assert offer.label == DEMO_BUILD_LABEL
    assert list(at.radio(key="w_offer_kind").options) == list(DEMO_SIZES.values())
    # No second build control in the sidebar on the first screen: it points at the page's offer.
    assert "w_demo_build" not in _sidebar_keys(at, "button")
    assert "w_demo_kind" not in _sidebar_keys(at, "radio")
    assert any(DEMO_BUILD_LABEL in c.value for c in at.sidebar.caption)
    # Once an experiment is loaded (no offer on the page), the sidebar's control says the same words.
    load_experiment(at, tiny_yaml)
    at.sidebar.radio(key="w_exp_source").set_value("Embedded demo").run()
    no_exceptions(at)
    assert not [b for b in at.button if b.key == "w_offer_build"]
    assert at.sidebar.button(key="w_demo_build").label == DEMO_BUILD_LABEL
    assert list(at.sidebar.radio(key="w_demo_kind").options) == list(DEMO_SIZES.values())


def test_the_sidebar_demo_size_starts_on_the_quick_demo_in_use(app_env, tmp_path, monkeypatch):
    """With Full as the default, a session on the quick demo (its folder is cache/demo-quick) sees
    Quick selected in the sidebar; a session on another experiment sees the default."""
    from app_fixtures import make_tiny_app_experiment

    monkeypatch.setenv("MSA_DEMO_QUICK", "0")
    for folder, want in (("demo-quick", "quick"), ("other", "full")):
        path = make_tiny_app_experiment(tmp_path / folder)
        at = load_experiment(new_app(), path)
        at.sidebar.radio(key="w_exp_source").set_value("Embedded demo").run()
        no_exceptions(at)
        assert at.sidebar.radio(key="w_demo_kind").value == want, folder


def _export(at, out) -> None:
    at.text_input(key="w_export_out").set_value(str(out)).run()
    at.button(key="w_export_btn").click().run()
    no_exceptions(at)


def test_export_over_an_existing_folder_names_the_overwrite_checkbox_and_it_works(tiny_yaml, tmp_path):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/export.py").run()
    no_exceptions(at)
    out = tmp_path / "unlearned"
    _export(at, out)
    assert (out / "msa.json").is_file() and not at.error
    first = (out / "msa.json").stat().st_mtime_ns
    _export(at, out)
    errors = " ".join(e.value for e in at.error)
    box = at.checkbox(key="w_export_force")
    assert "already exists" in errors and box.label in errors
    assert "force=True" not in errors and "--force" not in errors  # the API's words, not a UI user's
    assert (out / "msa.json").stat().st_mtime_ns == first  # nothing was replaced
    box.check().run()
    _export(at, out)
    assert not at.error and at.success
    assert json.loads((out / "msa.json").read_text())["alpha"] == 1.0
    assert "--force" in at.code[0].value  # the command line that does the same


def _prompts(code: str) -> list[str]:
    line = next(x for x in code.splitlines() if x.startswith("msa generate "))
    words = shlex.split(line)
    return [words[i + 1] for i, w in enumerate(words) if w == "--prompt"]


def test_export_command_block_wraps_and_asks_the_playground_questions(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/export.py").run()
    no_exceptions(at)
    block = at.code[0]
    assert block.proto.wrap_lines and block.language == "bash"
    # Before the Playground ran: its default selection, the first three questions of the first set (forget).
    forget = json.loads((tiny_yaml.parent / "tofu" / "forget10_perturbed.json").read_text())
    assert _prompts(block.value) == [r["question"] for r in forget[:3]]
    # After the Playground answered a custom question: that question, at the Playground's answer length.
    at.switch_page("pages/playground.py").run()
    at.selectbox(key="w_pg_source").set_value("custom prompt").run()
    at.text_area(key="w_pg_custom").set_value("Who is Ana Lenz's favourite painter?").run()
    no_exceptions(at)
    at.switch_page("pages/export.py").run()
    no_exceptions(at)
    assert _prompts(at.code[0].value) == ["Who is Ana Lenz's favourite painter?"]
    assert "--max-new-tokens 48" in at.code[0].value
