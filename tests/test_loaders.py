"""Training-data loaders: hand-written files in the layouts of LCS-558K, VTimeLLM's stage-2/3 JSON and
VideoInstruct-100K, exact placeholder replacement, every error message, skipping, streaming, feature checks with
real `.npy` files, and property tests on random records and on the incremental JSON parser."""

import copy
import importlib.util
import json
import logging
import re
import tempfile
from pathlib import Path
from unittest import mock

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtimellm_hf.data import json_array, loaders
from vtimellm_hf.data.extract import collect_media
from vtimellm_hf.data.features import NpyFeatureStore
from vtimellm_hf.data.loaders import RECORD_FEATURES, load_stage1, load_stage2, load_stage3

# The example record of VTimeLLM's docs/data.md: <s0> 0 s, <e0> 9.4 s, <s1> 49.4 s, <e1> 53.2 s of 54.2 s.
INTERNVID_RECORD = {
    "source": "internvid",
    "id": "3n3oCNerzV0",
    "conversations": [
        {
            "from": "human",
            "value": "<video>\nI'd appreciate it if you could provide a detailed account of the events that occurred "
            "at different timestamps in the video.",
        },
        {
            "from": "gpt",
            "value": "From <s0> to <e0>, woman is counting money with a pen on a white table. From <s1> to <e1>, two "
            "people shaking hands in front of a desk.",
        },
    ],
    "meta": {"split": [129.8, 184.0], "duration": 54.2, "token": {"<s0>": 0, "<e0>": 9.4, "<s1>": 49.4, "<e1>": 53.2}},
}

# Multi-turn stage-2 record: event captioning (placeholders in the question) and grounding (in the answer).
# 200 s makes each second half a frame, so Python's round-half-to-even shows: 1 s -> 0.5 -> "00", 3 s -> 1.5 -> "02".
MULTI_TURN_RECORD = {
    "source": "internvid",
    "id": "multiTurn01",
    "conversations": [
        {"from": "human", "value": "<video>\nWhat happens from <s0> to <e0>?"},
        {"from": "gpt", "value": "A man opens the door."},
        {"from": "human", "value": "When does the man sit down?"},
        {"from": "gpt", "value": "From <s1> to <e1>."},
        {"from": "human", "value": "And between <s1> and <e2>?"},
        {"from": "gpt", "value": "He sits down, from <s1> to the end, <e2>."},
    ],
    "meta": {"duration": 200.0, "token": {"<s0>": 1, "<e0>": 3, "<s1>": 150.2, "<e1>": 199.9, "<e2>": 200.0}},
}

ANET_RECORD = {
    "source": "anet",
    "id": "v_QOlSCBRmfWY",
    "conversations": [
        {"from": "human", "value": "<video>\nWhat was the primary purpose of the video?"},
        {"from": "gpt", "value": "The video showcases a young woman's dance routine."},
        {"from": "human", "value": "Can you pinpoint when the girl changes her pose?"},
        {"from": "gpt", "value": "From <s1> to <e1>, the girl transitions from one pose to another."},
    ],
    "meta": {"duration": 82.73, "token": {"<s0>": 0.83, "<e0>": 19.86, "<s1>": 17.37, "<e1>": 60.81}},
}

DIDEMO_RECORD = {
    "source": "didemo",
    "id": "4ed8934c6a45e01d59133159eccfaa8c",
    "conversations": [
        {"from": "human", "value": "<video>\nWhen does the dog first jump into the water?"},
        {"from": "gpt", "value": "The dog jumps in from <s0> to <e0>."},
    ],
    "meta": {"duration": 28.8, "token": {"<s0>": 5, "<e0>": 10}},
}

# The VideoInstruct-100K part of stage3.json: a dialogue without `meta` nor placeholders.
VIDEOINSTRUCT_DIALOGUE = {
    "id": "v_k_ZXmr8pmrs",
    "conversations": [
        {"from": "human", "value": "<video>\nWhat is the man doing in the video?"},
        {"from": "gpt", "value": "The man is demonstrating how to clean a bicycle chain."},
    ],
}

# Non-ASCII text, written as UTF-8 rather than escaped, so that chunk boundaries fall inside characters.
UNICODE_RECORD = {
    "source": "didemo",
    "id": "unicodeVideo",
    "conversations": [
        {"from": "human", "value": "<video>\nQuand le chien saute-t-il dans l'eau ?"},
        {"from": "gpt", "value": "De <s0> à <e0>, le chien 🐕 saute ; 犬が水に飛び込む。"},
    ],
    "meta": {"duration": 28.8, "token": {"<s0>": 5, "<e0>": 10}},
}

# Raw VideoInstruct-100K (`VideoInstruct_Dataset.json`).
VIDEOINSTRUCT_PAIR = {
    "video_id": "v_p1QGn0IzfW0",
    "q": "What color is the car?",
    "a": "The car in the video is red.",
}

LCS_RECORDS = [
    {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
        ],
    },
    {
        "id": "002239345",
        "image": "00223/002239345.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWrite a terse but informative summary of the picture."},
            {"from": "gpt", "value": "a grey watch with an army style strap"},
        ],
    },
]


def write_json(folder: Path, name: str, records, ensure_ascii: bool = True) -> Path:
    path = folder / name
    path.write_text(json.dumps(records, indent=2, ensure_ascii=ensure_ascii), encoding="utf-8")
    return path


DELETE = object()


def with_changes(record: dict, *changes) -> dict:
    """A deep copy of `record` with each `(path, value)` set; a value of `DELETE` removes the key."""
    record = copy.deepcopy(record)
    for path, value in changes:
        *parents, last = path
        target = record
        for key in parents:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return record


class NpyFolder:
    """The protocol the loaders use, over a folder of `{id}.npy` files: `in` and `shape` (from the header)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __contains__(self, feature_id: str) -> bool:
        return (self.folder / f"{feature_id}.npy").is_file()

    def shape(self, feature_id: str) -> tuple[int, ...]:
        return np.load(self.folder / f"{feature_id}.npy", mmap_mode="r").shape


def _open_package_store(folder: Path):
    from vtimellm_hf.data.features import open_feature_store

    return open_feature_store(folder)


def _open_sharded_store(folder: Path):
    from vtimellm_hf.data.features import consolidate_features, open_feature_store

    return open_feature_store(consolidate_features(folder, folder.parent / "sharded", max_shard_size=200_000))


STORE_FACTORIES = [
    pytest.param(NpyFolder, id="protocol"),
    pytest.param(
        _open_package_store,
        id="open_feature_store",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("vtimellm_hf.data.features") is None, reason="vtimellm_hf.data.features absent"
        ),
    ),
]


# Conversion.


def test_stage2_replaces_placeholders_as_the_original(tmp_path):
    path = write_json(tmp_path, "stage2.json", [INTERNVID_RECORD])
    dataset = load_stage2(path)
    assert isinstance(dataset, datasets.Dataset)
    assert dataset.features == RECORD_FEATURES
    assert dataset.to_list() == [
        {
            "id": "3n3oCNerzV0",
            "source": "internvid",
            "video_id": "3n3oCNerzV0",
            "messages": [
                {"role": "user", "content": INTERNVID_RECORD["conversations"][0]["value"]},
                # The worked example of docs/data.md: 9.4 / 54.2 * 100 = 17.3 -> "17", 49.4 s -> "91", 53.2 s -> "98".
                {
                    "role": "assistant",
                    "content": "From 00 to 17, woman is counting money with a pen on a white table. From 91 to 98, "
                    "two people shaking hands in front of a desk.",
                },
            ],
            "duration": 54.2,
        }
    ]


def test_multi_turn_placeholders_in_every_turn(tmp_path):
    dataset = load_stage2(write_json(tmp_path, "stage2.json", [MULTI_TURN_RECORD]))
    contents = [message["content"] for message in dataset[0]["messages"]]
    assert [message["role"] for message in dataset[0]["messages"]] == ["user", "assistant"] * 3
    assert contents == [
        "<video>\nWhat happens from 00 to 02?",  # 1 s -> 0.5 -> 0 and 3 s -> 1.5 -> 2: half to even
        "A man opens the door.",
        "When does the man sit down?",
        "From 75 to 99.",  # 199.9 s -> 99.95 -> 100, clipped to 99
        "And between 75 and 99?",  # the video's end, 200 s -> 100, clipped to 99
        "He sits down, from 75 to the end, 99.",
    ]
    assert dataset[0]["duration"] == 200.0


def test_stage1_lcs_records(tmp_path):
    dataset = load_stage1(write_json(tmp_path, "blip_laion_cc_sbu_558k.json", LCS_RECORDS))
    assert dataset.features == RECORD_FEATURES
    assert dataset.to_list() == [
        {
            "id": "004539375",
            "source": "lcs558k",
            "video_id": "004539375",
            # The placeholder moves to the front, as LLaVA's preprocessing does; <image> becomes <video>.
            "messages": [
                {"role": "user", "content": "<video>\nRender a clear and concise summary of the photo."},
                {"role": "assistant", "content": "select luxury furniture 3 - inch gel memory foam mattress topper"},
            ],
            "duration": None,
        },
        {
            "id": "002239345",
            "source": "lcs558k",
            "video_id": "002239345",
            "messages": [
                {"role": "user", "content": "<video>\nWrite a terse but informative summary of the picture."},
                {"role": "assistant", "content": "a grey watch with an army style strap"},
            ],
            "duration": None,
        },
    ]


def test_stage1_features_are_named_by_the_record_id_as_the_extractor_names_them(tmp_path):
    # The original's training code loads `{feat_folder}/{id}.npy` for images too; `extract-features` on the same
    # file writes `{id}.npy`, so a custom stage-1 file whose ids are not its image stems must still load.
    record = with_changes(LCS_RECORDS[0], (["id"], "record-7"), (["image"], "images/abc/000000012.png"))
    lcs = write_json(tmp_path, "lcs.json", [record])
    (tmp_path / "images" / "abc").mkdir(parents=True)
    (tmp_path / "images" / "abc" / "000000012.png").write_bytes(b"")
    (item,), failures = collect_media(lcs, video_root=tmp_path)
    assert not failures and item.feature_id == "record-7"
    assert load_stage1(lcs)[0]["video_id"] == "record-7"


def test_stage3_mixes_layouts_and_files(tmp_path):
    dialogues = write_json(tmp_path, "stage3.json", [ANET_RECORD, VIDEOINSTRUCT_DIALOGUE, DIDEMO_RECORD])
    pairs = write_json(tmp_path, "VideoInstruct_Dataset.json", [VIDEOINSTRUCT_PAIR])
    dataset = load_stage3([dialogues, pairs])
    assert dataset.features == RECORD_FEATURES
    rows = dataset.to_list()
    assert [(row["id"], row["source"], row["video_id"], row["duration"]) for row in rows] == [
        ("v_QOlSCBRmfWY", "anet", "v_QOlSCBRmfWY", 82.73),
        ("v_k_ZXmr8pmrs", "videoinstruct", "v_k_ZXmr8pmrs", None),
        ("4ed8934c6a45e01d59133159eccfaa8c", "didemo", "4ed8934c6a45e01d59133159eccfaa8c", 28.8),
        ("v_p1QGn0IzfW0", "videoinstruct", "v_p1QGn0IzfW0", None),
    ]
    # 17.37 / 82.73 -> 21, 60.81 / 82.73 -> 74; 5 / 28.8 -> 17, 10 / 28.8 -> 35.
    assert rows[0]["messages"][3]["content"] == "From 21 to 74, the girl transitions from one pose to another."
    assert rows[2]["messages"][1]["content"] == "The dog jumps in from 17 to 35."
    assert rows[1]["messages"] == [
        {"role": "user", "content": "<video>\nWhat is the man doing in the video?"},
        {"role": "assistant", "content": "The man is demonstrating how to clean a bicycle chain."},
    ]
    assert rows[3]["messages"] == [
        {"role": "user", "content": "<video>\nWhat color is the car?"},
        {"role": "assistant", "content": "The car in the video is red."},
    ]
    # One path, not a list, works too; a source in a VideoInstruct record is kept.
    named = with_changes(VIDEOINSTRUCT_DIALOGUE, (["source"], "videochatgpt"))
    assert load_stage3(write_json(tmp_path, "one.json", [named]))[0]["source"] == "videochatgpt"


def test_placeholder_keeps_its_place_in_dialogues(tmp_path):
    # Video-ChatGPT's conversion writes "question\n<video>" for every other pair; the original trains on it as is.
    record = with_changes(VIDEOINSTRUCT_DIALOGUE, (["conversations", 0, "value"], "What is he doing?\n<video>"))
    dataset = load_stage3(write_json(tmp_path, "stage3.json", [record]))
    assert dataset[0]["messages"][0]["content"] == "What is he doing?\n<video>"


def test_empty_array_gives_an_empty_dataset(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(" [ ] \n")
    dataset = load_stage2(path)
    assert len(dataset) == 0 and dataset.features == RECORD_FEATURES


def test_batches_give_the_same_dataset(tmp_path):
    records = [with_changes(INTERNVID_RECORD, (["id"], f"video{index}")) for index in range(7)]
    path = write_json(tmp_path, "stage2.json", records)
    whole = load_stage2(path).to_list()
    with mock.patch.object(loaders, "_BATCH_SIZE", 3):
        batched = load_stage2(path)
    assert batched.to_list() == whole
    assert [row["id"] for row in whole] == [f"video{index}" for index in range(7)]


# Invalid records.

STAGE2_ERRORS = [
    ((["meta", "token"], {"<s0>": 0, "<e0>": 9.4, "<s1>": 49.4}), "turn 1 holds placeholder '<e1>', which has no time"),
    ((["meta", "duration"], 0), "meta.duration must be positive, found 0"),
    ((["meta", "duration"], -54.2), "meta.duration must be positive, found -54.2"),
    ((["meta", "duration"], "54.2"), "meta.duration must be a number, found '54.2'"),
    ((["meta", "duration"], True), "meta.duration must be a number, found True"),
    ((["meta", "duration"], float("nan")), "meta.duration must be a finite number, found nan"),
    ((["meta", "duration"], DELETE), "meta.missing field 'duration'"),
    ((["meta", "token"], DELETE), "meta.missing field 'token'"),
    ((["meta", "token"], [0, 9.4]), "meta.token must be an object"),
    ((["meta", "token", "<e0>"], -1), r"meta.token\['<e0>'\] is negative"),
    ((["meta", "token", "<e0>"], "9.4"), r"meta.token\['<e0>'\] must be a number, found '9.4'"),
    ((["meta", "token", "<e0>"], 1e308), r"meta.token\['<e0>'\] = 1e\+308 s cannot be placed"),
    ((["meta", "split"], [184.0, 129.8]), r"meta.split \[184.0, 129.8\] is not a span"),
    ((["meta", "split"], [129.8]), r"meta.split must be a \[start, end\] pair"),
    ((["meta"], DELETE), "missing field 'meta'"),
    ((["meta"], [54.2]), "'meta' must be an object"),
    ((["conversations"], DELETE), "missing field 'conversations'"),
    ((["conversations"], []), "'conversations' must be a non-empty list of turns"),
    ((["conversations", 1], "From 00 to 17."), "turn 1 must be an object"),
    ((["conversations", 1, "from"], "assistant"), "turn 1 has unknown role 'assistant'; expected 'human' or 'gpt'"),
    ((["conversations", 1, "from"], "human"), "turn 1 is from 'human' but should be from 'gpt'"),
    ((["conversations", 1, "from"], DELETE), "turn 1: missing field 'from'"),
    ((["conversations", 1, "value"], DELETE), "turn 1: missing field 'value'"),
    ((["conversations", 1, "value"], ["From <s0>"]), "turn 1: 'value' must be a string"),
    ((["conversations", 1], DELETE), r"the last turn \(0\) is a question without an answer"),
    ((["conversations", 0, "value"], "Describe the video."), "turn 0 must hold one <video> placeholder, found 0"),
    ((["conversations", 0, "value"], "<video>\n<video>\nDescribe."),
     "turn 0 must hold one <video> placeholder, found 2"),
    ((["conversations", 1, "value"], "<video> From <s0> to <e0>."), "turn 1 holds a <video> placeholder; only turn 0"),
    ((["conversations", 1, "value"], "Bad \ud800 text"), r"turn 1 holds '\\ud800', a lone surrogate"),
    ((["source"], 3), "'source' must be a non-empty string, found 3"),
]


@pytest.mark.parametrize(("change", "reason"), STAGE2_ERRORS)
def test_invalid_stage2_record_names_file_index_and_id(tmp_path, change, reason):
    bad = with_changes(INTERNVID_RECORD, (["id"], "badVideo"), change)
    path = write_json(tmp_path, "stage2.json", [INTERNVID_RECORD, bad])
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 1 (id 'badVideo'): ") + reason):
        load_stage2(path)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (with_changes(INTERNVID_RECORD, (["id"], DELETE)), r"\(no id\): missing field 'id'"),
        (with_changes(INTERNVID_RECORD, (["id"], 12)), r"\(no id\): 'id' must be a non-empty string, found 12"),
        (with_changes(INTERNVID_RECORD, (["id"], "")), r"\(id ''\): 'id' must be a non-empty string, found ''"),
        ("3n3oCNerzV0", r"\(no id\): a record must be an object, found '3n3oCNerzV0'"),
    ],
)
def test_invalid_record_without_usable_id(tmp_path, record, reason):
    path = write_json(tmp_path, "stage2.json", [INTERNVID_RECORD, record])
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 1 ") + reason):
        load_stage2(path)


def test_stage2_source_defaults_to_internvid(tmp_path):
    record = with_changes(INTERNVID_RECORD, (["source"], DELETE))
    assert load_stage2(write_json(tmp_path, "stage2.json", [record]))[0]["source"] == "internvid"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            with_changes(VIDEOINSTRUCT_DIALOGUE, (["conversations", 1, "value"], "From <s0> to <e0>.")),
            r"\(id 'v_k_ZXmr8pmrs'\): turn 1 holds placeholder '<s0>', which has no time in the record, which has no "
            "'meta'",
        ),
        (
            with_changes(ANET_RECORD, (["source"], DELETE)),
            r"\(id 'v_QOlSCBRmfWY'\): missing field 'source'",
        ),
        (
            with_changes(VIDEOINSTRUCT_PAIR, (["q"], DELETE)),
            r"\(id 'v_p1QGn0IzfW0'\): missing field 'q'",
        ),
        (
            with_changes(VIDEOINSTRUCT_PAIR, (["a"], 3)),
            r"\(id 'v_p1QGn0IzfW0'\): 'a' must be a string, found 3",
        ),
        (
            with_changes(VIDEOINSTRUCT_PAIR, (["a"], "From <s0> to <e0>.")),
            r"\(id 'v_p1QGn0IzfW0'\): turn 1 holds placeholder '<s0>'; VideoInstruct pairs have no times",
        ),
        (
            with_changes(VIDEOINSTRUCT_PAIR, (["q"], "<video>\nWhat color is the car?")),
            r"\(id 'v_p1QGn0IzfW0'\): turn 0 must hold one <video> placeholder, found 2",
        ),
    ],
)
def test_invalid_stage3_record(tmp_path, record, reason):
    path = write_json(tmp_path, "stage3.json", [DIDEMO_RECORD, record])
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 1 ") + reason):
        load_stage3([path])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ((["conversations", 0, "value"], "Describe the photo."), "turn 0 must hold one <image> placeholder, found 0"),
        ((["conversations", 1, "value"], "a <image> caption"), r"turn 1 \(the caption\) holds a visual placeholder"),
        (
            (["conversations"], LCS_RECORDS[0]["conversations"] * 2),
            r"an LCS-558K record holds one question and its caption \(2 turns\), found 4",
        ),
        ((["conversations", 0, "from"], "user"), "turn 0 has unknown role 'user'"),
        ((["image"], "00453/"), "'image' '00453/' names no file"),
        ((["image"], DELETE), "missing field 'image'"),
    ],
)
def test_invalid_stage1_record(tmp_path, change, reason):
    bad = with_changes(LCS_RECORDS[0], (["id"], "000000001"), change)
    path = write_json(tmp_path, "lcs.json", [LCS_RECORDS[1], bad])
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 1 (id '000000001'): ") + reason):
        load_stage1(path)


# Invalid files.


def test_non_utf8_file_names_file_line_and_byte(tmp_path):
    path = tmp_path / "stage2.json"
    text = json.dumps([INTERNVID_RECORD], indent=2)
    path.write_bytes(text.replace("woman", "wom\xe1n").encode("latin-1"))
    offset = text.index("woman") + 3
    line = text[:offset].count("\n") + 1
    with pytest.raises(ValueError, match=re.escape(f"{path}, line {line}: not valid UTF-8 (byte 0xe1 at byte offset "
                                                   f"{offset})")):
        load_stage2(path)


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "stage2.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([INTERNVID_RECORD]).encode())
    assert len(load_stage2(path)) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1, column 1: expected a JSON array of records ('['), found an empty file"),
        ('{"id": "3n3oCNerzV0"}', "line 1, column 1: expected a JSON array of records ('['), found '{'"),
        ('[\n  {"id": "a"},\n]', "line 3, column 1: invalid JSON: Expecting value"),
        ('[\n  {"id": "a"}\n  {"id": "b"}\n]', "line 3, column 3: expected ',' or ']' after record 0, found '{'"),
        ('[\n  {"id": "a", "meta": {"duration": 5', "line 2, column 37: invalid JSON: Expecting ',' delimiter"),
        ('[{"id": "a\nb"}]', "line 1, column 11: invalid JSON: Invalid control character"),
        ('[{"id": "a"}] []', "line 1, column 15: extra data after the array: '['"),
    ],
)
def test_invalid_json_names_file_and_position(tmp_path, text, message):
    path = tmp_path / "stage2.json"
    path.write_text(text, encoding="utf-8")
    # Skipping applies to records, not to a file that is not JSON; the records here are skipped (no conversations).
    with pytest.raises(ValueError, match=re.escape(f"{path}, {message}")):
        load_stage2(path, on_error="skip")
    # The same place is named whatever the chunk boundaries.
    with mock.patch.object(json_array, "CHUNK_SIZE", 3), pytest.raises(ValueError, match=re.escape(f"{path}, {message}")):
        load_stage2(path, on_error="skip")


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such data file: .*absent.json"):
        load_stage2(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_stage3([write_json(tmp_path, "stage3.json", [ANET_RECORD]), tmp_path / "absent.json"], streaming=True)
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', not 'ignore'"):
        load_stage2(write_json(tmp_path, "stage2.json", [INTERNVID_RECORD]), on_error="ignore")
    with pytest.raises(ValueError, match="No data file given"):
        load_stage3([])


# Skipping.


def mixed_stage2_file(folder: Path) -> Path:
    return write_json(
        folder,
        "stage2.json",
        [
            INTERNVID_RECORD,
            with_changes(INTERNVID_RECORD, (["id"], "zeroDuration"), (["meta", "duration"], 0)),
            with_changes(MULTI_TURN_RECORD, (["conversations", 0, "from"], "robot")),
            MULTI_TURN_RECORD,
            ["not a record"],
        ],
    )


def test_skip_mode_counts_and_reports(tmp_path, caplog):
    path = mixed_stage2_file(tmp_path)
    report = tmp_path / "skipped.jsonl"
    with caplog.at_level(logging.WARNING, logger=loaders.__name__):
        dataset = load_stage2(path, on_error="skip", skipped_report=report)
    assert [row["id"] for row in dataset] == ["3n3oCNerzV0", "multiTurn01"]
    assert [json.loads(line) for line in report.read_text().splitlines()] == [
        {"file": str(path), "index": 1, "id": "zeroDuration", "reason": "meta.duration must be positive, found 0"},
        {
            "file": str(path),
            "index": 2,
            "id": "multiTurn01",
            "reason": "turn 0 has unknown role 'robot'; expected 'human' or 'gpt'",
        },
        {"file": str(path), "index": 4, "id": None, "reason": "a record must be an object, found ['not a record']"},
    ]
    assert f"Skipped 3 of 5 records; they are listed in {report}." in caplog.text


def test_skip_mode_without_report_logs_each_record(tmp_path, caplog):
    path = mixed_stage2_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger=loaders.__name__):
        assert len(load_stage2(path, on_error="skip")) == 2
    assert "Skipped 3 of 5 records:" in caplog.text
    assert f"{path}, record 1 (id 'zeroDuration'): meta.duration must be positive, found 0" in caplog.text
    assert f"{path}, record 4 (no id): a record must be an object" in caplog.text


def test_skip_mode_writes_an_empty_report_when_nothing_is_skipped(tmp_path, caplog):
    report = tmp_path / "skipped.jsonl"
    with caplog.at_level(logging.WARNING, logger=loaders.__name__):
        load_stage2(write_json(tmp_path, "stage2.json", [INTERNVID_RECORD]), on_error="skip", skipped_report=report)
    assert report.read_text() == "" and "Skipped" not in caplog.text


# Streaming.


@pytest.mark.parametrize(
    ("load", "files"),
    [
        (load_stage1, lambda folder: write_json(folder, "lcs.json", LCS_RECORDS)),
        (load_stage2, lambda folder: write_json(folder, "stage2.json", [INTERNVID_RECORD, MULTI_TURN_RECORD])),
        (
            load_stage3,
            lambda folder: [
                write_json(folder, "stage3.json", [ANET_RECORD, VIDEOINSTRUCT_DIALOGUE, DIDEMO_RECORD]),
                write_json(folder, "unicode.json", [UNICODE_RECORD, VIDEOINSTRUCT_PAIR], ensure_ascii=False),
            ],
        ),
    ],
)
def test_streaming_gives_the_same_records(tmp_path, load, files):
    files = files(tmp_path)
    expected = load(files).to_list()
    streamed = load(files, streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert streamed.features == RECORD_FEATURES
    assert list(streamed) == expected
    # Chunk boundaries anywhere, even inside a multi-byte character, change nothing.
    with mock.patch.object(json_array, "CHUNK_SIZE", 5):
        assert list(load(files, streaming=True)) == expected


def test_streaming_is_lazy(tmp_path):
    # Only what is read is parsed: the first record comes out of a file whose end is broken.
    path = tmp_path / "stage2.json"
    text = json.dumps([INTERNVID_RECORD, MULTI_TURN_RECORD])
    path.write_text(text[: text.index('"multiTurn01"')] + "@@@ broken", encoding="utf-8")
    with mock.patch.object(json_array, "CHUNK_SIZE", 64):
        streamed = load_stage2(path, streaming=True)
        assert next(iter(streamed))["id"] == "3n3oCNerzV0"
        with pytest.raises(ValueError, match=re.escape(f"{path}, line 1, column ") + r"\d+: invalid JSON"):
            list(streamed)


def test_streaming_errors_and_skip_report(tmp_path):
    path = mixed_stage2_file(tmp_path)
    streamed = load_stage2(path, streaming=True)
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 1 (id 'zeroDuration'): meta.duration")):
        list(streamed)
    report = tmp_path / "skipped.jsonl"
    streamed = load_stage2(path, streaming=True, on_error="skip", skipped_report=report)
    assert not report.exists()  # nothing is read before iterating
    assert [row["id"] for row in streamed] == ["3n3oCNerzV0", "multiTurn01"]
    assert [json.loads(line)["index"] for line in report.read_text().splitlines()] == [1, 2, 4]


# Features.


def write_features(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(exist_ok=True)
    for feature_id, array in arrays.items():
        np.save(folder / f"{feature_id}.npy", array)
    return folder


@pytest.mark.parametrize("open_store", STORE_FACTORIES)
def test_video_features_checked(tmp_path, open_store):
    features = write_features(
        tmp_path / "features",
        {
            "3n3oCNerzV0": np.zeros((100, 768), dtype=np.float16),
            "shortVideo": np.zeros((99, 768), dtype=np.float16),
            "wideVideo": np.zeros((100, 1024), dtype=np.float16),
        },
    )
    store = open_store(features)
    good = write_json(tmp_path, "good.json", [INTERNVID_RECORD])
    assert len(load_stage2(good, feature_store=store)) == 1
    cases = [
        ("shortVideo", "features 'shortVideo' have shape (99, 768), expected (100, 768)"),
        ("wideVideo", "features 'wideVideo' have shape (100, 1024), expected (100, 768)"),
        ("noFeatures", "features 'noFeatures' are missing from the feature store"),
    ]
    for video_id, reason in cases:
        records = [INTERNVID_RECORD, with_changes(INTERNVID_RECORD, (["id"], video_id))]
        path = write_json(tmp_path, f"{video_id}.json", records)
        with pytest.raises(ValueError, match=re.escape(f"{path}, record 1 (id {video_id!r}): {reason}")):
            load_stage2(path, feature_store=store)
    # Checks can be narrowed: any number of rows of width 1024.
    wide = write_json(tmp_path, "wide.json", [with_changes(INTERNVID_RECORD, (["id"], "wideVideo"))])
    assert len(load_stage2(wide, feature_store=store, expected_rows=None, expected_dim=1024)) == 1


def test_truncated_npy_features_are_refused_by_the_loader_check(tmp_path):
    # A partly copied file keeps its whole header, which announces 100 x 768 values; its data is cut short
    features = write_features(tmp_path / "features", {"3n3oCNerzV0": np.zeros((100, 768), dtype=np.float16)})
    truncated = features / "3n3oCNerzV0.npy"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    path = write_json(tmp_path, "stage2.json", [INTERNVID_RECORD])
    reason = f"features '3n3oCNerzV0' cannot be read: {truncated}: truncated or padded, 1000 bytes where its header"
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 0 (id '3n3oCNerzV0'): {reason}")):
        load_stage2(path, feature_store=NpyFeatureStore(features))


@pytest.mark.parametrize("open_store", [*STORE_FACTORIES, pytest.param(_open_sharded_store, id="sharded")])
def test_image_features_checked(tmp_path, open_store):
    features = write_features(
        tmp_path / "features",
        {"004539375": np.zeros(768, dtype=np.float16), "002239345": np.zeros((100, 768), dtype=np.float16)},
    )
    path = write_json(tmp_path, "lcs.json", LCS_RECORDS)
    with pytest.raises(
        ValueError,
        match=re.escape(f"{path}, record 1 (id '002239345'): features '002239345' have shape (100, 768), expected "
                        "(768,) or (1, 768)"),
    ):
        load_stage1(path, feature_store=open_store(features))
    np.save(features / "002239345.npy", np.zeros((1, 768), dtype=np.float16))
    assert len(load_stage1(path, feature_store=open_store(features))) == 2


def test_feature_checks_in_skip_and_streaming_modes(tmp_path):
    features = write_features(
        tmp_path / "features",
        {"v_QOlSCBRmfWY": np.zeros((100, 768), dtype=np.float16), "v_k_ZXmr8pmrs": np.zeros((50, 768), np.float16)},
    )
    path = write_json(tmp_path, "stage3.json", [ANET_RECORD, VIDEOINSTRUCT_DIALOGUE, DIDEMO_RECORD])
    report = tmp_path / "skipped.jsonl"
    for streaming in (False, True):
        dataset = load_stage3(
            path, feature_store=NpyFolder(features), on_error="skip", skipped_report=report, streaming=streaming
        )
        assert [row["id"] for row in dataset] == ["v_QOlSCBRmfWY"]
        assert [json.loads(line)["reason"] for line in report.read_text().splitlines()] == [
            "features 'v_k_ZXmr8pmrs' have shape (50, 768), expected (100, 768)",
            "features '4ed8934c6a45e01d59133159eccfaa8c' are missing from the feature store",
        ]


def test_unreadable_features_are_a_record_error(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    (features / "3n3oCNerzV0.npy").write_bytes(b"not a numpy file")
    path = write_json(tmp_path, "stage2.json", [INTERNVID_RECORD])
    with pytest.raises(ValueError, match=re.escape(f"{path}, record 0 (id '3n3oCNerzV0'): features '3n3oCNerzV0' "
                                                   "cannot be read")):
        load_stage2(path, feature_store=NpyFolder(features))


# Properties.

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
# Pieces of turns, placeholders and a lone surrogate (valid JSON as "\\ud800", but not text) included.
_SNIPPETS = ["<video>", "<image>", "\n", "<s0>", "<e0>", "<s1>", "<e1>", "<s", "From ", " to ", "é😀", "\ud800"]
_TEXT = st.lists(st.sampled_from(_SNIPPETS), max_size=5).map("".join)
_TURN = st.fixed_dictionaries(
    {},
    optional={
        "from": st.sampled_from(["human", "gpt", "system"]) | _JSON,
        "value": _TEXT | _JSON,
    },
)
_NUMBER = st.integers(-5, 300) | st.floats(allow_nan=True, allow_infinity=True) | _JSON
_META = st.fixed_dictionaries(
    {},
    optional={
        "duration": _NUMBER,
        "token": st.dictionaries(st.sampled_from(["<s0>", "<e0>", "<s1>", "<e1>", "x"]), _NUMBER, max_size=4) | _JSON,
        "split": st.lists(_NUMBER, max_size=3) | _JSON,
    },
)
_RECORD = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.sampled_from(["3n3oCNerzV0", "", "v_a"]) | _JSON,
            "source": st.sampled_from(["anet", "didemo", ""]) | _JSON,
            "image": st.sampled_from(["00453/004539375.jpg", "/", ""]) | _JSON,
            "video_id": st.sampled_from(["v_a", ""]) | _JSON,
            "q": _TEXT | _JSON,
            "a": _TEXT | _JSON,
            "conversations": st.lists(_TURN, max_size=4) | _JSON,
            "meta": _META | _JSON,
        },
    )
    | st.sampled_from([INTERNVID_RECORD, MULTI_TURN_RECORD, ANET_RECORD, VIDEOINSTRUCT_PAIR, *LCS_RECORDS])
    | _JSON
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_RECORD, max_size=4))
def test_random_records_load_or_raise_value_error(records):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "records.json"
        path.write_text(json.dumps(records), encoding="utf-8")
        for load in (load_stage1, load_stage2, load_stage3):
            try:
                loaded = len(load(path))
            except ValueError as error:
                assert str(path) in str(error)
                loaded = None
            # Skipping never raises, and keeps exactly the records that raising mode accepts.
            kept = len(load(path, on_error="skip"))
            assert kept <= len(records)
            if loaded is not None:
                assert kept == loaded == len(records)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(_JSON, max_size=5), indent=st.sampled_from([None, 0, 2]), chunk_size=st.integers(1, 17))
def test_incremental_parser_matches_json_loads(values, indent, chunk_size):
    text = json.dumps(values, indent=indent, ensure_ascii=False)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "values.json"
        path.write_text(text, encoding="utf-8")
        with mock.patch.object(json_array, "CHUNK_SIZE", chunk_size):
            parsed = [value for _, value in json_array.iter_json_array(str(path))]
    # Compared as JSON text, so that NaN equals NaN.
    assert json.dumps(parsed) == json.dumps(json.loads(text))
