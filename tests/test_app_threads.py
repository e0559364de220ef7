"""AppTest tests of the sidebar's CPU-thread setting (studio/threads_control.py): the current
count and why, shown with the device; a chosen count is applied before the page runs.

The caption reads torch's count back in the script's thread (AppTest runs the script in a
thread of its own, and torch's count is per thread), so it shows what was applied."""

from __future__ import annotations

import pytest
import torch
from app_fixtures import _navigation_mode, load_experiment, new_app, no_exceptions  # noqa: F401

from msa_core.threads import ENV_VAR

WIDGET = "w_msa_threads"


@pytest.fixture
def torch_threads(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _captions(at) -> str:
    return " ".join(c.value for c in at.sidebar.caption)


def test_sidebar_shows_and_applies_the_thread_setting(tiny_yaml, torch_threads):
    torch.set_num_threads(2)
    at = load_experiment(new_app(), tiny_yaml)
    no_exceptions(at)
    captions = _captions(at)
    assert "CPU threads: 1 thread (policy: " in captions and "under 100M)" in captions
    assert "Device `" in captions  # shown with the device
    picker = at.sidebar.selectbox(key=WIDGET)
    assert picker.value == "auto" and picker.options[:3] == ["auto (by model size)", "1", "2"]
    picker.set_value(2).run()
    no_exceptions(at)
    assert "CPU threads: 2 threads (sidebar)" in _captions(at)
    at.switch_page("pages/playground.py").run()  # kept across pages
    no_exceptions(at)
    assert at.sidebar.selectbox(key=WIDGET).value == 2 and "CPU threads: 2 threads (sidebar)" in _captions(at)
    at.sidebar.selectbox(key=WIDGET).set_value("auto").run()
    assert "CPU threads: 1 thread (policy: " in _captions(at)
