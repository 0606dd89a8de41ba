"""Timestamp helpers: seconds <-> two-digit indices, both evaluation conventions, and a parser that never raises."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtimellm_hf import (
    format_index,
    indices_to_seconds,
    parse_events,
    parse_moment_indices,
    parse_moments,
    seconds_to_index,
)


def test_seconds_to_index_follows_the_original_formula():
    assert seconds_to_index(0.0, 54.2) == 0
    assert seconds_to_index(9.4, 54.2) == 17  # round(17.34)
    assert seconds_to_index(54.2, 54.2) == 99  # capped: index 100 does not exist
    assert seconds_to_index(0.5, 100.0) == 0  # Python's round: half to even, as the original
    assert seconds_to_index(1.5, 100.0) == 2
    assert format_index(7) == "07"
    with pytest.raises(ValueError, match="duration must be positive"):
        seconds_to_index(1.0, 0.0)


def test_the_two_conventions_differ_by_one_frame_at_the_end():
    assert indices_to_seconds(5, 23, 50.0, "grounding") == pytest.approx((2.5, 11.5))
    assert indices_to_seconds(5, 23, 50.0, "captioning") == pytest.approx((2.5, 12.0))
    with pytest.raises(ValueError, match="Unknown timestamp convention 'other'"):
        indices_to_seconds(5, 23, 50.0, "other")


@given(index=st.integers(0, 99), duration=st.floats(0.1, 10_000, allow_nan=False))
def test_index_seconds_index_round_trip(index, duration):
    start, _ = indices_to_seconds(index, index, duration, "grounding")
    assert seconds_to_index(start, duration) == index


def test_parse_answers():
    assert parse_moment_indices("From 05 to 23.") == [(5, 23)]
    assert parse_moment_indices("It happens between 10 and 40, then from 50 to 60") == [(10, 40), (50, 60)]
    assert parse_moment_indices("from 5 to 23") == []  # the model writes two digits
    assert parse_moment_indices("from 123 to 456") == []
    assert parse_moment_indices("from 40 to 10") == []  # reversed: no moment
    assert parse_moments("From 10 to 20.", duration=31.0) == [pytest.approx((3.1, 6.2))]
    assert parse_events("From 00 to 12, a man enters. From 13 to 40, he sits down.", 100.0) == [
        (0.0, 13.0, "a man enters"),
        (13.0, 41.0, "he sits down"),
    ]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.none(), st.integers(), st.binary()))
def test_parser_never_raises_on_junk(text):
    pairs = parse_moment_indices(text)
    assert all(0 <= start <= end <= 99 for start, end in pairs)
    assert isinstance(parse_events(text, 10.0), list)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99), st.integers(0, 99), st.text(alphabet="abc ,.", max_size=20))
def test_parser_finds_every_well_formed_moment(start, end, noise):
    text = f"{noise} from {start:02d} to {end:02d}{noise}"
    expected = [(start, end)] if start <= end else []
    assert parse_moment_indices(text) == expected
