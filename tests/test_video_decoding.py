"""Decoding videos with PyAV (the default backend) and decord (the `[decord]` extra): the same frames.

The frames of each backend are checked against the ffmpeg program (imageio-ffmpeg's binary), which picks the sampled
frames by their number in presentation order (`select='eq(n,K)+...'`) and turns them upright as players do; and,
where decord is installed, the two backends are compared frame by frame. The sampled indices are checked against the
original's formula, written out here. The videos: the two real ones, and synthetic ones of moving content (ffmpeg's
`testsrc2`) with keyframes 250 frames apart and B-frames, keyframes 5 apart at 29.97 fps, VP9 in .webm, H.264 in .mkv
(neither states its frame count), a variable frame rate, rotation flags, and widths of 16 to 72 px.
"""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vtimellm_hf.model.video_decoding_vtime import (
    _PyAVVideo,
    _sample_frame_times,
    check_video_backend,
    get_video_duration,
    load_video_frames,
    sample_frame_indices,
)

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the test videos are written with imageio-ffmpeg")
av = pytest.importorskip("av")

# name: (frames per second as written, decoded height, decoded width)
CONSTANT_RATE_VIDEOS = {
    "long_gop.mp4": (Fraction(25), 64, 96),
    "short_gop.mp4": (Fraction(30000, 1001), 64, 96),
    "clip.webm": (Fraction(25), 64, 96),
    "clip.mkv": (Fraction(30000, 1001), 64, 96),
    "rotated90.mp4": (Fraction(30000, 1001), 96, 64),
    "rotated180.mp4": (Fraction(30000, 1001), 64, 96),
    "rotated270.mp4": (Fraction(30000, 1001), 96, 64),
    **{f"narrow{width}.mp4": (Fraction(10), 32, width) for width in (16, 24, 48, 72)},
}
WINDOWS = {"long_gop.mp4": (3.5, 10.3), "short_gop.mp4": (1.27, 6.61), "clip.webm": (0.9, 4.45)}
# The variable-rate video: its first 20 frames 0.1 s apart, then 0.4 s apart
VFR_FAST_FRAMES, VFR_FRAMES = 20, 40


def ffmpeg(*arguments: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *arguments], check=True)


def moving_video(path: Path, width: int, height: int, rate: str, seconds: float, *encoding: str) -> None:
    source = f"testsrc2=size={width}x{height}:rate={rate}:duration={seconds}"
    ffmpeg("-f", "lavfi", "-i", source, "-pix_fmt", "yuv420p", "-threads", "1", *encoding, str(path))


def ffmpeg_frames(path: Path, indices, height: int, width: int) -> np.ndarray:
    """Frames `indices` (sorted, distinct) of `path` as the ffmpeg program decodes them: RGB, upright."""
    selection = "+".join(f"eq(n,{index})" for index in indices)
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-threads", "1", "-i", str(path),
        "-vf", f"select='{selection}'", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(output, np.uint8).reshape(-1, height, width, 3)


def ffmpeg_frame_count(path: Path) -> int:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-threads", "1", "-i", str(path), "-map", "0:v:0",
               "-fps_mode", "passthrough", "-f", "framemd5", "-"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, check=True, text=True).stdout
    return sum(1 for line in output.splitlines() if line and not line.startswith("#"))


def original_indices(total_frames: int, fps: float, window=None, num_frames: int = 100) -> np.ndarray:
    """The original's sampling (VideoExtractor): `int()` bounds of the window, then `linspace` as int32."""
    start, end = 0, total_frames - 1
    if window is not None:
        start = max(int(fps * window[0]), 0)
        end = min(int(fps * window[1]), total_frames - 1)
    return np.linspace(start, end, num_frames).astype(np.int32)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("decoding")
    moving_video(folder / "long_gop.mp4", 96, 64, "25", 12, "-c:v", "libx264", "-g", "250", "-bf", "3")
    moving_video(folder / "short_gop.mp4", 96, 64, "30000/1001", 8, "-c:v", "libx264", "-g", "5", "-bf", "2")
    moving_video(folder / "clip.webm", 96, 64, "25", 6, "-c:v", "libvpx-vp9", "-g", "30")
    ffmpeg("-i", str(folder / "short_gop.mp4"), "-c", "copy", str(folder / "clip.mkv"))
    for degrees in (90, 180, 270):
        ffmpeg("-display_rotation", str(degrees), "-i", str(folder / "short_gop.mp4"), "-c", "copy",
               str(folder / f"rotated{degrees}.mp4"))  # fmt: skip
    ffmpeg("-display_hflip", "-i", str(folder / "short_gop.mp4"), "-c", "copy", str(folder / "mirrored.mp4"))
    for width in (16, 24, 48, 72):
        moving_video(folder / f"narrow{width}.mp4", width, 32, "10", 2, "-c:v", "libx264")
    slow_down = f"setpts='if(lt(N,{VFR_FAST_FRAMES}),N,{VFR_FAST_FRAMES}+(N-{VFR_FAST_FRAMES})*4)/10/TB'"
    moving_video(folder / "variable_rate.mp4", 96, 64, "10", VFR_FRAMES / 10, "-vf", slow_down, "-fps_mode", "vfr",
                 "-c:v", "libx264")  # fmt: skip
    return folder


def real_videos(real_data: Path) -> list[Path]:
    return sorted((real_data / "videos").glob("*.mp4"))


# PyAV against the ffmpeg program


@pytest.mark.parametrize("name", sorted(CONSTANT_RATE_VIDEOS))
def test_pyav_frames_equal_the_ffmpeg_program(videos, name):
    path = videos / name
    fps, height, width = CONSTANT_RATE_VIDEOS[name]
    total_frames = ffmpeg_frame_count(path)
    for window in [None, *([WINDOWS[name]] if name in WINDOWS else [])]:
        frames, duration = load_video_frames(path, window=window)
        indices = original_indices(total_frames, float(fps), window)
        distinct, positions = np.unique(indices, return_inverse=True)
        np.testing.assert_array_equal(frames, ffmpeg_frames(path, distinct, height, width)[positions])
        expected_duration = total_frames / fps if window is None else window[1] - window[0]
        assert duration == pytest.approx(float(expected_duration))


def test_containers_without_a_frame_count_are_counted(videos):
    for name in ("clip.webm", "clip.mkv"):
        with av.open(str(videos / name)) as container:
            assert container.streams.video[0].frames == 0
        with _PyAVVideo(videos / name) as video:
            assert len(video) == ffmpeg_frame_count(videos / name)


@pytest.mark.parametrize(
    "indices",
    [[0], [299], [249, 250, 251], [5, 260], [0, 1, 2, 3], sorted(np.random.default_rng(0).choice(300, 17, False))],
)
def test_any_sampled_frames_equal_the_ffmpeg_program(videos, indices):
    """Seeking, and going on from a frame, land on the same frames in a video with B-frames."""
    path = videos / "long_gop.mp4"
    with _PyAVVideo(path) as video:
        frames = np.concatenate(list(video.decode(np.array(indices))))
    np.testing.assert_array_equal(frames, ffmpeg_frames(path, indices, 64, 96))


def test_real_videos_equal_the_ffmpeg_program(real_data):
    for path in real_videos(real_data):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps, height, width = stream.average_rate, stream.codec_context.height, stream.codec_context.width
        total_frames = ffmpeg_frame_count(path)
        for window in (None, (3.5, 12.2)):
            frames, _ = load_video_frames(path, window=window)
            distinct, positions = np.unique(original_indices(total_frames, float(fps), window), return_inverse=True)
            np.testing.assert_array_equal(frames, ffmpeg_frames(path, distinct, height, width)[positions])


def test_mirrored_display_matrix_is_turned_as_decord_turns_it(videos):
    """decord reads the angle of the display matrix and turns the frames by it: a horizontal mirror reads as 180
    degrees, and the frames come turned upside down rather than mirrored."""
    frames, _ = load_video_frames(videos / "mirrored.mp4", num_frames=10)
    indices = original_indices(ffmpeg_frame_count(videos / "short_gop.mp4"), 30000 / 1001, num_frames=10)
    stored = ffmpeg_frames(videos / "short_gop.mp4", indices, 64, 96)
    np.testing.assert_array_equal(frames, stored[:, ::-1, ::-1])


# PyAV against decord


@pytest.mark.parametrize("name", sorted([*CONSTANT_RATE_VIDEOS, "variable_rate.mp4", "mirrored.mp4"]))
def test_backends_give_the_same_frames(videos, name):
    pytest.importorskip("decord", reason="the decord backend is an optional extra (pip install vtimellm-hf[decord])")
    path = videos / name
    for window in (None, WINDOWS.get(name, (0.35, 1.72))):
        frames, duration = load_video_frames(path, window=window)
        decord_frames, decord_duration = load_video_frames(path, window=window, backend="decord")
        np.testing.assert_array_equal(frames, decord_frames)
        assert duration == pytest.approx(decord_duration)
    assert get_video_duration(path) == pytest.approx(get_video_duration(path, backend="decord"))


def test_backends_give_the_same_frames_on_real_videos(real_data):
    pytest.importorskip("decord", reason="the decord backend is an optional extra (pip install vtimellm-hf[decord])")
    for path in real_videos(real_data):
        for window in (None, (3.5, 12.2), (0.41, 14.9)):
            frames, duration = load_video_frames(path, window=window)
            decord_frames, decord_duration = load_video_frames(path, window=window, backend="decord")
            np.testing.assert_array_equal(frames, decord_frames)
            assert duration == decord_duration


# Which frames the decoder reads


def count_decoding(monkeypatch) -> dict:
    """Counts, on `_PyAVVideo`, the runs of decoding (a seek, or a read from the start) and the frames decoded."""
    counts = {"runs": 0, "frames": 0}
    decoded_from = _PyAVVideo._decoded_from

    def counting(self, keyframe):
        counts["runs"] += 1
        for decoded in decoded_from(self, keyframe):
            counts["frames"] += 1
            yield decoded

    monkeypatch.setattr(_PyAVVideo, "_decoded_from", counting)
    return counts


def test_a_long_gop_video_is_read_through_once(videos, monkeypatch):
    counts = count_decoding(monkeypatch)
    load_video_frames(videos / "long_gop.mp4")
    # Keyframes at 0 and 250 of 300 frames: one run to 250, a seek there (as cheap as going on), no frame decoded
    # twice; seeking to each sampled frame would decode about 100 x 125 frames
    assert counts["runs"] <= 2 and counts["frames"] <= 300


def test_a_short_gop_video_is_read_by_seeking(videos, monkeypatch):
    counts = count_decoding(monkeypatch)
    load_video_frames(videos / "short_gop.mp4", num_frames=10)
    # 10 frames 26 apart with a keyframe every 5: a seek to each, and a few frames decoded per sampled frame
    assert counts["runs"] == 10 and counts["frames"] <= 10 * 5


# Windows as the original cuts them


FRACTIONAL_WINDOWS = [(3.5, 20.2), (0.7, 1.3), (2.26, 9.99), (10.07, 30.5), (0.0, 5.55), (29.9, 31.3)]


@pytest.mark.parametrize("fps", [30000 / 1001, 25.0])
def test_window_bounds_are_truncated_as_the_original(fps):
    total_frames = int(31 * fps)
    for window in FRACTIONAL_WINDOWS:
        np.testing.assert_array_equal(
            sample_frame_indices(total_frames, 100, fps, window), original_indices(total_frames, fps, window)
        )


def test_rounding_the_bounds_would_move_49_of_100_frames():
    """The issue's figure: what rounding (this package's earlier way) did to a 29.97 fps window of (3.5, 20.2) s."""
    fps, total_frames = 30000 / 1001, 930
    truncated = sample_frame_indices(total_frames, 100, fps, (3.5, 20.2))
    rounded = np.linspace(round(3.5 * fps), round(20.2 * fps), 100).astype(np.int32)
    assert (truncated != rounded).sum() == 49


@pytest.mark.parametrize("fps", [30000 / 1001, 25.0])
def test_sampling_by_time_agrees_with_the_original_at_a_constant_rate(fps):
    total_frames = int(31 * fps)
    frame_times = np.arange(total_frames) / fps
    # Where fps * seconds is a whole number, int() of the product may fall a frame short (int(25 * 10.04) is 250):
    # frame times cannot follow that, so those bounds are left out
    for window in [None, *FRACTIONAL_WINDOWS, (2.0, 4.0)]:
        by_time = _sample_frame_times(frame_times, 100, window, total_frames / fps)
        np.testing.assert_array_equal(by_time, original_indices(total_frames, fps, window))


# Backends


def test_unknown_backend_is_refused(videos):
    with pytest.raises(ValueError, match=r"backend must be one of 'pyav', 'decord', got 'opencv'"):
        load_video_frames(videos / "short_gop.mp4", backend="opencv")


def test_decord_asked_for_without_decord_is_one_line_saying_what_to_install(videos, monkeypatch):
    # `import decord` fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "decord", None)
    message = (
        "backend='decord' needs decord, which is not installed: `pip install vtimellm-hf[decord]`, or use the "
        "default backend, 'pyav'."
    )
    with pytest.raises(ImportError) as error:
        check_video_backend("decord")
    assert str(error.value) == message
    with pytest.raises(ImportError) as error:
        load_video_frames(videos / "short_gop.mp4", backend="decord")
    assert str(error.value) == message
    # PyAV, the default, does not need it
    assert load_video_frames(videos / "short_gop.mp4", num_frames=4)[0].shape == (4, 64, 96, 3)
