"""Readers of raw annotation files: hand-written files for every error message, and the real files of
`../shared/data` (skipped where that folder is absent)."""

import json
import logging

import pytest

from vtimellm_hf.data.raw_annotations import (
    Event,
    GroundingQuery,
    Video,
    grounding_queries,
    read_activitynet_captions,
    read_charades_sta,
    read_didemo,
    read_internvid,
    split_sentences,
)


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# Charades-STA


def test_charades_lines_become_queries(tmp_path):
    path = write(
        tmp_path, "sta.txt", "3MSZA 24.3 30.4##person turn a light on.\n\nAMT7R 4.3 12.5## a person sits.\r\n"
    )
    assert read_charades_sta(path) == [
        GroundingQuery("3MSZA", "person turn a light on.", 24.3, 30.4, None),
        GroundingQuery("AMT7R", "a person sits.", 4.3, 12.5, None),
    ]


def test_charades_durations_are_attached(tmp_path):
    path = write(tmp_path, "sta.txt", "3MSZA 24.3 30.4##person turn a light on.\n")
    (query,) = read_charades_sta(path, durations={"3MSZA": 31.0, "OTHER": 5.0})
    assert query.duration == 31.0


def test_charades_keeps_hashes_inside_the_sentence(tmp_path):
    path = write(tmp_path, "sta.txt", "V1 0 1##a sign reads ## here\n")
    assert read_charades_sta(path)[0].query == "a sign reads ## here"


def test_charades_ignores_a_byte_order_mark(tmp_path):
    path = write(tmp_path, "sta.txt", "\ufeffV1 0 1##a person sits.\n")
    assert read_charades_sta(path)[0].video_id == "V1"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("V1 0 1 a person sits.", r"line 2: missing the '##'"),
        ("V1 0##a person sits.", r"line 2: expected 'VIDEO_ID START END' before '##', found 2 field"),
        ("V1 0 x##a person sits.", r"line 2: end 'x' is not a number"),
        ("V1 0 nan##a person sits.", r"line 2: end 'nan' is not a finite number"),
        ("V1 -1 2##a person sits.", r"line 2: negative start -1.0"),
        ("V1 5 2##a person sits.", r"line 2: start 5.0 is after end 2.0"),
        ("V1 0 2##   ", r"line 2: empty sentence"),
    ],
)
def test_charades_bad_lines_name_the_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "sta.txt", f"V0 0 1##fine.\n{line}\n")
    with pytest.raises(ValueError, match=message) as error:
        read_charades_sta(path)
    assert str(path) in str(error.value)


def test_charades_rejects_bytes_that_are_not_utf8(tmp_path):
    path = write(tmp_path, "sta.txt", b"V0 0 1##fine.\nV1 0 1##caf\xe9\n")
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8 \(byte 0xe9 at column 12\)"):
        read_charades_sta(path)


def test_charades_durations_must_cover_every_video(tmp_path):
    path = write(tmp_path, "sta.txt", "V1 0 1##a person sits.\n")
    with pytest.raises(ValueError, match=r"line 1: video 'V1' is not in `durations`"):
        read_charades_sta(path, durations={"V2": 3.0})
    with pytest.raises(ValueError, match=r"line 1: duration must be positive, found 0"):
        read_charades_sta(path, durations={"V1": 0})


def test_real_charades_sta_test_set_parses(real_data):
    queries = read_charades_sta(real_data / "charades_sta_test.txt")
    assert len(queries) == 3720
    assert queries[0] == GroundingQuery("3MSZA", "person turn a light on.", 24.3, 30.4, None)
    assert all(0 <= query.start <= query.end and query.query for query in queries)


# ActivityNet Captions, original layout


def test_activitynet_original_layout(tmp_path):
    data = {
        "v_a": {"duration": 20, "timestamps": [[0, 5], [4.5, 20]], "sentences": ["A man runs.", " He stops. "]},
        "v_b": {"duration": 7.5, "timestamps": [[1, 2]], "sentences": ["A dog."]},
    }
    path = write(tmp_path, "val.json", json.dumps(data))
    assert read_activitynet_captions(path) == [
        Video("v_a", 20.0, (Event(0.0, 5.0, "A man runs."), Event(4.5, 20.0, "He stops."))),
        Video("v_b", 7.5, (Event(1.0, 2.0, "A dog."),)),
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"timestamps": [[0, 1]], "sentences": ["a"]}, r"video 'v_x': missing field 'duration'"),
        ({"duration": 0, "timestamps": [[0, 1]], "sentences": ["a"]}, r"video 'v_x': duration must be positive"),
        ({"duration": -3, "timestamps": [], "sentences": []}, r"video 'v_x': duration must be positive"),
        ({"duration": True, "timestamps": [], "sentences": []}, r"video 'v_x': duration must be a finite number"),
        ({"duration": 9, "timestamps": [[5, 1]], "sentences": ["a"]}, r"timestamps\[0\]: start 5.0 is after end 1.0"),
        ({"duration": 9, "timestamps": [[1]], "sentences": ["a"]}, r"timestamps\[0\] must be a \[start, end\] pair"),
        ({"duration": 9, "timestamps": [["0", 1]], "sentences": ["a"]}, r"timestamps\[0\] start must be a finite"),
        ({"duration": 9, "timestamps": [[0, 1]], "sentences": ["a", "b"]}, r"'timestamps' has 1 entries but 'sent"),
        ({"duration": 9, "timestamps": [[0, 1]], "sentences": [3]}, r"'sentences' must be a list of strings"),
        ([1, 2], r"video 'v_x': expected an object, found list"),
    ],
)
def test_activitynet_bad_records_name_the_file_and_video(tmp_path, record, message):
    path = write(tmp_path, "val.json", json.dumps({"v_x": record}))
    with pytest.raises(ValueError, match=message) as error:
        read_activitynet_captions(path)
    assert str(path) in str(error.value)


def test_activitynet_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path, "val.json", '{\n  "v_x": {"duration": 3,}\n}')
    with pytest.raises(ValueError, match=r"val.json, line 2, column 25: invalid JSON"):
        read_activitynet_captions(path)


def test_activitynet_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = write(tmp_path, "val.json", b'{\n"v_x": {"duration": 3, "timestamps": [], "sentences": ["\xff"]}}')
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8 \(byte 0xff\)"):
        read_activitynet_captions(path)


def test_activitynet_repeated_video_ids_are_refused(tmp_path):
    record = '{"duration": 3, "timestamps": [], "sentences": []}'
    path = write(tmp_path, "val.json", f'{{"v_x": {record}, "v_x": {record}}}')
    with pytest.raises(ValueError, match=r"key 'v_x' appears more than once"):
        read_activitynet_captions(path)


def test_activitynet_top_level_must_be_an_object(tmp_path):
    path = write(tmp_path, "val.json", "[]")
    with pytest.raises(ValueError, match=r"expected a JSON object at the top level, found list"):
        read_activitynet_captions(path)


def test_real_activitynet_example_parses(real_data):
    videos = read_activitynet_captions(real_data / "activitynet_captions_example.json")
    assert [video.video_id for video in videos] == ["v_bXdq2zI1Ms0", "v_CN01Gm2Yc4k"]
    assert videos[0].duration == 73.1
    assert videos[0].events[1] == Event(37.28, 43.49, "The man in front begins to do karate on the mat.")


# ActivityNet Captions, coco-style layout


def coco_file(tmp_path, *annotations):
    return write(tmp_path, "coco.json", json.dumps({"annotations": list(annotations)}))


def test_activitynet_coco_layout_splits_the_caption_per_segment(tmp_path):
    path = coco_file(
        tmp_path,
        {
            "image_id": "v_a.mp4",
            "caption": "Two girls wash a car.One walks away.  She comes back 2.5 minutes later!",
            "segments": [[0, 4], [4, 8], [8, 10.5]],
            "duration": 10.5,
            "id": 0,
        },
    )
    assert read_activitynet_captions(path) == [
        Video(
            "v_a",
            10.5,
            (
                Event(0.0, 4.0, "Two girls wash a car."),
                Event(4.0, 8.0, "One walks away."),
                Event(8.0, 10.5, "She comes back 2.5 minutes later!"),
            ),
        )
    ]


def test_activitynet_coco_videos_that_cannot_be_aligned(tmp_path, caplog):
    aligned = {"image_id": "v_a.mp4", "caption": "One. Two.", "segments": [[0, 1], [1, 2]], "duration": 2, "id": 0}
    unaligned = {"image_id": "v_b.mp4", "caption": "1 One. 2 Two.", "segments": [[0, 1], [1, 2]], "duration": 2}
    path = coco_file(tmp_path, aligned, unaligned)
    with caplog.at_level(logging.WARNING):
        videos = read_activitynet_captions(path)
    assert [video.video_id for video in videos] == ["v_a"]
    assert "skipped 1 of 2 videos" in caplog.text and "v_b" in caplog.text
    with pytest.raises(ValueError, match=r"annotation #1 \('v_b.mp4'\): the caption splits into 1 sentence\(s\) but"):
        read_activitynet_captions(path, on_unaligned="raise")
    with pytest.raises(ValueError, match=r"on_unaligned must be 'skip' or 'raise'"):
        read_activitynet_captions(path, on_unaligned="keep")


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"caption": "A.", "segments": [[0, 1]], "duration": 2}, r"annotation #0: missing field 'image_id'"),
        ({"image_id": "v_a.mp4", "caption": "A.", "segments": [[0, 1]]}, r"#0 \('v_a.mp4'\): missing field 'durat"),
        ({"image_id": "v_a.mp4", "caption": "A.", "segments": [[2, 1]], "duration": 2}, r"segments\[0\]: start 2.0"),
        ({"image_id": "v_a.mp4", "caption": None, "segments": [], "duration": 2}, r"'caption' must be a string"),
        ({"image_id": 7, "caption": "A.", "segments": [], "duration": 2}, r"'image_id' must be a non-empty string"),
    ],
)
def test_activitynet_coco_bad_records_name_the_record(tmp_path, annotation, message):
    with pytest.raises(ValueError, match=message):
        read_activitynet_captions(coco_file(tmp_path, annotation))


def test_activitynet_coco_repeated_videos_are_refused(tmp_path):
    annotation = {"image_id": "v_a.mp4", "caption": "A.", "segments": [[0, 1]], "duration": 2}
    with pytest.raises(ValueError, match=r"annotation #1 \('v_a.mp4'\): video 'v_a' appears more than once"):
        read_activitynet_captions(coco_file(tmp_path, annotation, annotation))


def test_real_activitynet_coco_val_parses_every_video(real_data, caplog):
    path = real_data / "activitynet_captions_val_coco_format.json"
    annotations = json.loads(path.read_text(encoding="utf-8"))["annotations"]
    with caplog.at_level(logging.WARNING):
        videos = read_activitynet_captions(path)
    # Every video is either returned or named as skipped because its caption does not split per segment.
    skipped = [annotation["image_id"][: -len(".mp4")] for annotation in annotations]
    skipped = [video_id for video_id in skipped if video_id not in {video.video_id for video in videos}]
    assert len(annotations) == 4909
    assert len(videos) + len(skipped) == 4909
    assert len(skipped) == 18
    assert all(video_id in caplog.text for video_id in skipped)
    assert all(video.video_id.startswith("v_") and video.events for video in videos)
    assert videos[0] == Video(
        "v_uqiMw7tQ1Cc",
        55.15,
        (
            Event(0.28, 55.15, "A weight lifting tutorial is given."),
            Event(
                13.79, 54.32, "The coach helps the guy in red with the proper body placement and lifting technique."
            ),
        ),
    )
    assert len(grounding_queries(videos)) == sum(len(video.events) for video in videos)


# Helpers


def test_grounding_queries_carry_the_duration():
    videos = [Video("v_a", 20.0, (Event(0.0, 5.0, "A man runs."), Event(4.5, 20.0, "He stops.")))]
    assert grounding_queries(videos) == [
        GroundingQuery("v_a", "A man runs.", 0.0, 5.0, 20.0),
        GroundingQuery("v_a", "He stops.", 4.5, 20.0, 20.0),
    ]


@pytest.mark.parametrize(
    ("caption", "sentences"),
    [
        ("A man runs. He stops.", ["A man runs.", "He stops."]),
        ("A man runs.he stops!Why?", ["A man runs.", "he stops!", "Why?"]),
        ("It is 2.5 m long. 3 dogs bark.", ["It is 2.5 m long. 3 dogs bark."]),
        ("  ", []),
    ],
)
def test_split_sentences(caption, sentences):
    assert split_sentences(caption) == sentences


# DiDeMo


DIDEMO_RECORDS = [
    {
        "annotation_id": 1,
        "description": "a girl walks to the right.",
        "video": "12090392@N02_13482799053_87ef3c15d6.mp4",
        "times": [[2, 2], [2, 3], [2, 3], [1, 1]],
        "num_segments": 6,
    },
    # Two pairs given twice each: the first of them wins.
    {
        "description": " The dog jumps ",
        "video": "12090392@N02_13482799053_87ef3c15d6.mp4",
        "times": [[0, 1], [4, 5], [0, 1], [4, 5]],
    },
    {"description": "camera pans", "video": "999@N01_2_cd.mov", "times": [[5, 5]]},
]


def test_didemo_records_become_videos_with_the_most_common_moment(tmp_path):
    path = write(tmp_path, "didemo.json", json.dumps(DIDEMO_RECORDS))
    assert read_didemo(path) == [
        Video(
            "12090392@N02_13482799053_87ef3c15d6",
            30.0,
            (Event(10.0, 20.0, "a girl walks to the right."), Event(0.0, 10.0, "The dog jumps")),
        ),
        Video("999@N01_2_cd", 30.0, (Event(25.0, 30.0, "camera pans"),)),
    ]


def test_didemo_durations_are_the_lengths_of_the_files_whose_features_are_sampled(tmp_path, caplog):
    path = write(tmp_path, "didemo.json", json.dumps(DIDEMO_RECORDS))
    # A 45 s file: its features sample all 45 s, so 25 s must become index 56, not 83 of a 30 s timeline
    videos = read_didemo(path, durations={"12090392@N02_13482799053_87ef3c15d6": 27.5, "999@N01_2_cd": 45})
    assert [video.duration for video in videos] == [27.5, 45.0]
    assert "no lengths given" not in caplog.text
    assert [video.duration for video in read_didemo(path)] == [30.0, 30.0]
    assert "no lengths given for 2 videos: each lasts the 30 s that DiDeMo annotates" in caplog.text
    with pytest.raises(ValueError, match=r"video '999@N01_2_cd' is not in `durations`"):
        read_didemo(path, durations={"12090392@N02_13482799053_87ef3c15d6": 27.5})


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"description": "a", "times": [[0, 0]]}, r"record #1: missing field 'video'"),
        ({"video": "v.mp4", "times": [[0, 0]]}, r"record #1 \('v.mp4'\): missing field 'description'"),
        ({"video": "v.mp4", "description": "  ", "times": [[0, 0]]}, r"'description' must be a non-empty string"),
        ({"video": "v.mp4", "description": "a", "times": []}, r"'times' must be a non-empty list"),
        ({"video": "v.mp4", "description": "a", "times": [[2, 1]]}, r"times\[0\] = \[2, 1\]: the start segment"),
        ({"video": "v.mp4", "description": "a", "times": [[0, 6]]}, r"segment indices are integers from 0 to 5"),
        ({"video": "v.mp4", "description": "a", "times": [[True, 1]]}, r"segment indices are integers from 0 to 5"),
        ({"video": "v.mp4", "description": "a", "times": [[1.0, 2]]}, r"segment indices are integers from 0 to 5"),
        ({"video": "v.mp4", "description": "a", "times": [[1]]}, r"times\[0\] must be a \[start, end\] pair"),
        ("v.mp4", r"record #1: expected an object, found str"),
    ],
)
def test_didemo_bad_records_name_the_file_and_record(tmp_path, record, message):
    path = write(tmp_path, "didemo.json", json.dumps([DIDEMO_RECORDS[0], record]))
    with pytest.raises(ValueError, match=message) as error:
        read_didemo(path)
    assert str(path) in str(error.value)


def test_didemo_top_level_must_be_a_list(tmp_path):
    path = write(tmp_path, "didemo.json", json.dumps({"annotations": DIDEMO_RECORDS}))
    with pytest.raises(ValueError, match=r"expected a JSON list of records at the top level, found dict"):
        read_didemo(path)


# InternVid


INTERNVID_LINES = [
    '{"YoutubeID": "abc", "Start_timestamp": "00:01:01.029", "End_timestamp": "00:01:09.500", '
    '"Caption": "a woman counts money", "UMT_Score": 0.41}',
    "",
    '{"YoutubeID": "xyz", "Start_timestamp": "01:00:00.000", "End_timestamp": "01:00:05.5", '
    '"Caption": " two people shake hands "}',
    '{"YoutubeID": "abc", "Start_timestamp": "00:00:10.000", "End_timestamp": "00:00:20.000", '
    '"Caption": "a man talks"}',
]
INTERNVID_VIDEOS = [
    Video("abc", 69.5, (Event(61.029, 69.5, "a woman counts money"), Event(10.0, 20.0, "a man talks"))),
    Video("xyz", 3605.5, (Event(3600.0, 3605.5, "two people shake hands"),)),
]


def test_internvid_json_lines_are_grouped_by_video(tmp_path):
    path = write(tmp_path, "internvid.jsonl", "\n".join(INTERNVID_LINES) + "\n")
    # Without durations, a video lasts until its last clip ends; 61.029 carries no binary noise from the sum.
    assert read_internvid(path) == INTERNVID_VIDEOS


def test_internvid_json_list_reads_the_same(tmp_path):
    records = [json.loads(line) for line in INTERNVID_LINES if line]
    path = write(tmp_path, "internvid.json", "\ufeff\n  " + json.dumps(records))
    assert read_internvid(path) == INTERNVID_VIDEOS


def test_internvid_durations_are_the_source_video_lengths(tmp_path):
    path = write(tmp_path, "internvid.jsonl", "\n".join(INTERNVID_LINES))
    assert [video.duration for video in read_internvid(path, durations={"abc": 300, "xyz": 4000.5})] == [300, 4000.5]
    with pytest.raises(ValueError, match=r"video 'xyz' is not in `durations`"):
        read_internvid(path, durations={"abc": 300})
    with pytest.raises(ValueError, match=r"video 'abc': duration must be positive"):
        read_internvid(path, durations={"abc": 0, "xyz": 1})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"YoutubeID": "v", "Start_timestamp": "1:02", "End_timestamp": "00:00:03", "Caption": "a"}',
            r"line 2: Start_timestamp must be a time 'HH:MM:SS.mmm', found '1:02'",
        ),
        (
            '{"YoutubeID": "v", "Start_timestamp": "00:61:00", "End_timestamp": "01:00:00", "Caption": "a"}',
            r"line 2: Start_timestamp must be a time",
        ),
        (
            '{"YoutubeID": "v", "Start_timestamp": 3, "End_timestamp": "00:00:04", "Caption": "a"}',
            r"line 2: Start_timestamp must be a time 'HH:MM:SS.mmm', found 3",
        ),
        (
            '{"YoutubeID": "v", "Start_timestamp": "00:00:05", "End_timestamp": "00:00:04", "Caption": "a"}',
            r"line 2: start 5.0 is after end 4.0",
        ),
        (
            '{"YoutubeID": "v", "Start_timestamp": "00:00:01", "End_timestamp": "00:00:04", "Caption": " "}',
            r"line 2: video 'v': 'Caption' must be a non-empty string",
        ),
        (
            '{"Start_timestamp": "00:00:01", "End_timestamp": "00:00:04", "Caption": "a"}',
            r"line 2: missing field 'YoutubeID'",
        ),
        ('{"YoutubeID": "v", "Start_timestamp": "00:00:01",}', r"line 2: invalid JSON: Expecting property name"),
        ("[1, 2]", r"line 2: expected an object, found list"),
    ],
)
def test_internvid_bad_lines_name_the_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "internvid.jsonl", INTERNVID_LINES[0] + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        read_internvid(path)
    assert str(path) in str(error.value)


def test_internvid_json_list_errors_name_the_record(tmp_path):
    path = write(tmp_path, "internvid.json", json.dumps([json.loads(INTERNVID_LINES[0]), {"YoutubeID": "v"}]))
    with pytest.raises(ValueError, match=r"internvid.json, record #1: missing field 'Start_timestamp'"):
        read_internvid(path)


def test_internvid_clips_that_all_end_at_zero_need_a_duration(tmp_path):
    line = '{"YoutubeID": "v", "Start_timestamp": "00:00:00", "End_timestamp": "00:00:00.000", "Caption": "a"}'
    path = write(tmp_path, "internvid.jsonl", line)
    with pytest.raises(ValueError, match=r"video 'v': no duration given and every clip ends at 0 s"):
        read_internvid(path)
    assert read_internvid(path, durations={"v": 8.0})[0].duration == 8.0
