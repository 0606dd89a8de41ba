"""Property-based tests: the answer parsers never raise and stay in range, and the annotation readers either load a
file or raise a `ValueError` that names the file and the first bad record or line, never another exception.

`tests/test_timestamps.py` throws arbitrary objects at the parsers and `tests/test_loaders.py` random JSON at the
three loaders; the strategies here build text and records that are close to valid, where the edge cases are.
"""

import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtimellm_hf.data.loaders import load_stage2
from vtimellm_hf.data.raw_annotations import read_charades_sta
from vtimellm_hf.model.processing_vtime import (
    CAPTIONING,
    GROUNDING,
    parse_events,
    parse_moment_indices,
    parse_moments,
)

FUZZ_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Answers

_INDEX = st.integers(0, 99).map("{:02d}".format)
_NUMBER = st.integers(0, 1000).map(str) | st.sampled_from(["٠٥", "²³", "5", "-05", "05.5", "1e3"])
_WORD = st.sampled_from(["From", "from", "FROM", "between", "to", "To", "and", "AND", "a man", "sits", "...", "é"])
_SEPARATOR = st.sampled_from([" ", "  ", "\n", "\t", ", ", ". ", ": ", ""])
_ANSWER = st.lists(st.one_of(_INDEX, _NUMBER, _WORD, _SEPARATOR, st.text(max_size=3)), max_size=24).map("".join)
_DURATION = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False, allow_infinity=False)


@FUZZ_SETTINGS
@given(text=_ANSWER)
def test_moment_indices_are_ordered_pairs_of_frame_indices(text):
    pairs = parse_moment_indices(text)
    assert all(type(start) is int and type(end) is int and 0 <= start <= end <= 99 for start, end in pairs)


@FUZZ_SETTINGS
@given(text=_ANSWER, duration=_DURATION, convention=st.sampled_from([GROUNDING, CAPTIONING]))
def test_moments_lie_within_the_video(text, duration, convention):
    moments = parse_moments(text, duration, convention)
    assert len(moments) == len(parse_moment_indices(text))
    for start, end in moments:
        assert 0 <= start <= end <= duration * (1 + 1e-12)


@FUZZ_SETTINGS
@given(text=_ANSWER, duration=_DURATION)
def test_events_lie_within_the_video_with_trimmed_sentences(text, duration):
    for start, end, sentence in parse_events(text, duration):
        assert 0 <= start <= end <= duration * (1 + 1e-12)
        assert isinstance(sentence, str) and sentence == sentence.strip(" ,.\n")


# Stage-2 records

_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=4)
    | st.sampled_from(["", "\ud800", "<video>", "<s0>", "-1", "54.2"]),
    lambda children: st.lists(children, max_size=2) | st.dictionaries(st.text(max_size=3), children, max_size=2),
    max_leaves=4,
)  # fmt: skip
_PLACEHOLDERS = ["<s0>", "<e0>", "<s1>", "<e1>"]
_PATHS = [
    ("id",), ("source",), ("conversations",), ("conversations", 0), ("conversations", 0, "from"),
    ("conversations", 0, "value"), ("conversations", 1, "from"), ("conversations", 1, "value"), ("meta",),
    ("meta", "duration"), ("meta", "token"), ("meta", "token", "<s0>"), ("meta", "token", "<e1>"), ("meta", "split"),
]  # fmt: skip
_DELETE = object()


@st.composite
def stage2_records(draw) -> dict:
    """A valid stage-2 record, then maybe one field deleted or replaced by junk."""
    duration = draw(st.floats(min_value=0.5, max_value=500))
    times = {placeholder: draw(st.floats(min_value=0, max_value=duration)) for placeholder in _PLACEHOLDERS}
    answer = " ".join(draw(st.lists(st.sampled_from([*_PLACEHOLDERS, "From", "to", "é"]), max_size=6)))
    record = {
        "source": "internvid",
        "id": draw(st.sampled_from(["v1", "v2", "3n3oCNerzV0"])),
        "conversations": [
            {"from": "human", "value": "<video>\nWhen does it happen?"},
            {"from": "gpt", "value": answer},
        ],
        "meta": {"duration": duration, "token": times},
    }
    path = draw(st.none() | st.sampled_from(_PATHS))
    if path is not None:
        *parents, last = path
        target = record
        for key in parents:
            target = target[key]
        value = draw(st.just(_DELETE) | _JUNK)
        if value is _DELETE and isinstance(target, dict):
            target.pop(last, None)
        elif value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return record


def write_and_load(folder: Path, name: str, records: list):
    path = folder / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return load_stage2(path)


@FUZZ_SETTINGS
@given(records=st.lists(stage2_records(), min_size=1, max_size=4))
def test_stage2_loads_or_names_the_first_invalid_record(records):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        path = folder / "stage2.json"
        try:
            dataset = write_and_load(folder, path.name, records)
        except ValueError as error:
            where = re.match(re.escape(str(path)) + r", record (\d+) \((?:no id|id .*)\): \S", str(error))
            assert where is not None, str(error)
            index = int(where[1])
            # Every record before it loads, and it does not, alone
            assert len(write_and_load(folder, "before.json", records[:index])) == index
            with pytest.raises(ValueError):
                write_and_load(folder, "alone.json", [records[index]])
            return
    assert len(dataset) == len(records)
    for row in dataset:
        assert math.isfinite(row["duration"]) and row["duration"] > 0
        texts = [message["content"] for message in row["messages"]]
        assert texts[0].count("<video>") == 1 and not any("<video>" in text for text in texts[1:])
        assert not any(re.search(r"<[se]\d+>", text) for text in texts)


# Charades-STA lines

_FIELD = st.sampled_from(["V1", "3MSZA", "", "a b"]) | st.integers(-3, 40).map(str) | st.floats().map(repr) | (
    st.sampled_from(["1e400", "nan", "-0", "1_0", "0x10", "٣", "3.", ".5"])
)  # fmt: skip
_SENTENCE = st.text(st.characters(exclude_characters="\n"), max_size=8) | st.sampled_from(
    ["a person sits.", "  ", "opens ## the door"]
)
_CHARADES_SEPARATOR = st.sampled_from([" ", "\t", "  ", "#", "##", "###", ",", "", "\r"])


def _charades_line(separator: str):
    """A well-formed line, its fields joined by `separator`."""
    return st.builds(
        f"{{}}{separator}{{:.2f}}{separator}{{:.2f}}##{{}}".format,
        st.sampled_from(["V1", "3MSZA"]),
        st.floats(min_value=0, max_value=20),
        st.floats(min_value=20, max_value=40),
        st.sampled_from(["a person sits.", " opens ## the door ", "é 😀"]),
    )


_ODD_LINE = st.builds("{} {} {}##{}".format, _FIELD, _FIELD, _FIELD, _SENTENCE) | st.lists(
    st.one_of(_FIELD, _CHARADES_SEPARATOR, _SENTENCE), max_size=8
).map("".join)
_LINE_BYTES = st.one_of(
    *(lines.map(lambda line: line.encode("utf-8", "surrogatepass")) for lines in
      (_charades_line(" "), _charades_line("\t"), _ODD_LINE)),
    st.just(b""),
    st.binary(max_size=12),
)  # fmt: skip


def non_blank_lines(content: bytes) -> list[int]:
    """Numbers of the lines a Charades-STA reader must read (blank ones are skipped), if all are UTF-8."""
    numbers = []
    for number, raw in enumerate(content.split(b"\n")[: content.count(b"\n") + 1], start=1):
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8", "replace").rstrip("\r\n")
        if line.strip():
            numbers.append(number)
    return numbers


@FUZZ_SETTINGS
@given(lines=st.lists(_LINE_BYTES, max_size=4))
def test_charades_sta_reads_or_names_the_line(lines):
    content = b"\n".join(lines) + b"\n"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "charades_sta.txt"
        path.write_bytes(content)
        try:
            queries = read_charades_sta(path)
        except ValueError as error:
            where = re.match(re.escape(str(path)) + r", line (\d+): \S", str(error))
            assert where is not None, str(error)
            assert int(where[1]) in non_blank_lines(content)
            return
    assert len(queries) == len(non_blank_lines(content))
    for query in queries:
        assert query.video_id and not re.search(r"\s", query.video_id)
        assert math.isfinite(query.start) and math.isfinite(query.end) and 0 <= query.start <= query.end
        assert query.query == query.query.strip() and query.query and query.duration is None
