"""Tests of studio.links' URL value parsers (the AppTest flows are in tests/test_app_url.py)."""

from __future__ import annotations

import math

import pytest

from msa_core.targets import Point
from studio.links import format_pins, format_questions, parse_coefficient, parse_pins, parse_questions


def test_questions_round_trip_and_keep_set_names_with_spaces_and_colons():
    for name, idx in (("forget", [0, 3, 7]), ("MUSE knowmem forget", [2]), ("odd:name", [1, 0])):
        assert parse_questions(format_questions(name, idx)) == (name, idx)
    assert parse_questions("retain:4,4,1,") == ("retain", [4, 1])  # duplicates and a trailing comma dropped
    assert parse_questions("retain:") == ("retain", [])


@pytest.mark.parametrize(("raw", "message"), [
    ("forget", "is not '<set>:<i>,<j>"), (":1,2", "is not '<set>:<i>,<j>"),
    ("forget:a", "must be whole numbers"), ("forget:-1", "cannot be negative"),
])
def test_bad_question_selections_name_the_problem(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_questions(raw)


def test_coefficients_must_be_finite_numbers_inside_the_range():
    assert parse_coefficient("2.5", "alpha", (0.0, 5.0)) == 2.5
    assert parse_coefficient("0", "beta", (0.0, 5.0)) == 0.0
    for raw, message in (("x", "alpha='x' is not a number"), ("nan", "not a finite number"),
                         ("inf", "not a finite number"), ("5.01", r"alpha=5.01 is outside .*\[0, 5\]")):
        with pytest.raises(ValueError, match=message):
            parse_coefficient(raw, "alpha", (0.0, 5.0))
    assert not math.isnan(parse_coefficient("1e-3", "alpha", (0.0, 5.0)))


def test_pins_round_trip_and_must_lie_inside_the_ranges():
    pins = [Point(0.8, 0.5), Point(2.0, 1.0)]
    assert format_pins(pins) == "0.8:0.5,2:1"
    assert parse_pins("0.8:0.5,2:1", (0.0, 5.0), (0.0, 5.0)) == pins
    with pytest.raises(ValueError, match="'0.8' is not 'α:β'"):
        parse_pins("0.8", (0.0, 5.0), (0.0, 5.0))
    with pytest.raises(ValueError, match="pinned alpha=6 is outside"):
        parse_pins("6:0", (0.0, 5.0), (0.0, 5.0))
