"""AppTest tests of the Glossary page (pages/glossary.py): one entry per metric of METRIC_INFO,
anchored by the metric's name, reachable without an experiment, and filterable."""

from __future__ import annotations

from app_fixtures import _navigation_mode, load_experiment, new_app, no_exceptions  # noqa: F401

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


def test_every_metric_tile_links_to_its_glossary_entry(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/playground.py").run()
    at.number_input(key="w_pg_subset").set_value(4).run()
    button = at.button(key="w_pg_metrics")
    if not button.disabled:  # disabled when an earlier test of the session already stored these points
        button.click().run()
    no_exceptions(at)
    tiles = [m for m in at.metric if m.help]
    assert tiles, "no metric tiles after Compute metrics"
    labels_to_names = {info.label: name for name, info in METRIC_INFO.items()}
    for tile in tiles:
        # The longest label the tile starts with ("Model utility (teacher-forced)" before "Model utility").
        name = max(((label, n) for label, n in labels_to_names.items() if tile.label.startswith(label + " ")),
                   key=lambda pair: len(pair[0]))[1]
        assert tile.help.endswith(f"[Glossary ↗](glossary#{name})"), tile.help
        assert "**Better:**" in tile.help
