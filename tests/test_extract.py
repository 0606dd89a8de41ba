"""Feature extraction (`vtimellm_hf.data.extract`) and the feature layout (`vtimellm_hf.data.features`).

Videos are made with the ffmpeg binary of imageio-ffmpeg, the encoder is the tiny random CLIP of `tiny_models`
(frame size 32), and the real videos of `../shared/data/videos` are used where present.
"""

import argparse
import json
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vtimellm_hf.data import extract as extract_module
from vtimellm_hf.data.extract import (
    FAILURES_FILE,
    SETTINGS_FILE,
    MediaItem,
    add_subcommand,
    collect_media,
    extract_features,
)
from vtimellm_hf.data.features import (
    ConsolidatedFeatureStore,
    FeatureNotFoundError,
    NpyFeatureStore,
    check_feature,
    consolidate_features,
    open_feature_store,
    read_npy_header,
    remove_stale_temporaries,
    write_feature,
)
from vtimellm_hf.model import VTimeProcessor, load_video_frames

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the test videos are written with imageio-ffmpeg")

DIM = 32  # projection size of the tiny encoder
# (lavfi source, width x height, seconds): landscape, portrait, odd sizes and lengths
SYNTHETIC_VIDEOS = {
    "bars": ("smptebars", "80x44", 4.0),
    "clock": ("testsrc2", "64x48", 3.0),
    "portrait": ("testsrc", "64x96", 2.0),
    "short": ("testsrc2", "50x70", 1.3),
}
IMAGES = ("photo.jpg", "diagram.png", "frame.webp")
# Runs a CLI process that registers the subcommand on its own parser, as `vtimellm-hf` will
CLI_CODE = (
    "import argparse, sys\n"
    "from vtimellm_hf.data.extract import add_subcommand\n"
    "parser = argparse.ArgumentParser()\n"
    "add_subcommand(parser.add_subparsers())\n"
    "args = parser.parse_args()\n"
    "sys.exit(args.run(args))\n"
)


def make_video(path: Path, source: str, size: str, seconds: float, faststart: bool = False) -> Path:
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "lavfi", "-i", f"{source}=size={size}:rate=10:duration={seconds}",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1",
        *(["-movflags", "+faststart"] if faststart else []),
        str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    for name, (source, size, seconds) in SYNTHETIC_VIDEOS.items():
        make_video(folder / f"{name}.mp4", source, size, seconds)
    from PIL import Image

    rng = np.random.default_rng(0)
    for index, name in enumerate(IMAGES):
        pixels = rng.integers(0, 256, (40 + 8 * index, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    # Not media: skipped by the folder scan
    (folder / "notes.txt").write_text("not a video")
    return folder


def run_extraction(inputs, output_dir, clip, **options):
    """`extract_features` without progress bar, decoding in this process unless the options say otherwise."""
    options = {"workers": 0, "batch_size": 64, "progress": False, **options}
    clip = clip if isinstance(clip, VTimeProcessor) else str(clip)
    return extract_features(inputs, output_dir, clip=clip, **options)


@pytest.fixture(scope="module")
def baseline(media_dir, frame_encoder_path, tmp_path_factory) -> Path:
    """The features of `media_dir`, extracted in this process (workers=0)."""
    output_dir = tmp_path_factory.mktemp("baseline")
    report = run_extraction(media_dir, output_dir, frame_encoder_path)
    assert report.ok and report.extracted == len(SYNTHETIC_VIDEOS) + len(IMAGES)
    return output_dir


def feature_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.npy"))}


def reference_features(processor, path: Path, window=None) -> np.ndarray:
    return processor.encode_frames(load_video_frames(path, 100, window)[0]).to(torch.float16).numpy()


def test_features_equal_the_processor_whatever_workers_and_batch_size(
    media_dir, baseline, frame_encoder_path, processor, tmp_path
):
    expected = feature_bytes(baseline)
    assert sorted(expected) == sorted(f"{Path(name).stem}.npy" for name in [*SYNTHETIC_VIDEOS, *IMAGES])
    # Batches of 16 and 250 frames pack the 100-frame videos differently; workers return them in any order
    for workers, batch_size in ((2, 16), (2, 250), (0, 7)):
        output_dir = tmp_path / f"workers{workers}-batch{batch_size}"
        report = run_extraction(media_dir, output_dir, frame_encoder_path, workers=workers, batch_size=batch_size)
        assert report.ok and report.extracted == len(expected)
        if batch_size >= 12:
            assert feature_bytes(output_dir) == expected, (workers, batch_size)
        else:
            # Under 12 rows MKL switches matrix kernels: the last bits may differ, float16 values stay close
            for name in feature_bytes(output_dir):
                np.testing.assert_allclose(np.load(output_dir / name), np.load(baseline / name), rtol=2e-3, atol=2e-3)

    # A processor brings its own encoder and preprocessing
    run_extraction(media_dir, tmp_path / "processor", processor, workers=2)
    assert feature_bytes(tmp_path / "processor") == expected

    for name in SYNTHETIC_VIDEOS:
        features = np.load(baseline / f"{name}.npy")
        assert features.shape == (100, DIM) and features.dtype == np.float16
        np.testing.assert_array_equal(features, reference_features(processor, media_dir / f"{name}.mp4"))


def test_decord_backend_writes_the_same_features(media_dir, baseline, frame_encoder_path, tmp_path):
    pytest.importorskip("decord", reason="the decord backend is an optional extra (pip install vtimellm-hf[decord])")
    report = run_extraction(media_dir, tmp_path / "decord", frame_encoder_path, workers=1, video_backend="decord")
    assert report.ok and feature_bytes(tmp_path / "decord") == feature_bytes(baseline)


def test_images_are_one_embedding(media_dir, baseline, processor):
    from PIL import Image

    for name in IMAGES:
        features = np.load(baseline / f"{Path(name).stem}.npy")
        assert features.shape == (DIM,) and features.dtype == np.float16
        with Image.open(media_dir / name) as image:
            frame = np.array(image.convert("RGB"))[None]
        expected = processor.encode_frames(frame)[0].to(torch.float16).numpy()
        # The processor encodes the lone frame as a 1-row matrix, extraction in a padded batch: other kernels
        np.testing.assert_allclose(features, expected, rtol=2e-3, atol=2e-3)


def test_real_videos_from_annotations(real_data, frame_encoder_path, processor, tmp_path):
    video_root = real_data / "videos"
    dialogues = [
        {"id": "3MSZA", "source": "internvid", "meta": {"split": [5.0, 20.0], "duration": 15.0}, "conversations": []},
        {"id": "demo", "conversations": []},
        {"id": "demo", "conversations": []},  # a second dialogue on the same video: one feature
    ]
    annotation = tmp_path / "stage2.json"
    annotation.write_text(json.dumps(dialogues))
    report = run_extraction(annotation, tmp_path / "out", frame_encoder_path, video_root=video_root, workers=2)
    assert report.ok and report.extracted == 2
    np.testing.assert_array_equal(
        np.load(tmp_path / "out" / "3MSZA.npy"),
        reference_features(processor, video_root / "3MSZA.mp4", window=(5.0, 20.0)),
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "out" / "demo.npy"), reference_features(processor, video_root / "demo.mp4")
    )

    # ActivityNet ids keep their "v_" prefix, and find videos stored with or without it
    activitynet = tmp_path / "val_1.json"
    activitynet.write_text(json.dumps({"v_3MSZA": {"duration": 31.0, "timestamps": [[0, 5]], "sentences": ["a"]}}))
    items, failures = collect_media(activitynet, video_root=video_root)
    assert items == [MediaItem("v_3MSZA", video_root / "3MSZA.mp4")] and not failures


def test_a_folder_names_the_files_it_leaves_out(tmp_path, caplog):
    (tmp_path / "kept.mp4").write_bytes(b"")
    (tmp_path / ".hidden.m2ts").write_bytes(b"")
    for name in ("a.m2ts", "b.gif", "c.txt", "d.bin"):
        (tmp_path / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="vtimellm_hf.data.media"):
        items, _ = collect_media(tmp_path)
    assert [item.feature_id for item in items] == ["kept"]
    (message,) = [record.getMessage() for record in caplog.records]
    assert f"{tmp_path}: left out 4 file(s)" in message and f"{tmp_path / 'a.m2ts'}, " in message
    assert message.count(", ") >= 3 and "..." in message and ".hidden" not in message


def test_collect_media_formats(media_dir, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# test videos\n{media_dir / 'clock.mp4'}\n\n../{tmp_path.name}/local.mp4\n")
    items, failures = collect_media(listing)
    assert [(item.feature_id, item.path) for item in items] == [
        ("clock", media_dir / "clock.mp4"),
        ("local", tmp_path / ".." / tmp_path.name / "local.mp4"),
    ]
    assert not failures

    folder_items, _ = collect_media(media_dir)
    assert sorted(item.feature_id for item in folder_items) == sorted(
        [*SYNTHETIC_VIDEOS, *(Path(name).stem for name in IMAGES)]
    )
    assert {item.feature_id for item in folder_items if item.is_image} == {Path(name).stem for name in IMAGES}

    records = [
        {"id": "clock", "meta": {"split": [0.5, 2.5]}},
        {"id": "missing"},
        {"id": "bars", "meta": {"split": "all"}},
        {"id": "img-1", "image": "photo.jpg"},
        {"id": "clock", "meta": {"split": [1.0, 2.0]}},  # the same id, another window: one file holds one
        {"video_id": "portrait", "q": "What is shown?", "a": "A test card."},  # a raw VideoInstruct-100K pair
        {"id": "v_bars", "meta": {"split": [0.0, 1.0]}},  # ActivityNet ids: the video may be saved without `v_`
    ]
    annotation = tmp_path / "records.json"
    annotation.write_text(json.dumps(records))
    items, failures = collect_media(annotation, video_root=media_dir)
    assert items == [
        MediaItem("clock", media_dir / "clock.mp4", (0.5, 2.5)),
        MediaItem("img-1", media_dir / "photo.jpg"),
        MediaItem("portrait", media_dir / "portrait.mp4"),
        MediaItem("v_bars", media_dir / "bars.mp4", (0.0, 1.0)),
    ]
    reasons = {failure.feature_id: failure.reason for failure in failures}
    assert f"no video named missing.* in {media_dir}" == reasons["missing"]
    assert "meta.split must be [start, end]" in reasons["bars"] and "record #2" in reasons["bars"]
    assert "already used by" in reasons["clock"]

    charades = tmp_path / "charades_sta.txt"
    charades.write_text("clock 0.0 1.5##a clock ticks.\nbars 0.5 2.0##bars show.\nclock 1.0 2.5##it ticks again.\n")
    assert collect_media(charades, video_root=media_dir) == (
        [MediaItem("clock", media_dir / "clock.mp4"), MediaItem("bars", media_dir / "bars.mp4")], []
    )
    with pytest.raises(ValueError, match="video_root only applies to annotation files"):
        collect_media(listing, video_root=media_dir)

    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": "v_bars.mp4", "caption": "x", "segments": [[0, 1]]}]}))
    assert collect_media(coco, video_root=media_dir)[0] == [MediaItem("v_bars", media_dir / "bars.mp4")]
    for needs_root in (annotation, charades):
        with pytest.raises(ValueError, match="video_root"):
            collect_media(needs_root)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_media(tmp_path / "nowhere")
    # Annotation files are read as every reader of the package reads JSON (`vtimellm_hf.files.read_json`)
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"id": "clock"},\n{"id": }\n]')
    with pytest.raises(ValueError, match=re.escape(f"{broken}, line 3, column 8: invalid JSON")):
        collect_media(broken, video_root=media_dir)
    broken.write_text('{"v_bars": {"duration": 1}, "v_bars": {"duration": 2}}')
    with pytest.raises(ValueError, match="key 'v_bars' appears more than once"):
        collect_media(broken, video_root=media_dir)
    broken.write_text(json.dumps([{"id": "clock", "meta": {"split": [True, 2.0]}}]))
    assert "meta.split must be [start, end]" in collect_media(broken, video_root=media_dir)[1][0].reason


def test_video_folder_finds_a_video_by_id_once_for_extraction_and_evaluation(tmp_path):
    from vtimellm_hf import evaluation_runs, inference
    from vtimellm_hf.data.media import VideoFolder, find_video, stored_id

    for name in ("a.avi", "a.mp4", "b.MKV", "Xyz.webm", "v_both.mp4", "both.mp4", "c.mp4.txt", ".hidden.mp4"):
        (tmp_path / name).touch()
    (tmp_path / "d.mp4").mkdir()
    videos = VideoFolder(tmp_path)
    # The first of VIDEO_EXTENSIONS where several match, any letter case; ids are case-sensitive
    assert videos.path("a") == tmp_path / "a.mp4" and videos.path("b") == tmp_path / "b.MKV"
    # ActivityNet ids: `v_ID` is also looked for as `ID`, but an id stored with its prefix is preferred
    assert videos.path("v_a") == tmp_path / "a.mp4" and videos.path("v_both") == tmp_path / "v_both.mp4"
    assert videos.path("both") == tmp_path / "both.mp4"
    for missing, names in (("xyz", "xyz.*"), ("c", "c.*"), ("d", "d.*"), ("v_zz", "v_zz.* nor zz.*")):
        message = f"no video named {names} in {tmp_path}"
        with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
            videos.path(missing)
    with pytest.raises(FileNotFoundError, match="Video folder not found"):
        VideoFolder(tmp_path / "nowhere")

    assert find_video(tmp_path, "v_a") == tmp_path / "a.mp4"
    assert stored_id("v_a", {"a"}.__contains__) == "a" and stored_id("v_a", {"a", "v_a"}.__contains__) == "v_a"
    assert stored_id("a", set().__contains__) == "a"
    for module in (evaluation_runs, inference):
        with pytest.warns(FutureWarning, match=rf"{module.__name__}\.find_video moved to vtimellm_hf\.data\.media"):
            assert module.find_video is find_video


def test_resume_skips_done_ids(media_dir, baseline, frame_encoder_path, tmp_path, monkeypatch):
    output_dir = tmp_path / "out"
    run_extraction(media_dir, output_dir, frame_encoder_path)
    modified = {path.name: path.stat().st_mtime_ns for path in output_dir.glob("*.npy")}

    decoded = []
    original_load = extract_module.load_video_frames

    def counting_load(path, *args):
        decoded.append(Path(path).stem)
        return original_load(path, *args)

    monkeypatch.setattr(extract_module, "load_video_frames", counting_load)
    report = run_extraction(media_dir, output_dir, frame_encoder_path)
    assert (report.extracted, report.skipped, decoded) == (0, len(modified), [])
    assert {path.name: path.stat().st_mtime_ns for path in output_dir.glob("*.npy")} == modified

    # A deleted file and a truncated one (copied by a tool that is not atomic) are made again, nothing else
    (output_dir / "clock.npy").unlink()
    truncated = output_dir / "bars.npy"
    truncated.write_bytes(truncated.read_bytes()[:300])
    report = run_extraction(media_dir, output_dir, frame_encoder_path)
    assert (report.extracted, report.skipped) == (2, len(modified) - 2)
    assert sorted(decoded) == ["bars", "clock"]
    assert feature_bytes(output_dir) == feature_bytes(baseline)
    unchanged = {name for name in modified if name not in ("clock.npy", "bars.npy")}
    assert all((output_dir / name).stat().st_mtime_ns == modified[name] for name in unchanged)


def test_failures_are_reported_and_the_run_goes_on(media_dir, frame_encoder_path, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("clock", "portrait"):
        shutil.copy(media_dir / f"{name}.mp4", inputs)
    # A valid container whose frames are cut off, an empty file, and text posing as a video
    whole = make_video(tmp_path / "whole.mp4", "testsrc2", "64x48", 3.0, faststart=True).read_bytes()
    (inputs / "corrupt.mp4").write_bytes(whole[: len(whole) // 2])
    (inputs / "empty.mp4").write_bytes(b"")
    (inputs / "notes.mp4").write_text("These are my notes, not a video.\n" * 20)
    output_dir = tmp_path / "out"

    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers())
    argv = ["extract-features", str(inputs), str(output_dir), "--clip", str(frame_encoder_path), "--workers", "2"]
    args = parser.parse_args(argv + ["--batch-size", "32"])
    assert args.run(args) == 1

    records = [json.loads(line) for line in (output_dir / FAILURES_FILE).read_text().splitlines()]
    bad = {"corrupt", "empty", "notes"}
    assert {record["id"] for record in records} == bad
    stderr = capsys.readouterr().err
    for record in records:
        assert record["path"] == str(inputs / f"{record['id']}.mp4")
        assert "Cannot decode" in record["reason"] and record["path"] in record["reason"]
        assert record["path"] in stderr
    assert sorted(path.stem for path in output_dir.glob("*.npy")) == ["clock", "portrait"]

    # The rerun retries the failures; once the inputs are fixed, it succeeds and the failure list is gone
    for name in bad:
        shutil.copy(media_dir / "short.mp4", inputs / f"{name}.mp4")
    args = parser.parse_args(argv)
    assert args.run(args) == 0
    assert not (output_dir / FAILURES_FILE).exists()
    assert len(list(output_dir.glob("*.npy"))) == 5
    with pytest.raises(SystemExit):
        parser.parse_args(argv + ["--num-frames", "0"])


def test_window_outside_the_video_is_a_failure(media_dir, frame_encoder_path, tmp_path):
    annotation = tmp_path / "windows.json"
    annotation.write_text(json.dumps([{"id": "clock", "meta": {"split": [30.0, 40.0]}}, {"id": "bars"}]))
    report = run_extraction(annotation, tmp_path / "out", frame_encoder_path, video_root=media_dir)
    assert report.extracted == 1 and [failure.feature_id for failure in report.failures] == ["clock"]
    assert "outside the video" in report.failures[0].reason
    assert json.loads((tmp_path / "out" / FAILURES_FILE).read_text())["path"] == str(media_dir / "clock.mp4")


def test_killed_run_leaves_complete_files_and_resumes(media_dir, baseline, frame_encoder_path, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    copies = 3
    for copy in range(copies):
        for name in SYNTHETIC_VIDEOS:
            shutil.copy(media_dir / f"{name}.mp4", inputs / f"{name}-{copy}.mp4")
    total = copies * len(SYNTHETIC_VIDEOS)
    output_dir = tmp_path / "out"
    command = [sys.executable, "-c", CLI_CODE, "extract-features", str(inputs), str(output_dir)]
    command += ["--clip", str(frame_encoder_path), "--workers", "0", "--batch-size", "16"]
    # A session of its own, so that SIGKILL reaches the whole process group
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and not any(output_dir.glob("*.npy")) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = list(output_dir.glob("*.npy"))
    assert 0 < len(done) < total
    for path in done:
        assert read_npy_header(path).complete
        assert np.load(path).shape == (100, DIM)

    report = run_extraction(inputs, output_dir, frame_encoder_path, workers=2)
    assert report.ok and (report.skipped, report.extracted) == (len(done), total - len(done))
    assert not [path.name for path in output_dir.iterdir() if path.name.startswith(".")]
    # Every copy has the bytes of the uninterrupted baseline run on its original
    expected = feature_bytes(baseline)
    for name, data in feature_bytes(output_dir).items():
        assert data == expected[name.rsplit("-", 1)[0] + ".npy"], name


def test_consolidated_store_round_trip(media_dir, baseline, frame_encoder_path, tmp_path):
    from safetensors.numpy import load_file

    consolidated = consolidate_features(baseline, tmp_path / "features.safetensors")
    folder_store, file_store = open_feature_store(baseline), open_feature_store(consolidated)
    assert isinstance(folder_store, NpyFeatureStore) and isinstance(file_store, ConsolidatedFeatureStore)
    assert file_store.ids() == folder_store.ids() and len(file_store) == len(SYNTHETIC_VIDEOS) + len(IMAGES)
    # The stream-written file is one the safetensors library reads as its own
    reference = load_file(str(consolidated))
    restored = pickle.loads(pickle.dumps(file_store))  # as a DataLoader worker receives it
    for feature_id in folder_store.ids():
        array = folder_store.load(feature_id)
        for store in (file_store, restored):
            assert feature_id in store
            loaded = store.load(feature_id)
            assert loaded.dtype == array.dtype and loaded.tobytes() == array.tobytes()
            assert store.shape(feature_id) == array.shape
        np.testing.assert_array_equal(reference[feature_id], array)
    assert "nope" not in file_store and "../clock" not in folder_store
    with pytest.raises(FeatureNotFoundError, match=f"No feature 'nope' in {consolidated}"):
        file_store.load("nope")
    with pytest.raises(KeyError, match="nope.npy does not exist"):
        folder_store.shape("nope")

    report = run_extraction(media_dir, baseline, frame_encoder_path, consolidate=tmp_path / "again.safetensors")
    assert report.consolidated == tmp_path / "again.safetensors" and report.skipped == len(file_store)
    assert (tmp_path / "again.safetensors").read_bytes() == consolidated.read_bytes()


def test_consolidation_refuses_damaged_features(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    write_feature(folder / "good.npy", np.zeros((100, DIM), np.float16))
    broken = np.zeros((100, DIM), np.float16)
    broken[7, 3] = np.nan
    write_feature(folder / "broken.npy", broken)
    with pytest.raises(ValueError, match=r"broken\.npy: Feature 'broken': 1 non-finite value\(s\).*index \(7, 3\)"):
        consolidate_features(folder, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists() and not list(tmp_path.glob(".out.safetensors*"))

    write_feature(folder / "broken.npy", np.zeros((100, DIM), np.float16))
    (folder / "broken.npy").write_bytes((folder / "broken.npy").read_bytes()[:-10])
    with pytest.raises(ValueError, match="broken.npy: truncated feature 'broken'"):
        consolidate_features(folder, tmp_path / "out.safetensors")


@pytest.mark.parametrize(
    ("array", "rows", "message"),
    [
        (np.zeros((99, DIM), np.float16), 100, rf"Feature 'v1': shape \(99, {DIM}\), expected \(100, {DIM}\)\."),
        (np.zeros((100, 16), np.float16), 100, rf"shape \(100, 16\), expected \(100, {DIM}\)"),
        (np.zeros((DIM,), np.float16), 100, rf"shape \({DIM},\), expected \(100, {DIM}\)"),
        (np.zeros((2, DIM), np.float16), 1, rf"expected \(1, {DIM}\) or \({DIM},\) for an image"),
        (np.zeros((100, DIM), np.int64), 100, r"Feature 'v1': dtype int64, expected float16 .* or float32"),
        (np.full((100, DIM), np.inf, np.float16), 100, rf"{100 * DIM} non-finite value\(s\) .*index \(0, 0\) \(inf\)"),
        ([[0.0] * DIM] * 100, 100, "expected a numpy array, got list"),
    ],
)
def test_check_feature_messages(array, rows, message):
    with pytest.raises(ValueError, match=message):
        check_feature(array, rows, DIM, "v1")


def test_check_feature_accepts_the_original_layouts():
    nan = np.zeros((100, DIM), np.float32)
    nan[5, 12] = np.nan
    message = r"'v1': 1 non-finite value\(s\) \(NaN or inf\), the first at index \(5, 12\)"
    with pytest.raises(ValueError, match=message):
        check_feature(nan, 100, DIM, "v1")
    check_feature(np.zeros((100, DIM), np.float16), 100, DIM, "video")
    check_feature(np.zeros((100, DIM), np.float32), None, None, "video")
    check_feature(np.zeros((DIM,), np.float16), 1, DIM, "image")
    check_feature(np.zeros((1, DIM), np.float16), 1, DIM, "image")


def test_write_feature_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "feature.npy"
    write_feature(path, np.ones((100, DIM), np.float16))
    before = path.read_bytes()

    def failing_save(file, array, allow_pickle):
        file.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_feature(path, np.zeros((100, DIM), np.float16))
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]
    # The feature gets the mode of any new file (the umask's), not the private mode of a temporary file
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host = int(finished.stdout), socket.gethostname()
    stale = tmp_path / f".a.npy.x1y2.{host}-{dead_pid}.tmp"
    live = tmp_path / f".b.npy.x1y2.{host}-{os.getpid()}.tmp"
    elsewhere = tmp_path / f".c.npy.x1y2.another-host-{dead_pid}.tmp"
    for path in (stale, live, elsewhere):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted([live, elsewhere])


def test_resume_remakes_features_made_with_other_settings(media_dir, frame_encoder_path, tmp_path):
    # Whole-video features first; then a stage-2 record asks for a window of one video, and a run asks for other frames
    output_dir = tmp_path / "out"
    run_extraction([media_dir / "clock.mp4", media_dir / "bars.mp4"], output_dir, frame_encoder_path)
    whole = np.load(output_dir / "clock.npy")
    annotation = tmp_path / "stage2.json"
    annotation.write_text(json.dumps([{"id": "clock", "meta": {"split": [1.0, 2.5]}}, {"id": "bars"}]))
    report = run_extraction(annotation, output_dir, frame_encoder_path, video_root=media_dir)
    assert (report.extracted, report.skipped) == (1, 1)
    windowed = np.load(output_dir / "clock.npy")
    assert not np.array_equal(windowed, whole)
    fresh = run_extraction(annotation, tmp_path / "fresh", frame_encoder_path, video_root=media_dir)
    assert fresh.ok and np.array_equal(np.load(tmp_path / "fresh" / "clock.npy"), windowed)
    # Same settings again: nothing to do; a feature without a record (made elsewhere) is trusted by its shape
    assert run_extraction(annotation, output_dir, frame_encoder_path, video_root=media_dir).extracted == 0
    (output_dir / SETTINGS_FILE).write_text("")
    report = run_extraction(media_dir / "clock.mp4", output_dir, frame_encoder_path)
    assert (report.extracted, report.skipped) == (0, 1)
    # The whole video again, now recorded as such: a later windowed run makes the window again
    (output_dir / "clock.npy").unlink()
    run_extraction(media_dir / "clock.mp4", output_dir, frame_encoder_path)
    assert run_extraction(annotation, output_dir, frame_encoder_path, video_root=media_dir).extracted == 1
    assert np.array_equal(np.load(output_dir / "clock.npy"), windowed)


def test_npy_store_reads_headers_and_names_bad_files(tmp_path):
    write_feature(tmp_path / "full.npy", np.zeros((100, DIM), np.float16))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:500])
    (tmp_path / "junk.npy").write_text("junk")
    store = NpyFeatureStore(tmp_path)
    assert store.ids() == ["cut", "full", "junk"]
    # The header gives the shape, and its size tells a cut file; load names the file when its data is damaged
    assert store.shape("full") == (100, DIM) and not read_npy_header(tmp_path / "cut.npy").complete
    with pytest.raises(ValueError, match=r"cut\.npy: truncated or padded, 500 bytes where its header announces"):
        store.shape("cut")
    with pytest.raises(ValueError, match=r"cut\.npy: cannot read feature 'cut'"):
        store.load("cut")
    with pytest.raises(ValueError, match=r"junk\.npy: not a readable \.npy file"):
        store.shape("junk")
    with pytest.raises(ValueError, match="Invalid feature id '../full'"):
        store.load("../full")
    with pytest.raises(FileNotFoundError, match="No features at"):
        open_feature_store(tmp_path / "absent")


def test_sharded_store_reads_like_the_npy_folder(media_dir, baseline, frame_encoder_path, tmp_path):
    import datasets

    from vtimellm_hf.data.sharded_features import ShardedFeatureStore

    # Videos of 100 and 7 rows and (D,) images, in shards of a few features each
    folder = tmp_path / "npy"
    shutil.copytree(baseline, folder, ignore=shutil.ignore_patterns("*.jsonl"))
    write_feature(folder / "few-rows.npy", np.arange(7 * DIM, dtype=np.float16).reshape(7, DIM))
    store_dir = consolidate_features(folder, tmp_path / "store", max_shard_size=20_000)
    assert len(list(store_dir.glob("data-*.arrow"))) > 1
    folder_store, sharded = open_feature_store(folder), open_feature_store(store_dir)
    assert isinstance(sharded, ShardedFeatureStore) and sharded.ids() == folder_store.ids()
    restored = pickle.loads(pickle.dumps(sharded))  # as a DataLoader worker receives it
    for feature_id in folder_store.ids():
        array = folder_store.load(feature_id)
        for store in (sharded, restored):
            loaded = store.load(feature_id)
            assert loaded.dtype == np.float16 and loaded.shape == array.shape and loaded.tobytes() == array.tobytes()
            assert store.shape(feature_id) == array.shape and feature_id in store
    assert len(sharded) == len(folder_store) and "nope" not in sharded and 3 not in sharded
    for absent in ("", "a", "clock0", "few", "\ud800"):  # before, between and after the ids, and not UTF-8
        assert absent not in sharded
    with pytest.raises(FeatureNotFoundError, match=f"No feature 'nope' in {store_dir}"):
        sharded.load("nope")
    # A datasets folder as any other: load_from_disk reads it
    dataset = datasets.load_from_disk(str(store_dir))
    assert dataset.column_names == ["id", "features", "image"] and dataset["id"] == folder_store.ids()

    # What push_to_hub uploads (parquet shards with the features' types) comes back as the same store
    dataset.to_parquet(str(tmp_path / "hub.parquet"))
    pulled = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "hub.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    pulled.save_to_disk(str(tmp_path / "pulled"))
    pulled_store = open_feature_store(tmp_path / "pulled")
    assert all(pulled_store.load(feature_id).tobytes() == sharded.load(feature_id).tobytes()
               for feature_id in sharded.ids())  # fmt: skip

    # From the command line: consolidate-features, and extract-features --consolidate DIR once the features are made
    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers())
    args = parser.parse_args(["consolidate-features", str(folder), str(tmp_path / "cli"), "--max-shard-size", "20000"])
    assert args.run(args) == 0
    report = run_extraction(media_dir, baseline, frame_encoder_path, consolidate=tmp_path / "extracted")
    assert report.consolidated == tmp_path / "extracted"
    for store in (open_feature_store(tmp_path / "cli"), open_feature_store(tmp_path / "extracted")):
        assert all(store.load(feature_id).tobytes() == folder_store.load(feature_id).tobytes()
                   for feature_id in folder_store.ids() if feature_id in store)  # fmt: skip
    assert open_feature_store(tmp_path / "cli").ids() == folder_store.ids()
    assert open_feature_store(tmp_path / "extracted").ids() == open_feature_store(baseline).ids()


def test_sharded_consolidation_refuses_bad_features_and_replaces_a_store_whole(tmp_path, monkeypatch):
    import datasets

    folder = tmp_path / "npy"
    folder.mkdir()
    for index in range(6):
        write_feature(folder / f"v{index}.npy", np.full((10, DIM), index, np.float16))
    store_dir = consolidate_features(folder, tmp_path / "store")
    before = {path.name: path.read_bytes() for path in store_dir.iterdir()}

    # A damaged feature is named, and the earlier store stays as it was, with no leftover beside it
    cases = [
        (np.zeros((10, 16), np.float16), r"features of one store share their size D, but 'bad' has 16, 'v0' has 32"),
        (np.zeros((10, DIM), np.float32), r"bad\.npy: feature 'bad' has dtype float32; a sharded store holds float16"),
        (np.full((10, DIM), np.nan, np.float16), r"bad\.npy: Feature 'bad': 320 non-finite value\(s\)"),
        (np.zeros((2, 10, DIM), np.float16), r"bad\.npy: feature 'bad' has shape \(2, 10, 32\), expected"),
    ]
    for array, message in cases:
        np.save(folder / "bad.npy", array)
        with pytest.raises(ValueError, match=message):
            consolidate_features(folder, store_dir)
        assert {path.name: path.read_bytes() for path in store_dir.iterdir()} == before
        assert sorted(path.name for path in tmp_path.iterdir()) == ["npy", "store"]
    (folder / "bad.npy").unlink()

    # Interrupted while saving: the earlier store is kept whole
    def failing_save(self, path, **kwargs):
        Path(path).mkdir()
        (Path(path) / "data-00000-of-00002.arrow").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", failing_save)
    with pytest.raises(OSError, match="disk full"):
        consolidate_features(folder, store_dir)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in store_dir.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["npy", "store"]

    # What a killed run leaves (its hidden folder, named after a dead process) goes with the next run
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".store.0a1b2c3d.{socket.gethostname()}-{int(finished.stdout)}.tmp"
    (stale / "store").mkdir(parents=True)
    (stale / "store" / "state.json").write_text("{")
    write_feature(folder / "v6.npy", np.full((10, DIM), 6, np.float16))
    consolidate_features(folder, store_dir)
    assert not stale.exists() and open_feature_store(store_dir).ids() == [f"v{index}" for index in range(7)]

    # Only a store is replaced
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="notes exists and is not a sharded feature store: not replacing it"):
        consolidate_features(folder, tmp_path / "notes")
    with pytest.raises(ValueError, match="max_shard_size applies to a sharded store"):
        consolidate_features(folder, tmp_path / "one.safetensors", max_shard_size="1MB")


def test_sharded_store_refuses_what_it_cannot_search(tmp_path):
    import datasets

    from vtimellm_hf.data.sharded_features import ShardedFeatureStore

    features = datasets.Features(
        {"id": datasets.Value("string"), "features": datasets.Array2D((None, DIM), "float16"),
         "image": datasets.Value("bool")}
    )  # fmt: skip
    rows = {"id": ["b", "a"], "features": [np.zeros((2, DIM), np.float16)] * 2, "image": [False, False]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "unsorted"))
    with pytest.raises(ValueError, match="unsorted: the ids of shard 0 are not sorted and distinct"):
        open_feature_store(tmp_path / "unsorted")
    datasets.Dataset.from_dict({"id": ["a"], "text": ["x"]}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="other: expected the columns of a feature store"):
        open_feature_store(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="No sharded feature store at"):
        ShardedFeatureStore(tmp_path)


def test_rerun_merges_the_records_of_a_killed_job(media_dir, baseline, frame_encoder_path, tmp_path):
    # A job of several processes killed mid-run: its features, and the records each process appended
    output_dir = tmp_path / "out"
    shutil.copytree(baseline, output_dir)
    records = [json.loads(line) for line in (output_dir / SETTINGS_FILE).read_text().splitlines()]
    (output_dir / SETTINGS_FILE).unlink()
    by_id = {record["id"]: record for record in records}
    # Process 1 recorded a window of `clock` and was killed before it wrote the feature; process 0 recorded the rest
    (output_dir / "extraction.rank1.jsonl").write_text(json.dumps({**by_id["clock"], "window": [0.0, 1.0]}) + "\n")
    others = [json.dumps(record) for feature_id, record in sorted(by_id.items()) if feature_id != "clock"]
    (output_dir / "extraction.rank0.jsonl").write_text("\n".join(others) + '\n{"id": "cut sh')
    (output_dir / "failures.rank0.jsonl").write_text('{"id": "old", "path": null, "reason": "earlier run"}\n')

    report = run_extraction(media_dir, output_dir, frame_encoder_path)
    # Only the feature whose record says another window is made again; the records are merged, one line an id, sorted
    assert report.ok and (report.extracted, report.skipped) == (1, len(by_id) - 1)
    assert (output_dir / SETTINGS_FILE).read_text().splitlines() == [
        json.dumps(record) for _, record in sorted(by_id.items())
    ]
    assert feature_bytes(output_dir) == feature_bytes(baseline)
    assert sorted(path.name for path in output_dir.iterdir() if path.suffix == ".jsonl") == [SETTINGS_FILE]
