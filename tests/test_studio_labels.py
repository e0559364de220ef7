"""Words and numbers as the app shows them (studio/labels.py)."""

from __future__ import annotations

from studio import labels


def test_md_escape_shows_model_output_literally():
    assert labels.md_escape("*bold* [link](x) $x$ :smile:\nnext") == (
        r"\*bold\* \[link\]\(x\) \$x\$ \:smile\:" + "  \nnext")


def test_formats():
    assert labels.fmt_bytes(512) == "512 B"
    assert labels.fmt_bytes(3 * 1024**2) == "3.0 MiB"
    assert labels.fmt_bytes(5 * 1024**4) == "5.0 TiB" and labels.fmt_bytes(5 * 1024**5) == "5120.0 TiB"
    assert labels.fmt_seconds(0.0123) == "12 ms" and labels.fmt_seconds(2.5) == "2.50 s"


def test_metric_labels_say_which_direction_is_better():
    assert labels.arrow("model_utility") == "↑" and labels.arrow("muse_privleak") == "→"
    assert labels.metric_label("model_utility").startswith("Model utility (↑ higher is better")
    assert labels.metric_label("model_utility", with_direction=False) == "Model utility"
    assert labels.delta_color("model_utility") == "normal"
    assert labels.metric_label("no_such_metric") == "no_such_metric" and labels.arrow("no_such_metric") == ""
    assert labels.delta_color("no_such_metric") == "off" and labels.direction_text("no_such_metric") == ""


def test_eval_cli_lines_repeat_the_settings_of_the_metrics():
    plain = labels.eval_cli_lines("exp.yaml", 1.0, 0.5)
    assert plain[0] == "msa eval exp.yaml --alpha 1 --beta 0.5 --tier fast --json -"
    assert plain[-1] == "msa results exp.yaml"
    shown = labels.eval_cli_lines("exp.yaml", 1.0, 0.5, {"tier": "fast", "benchmark": "tofu",
                                                         "settings": {"subset": 20}})
    assert shown[0] == "msa eval exp.yaml --alpha 1 --beta 0.5 --tier fast --benchmark tofu --subset 20 --json -"


def test_metric_help_gives_definition_direction_source_and_a_glossary_link():
    text = labels.metric_help("extraction_strength")
    # The definition is shown literally: its '*' (k*) must not turn into emphasis.
    assert text.startswith(r"Forget set\: 1 − k\*/L")
    assert "**Better:** lower is better (ideal reference model's value)." in text
    assert "Carlini et al. 2021" in text and text.endswith("[Glossary ↗](glossary#extraction_strength)")
    assert labels.metric_help("no_such_metric") == ""
    assert labels.glossary_url("forget_quality") == "glossary#forget_quality"
    assert labels.glossary_url("no_such_metric") is None
