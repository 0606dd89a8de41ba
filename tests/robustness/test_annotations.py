"""Annotation files with wrong or unusual content: an error naming the file and the record or line, or a record kept
as documented. Cases that `tests/test_loaders.py` and `tests/test_raw_annotations.py` cover are listed in
`RELIABILITY.md` instead of repeated here."""

import copy
import json
import re

import pytest

from vtimellm_hf.data.loaders import load_stage2, load_stage3
from vtimellm_hf.data.raw_annotations import GroundingQuery, read_charades_sta
from vtimellm_hf.evaluation import read_grounding_query_lines

DIALOGUE = {
    "source": "internvid",
    "id": "v1",
    "conversations": [
        {"from": "human", "value": "<video>\nWhen does the man crack the egg?"},
        {"from": "gpt", "value": "From <s0> to <e0>."},
    ],
    "meta": {"duration": 50.0, "token": {"<s0>": 10.0, "<e0>": 20.0}},
}


def dialogue(**changes) -> dict:
    record = copy.deepcopy(DIALOGUE)
    for key, value in changes.items():
        if key in ("duration", "token"):
            record["meta"][key] = value
        else:
            record[key] = value
    return record


def write_records(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def answer_of(dataset, index: int = 0) -> str:
    return dataset[index]["messages"][1]["content"]


# VTimeLLM dialogues (stages 2 and 3)


def test_moment_that_starts_after_it_ends_names_the_record(tmp_path):
    path = write_records(tmp_path / "stage2.json", [DIALOGUE, dialogue(id="reversed", token={"<s0>": 30, "<e0>": 20})])
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 1 (id 'reversed'): ") + ".*<s0>.*<e0>"):
        load_stage2(path)


def test_times_beyond_the_duration_become_the_last_frame_as_in_the_original(tmp_path):
    records = [dialogue(token={"<s0>": 10.0, "<e0>": 80.0}), dialogue(token={"<s0>": 60.0, "<e0>": 80.0})]
    dataset = load_stage2(write_records(tmp_path / "stage2.json", records))
    # min(round(seconds / duration * 100), 99)
    assert [answer_of(dataset, index) for index in range(2)] == ["From 20 to 99.", "From 99 to 99."]


def test_unknown_source_is_kept_as_written(tmp_path):
    path = write_records(tmp_path / "data.json", [dialogue(source="my-own-videos")])
    for load in (load_stage2, load_stage3):
        assert load(path)[0]["source"] == "my-own-videos"


def test_duplicate_ids_are_separate_dialogues_on_one_video(tmp_path):
    records = [DIALOGUE, dialogue(token={"<s0>": 30.0, "<e0>": 40.0})]
    dataset = load_stage2(write_records(tmp_path / "stage2.json", records))
    assert dataset["video_id"] == ["v1", "v1"]
    assert [answer_of(dataset, index) for index in range(2)] == ["From 20 to 40.", "From 60 to 80."]


# Charades-STA


def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_charades_fields_may_be_separated_by_any_whitespace(tmp_path):
    path = write_lines(tmp_path / "sta.txt", "V1\t0\t1.5##a person sits.", "V2  0   2 ## a person stands.")
    assert read_charades_sta(path) == [
        GroundingQuery("V1", "a person sits.", 0.0, 1.5),
        GroundingQuery("V2", "a person stands.", 0.0, 2.0),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("V1,0,1.5##a person sits.", r"expected 'VIDEO_ID START END' before '##', found 1 field\(s\)"),
        ("V1;0;1.5##a person sits.", r"expected 'VIDEO_ID START END' before '##', found 1 field\(s\)"),
        ("V1 0 1.5#a person sits.", r"missing the '##' before the sentence"),
        ("V1 0 1.5 | a person sits.", r"missing the '##' before the sentence"),
        ("V1 0 1.5 2.5##a person sits.", r"expected 'VIDEO_ID START END' before '##', found 4 field\(s\)"),
    ],
)
def test_charades_line_with_other_separators_names_the_file_and_line(tmp_path, line, reason):
    path = write_lines(tmp_path / "sta.txt", "V0 0 1##fine.", line)
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: ") + reason):
        read_charades_sta(path)


def test_charades_moment_beyond_the_duration_is_kept_as_written(tmp_path):
    path = write_lines(tmp_path / "sta.txt", "V1 4.0 7.5##a person sits.")
    # Real Charades-STA lines hold such moments; scoring clips predictions, not references
    assert read_charades_sta(path, durations={"V1": 5.0}) == [GroundingQuery("V1", "a person sits.", 4.0, 7.5, 5.0)]


# Grounding queries as JSON lines (`vtimellm-hf evaluate grounding --annotations queries.jsonl`)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"video_id": "v1", "query": "a", "start": 0', "invalid JSON"),
        ('{"video_id": "v1", "start": 0, "end": 1}', r"missing field\(s\) 'query'"),
        ('{"video_id": "v1", "query": "a", "start": 3, "end": 1}', r"the span \[3.0, 1.0\] is not 0 <= start <= end"),
        ('{"video_id": "v1", "query": "a", "start": -1, "end": 1}', r"the span \[-1.0, 1.0\] is not"),
        ('{"video_id": "v1", "query": "a", "start": 0, "end": 1, "duration": 0}', "'duration' must be positive"),
        ('{"video_id": "v1", "query": "a", "start": 0, "end": "1"}', "'end' must be a finite number of seconds"),
        ('["v1", "a", 0, 1]', "expected an object, found list"),
        ('{"video_id": "v1", "query": "a", "start": 0, "end": 1, "end": 2}', "key 'end' appears more than once"),
        ('{"video_id": "v1", "query": "a", "start": 0, "end": 1' + "0" * 400 + "}", "'end' must be a finite number"),
        ('{"video_id": "v1", "query": "a", "start": true, "end": 1}', "'start' must be a finite number"),
    ],
)
def test_grounding_query_line_errors_name_the_file_and_line(tmp_path, line, reason):
    path = write_lines(tmp_path / "queries.jsonl", '{"video_id": "v0", "query": "fine", "start": 0, "end": 1}', line)
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: ") + reason):
        read_grounding_query_lines(path)


def test_grounding_queries_may_be_a_json_list(tmp_path):
    queries = [{"video_id": "v0", "query": "fine", "start": 0, "end": 1}, {"video_id": "v1", "query": "b", "start": 2}]
    path = tmp_path / "queries.jsonl"
    path.write_text(json.dumps(queries[:1]))
    assert read_grounding_query_lines(path) == [GroundingQuery("v0", "fine", 0.0, 1.0, None)]
    path.write_text(json.dumps(queries))
    with pytest.raises(ValueError, match=re.escape(f"{path}, record #1: missing field(s) 'end'")):
        read_grounding_query_lines(path)


def test_grounding_query_lines_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_bytes(b'{"video_id": "v0", "query": "fine", "start": 0, "end": 1}\n'
                     b'{"video_id": "v1", "query": "caf\xe9", "start": 0, "end": 1}\n')  # fmt: skip
    with pytest.raises(ValueError) as error:
        read_grounding_query_lines(path)
    assert f"{path}, line 2" in str(error.value)
