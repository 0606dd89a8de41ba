"""Videos and images that are damaged, unusual or huge: a clear error naming the file, or frames that are right.

Videos are written with the ffmpeg binary of imageio-ffmpeg and decoded with PyAV, the default backend (the backends
are compared frame by frame in `tests/test_video_decoding.py`). Frame `k` of the test videos is a flat grey of level
`GREY_STEP * k`, so that a decoded frame tells which frame it is.
"""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtimellm_hf.data.extract import FAILURES_FILE, extract_features
from vtimellm_hf.data.synthetic import encode_mp4
from vtimellm_hf.model import (
    get_video_duration,
    image_as_frame,
    load_video_frames,
    preprocess_frames,
)

from .conftest import ffmpeg

pytest.importorskip("imageio_ffmpeg", reason="the test videos are written with imageio-ffmpeg")

ROOT = Path(__file__).resolve().parents[2]
FPS = 10
GREY_STEP = 6
HEIGHT, WIDTH = 64, 96
# The variable-frame-rate video: its first frames 0.1 s apart, the others 0.4 s apart.
VFR_FAST_FRAMES, VFR_FRAMES = 20, 40
HUGE_HEIGHT, HUGE_WIDTH = 3000, 4000


def grey_frames(count: int) -> np.ndarray:
    levels = np.arange(count, dtype=np.uint8) * GREY_STEP
    return np.broadcast_to(levels[:, None, None, None], (count, HEIGHT, WIDTH, 3)).copy()


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Which frame of a grey video each decoded frame is."""
    return [round(level) for level in frames.reshape(len(frames), -1).mean(1) / GREY_STEP]


def vfr_timestamp(frame: int) -> float:
    fast = min(frame, VFR_FAST_FRAMES)
    return fast / FPS + (frame - fast) * 4 / FPS


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    encode_mp4(folder / "three_seconds.mp4", grey_frames(3 * FPS), fps=FPS)
    encode_mp4(folder / "one_frame.mp4", grey_frames(1), fps=FPS)
    encode_mp4(folder / "five_frames.mp4", grey_frames(5), fps=FPS)
    (folder / "zero_bytes.mp4").write_bytes(b"")
    whole = (folder / "three_seconds.mp4").read_bytes()
    # The index (moov) is at the end: a copy cut in the middle has none
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    # With the index first, the cut copy announces frames whose data is missing
    indexed = folder / "indexed.mp4"
    ffmpeg("-i", str(folder / "three_seconds.mp4"), "-c", "copy", "-movflags", "+faststart", str(indexed))
    (folder / "truncated_indexed.mp4").write_bytes(indexed.read_bytes()[: indexed.stat().st_size // 2])
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(folder / "audio_only.mp4"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(folder / "audio_only.wav"))

    encode_mp4(folder / "constant.mp4", grey_frames(VFR_FRAMES), fps=FPS)
    slow_down = f"setpts='if(lt(N,{VFR_FAST_FRAMES}),N,{VFR_FAST_FRAMES}+(N-{VFR_FAST_FRAMES})*4)/{FPS}/TB'"
    ffmpeg("-i", str(folder / "constant.mp4"), "-vf", slow_down, "-fps_mode", "vfr", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-threads", "1", str(folder / "variable_rate.mp4"))  # fmt: skip

    # Phone videos store landscape pixels and a rotation for the player to apply
    for degrees in (90, 180):
        ffmpeg("-display_rotation", str(degrees), "-i", str(folder / "three_seconds.mp4"), "-c", "copy",
               str(folder / f"rotated{degrees}.mp4"))  # fmt: skip
    ffmpeg("-f", "lavfi", "-i", f"color=c=gray:size={HUGE_WIDTH}x{HUGE_HEIGHT}:rate={FPS}:duration=0.2",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-threads", "1",
           str(folder / "huge.mp4"))  # fmt: skip
    return folder


# Files that hold no usable video


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero_bytes.mp4", "Cannot decode video"),
        ("truncated.mp4", "Cannot decode video"),
        ("truncated_indexed.mp4", "Cannot decode"),
        ("audio_only.mp4", "Cannot decode video .*: it holds no video stream"),
        ("audio_only.wav", "Cannot decode video .*: it holds no video stream"),
    ],
)
def test_unusable_video_raises_a_value_error_naming_the_file(videos, name, reason):
    with pytest.raises(ValueError, match=reason) as error:
        load_video_frames(videos / name)
    assert str(videos / name) in str(error.value)


def test_ground_command_on_an_audio_file_exits_with_status_2(videos, checkpoint, run_cli):
    status, out, err = run_cli("ground", videos / "audio_only.mp4", "a dog barks", "--model", checkpoint)
    assert status == 2 and out == ""
    assert f"ground: error: Cannot decode video {videos / 'audio_only.mp4'}" in err


# Short, long, variable and rotated videos


def test_one_frame_video_repeats_its_frame(videos):
    frames, duration = load_video_frames(videos / "one_frame.mp4", num_frames=100)
    assert frames.shape == (100, HEIGHT, WIDTH, 3) and duration == pytest.approx(1 / FPS)
    assert frame_numbers(frames) == [0] * 100


def test_video_with_fewer_frames_than_sampled_repeats_them_in_order(videos):
    frames, duration = load_video_frames(videos / "five_frames.mp4", num_frames=100)
    assert duration == pytest.approx(5 / FPS)
    assert frame_numbers(frames) == np.linspace(0, 4, 100, dtype=np.int32).tolist()


def test_variable_frame_rate_video_decodes_from_first_to_last_frame(videos):
    frames, duration = load_video_frames(videos / "variable_rate.mp4")
    numbers = frame_numbers(frames)
    assert numbers[0] == 0 and numbers[-1] == VFR_FRAMES - 1 and numbers == sorted(numbers)
    # frames / average frame rate, as the original computes it: about the time of the last frame
    assert vfr_timestamp(VFR_FRAMES - 1) - 1 <= duration <= vfr_timestamp(VFR_FRAMES)


def shown_at(seconds: float) -> int:
    """The frame of the variable-rate video shown at `seconds`: the last one starting at or before it."""
    return max(frame for frame in range(VFR_FRAMES) if vfr_timestamp(frame) <= seconds + 1e-9)


def test_variable_frame_rate_video_is_sampled_evenly_in_time(videos):
    frames, duration = load_video_frames(videos / "variable_rate.mp4")
    # The frames shown at 100 evenly spaced times from the first frame to the last (by index, the 50th sampled frame
    # would be frame 19, at 1.9 s of 15.6)
    targets = np.linspace(0, vfr_timestamp(VFR_FRAMES - 1), 100)
    assert frame_numbers(frames) == [shown_at(target) for target in targets]
    # The duration that turns the model's indices into seconds is the one the frames were sampled over
    assert get_video_duration(videos / "variable_rate.mp4") == duration


def test_window_of_a_variable_frame_rate_video_is_sampled_evenly_in_time(videos):
    frames, duration = load_video_frames(videos / "variable_rate.mp4", num_frames=10, window=(3.0, 7.0))
    assert duration == pytest.approx(4.0)
    # From the frame shown at 3 s (it starts at 2.8 s) to the one shown at 7 s (6.8 s), as the original's int(fps * s)
    # bounds a window at a constant rate
    targets = np.linspace(vfr_timestamp(shown_at(3.0)), vfr_timestamp(shown_at(7.0)), 10)
    assert frame_numbers(frames) == [shown_at(target) for target in targets]


def test_video_rotated_upside_down_is_decoded_upright(videos):
    rotated, _ = load_video_frames(videos / "rotated180.mp4", num_frames=4)
    stored, _ = load_video_frames(videos / "three_seconds.mp4", num_frames=4)
    np.testing.assert_array_equal(rotated, stored[:, ::-1, ::-1])


def test_portrait_phone_video_is_decoded_in_portrait(videos):
    rotated, _ = load_video_frames(videos / "rotated90.mp4", num_frames=4)
    stored, _ = load_video_frames(videos / "three_seconds.mp4", num_frames=4)
    assert rotated.shape == (4, WIDTH, HEIGHT, 3)
    assert frame_numbers(rotated) == frame_numbers(stored)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("width", [16, 24, 48, 72])
def test_video_of_a_width_decord_cannot_copy_is_decoded(tmp_path, width, backend):
    """decord returns 4 channels for some small frame widths (dmlc/decord#336) and fails to copy them: its backend
    hands those frames to PyAV."""
    if backend == "decord":
        pytest.importorskip("decord", reason="the decord backend is an optional extra")
    encode_mp4(tmp_path / "narrow.mp4", grey_frames(5)[:, :32, :width], fps=FPS)
    frames, duration = load_video_frames(tmp_path / "narrow.mp4", num_frames=8, backend=backend)
    assert frames.shape == (8, 32, width, 3) and duration == pytest.approx(5 / FPS)
    assert frame_numbers(frames) == np.linspace(0, 4, 8, dtype=np.int32).tolist()


@pytest.mark.parametrize(
    ("name", "window"), [("variable_rate.mp4", None), ("rotated90.mp4", None), ("three_seconds.mp4", (1.0, 2.5))]
)
def test_pyav_decodes_the_frames_decord_fails_on(videos, monkeypatch, name, window):
    decord = pytest.importorskip("decord", reason="the decord backend is an optional extra")
    expected, expected_duration = load_video_frames(videos / name, num_frames=12, window=window, backend="decord")

    def fail(*args):
        raise decord.DECORDError("DECORDArrayCopyFromTo: The size must exactly match")

    monkeypatch.setattr(decord.VideoReader, "get_batch", fail)
    frames, duration = load_video_frames(videos / name, num_frames=12, window=window, backend="decord")
    assert frames.shape == expected.shape and duration == expected_duration
    np.testing.assert_array_equal(frames, expected)


def test_frames_neither_backend_can_decode_name_the_file_and_both_reasons(videos, monkeypatch):
    decord = pytest.importorskip("decord", reason="the decord backend is an optional extra")
    from vtimellm_hf.model import video_decoding_vtime

    path = videos / "three_seconds.mp4"

    def fail(*args):
        raise decord.DECORDError("DECORDArrayCopyFromTo: The size must exactly match")

    def pyav_fails(self, indices):
        raise ValueError(f"Cannot decode frames of video {self.path}: broken")

    monkeypatch.setattr(decord.VideoReader, "get_batch", fail)
    monkeypatch.setattr(video_decoding_vtime._PyAVVideo, "_sampled_frames", pyav_fails)
    with pytest.raises(ValueError, match=r"DECORDArrayCopyFromTo.*\), and so did PyAV \(Cannot decode") as error:
        load_video_frames(path, backend="decord")
    assert f"Cannot decode frames of video {path}: decord failed (" in str(error.value)


# Without decord


def test_decoding_extraction_and_grounding_work_without_decord(videos, checkpoint, frame_encoder_path, tmp_path):
    """decord is an optional extra: where it is missing (hidden here, so that `import decord` fails in the command
    and its decoding workers), PyAV decodes, and asking for decord is one line saying what to install."""
    hidden = tmp_path / "hidden"
    (hidden / "decord").mkdir(parents=True)
    (hidden / "decord" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'decord'\")\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), str(ROOT)])}

    def run(*arguments) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *map(str, arguments)], env=environment, capture_output=True, text=True)

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("three_seconds.mp4", "rotated90.mp4"):
        shutil.copy(videos / name, inputs / name)
    video = inputs / "three_seconds.mp4"
    decode = (
        "from vtimellm_hf import get_video_duration, load_video_frames\n"
        "try:\n    import decord\nexcept ImportError as error:\n    print(error)\n"
        f"frames, duration = load_video_frames({str(video)!r}, num_frames=8)\n"
        f"print(frames.shape, duration, get_video_duration({str(video)!r}))\n"
    )
    result = run("-c", decode)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["No module named 'decord'", f"(8, {HEIGHT}, {WIDTH}, 3) 3.0 3.0"]

    extract = ("-m", "vtimellm_hf", "extract-features", inputs, tmp_path / "features", "--clip", frame_encoder_path,
               "--workers", 1, "--device", "cpu")  # fmt: skip
    result = run(*extract)
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in (tmp_path / "features").glob("*.npy"))
    assert written == ["rotated90.npy", "three_seconds.npy"]

    # The random tiny model answers something: a moment (exit 0), or none (exit 3, the answer printed)
    result = run("-m", "vtimellm_hf", "ground", video, "a dog barks", "--model", checkpoint)
    assert result.returncode in (0, 3) and result.stdout.startswith(("answer: ", "0", "1", "2", "3")), result.stderr

    result = run(*extract[:4], tmp_path / "with_decord", *extract[5:], "--video-backend", "decord")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "extract-features: error: backend='decord' needs decord, which is not installed: "
        "`pip install vtimellm-hf[decord]`, or use the default backend, 'pyav'."
    ]
    assert not list((tmp_path / "with_decord").glob("*.npy"))


# Windows


@pytest.mark.parametrize("window", [(3.0, 4.0), (10.0, 20.0), (-1.0, 1.0), (1.0, 1.0), (2.0, 1.0)])
def test_window_outside_the_video_raises_a_value_error_naming_the_file(videos, window):
    path = videos / "three_seconds.mp4"
    with pytest.raises(ValueError, match=r"three_seconds\.mp4: Window .* lies outside the video \(3\.00 s\)"):
        load_video_frames(path, window=window)


def test_window_running_past_the_end_lasts_until_the_end(videos):
    frames, duration = load_video_frames(videos / "three_seconds.mp4", num_frames=10, window=(2.0, 5.0))
    assert frame_numbers(frames)[-1] == 3 * FPS - 1
    assert duration == pytest.approx(1.0, abs=1 / FPS)


# Huge frames


def test_huge_frames_are_preprocessed_one_chunk_at_a_time(videos, peak_memory):
    frames, _ = load_video_frames(videos / "huge.mp4", num_frames=4)
    assert frames.shape == (4, HUGE_HEIGHT, HUGE_WIDTH, 3)
    float_frame_mib = frames[0].nbytes * 4 / 2**20
    with peak_memory() as memory:
        pixels = preprocess_frames(frames, size=224, chunk_size=1)
    assert pixels.shape == (4, 3, 224, 224) and pixels.isfinite().all()
    # One-frame chunks hold a couple of frames in float32 at most; the four at once would take twice that
    assert memory.mib < 2.5 * float_frame_mib


def test_huge_video_features_need_memory_bounded_by_its_frame_size(videos, processor, peak_memory):
    processor.num_frames = 8
    frame_mib = HUGE_HEIGHT * HUGE_WIDTH * 3 / 2**20
    with peak_memory() as memory:
        features, _ = processor.encode_video(videos / "huge.mp4")
    assert features.shape == (8, 32)
    # The two distinct frames, the decoder's buffers and the float copy of one frame
    assert memory.mib < 16 * frame_mib


# Images


IMAGE_MODES = ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F"]


def test_image_modes_become_rgb_frames(processor):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    images = [Image.fromarray(rgb).convert(mode) for mode in IMAGE_MODES]
    for image in images:
        frame = image_as_frame(image)
        assert frame.shape == (1, 20, 30, 3) and frame.dtype == np.uint8, image.mode
    batch = processor(text=["<video>\nA caption:"] * len(images), images=images, return_tensors="pt")
    assert batch["video_features"].shape == (len(images), 1, 32) and batch["video_features"].isfinite().all()


@pytest.mark.parametrize(
    "array",
    [np.zeros((20, 30), np.uint8), np.zeros((20, 30, 4), np.uint8), np.zeros((2, 20, 30, 3), np.uint8)],
    ids=["greyscale", "alpha", "batch"],
)
def test_image_arrays_that_are_not_rgb_are_refused(array):
    with pytest.raises(ValueError, match=r"An image must be RGB with shape \(height, width, 3\), got"):
        image_as_frame(array)


def test_float_image_array_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        image_as_frame(np.full((20, 30, 3), 0.5, np.float32))


def test_unreadable_images_are_extraction_failures_and_the_others_are_kept(tmp_path, frame_encoder_path):
    inputs = tmp_path / "images"
    inputs.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    for name, mode in (("colour.png", "RGB"), ("grey.png", "L"), ("alpha.png", "RGBA"), ("print.jpg", "CMYK")):
        Image.fromarray(rgb).convert(mode).save(inputs / name)
    (inputs / "garbage.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    encoded = io.BytesIO()
    Image.fromarray(rgb).save(encoded, "JPEG")
    (inputs / "cut.jpg").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    output_dir = tmp_path / "features"

    for attempt in range(2):
        report = extract_features(inputs, output_dir, clip=str(frame_encoder_path), workers=0, progress=False)
        reasons = {failure.feature_id: failure.reason for failure in report.failures}
        assert reasons.keys() == {"garbage", "cut"}
        assert "UnidentifiedImageError" in reasons["garbage"] and "runcated" in reasons["cut"]
        # The usable images are encoded once, then kept; the failures are retried and listed again
        assert (report.extracted, report.skipped) == ((4, 0) if attempt == 0 else (0, 4))
    assert sorted(path.stem for path in output_dir.glob("*.npy")) == ["alpha", "colour", "grey", "print"]
    assert all(np.load(path).shape == (32,) for path in output_dir.glob("*.npy"))
    assert len((output_dir / FAILURES_FILE).read_text().splitlines()) == 2
