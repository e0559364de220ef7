"""AppTest tests of the sidebar's fine sliders (issue 15: sliders over 0–5 are hard to drag precisely)."""

from __future__ import annotations

import pytest
from app_fixtures import _navigation_mode, load_experiment, new_app, no_exceptions, set_alpha  # noqa: F401


def test_fine_sliders_span_a_window_around_the_point_and_follow_it(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    set_alpha(at, 2.3)
    at.sidebar.toggle(key="w_fine").set_value(True).run()
    no_exceptions(at)
    fine = at.sidebar.slider(key="w_alpha_slider_fine")
    assert (fine.min, fine.max, fine.step, fine.value) == (pytest.approx(1.8), pytest.approx(2.8), 0.01,
                                                            pytest.approx(2.3))
    fine.set_value(2.71).run()
    no_exceptions(at)
    assert at.session_state["msa_alpha"] == pytest.approx(2.71)
    moved = at.sidebar.slider(key="w_alpha_slider_fine")  # re-centred on the new value
    assert (moved.min, moved.max) == (pytest.approx(2.21), pytest.approx(3.21))
    assert at.sidebar.number_input(key="w_alpha_num").value == pytest.approx(2.71)
    # Near the range's end the window stops at the experiment's bound; β keeps its own window.
    at.sidebar.number_input(key="w_beta_num").set_value(0.2).run()
    beta = at.sidebar.slider(key="w_beta_slider_fine")
    assert (beta.min, beta.max, beta.value) == (0.0, pytest.approx(0.7), pytest.approx(0.2))
    # Back to the full-range slider, which shows the value set in fine mode.
    at.sidebar.toggle(key="w_fine").set_value(False).run()
    no_exceptions(at)
    full = at.sidebar.slider(key="w_alpha_slider")
    assert (full.min, full.max, full.value) == (0.0, 5.0, pytest.approx(2.71))
