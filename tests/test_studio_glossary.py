"""The in-app glossary (studio/glossary.py): every metric of METRIC_INFO has a complete entry."""

from __future__ import annotations

import pytest

from msa_core.eval.results import METRIC_INFO, METRIC_ORDER
from studio import glossary


def test_the_glossary_covers_every_metric_in_metric_info():
    assert set(glossary.REFERENCES) == set(METRIC_INFO)
    metric_entries = [e for e in glossary.entries() if e.name in METRIC_INFO]
    assert [e.name for e in metric_entries] == METRIC_ORDER


@pytest.mark.parametrize("name", METRIC_ORDER)
def test_every_metric_entry_has_definition_direction_ideal_and_source(name):
    info = METRIC_INFO[name]
    entry = glossary.metric_entry(name)
    assert entry.label == info.label and entry.definition == info.description
    ideal = "the reference (retain-only) model's value" if info.ideal is None else f"{info.ideal:g}"
    assert entry.better == {"higher": "higher is better", "lower": "lower is better",
                            "closer_to_1": "closer to 1 is better", "closer_to_0": "closer to 0 is better"}.get(
        info.direction, f"closer to {ideal} is better")
    assert entry.ideal == ideal
    assert entry.where.startswith(info.benchmark.upper())
    assert entry.reference.text and entry.reference.url.startswith("https://")


def test_layer_view_terms_follow_the_metrics_and_links_name_the_anchor():
    names = [e.name for e in glossary.entries()]
    assert names[len(METRIC_ORDER):] == ["relative_l2", "linear_cka"]
    assert len(set(names)) == len(names)
    assert glossary.link("forget_quality") == "glossary#forget_quality"


def test_a_metric_without_a_reference_is_named(monkeypatch):
    monkeypatch.delitem(glossary.REFERENCES, "muse_privleak")
    with pytest.raises(KeyError, match="muse_privleak"):
        glossary.entries()
