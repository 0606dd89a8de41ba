"""Converters from raw annotations to dialogues and evaluation sets: hand-written DiDeMo and InternVid files, small
made-up videos for the clip and mix rules, and the real Charades-STA and ActivityNet files of `../shared/data`
(skipped where that folder is absent)."""

import argparse
import json
import logging
import re

import pytest

from vtimellm_hf.data import converters
from vtimellm_hf.data.converters import (
    DENSE_CAPTIONING_QUESTIONS,
    EVENT_CAPTIONING_QUESTIONS,
    GROUNDING_ANSWERS,
    GROUNDING_QUESTIONS,
    DialogueTurns,
    add_subcommand,
    captioning_references,
    convert,
    dialogue_record,
    read_durations,
    read_source,
    source_queries,
    videos_to_dialogues,
    write_dialogues,
)
from vtimellm_hf.data.loaders import load_stage2
from vtimellm_hf.data.raw_annotations import (
    Event,
    GroundingQuery,
    Video,
    read_activitynet_captions,
    read_charades_sta,
)
from vtimellm_hf.model.processing_vtime import format_index, indices_to_seconds, seconds_to_index

PLACEHOLDER = re.compile(r"(<[se]\d+>)")


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", *map(str, argv)])
    return args.run(args)


def load_without_skipping(path, tmp_path):
    """The records of a dialogue file as the stage-2 loader reads them, checking that none was skipped."""
    report = tmp_path / "skipped.jsonl"
    dataset = load_stage2(path, on_error="skip", skipped_report=report, expected_rows=None, expected_dim=None)
    assert report.read_text() == ""
    return dataset


def check_dialogues(records, dataset):
    """
    Every record is a well-formed dialogue, and at each placeholder the loader wrote the index of its time; that
    index survives index -> seconds -> index.
    """
    assert len(dataset) == len(records)
    for record, example in zip(records, dataset, strict=True):
        assert example["id"] == record["id"]
        meta = record["meta"]
        duration = meta["duration"]
        assert duration > 0 and example["duration"] == duration
        conversations = record["conversations"]
        assert [turn["from"] for turn in conversations] == ["human", "gpt"] * (len(conversations) // 2)
        assert conversations[0]["value"].startswith("<video>\n")
        assert sum(turn["value"].count("<video>") for turn in conversations) == 1
        if "split" in meta:
            start, end = meta["split"]
            assert 0 <= start < end and end - start == pytest.approx(duration)
        used = set()
        for turn, message in zip(conversations, example["messages"], strict=True):
            pieces = PLACEHOLDER.split(turn["value"])
            pattern = "".join(r"(\d{2})" if PLACEHOLDER.fullmatch(piece) else re.escape(piece) for piece in pieces)
            written = re.fullmatch(pattern, message["content"], re.DOTALL)
            assert written is not None, (record["id"], turn["value"], message["content"])
            for placeholder, index_text in zip(pieces[1::2], written.groups(), strict=True):
                index = seconds_to_index(meta["token"][placeholder], duration)
                assert index_text == format_index(index)
                assert seconds_to_index(indices_to_seconds(index, index, duration)[0], duration) == index
                used.add(placeholder)
        # Every event of the record is asked about, and `meta.token` names nothing else.
        assert used == set(meta["token"])


def dense_records(records):
    """The single-turn dense-captioning records."""
    return [
        record
        for record in records
        if record["conversations"][0]["value"].removeprefix("<video>\n") in DENSE_CAPTIONING_QUESTIONS
    ]


# Made-up videos: the mix, the turns, the clips.


def make_videos(count, events=3):
    return [
        Video(
            f"v{number}",
            60.0,
            tuple(Event(10.0 * k, 10.0 * k + 15.0, f"Person {number} does thing {k}.") for k in range(events)),
        )
        for number in range(count)
    ]


@pytest.mark.parametrize("dense_share", [0.0, 0.2, 0.35, 1.0])
def test_dense_share_is_exact(dense_share):
    records = videos_to_dialogues(make_videos(50), "anet", dense_share=dense_share, seed=3)
    assert len(records) == 50
    assert len(dense_records(records)) == round(dense_share * 50)


def test_dense_captioning_lists_every_event_in_time_order():
    events = (
        Event(20.0, 30.0, "The man leaves."),
        Event(0.0, 10.0, "A man enters.  "),
        Event(5.0, 8.0, "John  waves"),
        Event(32.0, 35.0, "Once seated, Ann smiles."),
        Event(36.0, 39.0, "Ann stands up once!"),
        Event(39.0, 40.0, "TV static."),
    )
    (record,) = videos_to_dialogues([Video("v", 40.0, events)], "anet", dense_share=1.0)
    question, answer = (turn["value"] for turn in record["conversations"])
    assert question.removeprefix("<video>\n") in DENSE_CAPTIONING_QUESTIONS
    # A first word loses its capital where it is common ("once" is written in lower case elsewhere); names and
    # acronyms keep theirs.
    assert answer == (
        "From <s0> to <e0>, a man enters. From <s1> to <e1>, John waves. From <s2> to <e2>, the man leaves. "
        "From <s3> to <e3>, once seated, Ann smiles. From <s4> to <e4>, Ann stands up once. "
        "From <s5> to <e5>, TV static."
    )
    assert record["meta"] == {
        "duration": 40.0,
        "token": {
            "<s0>": 0.0, "<e0>": 10.0, "<s1>": 5.0, "<e1>": 8.0, "<s2>": 20.0, "<e2>": 30.0,
            "<s3>": 32.0, "<e3>": 35.0, "<s4>": 36.0, "<e4>": 39.0, "<s5>": 39.0, "<e5>": 40.0,
        },
    }  # fmt: skip
    assert record["source"] == "anet" and record["id"] == "v"


def test_multi_turn_dialogues_ask_about_every_event_once():
    video = Video("v", 40.0, (Event(0.0, 10.0, "a man enters"), Event(20.0, 30.0, "The man leaves.")))
    kinds = set()
    for seed in range(20):
        (record,) = videos_to_dialogues([video], "internvid", dense_share=0.0, seed=seed)
        turns = record["conversations"]
        assert len(turns) == 4 and turns[0]["value"].startswith("<video>\n")
        asked = set()
        for question, answer in zip(turns[0::2], turns[1::2]):
            question, answer = question["value"].removeprefix("<video>\n"), answer["value"]
            placeholders = PLACEHOLDER.findall(question)
            if placeholders:  # event captioning: the answer is the sentence
                kinds.add("captioning")
                start, end = placeholders
                assert question in {template.format(start=start, end=end) for template in EVENT_CAPTIONING_QUESTIONS}
                assert answer == {"<s0>": "A man enters.", "<s1>": "The man leaves."}[start]
            else:  # grounding: the answer gives the placeholders
                kinds.add("grounding")
                start, end = PLACEHOLDER.findall(answer)
                assert answer in {template.format(start=start, end=end) for template in GROUNDING_ANSWERS}
                event = {"<s0>": "a man enters", "<s1>": "the man leaves"}[start]
                assert question in {template.format(event=event) for template in GROUNDING_QUESTIONS}
            asked.add(start)
        assert asked == {"<s0>", "<s1>"}
    assert kinds == {"captioning", "grounding"}


def test_templates_are_about_ten_per_task_and_distinct():
    for templates in (DENSE_CAPTIONING_QUESTIONS, EVENT_CAPTIONING_QUESTIONS, GROUNDING_QUESTIONS):
        assert len(templates) == len(set(templates)) == 10


def test_same_seed_same_records_other_seed_other_records(tmp_path):
    videos = make_videos(30)
    first, second, other = (videos_to_dialogues(videos, "anet", seed=seed) for seed in (7, 7, 8))
    assert first == second and first != other
    write_dialogues(first, tmp_path / "a.json")
    write_dialogues(second, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == first


def test_turns_of_other_dialogues_are_asked_as_the_converted_ones(tmp_path):
    """What other dialogue writers (the synthetic stage 3) use: the same templates, clauses and record layout, and
    records that the stage-2 loader reads with the placeholders' times."""
    turns = DialogueTurns(["A man cracks an egg.", "The man stirs."], seed=5)
    question, answer = turns.grounding(1, "A man cracks an egg.")
    assert any(question == template.format(event="a man cracks an egg") for template in GROUNDING_QUESTIONS)
    assert answer in {template.format(start="<s1>", end="<e1>") for template in GROUNDING_ANSWERS}
    question, answer = turns.event_captioning(0, "the man stirs")
    assert question in {template.format(start="<s0>", end="<e0>") for template in EVENT_CAPTIONING_QUESTIONS}
    assert answer == "The man stirs."
    assert sorted(turns.shuffled(range(7))) == list(range(7))
    assert DialogueTurns([], seed=5).random() == DialogueTurns([], seed=5).random()

    video = Video("v", 40.0, (Event(2.0, 10.0, "A man cracks an egg."), Event(12.5, 30.0, "The man stirs.")))
    record = dialogue_record(video, "mine", [("Q1", "From <s0> to <e0>."), ("Q2", "From <s1> to <e1>.")], (5.0, 45.0))
    assert record == {
        "source": "mine", "id": "v",
        "conversations": [{"from": "human", "value": "<video>\nQ1"}, {"from": "gpt", "value": "From <s0> to <e0>."},
                          {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "From <s1> to <e1>."}],
        "meta": {"split": [5.0, 45.0], "duration": 40.0,
                 "token": {"<s0>": 2.0, "<e0>": 10.0, "<s1>": 12.5, "<e1>": 30.0}},
    }  # fmt: skip
    write_dialogues([record], tmp_path / "d.json")
    (loaded,) = load_stage2(tmp_path / "d.json")
    start, end = seconds_to_index(2.0, 40.0), seconds_to_index(10.0, 40.0)
    assert loaded["messages"][1]["content"] == f"From {start:02d} to {end:02d}."


def test_long_videos_are_cut_to_the_clip_with_the_most_events():
    events = (
        Event(0.0, 30.0, "a"),
        Event(100.0, 110.0, "b"),
        Event(150.0, 219.8, "d"),
        Event(105.5, 160.0, "c"),
        Event(170.0, 400.0, "too long for any clip"),
        Event(140.0, 150.0, "g"),
    )
    (record,) = videos_to_dialogues([Video("v", 500.0, events)], "internvid", max_window_seconds=120, dense_share=1)
    # Clips of at most 120 s: from 0 s {a, b}; from 100 s {b, c, g, d}; from 105.5 s {c, g, d}; ...
    assert record["meta"]["split"] == [100.0, 219.8]
    assert record["meta"]["duration"] == 119.8
    assert record["meta"]["token"] == {
        "<s0>": 0.0, "<e0>": 10.0, "<s1>": 5.5, "<e1>": 60.0, "<s2>": 40.0, "<e2>": 50.0, "<s3>": 50.0, "<e3>": 119.8
    }  # fmt: skip
    assert record["conversations"][1]["value"].endswith("From <s3> to <e3>, d.")
    # Among equally busy clips, the earliest.
    (record,) = videos_to_dialogues(
        [Video("v", 500.0, (Event(200.0, 210.0, "y"), Event(0.0, 10.0, "x")))], "anet", max_window_seconds=120
    )
    assert record["meta"]["split"] == [0.0, 10.0]


def test_windows_stop_with_their_video():
    # ActivityNet has events that end after their video: in a window they end with it, and fit where they would not.
    video = Video("v", 130.0, (Event(20.0, 30.0, "a"), Event(25.0, 145.0, "b")))
    (record,) = videos_to_dialogues([video], "anet", max_window_seconds=120)
    assert record["meta"]["split"] == [20.0, 130.0]
    assert record["meta"]["token"] == {"<s0>": 0.0, "<e0>": 10.0, "<s1>": 5.0, "<e1>": 110.0}


def test_the_old_window_names_still_work_with_a_warning():
    videos = [Video("v", 500.0, (Event(200.0, 210.0, "y"), Event(0.0, 10.0, "x")))]
    expected = videos_to_dialogues(videos, "anet", max_window_seconds=120, window_every_video=True)
    with pytest.warns(FutureWarning) as warned:
        assert videos_to_dialogues(videos, "anet", max_clip_seconds=120, clip_every_video=True) == expected
    assert [str(warning.message).split(";")[0] for warning in warned] == [
        "videos_to_dialogues(max_clip_seconds=...) is now max_window_seconds=...",
        "videos_to_dialogues(clip_every_video=...) is now window_every_video=...",
    ]
    with pytest.raises(TypeError, match="both 'max_clip_seconds' and its new name 'max_window_seconds'"):
        videos_to_dialogues(videos, "anet", max_clip_seconds=120, max_window_seconds=120)
    with pytest.warns(FutureWarning, match="DEFAULT_MAX_CLIP_SECONDS moved to"):
        assert converters.DEFAULT_MAX_CLIP_SECONDS == 120.0
    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers())
    old = parser.parse_args(["convert", "activitynet", "in.json", "out.json", "--max-clip-seconds", "30"])
    assert old.max_window_seconds == 30.0


def test_short_videos_stay_whole_unless_every_video_is_cut():
    video = Video("v", 100.0, (Event(12.2, 30.0, "a"), Event(40.0, 54.4, "b")))
    (whole,) = videos_to_dialogues([video], "anet", max_window_seconds=120)
    assert "split" not in whole["meta"] and whole["meta"]["duration"] == 100.0
    (window,) = videos_to_dialogues([video], "internvid", window_every_video=True)
    assert window["meta"]["split"] == [12.2, 54.4]
    # Differences of the times as written, without the binary noise of the subtraction.
    assert window["meta"]["duration"] == 42.2
    assert window["meta"]["token"] == {"<s0>": 0.0, "<e0>": 17.8, "<s1>": 27.8, "<e1>": 42.2}


def test_unusable_events_are_left_out_with_a_warning(caplog):
    videos = [
        Video("v_a", 20.0, (Event(0.0, 5.0, "fine."), Event(20.0, 25.0, "after the end."), Event(1, 2, "<s3> tag"))),
        Video("v_b", 20.0, (Event(21.0, 22.0, "after the end."),)),
        Video("v_c", 20.0, (Event(1.0, 2.0, "the <video> is here"), Event(1.0, 3.0, " ... "))),
    ]
    with caplog.at_level(logging.WARNING):
        records = videos_to_dialogues(videos, "anet")
    assert [record["id"] for record in records] == ["v_a"]
    assert records[0]["meta"]["token"] == {"<s0>": 0.0, "<e0>": 5.0}
    assert "left out 2 event(s) that start at or after the end of their video" in caplog.text
    assert "left out 2 event(s) that hold <video> or a <sK>/<eK>-like tag" in caplog.text
    assert "left out 1 event(s) that have no word in their sentence" in caplog.text
    assert "2 videos have no usable event and give no record: v_b, v_c" in caplog.text


def test_dialogue_settings_are_checked():
    with pytest.raises(ValueError, match=r"dense_share must lie in \[0, 1\], got 1.5"):
        videos_to_dialogues(make_videos(1), "anet", dense_share=1.5)
    with pytest.raises(ValueError, match=r"max_window_seconds must be positive, got 0"):
        videos_to_dialogues(make_videos(1), "anet", max_window_seconds=0)
    with pytest.raises(ValueError, match=r"video 'v0' appears more than once"):
        videos_to_dialogues(make_videos(1) * 2, "anet")
    with pytest.raises(ValueError, match=r"unknown source_format 'youcook'; expected one of activitynet, charades"):
        read_source("youcook", "x.json")


# DiDeMo and InternVid, hand-written.


DIDEMO_RECORDS = [
    {
        "description": "A girl walks to the right.",
        "video": "10015567@N08_3655084291_d8b58466fa.mov",
        "times": [[2, 2], [2, 3], [2, 3], [1, 1]],
    },
    {
        "description": "the dog jumps",
        "video": "10015567@N08_3655084291_d8b58466fa.mov",
        "times": [[0, 1], [0, 1], [4, 5], [0, 1]],
    },
    {"description": "camera pans to the sky", "video": "54322086@N00_2408598493_f8a3f2d5a3.mp4", "times": [[5, 5]]},
]


def test_didemo_converts_to_dialogues_and_grounding_queries(tmp_path):
    path = tmp_path / "didemo.json"
    path.write_text(json.dumps(DIDEMO_RECORDS))
    dialogues = tmp_path / "didemo_dialogues.json"
    assert convert("didemo", path, dialogues, seed=1) == 2
    records = json.loads(dialogues.read_text())
    assert {record["source"] for record in records} == {"didemo"}
    assert records[0]["id"] == "10015567@N08_3655084291_d8b58466fa"
    assert records[0]["meta"] == {"duration": 30.0, "token": {"<s0>": 0.0, "<e0>": 10.0, "<s1>": 10.0, "<e1>": 20.0}}
    check_dialogues(records, load_without_skipping(dialogues, tmp_path))

    queries = tmp_path / "didemo_grounding.jsonl"
    assert convert("didemo", path, queries, task="grounding") == 3
    assert [json.loads(line) for line in queries.read_text().splitlines()][2] == {
        "video_id": "54322086@N00_2408598493_f8a3f2d5a3",
        "query": "camera pans to the sky",
        "start": 25.0,
        "end": 30.0,
        "duration": 30.0,
    }


INTERNVID_CLIPS = [
    ("3n3oCNerzV0", "00:02:09.800", "00:02:19.200", "a woman counts money"),
    ("3n3oCNerzV0", "00:02:59.200", "00:03:03.000", "two people shake hands"),
    ("3n3oCNerzV0", "00:10:00.000", "00:10:04.000", "a car drives away"),  # too far to share a clip
    ("3n3oCNerzV0", "00:02:40.000", "00:02:50.000", "the woman smiles"),
    ("Ab-12_cdEfg", "00:00:01.029", "00:00:09.000", "a cat sleeps"),
]


def write_internvid(tmp_path):
    path = tmp_path / "internvid.jsonl"
    keys = ("YoutubeID", "Start_timestamp", "End_timestamp", "Caption")
    path.write_text("".join(json.dumps(dict(zip(keys, clip)) | {"UMT_Score": 0.4}) + "\n" for clip in INTERNVID_CLIPS))
    return path


def test_internvid_videos_are_always_cut_into_one_clip(tmp_path):
    output = tmp_path / "stage2.json"
    assert convert("internvid", write_internvid(tmp_path), output, dense_share=1.0) == 2
    first, second = json.loads(output.read_text())
    assert first["source"] == "internvid" and first["id"] == "3n3oCNerzV0"
    assert first["meta"] == {
        "split": [129.8, 183.0],
        "duration": 53.2,
        "token": {"<s0>": 0.0, "<e0>": 9.4, "<s1>": 30.2, "<e1>": 40.2, "<s2>": 49.4, "<e2>": 53.2},
    }
    assert first["conversations"][1]["value"] == (
        "From <s0> to <e0>, a woman counts money. From <s1> to <e1>, the woman smiles. "
        "From <s2> to <e2>, two people shake hands."
    )
    # A video with one clip is cut too: InternVid gives no video lengths, so the record must say where it is.
    assert second["meta"] == {"split": [1.029, 9.0], "duration": 7.971, "token": {"<s0>": 0.0, "<e0>": 7.971}}
    check_dialogues([first, second], load_without_skipping(output, tmp_path))


def test_internvid_clip_limit_is_a_setting(tmp_path):
    output = tmp_path / "stage2.json"
    convert("internvid", write_internvid(tmp_path), output, max_window_seconds=30)
    first = json.loads(output.read_text())[0]
    # From 129.8 s, a 30-second clip holds one event; from 160 s, two.
    assert first["meta"]["split"] == [160.0, 183.0]
    assert first["meta"]["token"] == {"<s0>": 0.0, "<e0>": 10.0, "<s1>": 19.2, "<e1>": 23.0}


def test_internvid_grounding_queries_without_durations_leave_them_to_the_video(tmp_path):
    output = tmp_path / "grounding.jsonl"
    assert convert("internvid", write_internvid(tmp_path), output, task="grounding") == 5
    queries = [json.loads(line) for line in output.read_text().splitlines()]
    assert queries[0] == {
        "video_id": "3n3oCNerzV0", "query": "a woman counts money", "start": 129.8, "end": 139.2, "duration": None
    }
    durations = {"3n3oCNerzV0": 900, "Ab-12_cdEfg": 10}
    convert("internvid", write_internvid(tmp_path), output, task="grounding", durations=durations)
    assert [json.loads(line)["duration"] for line in output.read_text().splitlines()] == [900, 900, 900, 900, 10]


# Durations files.


def test_durations_from_json_and_csv(tmp_path):
    (tmp_path / "d.json").write_text('{"3MSZA": 31.0, "AMT7R": 12}')
    assert read_durations(tmp_path / "d.json") == {"3MSZA": 31.0, "AMT7R": 12.0}
    (tmp_path / "Charades_v1_test.csv").write_text("id,subject,scene,length\n3MSZA,HR43,Bedroom,31.00\nAMT7R,X,Y,12\n")
    assert read_durations(tmp_path / "Charades_v1_test.csv") == {"3MSZA": 31.0, "AMT7R": 12.0}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.json", "[1]", r"d.json: expected a JSON object of lengths by video id, found list"),
        ("d.json", '{"a": 0}', r"d.json, video 'a': length must be a positive number of seconds, found 0"),
        ("d.json", '{"a": "x"}', r"d.json, video 'a': length 'x' is not a number"),
        ("d.json", '{"a": 1,}', r"d.json, line 1: invalid JSON"),
        ("d.csv", "id,length\na,3\na,4\n", r"d.csv, line 3: video 'a' appears more than once"),
        ("d.csv", "id,scene\na,b\n", r"d.csv: the header must name an id column"),
        ("d.txt", "a 3\n", r"d.txt: durations must be a .json object or a .csv table, not a .txt file"),
    ],
)
def test_bad_durations_files_name_the_entry(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_durations(tmp_path / name)


# The command line.


def test_cli_writes_each_task(real_data, tmp_path, capsys):
    example = real_data / "activitynet_captions_example.json"
    assert run_cli("activitynet", example, tmp_path / "d.json", "--seed", 4, "--dense-share", 0.5) == 0
    assert "convert: wrote 2 dialogues to" in capsys.readouterr().err
    assert json.loads((tmp_path / "d.json").read_text()) == videos_to_dialogues(
        read_activitynet_captions(example), "anet", seed=4, dense_share=0.5
    )
    assert run_cli("activitynet", example, tmp_path / "c.json", "--task", "captioning") == 0
    assert read_activitynet_captions(tmp_path / "c.json") == read_activitynet_captions(example)
    (tmp_path / "durations.json").write_text('{"3MSZA": 31.0}')
    charades = tmp_path / "sta.txt"
    charades.write_text("3MSZA 24.3 30.4##person turn a light on.\n")
    durations = tmp_path / "durations.json"
    assert run_cli("charades", charades, tmp_path / "g.jsonl", "--task", "grounding", "--durations", durations) == 0
    assert json.loads((tmp_path / "g.jsonl").read_text()) == {
        "video_id": "3MSZA", "query": "person turn a light on.", "start": 24.3, "end": 30.4, "duration": 31.0
    }


def test_cli_errors_name_the_file_and_exit_with_2(tmp_path, capsys):
    broken = tmp_path / "broken.txt"
    broken.write_text("3MSZA 24.3##person turn a light on.\n")
    assert run_cli("charades", broken, tmp_path / "out.jsonl", "--task", "grounding") == 2
    assert f"convert: error: {broken}, line 1: expected 'VIDEO_ID START END'" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
    for bad in (["--dense-share", "1.5"], ["--max-window-seconds", "0"], ["--task", "qa"]):
        with pytest.raises(SystemExit):
            run_cli("charades", broken, tmp_path / "out.jsonl", *bad)
    with pytest.raises(SystemExit):
        run_cli("youcook", broken, tmp_path / "out.jsonl")


# Real files.


@pytest.fixture(scope="module")
def activitynet_val(real_data):
    return read_activitynet_captions(real_data / "activitynet_captions_val_coco_format.json")


def test_every_charades_sta_query_becomes_a_grounding_query(real_data, tmp_path):
    path = real_data / "charades_sta_test.txt"
    output = tmp_path / "charades_grounding.jsonl"
    assert convert("charades", path, output, task="grounding") == 3720
    queries = [GroundingQuery(**json.loads(line)) for line in output.read_text().splitlines()]
    # No lengths given: `duration` is null, so the evaluation reads it from each video.
    assert queries == read_charades_sta(path)
    assert queries[0] == GroundingQuery("3MSZA", "person turn a light on.", 24.3, 30.4, None)

    # With lengths, each query carries its video's.
    durations = {query.video_id: query.end + 1.0 for query in queries}
    assert {query.duration for query in source_queries("charades", path, durations) if query.video_id == "3MSZA"} == {
        durations["3MSZA"]
    }


def test_charades_dialogues_without_lengths_use_the_last_moment(real_data, tmp_path, caplog):
    path = real_data / "charades_sta_test.txt"
    with caplog.at_level(logging.WARNING):
        videos = read_source("charades", path)
    assert "no lengths given for 1334 videos" in caplog.text
    assert sum(len(video.events) for video in videos) == 3720
    assert all(video.duration == max(event.end for event in video.events) for video in videos)
    output = tmp_path / "charades_dialogues.json"
    assert convert("charades", path, output) == 1334
    check_dialogues(json.loads(output.read_text()), load_without_skipping(output, tmp_path))


def test_every_activitynet_val_video_becomes_a_dialogue(activitynet_val, real_data, tmp_path):
    input_path = real_data / "activitynet_captions_val_coco_format.json"
    output = tmp_path / "anet_dialogues.json"
    assert convert("activitynet", input_path, output, seed=0) == len(activitynet_val) == 4891
    records = json.loads(output.read_text())
    assert [record["id"] for record in records] == [video.video_id for video in activitynet_val]
    assert {record["source"] for record in records} == {"anet"}
    # Every event of every video is in its record, at its own times.
    for record, video in zip(records, activitynet_val, strict=True):
        assert sorted(record["meta"]["token"].values()) == sorted(t for event in video.events for t in event[:2])
    check_dialogues(records, load_without_skipping(output, tmp_path))
    # The 20/80 mix, and the same bytes for the same seed.
    assert len(dense_records(records)) / len(records) == pytest.approx(0.2, abs=0.005)
    again = tmp_path / "again.json"
    convert("activitynet", input_path, again, seed=0)
    assert again.read_bytes() == output.read_bytes()


def test_activitynet_val_clips_of_at_most_120_seconds_load(activitynet_val, tmp_path):
    records = videos_to_dialogues(activitynet_val, "anet", max_window_seconds=120, seed=5)
    durations = {video.video_id: video.duration for video in activitynet_val}
    cut = [record for record in records if "split" in record["meta"]]
    assert cut and all(record["meta"]["duration"] <= 120 for record in records)
    assert all(record["meta"]["split"][1] <= durations[record["id"]] for record in cut)
    # Clips stop with their video, and so do the events of ActivityNet that end after it.
    assert all(0 <= t <= record["meta"]["duration"] for record in cut for t in record["meta"]["token"].values())
    path = tmp_path / "clips.json"
    write_dialogues(records, path)
    check_dialogues(records, load_without_skipping(path, tmp_path))


def test_activitynet_val_evaluation_sets(activitynet_val, real_data, tmp_path):
    input_path = real_data / "activitynet_captions_val_coco_format.json"
    grounding = tmp_path / "anet_grounding.jsonl"
    count = convert("activitynet", input_path, grounding, task="grounding")
    queries = [json.loads(line) for line in grounding.read_text().splitlines()]
    assert count == len(queries) == sum(len(video.events) for video in activitynet_val)
    durations = {video.video_id: video.duration for video in activitynet_val}
    assert all(query["duration"] == durations[query["video_id"]] for query in queries)

    references = tmp_path / "anet_references.json"
    assert convert("activitynet", input_path, references, task="captioning") == 4891
    assert read_activitynet_captions(references) == activitynet_val
    assert json.loads(references.read_text()) == captioning_references(activitynet_val)
