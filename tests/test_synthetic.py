"""The synthetic moments dataset: reproducible, well-formed, held out properly, and visible in the pixels."""

import json
import re

import numpy as np
import pytest
import av
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from vtimellm_hf.cli import main as cli_main
from vtimellm_hf.data.converters import (
    DENSE_CAPTIONING_QUESTIONS,
    GROUNDING_ANSWERS,
    GROUNDING_QUESTIONS,
    convert,
    videos_to_dialogues,
)
from vtimellm_hf.data.raw_annotations import read_activitynet_captions
from vtimellm_hf.data.synthetic import (
    COLOURS,
    EMPTY_STILL_CAPTION,
    SHAPES,
    SyntheticMomentsConfig,
    generate_synthetic_moments,
)
from vtimellm_hf.data.synthetic.records import DIALOGUE_CAPTIONING_TEMPLATES, DIALOGUE_GROUNDING_TEMPLATES

PLACEHOLDER = re.compile(r"<[se]\d+>")
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
SMALL = {"num_videos": 4, "num_val_videos": 1, "config": SyntheticMomentsConfig(num_images=6)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The default dataset, as `make demo` generates it."""
    return generate_synthetic_moments(tmp_path_factory.mktemp("synthetic") / "data")


def time_index(seconds: float, duration: float) -> int:
    """VTimeLLM's timestamp convention: seconds -> index into the 100 sampled frames."""
    return min(round(seconds / duration * 100), 99)


def read_json(path):
    return json.loads(path.read_text())


def decode_all_frames(path) -> tuple[np.ndarray, float]:
    """Every frame of a video, decoded by PyAV (as decord decodes them), and its average frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, float(stream.average_rate)


def frames_without_events(video) -> list[int]:
    covered = set()
    for event in video.events:
        covered.update(video.event_frame_range(event))
    return [index for index in range(video.num_frames) if index not in covered]


def videos_with_quiet_frames(dataset, count: int) -> list:
    """Videos having at least 4 frames with no event (most have many), the first `count` of them."""
    chosen = [video for video in dataset.videos if len(frames_without_events(video)) >= 4][:count]
    assert len(chosen) == count, "the default dataset should hold videos with event-free stretches"
    return chosen


def mean_difference(first: np.ndarray, second: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute pixel difference of two frames over a boolean `(height, width)` mask."""
    return float(np.abs(first[mask].astype(np.float32) - second[mask].astype(np.float32)).mean())


def patterns(templates):
    """A regular expression per template, each slot filled as the synthetic data fills it: an event's sentence as
    a clause ("a red circle appears"), a shape ("the red circle"), a placeholder."""
    slots = {"event": r"an? \w+ \w+ appears", "thing": r"the \w+ \w+", "Thing": r"The \w+ \w+", "start": r"<s\d+>",
             "end": r"<e\d+>"}  # fmt: skip
    return [
        re.compile(re.sub(r"\\\{(\w+)\\\}", lambda slot: slots[slot.group(1)], re.escape(template)))
        for template in templates
    ]


def test_same_seed_gives_identical_files_and_frames(tmp_path):
    first = generate_synthetic_moments(tmp_path / "first", seed=3, **SMALL)
    second = generate_synthetic_moments(tmp_path / "second", seed=3, **SMALL)
    other = generate_synthetic_moments(tmp_path / "other", seed=4, **SMALL)

    for name in (
        "annotations.json",
        "splits.json",
        "stage1.json",
        "stage2.json",
        "stage3.json",
        "grounding_val.jsonl",
        "dense_captioning_val.json",
        "synthetic_config.json",
        "synthetic_manifest.json",
    ):
        assert (first.root / name).read_bytes() == (second.root / name).read_bytes(), name
    for image in sorted(first.image_dir.iterdir()):
        assert image.read_bytes() == (second.image_dir / image.name).read_bytes(), image.name
    for video_id in first.train_video_ids + first.val_video_ids:
        frames, _ = decode_all_frames(first.video_path(video_id))
        again, _ = decode_all_frames(second.video_path(video_id))
        np.testing.assert_array_equal(frames, again, err_msg=video_id)
    assert first.annotations_file.read_bytes() != other.annotations_file.read_bytes()


def test_annotations_follow_activitynet_captions_and_the_timestamp_grid(dataset):
    annotations = read_json(dataset.annotations_file)
    config = dataset.config
    assert list(annotations) == [video.video_id for video in dataset.videos]
    for video_id, annotation in annotations.items():
        assert set(annotation) == {"duration", "timestamps", "sentences"}, video_id
        duration, timestamps, sentences = annotation["duration"], annotation["timestamps"], annotation["sentences"]
        assert config.duration_range[0] <= duration <= config.duration_range[1]
        assert config.events_per_video[0] <= len(timestamps) == len(sentences) <= config.events_per_video[1]
        assert [start for start, _ in timestamps] == sorted(start for start, _ in timestamps)
        for (start, end), sentence in zip(timestamps, sentences):
            assert 0 <= start < end <= duration, video_id
            assert (end - start) / duration >= 0.15 - 1e-9, f"{video_id}: event {sentence!r} is too short"
            # Boundaries sit on the 100-bin grid, so the index conversion never meets a rounding tie.
            for seconds in (start, end):
                exact = seconds / duration * 100
                assert abs(exact - round(exact)) < 1e-6, f"{video_id}: {seconds} s is off the grid"
                assert time_index(seconds, duration) == min(round(exact), 99)
            assert re.fullmatch(r"An? (\w+) (\w+) appears\.", sentence), sentence
        words = [sentence.split()[1:3] for sentence in sentences]
        assert all(colour in COLOURS and shape in SHAPES for colour, shape in words)
        # No colour or shape repeats within a video, so every query names one event.
        assert len({colour for colour, _ in words}) == len({shape for _, shape in words}) == len(words)

    # Times are drawn independently of the captions: the same caption lands at many different places.
    starts_by_shape = {}
    for annotation in annotations.values():
        for (start, _), sentence in zip(annotation["timestamps"], annotation["sentences"]):
            starts_by_shape.setdefault(sentence.split()[2], set()).add(time_index(start, annotation["duration"]))
    assert all(len(starts) >= 5 for starts in starts_by_shape.values()), starts_by_shape
    event_counts = {len(annotation["timestamps"]) for annotation in annotations.values()}
    assert event_counts == {1, 2, 3}


def test_held_out_videos_appear_in_no_training_record(dataset):
    splits = read_json(dataset.splits_file)
    train, val = set(splits["train"]), set(splits["val"])
    assert (len(train), len(val)) == (48, 16)
    assert not train & val
    assert train | val == set(read_json(dataset.annotations_file))
    for stage_file in (dataset.stage2_file, dataset.stage3_file):
        assert {record["id"] for record in read_json(stage_file)} == train
    assert set(read_json(dataset.dense_captioning_val_file)) == val

    annotations = read_json(dataset.annotations_file)
    queries = [json.loads(line) for line in dataset.grounding_val_file.read_text().splitlines()]
    assert len(queries) == sum(len(annotations[video_id]["timestamps"]) for video_id in val)
    for query in queries:
        assert set(query) == {"video_id", "query", "start", "end", "duration"}
        annotation = annotations[query["video_id"]]
        assert query["video_id"] in val
        assert query["duration"] == annotation["duration"]
        index = annotation["sentences"].index(query["query"])
        assert [query["start"], query["end"]] == annotation["timestamps"][index]
    for video_id in train | val:
        assert dataset.video_path(video_id).is_file()


def test_decoded_videos_match_annotations_and_show_events(dataset):
    annotations = read_json(dataset.annotations_file)
    for video in videos_with_quiet_frames(dataset, count=6):
        frames, fps = decode_all_frames(dataset.video_path(video.video_id))
        duration = annotations[video.video_id]["duration"]
        assert fps == pytest.approx(video.fps)
        assert abs(len(frames) - duration * fps) <= 1, video.video_id
        assert frames.shape[1:] == (video.height, video.width, 3)

        quiet = frames_without_events(video)
        for event in video.events:
            inside = video.event_frame_range(event)
            # The shape is on the frames whose timestamps lie in [start, end).
            assert (inside.start - 1) / video.fps < event.start <= inside.start / video.fps
            assert (inside.stop - 1) / video.fps < event.end <= inside.stop / video.fps
            mask = event.mask(video.width, video.height)
            middle = frames[(inside.start + inside.stop) // 2]
            # Another shape on screen at the same time hides at most a small part of this one.
            in_colour = np.abs(middle[mask].astype(np.int32) - np.array(COLOURS[event.colour])).max(axis=-1) < 40
            assert in_colour.mean() > 0.5, f"{video.video_id}: {event.caption} is hidden"
            for index in (quiet[0], quiet[-1]):
                assert mean_difference(middle, frames[index], mask) > 40, f"{video.video_id}: {event.caption}"
            if inside.start > 0:
                # The shape switches on at exactly its first frame: the largest change nearby is there.
                window = [index for index in range(inside.start - 1, inside.start + 2) if index >= 1]
                changes = {index: mean_difference(frames[index - 1], frames[index], mask) for index in window}
                assert max(changes, key=changes.get) == inside.start, f"{video.video_id}: {event.caption} {changes}"
        whole_frame = np.ones((video.height, video.width), dtype=bool)
        assert mean_difference(frames[quiet[0]], frames[quiet[-1]], whole_frame) < 10, video.video_id


def test_stage_records_use_placeholders_they_define(dataset):
    annotations = read_json(dataset.annotations_file)
    for stage_file in (dataset.stage2_file, dataset.stage3_file):
        records = read_json(stage_file)
        assert len(records) == 48 * 4
        for record in records:
            assert set(record) == {"source", "id", "conversations", "meta"}
            annotation = annotations[record["id"]]
            token = record["meta"]["token"]
            assert record["meta"]["duration"] == annotation["duration"]
            assert [[token[f"<s{k}>"], token[f"<e{k}>"]] for k in range(len(token) // 2)] == annotation["timestamps"]
            turns = record["conversations"]
            assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert turns[0]["value"].startswith("<video>\n")
            assert all("<video>" not in turn["value"] for turn in turns[1:])
            for turn in turns:
                assert set(PLACEHOLDER.findall(turn["value"])) <= set(token), f"{stage_file.name}: {turn['value']}"
                assert "{" not in turn["value"], turn["value"]

    stage2 = read_json(dataset.stage2_file)
    dense = [
        record
        for record in stage2
        if record["conversations"][0]["value"].removeprefix("<video>\n") in DENSE_CAPTIONING_QUESTIONS
    ]
    assert all(len(record["conversations"]) == 2 for record in dense)
    # Each of the 4 rounds over the 48 training videos has its exact share of dense captioning
    assert len(dense) == 4 * round(0.2 * 48)
    for record in dense:
        annotation = annotations[record["id"]]
        expected = " ".join(
            f"From <s{k}> to <e{k}>, {sentence[0].lower()}{sentence[1:]}"
            for k, sentence in enumerate(annotation["sentences"])
        )
        assert record["conversations"][1]["value"] == expected

    # Grounding answers, once the placeholders are filled in, are what the evaluation parses.
    grounding_answers = patterns(GROUNDING_ANSWERS)
    for record in stage2:
        token, duration = record["meta"]["token"], record["meta"]["duration"]

        def fill(match):
            return f"{time_index(token[match.group()], duration):02d}"

        for answer in record["conversations"][1::2]:
            if any(pattern.fullmatch(answer["value"]) for pattern in grounding_answers):
                filled = PLACEHOLDER.sub(fill, answer["value"])
                assert re.search(r"\d\d (to|and) \d\d\.$", filled), filled
    questions = {record["conversations"][0]["value"] for record in stage2 + read_json(dataset.stage3_file)}
    assert len(questions) >= 30, "the question templates should vary"


def test_stage3_event_turns_come_in_the_configured_shares(dataset):
    kinds = {
        "sentence grounding": patterns(GROUNDING_QUESTIONS),
        "dialogue grounding": patterns(DIALOGUE_GROUNDING_TEMPLATES),
        "captioning": patterns(DIALOGUE_CAPTIONING_TEMPLATES),
    }
    counts = dict.fromkeys(kinds, 0)
    for record in read_json(dataset.stage3_file):
        turns = record["conversations"]
        for question, answer in zip(turns[::2], turns[1::2]):
            question = question["value"].removeprefix("<video>\n")
            for kind, kind_patterns in kinds.items():
                if any(pattern.fullmatch(question) for pattern in kind_patterns):
                    counts[kind] += 1
                    if kind == "sentence grounding":
                        # Asked as stage 2 asks it, answered as stage 2 answers it
                        assert any(pattern.fullmatch(answer["value"]) for pattern in patterns(GROUNDING_ANSWERS))
    total = sum(counts.values())
    sentence_share, dialogue_share = dataset.config.stage3_grounding_shares
    expected = {"sentence grounding": sentence_share, "dialogue grounding": dialogue_share,
                "captioning": 1 - sentence_share - dialogue_share}  # fmt: skip
    assert total > 300
    for kind, share in expected.items():
        assert abs(counts[kind] / total - share) < 0.08, (kind, counts)


def test_stage1_stills_show_their_caption(dataset):
    records = read_json(dataset.stage1_file)
    assert len(records) == dataset.config.num_images
    leading_pairs, shapes_per_still = set(), []
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n")
        image = np.asarray(Image.open(dataset.root / record["image"]).convert("RGB")).astype(np.int32)
        assert (image.shape[1], image.shape[0]) in dataset.config.frame_sizes
        coverage = {colour: np.all(image == np.array(rgb), axis=-1).mean() for colour, rgb in COLOURS.items()}
        if gpt["value"] == EMPTY_STILL_CAPTION:
            assert max(coverage.values()) == 0, f"{record['image']} is captioned empty"
            shapes_per_still.append(0)
            continue
        phrases = gpt["value"].split(" and ")
        pairs = [tuple(phrase.split()[1:]) for phrase in phrases]
        for phrase, (colour, shape) in zip(phrases, pairs):
            assert phrase == f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}" and shape in SHAPES
            # Each shape covers a large part of the still, in its exact colour (PNG is lossless), even beside another
            assert coverage[colour] >= 0.1, f"{record['image']}: {colour} covers {coverage[colour]:.0%}"
        assert len({colour for colour, _ in pairs}) == len({shape for _, shape in pairs}) == len(pairs) <= 2
        assert sum(share > 0 for share in coverage.values()) == len(pairs), f"{record['image']}: {gpt['value']}"
        leading_pairs.add(pairs[0])
        shapes_per_still.append(len(pairs))
    # Every colour-shape pair leads some still; stills without a shape and with two are frequent, as in the videos
    assert leading_pairs == {(colour, shape) for colour in COLOURS for shape in SHAPES}
    for count, share in enumerate(dataset.config.shapes_per_image):
        assert abs(shapes_per_still.count(count) / len(records) - share) < 0.1, (count, shapes_per_still.count(count))


def test_random_clip_embedding_sees_the_events(dataset):
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    encoder = CLIPVisionModelWithProjection(config).eval()

    def embed(frames: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        pixels = torch.nn.functional.interpolate(pixels, size=(32, 32), mode="bicubic", align_corners=False)
        with torch.no_grad():
            embeddings = encoder(pixel_values=(pixels - CLIP_MEAN) / CLIP_STD).image_embeds
        return torch.nn.functional.normalize(embeddings, dim=-1)

    def distance(first: torch.Tensor, second: torch.Tensor) -> float:
        return float(1 - (first * second).sum())

    for video in videos_with_quiet_frames(dataset, count=8):
        frames, _ = decode_all_frames(dataset.video_path(video.video_id))
        quiet = frames_without_events(video)
        ranges = [video.event_frame_range(event) for event in video.events]
        middles = [(frame_range.start + frame_range.stop) // 2 for frame_range in ranges]
        quiet_first, quiet_last, *in_event = embed(frames[[quiet[0], quiet[-1], *middles]])
        between_quiet = distance(quiet_first, quiet_last)
        for event, embedding in zip(video.events, in_event):
            to_event = min(distance(quiet_first, embedding), distance(quiet_last, embedding))
            assert to_event > 10 * between_quiet, f"{video.video_id}: {event.caption} {to_event} vs {between_quiet}"


def test_stage2_dialogues_are_what_the_converter_builds_from_the_annotations(dataset):
    """Through the converters' public API, from the raw annotation file and the seeds the dataset records."""
    splits = read_json(dataset.splits_file)
    seeds = read_json(dataset.config_file)["record_seeds"]["stage2"]
    assert len(seeds) == len(set(seeds)) == dataset.config.stage2_dialogues_per_video
    videos = read_activitynet_captions(dataset.annotations_file)
    train = [video for video in videos if video.video_id in splits["train"]]
    share = dataset.config.dense_captioning_share
    rounds = [videos_to_dialogues(train, "synthetic", dense_share=share, seed=seed) for seed in seeds]
    expected = [record for records in rounds for record in records]
    assert read_json(dataset.stage2_file) == expected


def test_held_out_sets_are_what_convert_writes_from_the_held_out_annotations(dataset, tmp_path):
    annotations = read_json(dataset.annotations_file)
    held_out = tmp_path / "val_annotations.json"
    val = read_json(dataset.splits_file)["val"]
    held_out.write_text(json.dumps({video_id: annotations[video_id] for video_id in val}))
    convert("activitynet", held_out, tmp_path / "grounding.jsonl", task="grounding")
    convert("activitynet", held_out, tmp_path / "captioning.json", task="captioning")
    assert dataset.grounding_val_file.read_bytes() == (tmp_path / "grounding.jsonl").read_bytes()
    assert dataset.dense_captioning_val_file.read_bytes() == (tmp_path / "captioning.json").read_bytes()


def small_dataset(folder, overwrite=False, num_videos=3):
    return generate_synthetic_moments(
        folder, num_videos=num_videos, num_val_videos=1, config=SyntheticMomentsConfig(num_images=2),
        overwrite=overwrite,
    )  # fmt: skip


def test_overwrite_deletes_only_what_synth_wrote(tmp_path, capsys):
    first = small_dataset(tmp_path, num_videos=5)
    manifest = read_json(first.manifest_file)
    assert manifest["complete"] and len(manifest["files"]) == 8 + 5 + 2
    # The user's own files, beside the dataset and inside its folders
    (tmp_path / "notes.txt").write_text("kept")
    (first.video_dir / "my_video.mp4").write_bytes(b"mine")
    (first.image_dir / "my_image.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="already holds a synthetic dataset"):
        small_dataset(tmp_path)
    assert cli_main(["synth", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"synth: error: {tmp_path} already holds a synthetic dataset (synthetic_manifest.json): pass --overwrite "
        "(overwrite=True) to replace it\n"
    )
    result = small_dataset(tmp_path, overwrite=True)
    assert sorted(path.name for path in result.video_dir.iterdir()) == ["my_video.mp4"] + [
        f"{video_id}.mp4" for video_id in result.train_video_ids + result.val_video_ids
    ]
    assert (first.image_dir / "my_image.png").read_bytes() == b"mine"
    assert (tmp_path / "notes.txt").read_text() == "kept"
    assert set(read_json(result.manifest_file)["files"]) == {
        str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")
        if path.is_file() and path.name not in ("notes.txt", "my_video.mp4", "my_image.png", "synthetic_manifest.json")
    }  # fmt: skip


def snapshot(folder):
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    "spoil, message",
    [
        # Not a synth output: a file of the user's where synth would write
        (lambda root: (root / "annotations.json").write_text("{}"),
         "annotations.json already exists and synth did not write it"),
        # A file synth wrote, changed since
        (lambda root: small_dataset(root) and (root / "stage2.json").write_text("[]"),
         "stage2.json changed since synth wrote it"),
        # A manifest that lists what synth never writes
        (lambda root: (root / "synthetic_manifest.json").write_text('{"files": {"../outside.txt": null}}'),
         "lists '../outside.txt', a file synth never writes"),
        (lambda root: (root / "synthetic_manifest.json").write_text('{"files": ["stage1.json"]}'),
         "not a synth manifest"),
        # A folder synth writes into that is a link elsewhere
        (lambda root: (root / "videos").symlink_to(root.parent), "videos is a link or a file"),
    ],
)
def test_overwrite_refuses_what_synth_did_not_write_and_deletes_nothing(tmp_path, spoil, message, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("kept")
    spoil(root)
    before = snapshot(tmp_path)
    assert cli_main(["synth", str(root), "--num-videos", "2", "--num-val-videos", "1", "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"synth: error: {root}") and message in error and error.count("\n") == 1, error
    assert snapshot(tmp_path) == before


def test_a_killed_run_leaves_a_folder_that_overwrite_cleans(tmp_path, monkeypatch):
    import vtimellm_hf.data.synthetic.dataset as dataset_module

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(dataset_module, "write_still", fail)
    with pytest.raises(OSError, match="disk full"):
        small_dataset(tmp_path)
    manifest = read_json(tmp_path / "synthetic_manifest.json")
    assert not manifest["complete"] and set(manifest["files"].values()) == {None}
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="already holds a synthetic dataset"):
        small_dataset(tmp_path)
    result = small_dataset(tmp_path, overwrite=True)
    assert read_json(result.manifest_file)["complete"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--num-videos", "0"], "argument --num-videos: expected a positive integer, got 0"),
        (["--num-videos", "two"], "argument --num-videos: invalid positive_int value: 'two'"),
        (["--num-val-videos", "-1"], "argument --num-val-videos: expected 0 or a positive integer, got -1"),
        (["--seed", "-3"], "argument --seed: expected 0 or a positive integer, got -3"),
        (["--num-videos", "2", "--num-val-videos", "2"],
         "synth: error: num_val_videos must leave at least one training video"),
        (["--frames", "3"], "unrecognized arguments: --frames 3"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_status_2(tmp_path, arguments, message, capsys):
    status = None
    try:
        status = cli_main(["synth", str(tmp_path / "out"), *arguments])
    except SystemExit as exit:  # argparse's own usage errors
        status = exit.code
    error = capsys.readouterr().err
    assert status == 2
    # argparse's errors come after its usage lines; the error itself is one line
    (line,) = [line for line in error.splitlines() if not line.startswith(("usage:", " "))]
    assert message in line, error
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "out").write_text("mine")
    assert cli_main(["synth", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"synth: error: {tmp_path / 'out'} is a file, not a folder\n"
    assert (tmp_path / "out").read_text() == "mine"


def test_needs_a_training_video(tmp_path):
    with pytest.raises(ValueError, match="num_val_videos"):
        generate_synthetic_moments(tmp_path, num_videos=4, num_val_videos=4)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"frame_sizes": ((63, 48),)}, "even"),
        ({"events_per_video": (0, 2)}, "events_per_video"),
        ({"event_span_range": (0.6, 0.3)}, "event_span_range"),
        ({"duration_range": (0, 10)}, "duration_range"),
        ({"shapes_per_image": (0.5, 0.5, 0.5)}, "shapes_per_image"),
        ({"stage3_grounding_shares": (0.6, 0.5)}, "stage3_grounding_shares"),
        ({"stage3_grounding_shares": (-0.1, 0.5)}, "stage3_grounding_shares"),
        ({"sounds_per_video": (0, 4)}, "sounds_per_video"),
        ({"sounds_per_video": (2, 1)}, "sounds_per_video"),
        ({"sound_span_range": (0.5, 0.2)}, "sound_span_range"),
    ],
)
def test_config_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        SyntheticMomentsConfig(**settings)


# The audio track (the family demo's data)

SOUND_SENTENCES = {"A beep sounds.": "beep", "A low hum starts.": "hum", "A hiss starts.": "hiss"}


@pytest.fixture(scope="module")
def sounding(tmp_path_factory):
    config = SyntheticMomentsConfig(num_images=2, sounds_per_video=(1, 2), duration_range=(8, 20),
                                    stage2_grounding_per_video=6)  # fmt: skip
    return generate_synthetic_moments(tmp_path_factory.mktemp("sounding") / "data", num_videos=10, num_val_videos=2,
                                      config=config)  # fmt: skip


def decoded_audio(path, rate: int = 16000) -> np.ndarray:
    """The mono samples of the file's audio track, decoded and resampled by PyAV alone."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [resampled.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                  for resampled in resampler.resample(frame)]  # fmt: skip
    return np.concatenate(chunks)


def test_silent_by_default(dataset):
    """VTimeLLM's data: no audio track, and only shapes in the annotations."""
    with av.open(str(dataset.video_path(dataset.videos[0].video_id))) as container:
        assert not container.streams.audio
    sentences = [s for annotation in read_json(dataset.annotations_file).values() for s in annotation["sentences"]]
    assert not set(sentences) & set(SOUND_SENTENCES)


def test_sounds_are_heard_exactly_when_annotated(sounding):
    """Loud on every hundredth of the video inside an annotated sound, silent on every one outside (the hundredths
    at a boundary left out), and each kind where its spectrum says: a 1 kHz tone, a 120 Hz hum, broadband noise."""
    annotations = read_json(sounding.annotations_file)
    kinds_heard = set()
    for video_id, annotation in annotations.items():
        samples = decoded_audio(sounding.video_path(video_id))
        duration = annotation["duration"]
        assert abs(len(samples) / 16000 - duration) < 0.1, video_id
        bins = [samples[index * len(samples) // 100 : (index + 1) * len(samples) // 100] for index in range(100)]
        loudness = np.array([np.sqrt(np.mean(part**2)) for part in bins])
        sounds = [(start, end, SOUND_SENTENCES[sentence]) for (start, end), sentence
                  in zip(annotation["timestamps"], annotation["sentences"]) if sentence in SOUND_SENTENCES]  # fmt: skip
        assert 1 <= len(sounds) <= 2
        heard = np.zeros(100, dtype=bool)
        near_boundary = np.zeros(100, dtype=bool)
        for start, end, kind in sounds:
            first, last = start / duration * 100, end / duration * 100
            heard[int(np.ceil(first)) + 1 : int(np.floor(last)) - 1] = True
            for boundary in (first, last):
                near_boundary[max(int(boundary) - 2, 0) : int(boundary) + 3] = True
            middle = samples[int((start + end) / 2 * 16000) :][:8000]
            spectrum = np.abs(np.fft.rfft(middle))
            peak = np.argmax(spectrum) * 16000 / len(middle)
            flatness = np.exp(np.mean(np.log(spectrum + 1e-9))) / np.mean(spectrum)
            if kind == "beep":
                assert abs(peak - 1000) < 10, (video_id, peak)
            elif kind == "hum":
                assert abs(peak - 120) < 10, (video_id, peak)
            else:
                assert flatness > 0.5, (video_id, flatness)
            kinds_heard.add(kind)
        assert (loudness[heard] > 0.1).all(), video_id
        assert (loudness[~heard & ~near_boundary] < 0.01).all(), video_id
        # Never two at once, of distinct kinds
        spans = sorted((start, end) for start, end, _ in sounds)
        assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))
        assert len({kind for _, _, kind in sounds}) == len(sounds)
    assert kinds_heard == set(SOUND_SENTENCES.values())


def test_sounds_are_grounded_in_the_training_records(sounding):
    """Stage 2 (the converters) and stage 3 ask about the sounds with the times of the annotation."""
    annotations = read_json(sounding.annotations_file)
    for stage_file in (sounding.stage2_file, sounding.stage3_file):
        grounded = 0
        for record in read_json(stage_file):
            annotation = annotations[record["id"]]
            times = {tuple(span): sentence for span, sentence in zip(annotation["timestamps"], annotation["sentences"])}
            for question, answer in zip(record["conversations"][::2], record["conversations"][1::2]):
                asked = [sentence for sentence in SOUND_SENTENCES if sentence.lower().rstrip(".") in question["value"]]
                placeholders = PLACEHOLDER.findall(answer["value"])
                if asked and len(placeholders) == 2:
                    span = tuple(record["meta"]["token"][token] for token in placeholders)
                    assert times[span] == asked[0], (record["id"], question, answer)
                    grounded += 1
        assert grounded >= len(sounding.train_video_ids), stage_file


def test_stage2_grounding_records_ask_about_sounds_as_often_as_shapes(sounding):
    """After the converter's dialogues (the seeds recorded, as without them), `stage2_grounding_per_video` one-turn
    records per training video, each grounding one event with the converter's templates and the annotated times."""
    annotations = read_json(sounding.annotations_file)
    train = [video for video in read_activitynet_captions(sounding.annotations_file)
             if video.video_id in sounding.train_video_ids]  # fmt: skip
    seeds = read_json(sounding.config_file)["record_seeds"]["stage2"]
    share = sounding.config.dense_captioning_share
    rounds = [videos_to_dialogues(train, "synthetic", dense_share=share, seed=seed) for seed in seeds]
    dialogues = [record for records in rounds for record in records]
    stage2 = read_json(sounding.stage2_file)
    assert stage2[: len(dialogues)] == dialogues
    grounding = stage2[len(dialogues) :]
    assert [record["id"] for record in grounding] == [video_id for video_id in sounding.train_video_ids
                                                      for _ in range(6)]  # fmt: skip
    questions, answers = patterns(GROUNDING_QUESTIONS), patterns(GROUNDING_ANSWERS)
    sound_clauses = {sentence.lower().rstrip("."): sentence for sentence in SOUND_SENTENCES}
    asked = {"sound": 0, "shape": 0}
    for record in grounding:
        question, answer = (turn["value"] for turn in record["conversations"])
        clause = next((clause for clause in sound_clauses if clause in question), None)
        if clause is None:
            assert any(pattern.fullmatch(question.removeprefix("<video>\n")) for pattern in questions), question
            clause = re.search(r"an? \w+ \w+ appears", question).group()
        assert question.startswith("<video>\n") and any(pattern.fullmatch(answer) for pattern in answers), answer
        annotation = annotations[record["id"]]
        sentence = sound_clauses.get(clause, clause[:1].upper() + clause[1:] + ".")
        span = [record["meta"]["token"][token] for token in PLACEHOLDER.findall(answer)]
        assert span == annotation["timestamps"][annotation["sentences"].index(sentence)], (record["id"], question)
        asked["sound" if clause in sound_clauses else "shape"] += 1
    # 48 records: a sound asked 24 times on average (binomial, standard deviation 3.5)
    assert 14 <= asked["sound"] <= 34, asked
