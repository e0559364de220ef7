"""AppTest tests of the Glossary page (pages/glossary.py): one entry per metric of METRIC_INFO,
anchored by the metric's name, reachable without an experiment, and filterable."""

from __future__ import annotations

from app_fixtures import _navigation_mode, new_app, no_exceptions  # noqa: F401

from msa_core.eval.results import METRIC_INFO


def test_glossary_page_lists_every_metric_without_an_experiment(app_env):
    at = new_app().run()
    at.switch_page("pages/glossary.py").run()
    no_exceptions(at)
    assert at.title[0].value.endswith("Glossary")
    groups = {"TOFU metrics", "MUSE metrics", "Layer view"}
    shown = [s.value for s in at.main.subheader if s.value not in groups]
    assert set(info.label for info in METRIC_INFO.values()) <= set(shown)
    assert len(shown) == len(METRIC_INFO) + 2  # plus the layer view's two terms
    assert all(b.key != "w_offer_build" for b in at.button)  # no experiment needed, no demo offer
    md = " ".join(m.value for m in at.markdown)
    assert "https://arxiv.org/abs/2401.06121" in md and "https://arxiv.org/abs/2407.06460" in md
    at.text_input(key="w_gloss_filter").set_value("privleak").run()
    no_exceptions(at)
    assert sorted(s.value for s in at.main.subheader if s.value not in groups) == sorted(
        info.label for name, info in METRIC_INFO.items() if "privleak" in name or "privleak" in info.label.lower()
        or "privleak" in info.description.lower())
