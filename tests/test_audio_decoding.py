"""Reading audio tracks (`load_audio`), each reader against an independent computation: the ffmpeg program
(imageio-ffmpeg's binary), moviepy 1.0.3 itself (LongVALE's reader), and soundfile's int16 scaling + soxr (AVicuna's
librosa reading), on real videos and on files written here with PyAV."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from vtimellm_hf.model import audio_decoding_vtime
from vtimellm_hf.model.audio_decoding_vtime import _moviepy_stream_indices, load_audio

av = pytest.importorskip("av")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")


def ffmpeg_samples(path: Path, arguments: list[str], dtype, channels: int) -> np.ndarray:
    """What the ffmpeg program writes of `path`'s audio with `arguments` as raw samples `(n, channels)`."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vn", *arguments, "-"]
    return np.frombuffer(subprocess.run(command, capture_output=True, check=True).stdout, dtype).reshape(-1, channels)


@pytest.fixture(scope="module")
def media(tmp_path_factory, write_media) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    return {
        "stereo_48k": write_media(folder / "stereo_48k.mp4", 7.3),
        "mono_44k": write_media(folder / "mono_44k.mp4", 4.2, rate=44100, layout="mono"),
        "surround_32k": write_media(folder / "surround_32k.mkv", 2.5, rate=32000, layout="5.1"),
        "short_wav": write_media(folder / "short.wav", 1.7, rate=22050, layout="mono", video=False, codec="pcm_s16le"),
        "silent_video": write_media(folder / "silent.mp4", 2.0, audio=False),
    }


def real_videos(real_data: Path) -> list[Path]:
    return sorted((real_data / "videos").glob("*.mp4"))


# The clean reader against the ffmpeg program


@pytest.mark.parametrize("name", ["stereo_48k", "mono_44k", "surround_32k", "short_wav"])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_ffmpeg_reader_equals_the_ffmpeg_program(media, name, rate):
    path = media[name]
    channels = len(av.open(str(path)).streams.audio[0].codec_context.layout.channels)
    # The program resamples with the same library, keeping the channels, in float; the mean is taken here
    expected = ffmpeg_samples(path, ["-f", "f32le", "-acodec", "pcm_f32le", "-ar", str(rate)], np.float32, channels)
    waveform = load_audio(path, rate)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    # Same length, including the padding of the last packet dropped as the program drops it
    assert len(waveform) == len(expected)
    np.testing.assert_allclose(waveform, expected.mean(axis=1), atol=2e-5)


def test_ffmpeg_reader_on_real_videos_equals_the_ffmpeg_program(real_data):
    for path in real_videos(real_data):
        expected = ffmpeg_samples(path, ["-f", "f32le", "-acodec", "pcm_f32le", "-ar", "16000"], np.float32, 2)
        waveform = load_audio(path, 16000)
        assert len(waveform) == len(expected), path.name
        np.testing.assert_allclose(waveform, expected.mean(axis=1), atol=2e-5)


# LongVALE's reader against moviepy 1.0.3


@pytest.fixture(scope="module")
def moviepy_to_soundarray():
    """`VideoFileClip(path).audio.to_soundarray(fps=rate)` of moviepy 1.0.3, as LongVALE's extraction calls it."""
    moviepy = pytest.importorskip("moviepy")
    if moviepy.__version__ != "1.0.3":
        pytest.skip(f"LongVALE's reading is moviepy 1.0.3's, found moviepy {moviepy.__version__}")
    from moviepy.editor import VideoFileClip

    def read(path: Path, rate: int) -> np.ndarray:
        # moviepy 1.0.3 stacks a generator of chunks, which numpy >= 1.24 refuses: the chunks are given as a tuple,
        # as older numpy read them
        stack = np.vstack
        np.vstack = lambda arrays, *args, **kwargs: stack(tuple(arrays), *args, **kwargs)
        try:
            clip = VideoFileClip(str(path))
            samples = clip.audio.to_soundarray(fps=rate)
            clip.close()
        finally:
            np.vstack = stack
        return samples

    return read


def test_moviepy_reader_equals_moviepy_on_real_videos(real_data, moviepy_to_soundarray):
    for path in real_videos(real_data):
        # LongVALE: `audio_np.mean(axis=1)`, then `torch.tensor(audio_np).float()`
        expected = moviepy_to_soundarray(path, 16000).mean(axis=1).astype(np.float32)
        np.testing.assert_array_equal(load_audio(path, 16000, reader="moviepy"), expected, err_msg=path.name)


@pytest.mark.parametrize("name", ["stereo_48k", "mono_44k", "surround_32k"])
def test_moviepy_reader_equals_moviepy_on_other_rates_and_layouts(media, moviepy_to_soundarray, name):
    # 7.3 s at 16 kHz is three chunks of moviepy's reading, with buffer refills between them
    for rate in (16000, 8000):
        expected = moviepy_to_soundarray(media[name], rate).mean(axis=1).astype(np.float32)
        np.testing.assert_array_equal(load_audio(media[name], rate, reader="moviepy"), expected)


def test_moviepy_reader_of_a_short_clip_picks_the_nearest_samples(media):
    """Under one chunk (3.125 s at 16 kHz) moviepy reads no buffer twice: sample `k` is the 44.1 kHz sample
    `round(44100 k / 16000)`, for the container's duration rounded to 10 ms."""
    path = media["short_wav"]
    stereo = ffmpeg_samples(path, ["-f", "s16le", "-acodec", "pcm_s16le", "-ar", "44100", "-ac", "2"], np.int16, 2)
    duration = round(av.open(str(path)).duration / 1_000_000, 2)
    picked = np.round(44100 * (np.arange(0, duration, 1 / 16000))).astype(int)
    expected = np.where(picked < len(stereo), stereo[np.minimum(picked, len(stereo) - 1)].sum(axis=1), 0) / 65536
    np.testing.assert_array_equal(load_audio(path, 16000, reader="moviepy"), expected.astype(np.float32))


def test_moviepy_buffer_refills_slip_and_wrap():
    """moviepy's bookkeeping, worked by hand: its buffer holds 200000 samples of 44.1 kHz; each chunk of 50000
    outputs at 16 kHz spans ~137800 of them, and the chunk that reaches past the buffer re-centres it on the chunk's
    last sample, keeping one sample too many of the old buffer. So the chunk's samples read from the new buffer are
    one sample early, and those before its start are read at negative positions, which numpy wraps to the buffer's
    end: 199999 samples (4.5 s) later."""
    indices = _moviepy_stream_indices(duration=20.0, available=882000, rate=16000)
    assert len(indices) == 320000
    bounds = np.linspace(0, 320000, 320000 // 50000 + 2, dtype=int)
    nearest = np.round(44100 * ((1.0 / 16000) * np.arange(320000))).astype(int)
    # The first chunk comes from the first buffer, as it is
    np.testing.assert_array_equal(indices[: bounds[1]], nearest[: bounds[1]])
    chunk = slice(bounds[1], bounds[2])
    buffer_start = nearest[bounds[2] - 1] - 100000
    before = nearest[chunk] < buffer_start
    np.testing.assert_array_equal(indices[chunk][~before], nearest[chunk][~before] - 1)
    np.testing.assert_array_equal(indices[chunk][before], nearest[chunk][before] + 199999)
    assert 0.2 < before.mean() < 0.3


# AVicuna's reader against soundfile's scaling and soxr


@pytest.mark.parametrize("name", ["stereo_48k", "surround_32k", "short_wav"])
def test_librosa_reader_equals_ffmpeg_wav_then_librosa_load(media, name):
    soxr = pytest.importorskip("soxr")
    path = media[name]
    # AVicuna's v2a.py (`-acodec pcm_s16le -ar 44100`, the channels kept; here as raw samples, the wav's data), then
    # librosa.load(sr=48000): soundfile's float32 (int16 / 32768), mono mean, soxr "HQ", ceil(n * 48000 / 44100)
    channels = len(av.open(str(path)).streams.audio[0].codec_context.layout.channels)
    samples = ffmpeg_samples(path, ["-f", "s16le", "-acodec", "pcm_s16le", "-ar", "44100"], np.int16, channels)
    mono = (samples.astype(np.float32) / 32768).mean(axis=1, dtype=np.float32)
    resampled = soxr.resample(mono, 44100, 48000, quality="soxr_hq")
    length = int(np.ceil(len(mono) * 48000 / 44100))
    expected = np.pad(resampled, (0, max(0, length - len(resampled))))[:length]
    np.testing.assert_array_equal(load_audio(path, 48000, reader="librosa"), expected)


# Windows, missing tracks, bad files


def test_a_window_is_the_same_samples_of_the_whole_track(media):
    whole = load_audio(media["stereo_48k"], 16000, reader="moviepy")
    part = load_audio(media["stereo_48k"], 16000, window=(1.25, 3.5), reader="moviepy")
    np.testing.assert_array_equal(part, whole[20000:56000])
    # A window running past the end stops there
    np.testing.assert_array_equal(load_audio(media["stereo_48k"], 16000, window=(7.0, 60.0)), load_audio(
        media["stereo_48k"], 16000)[112000:])  # fmt: skip
    for window in [(8.0, 9.0), (2.0, 2.0), (-1.0, 1.0)]:
        with pytest.raises(ValueError, match=f"{media['stereo_48k']}: window"):
            load_audio(media["stereo_48k"], 16000, window=window)


def test_a_video_without_an_audio_track_gives_none_and_a_log_line(media):
    logger = logging.get_logger(audio_decoding_vtime.__name__)
    for reader in ("ffmpeg", "moviepy", "librosa"):
        with CaptureLogger(logger) as captured:
            assert load_audio(media["silent_video"], 16000, reader=reader) is None
        assert f"{media['silent_video']} has no audio track" in captured.out


def test_corrupt_and_missing_files_are_errors_naming_them(media, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(ValueError, match=f"Cannot decode the audio of {garbage}"):
        load_audio(garbage, 16000)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(media["stereo_48k"].read_bytes()[:2000])
    with pytest.raises(ValueError, match=f"{truncated}"):
        load_audio(truncated, 16000)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_audio(tmp_path / "missing.mp4", 16000)
    with pytest.raises(ValueError, match="reader must be one of"):
        load_audio(media["stereo_48k"], 16000, reader="torchaudio")
    with pytest.raises(ValueError, match="sampling_rate must be a positive integer"):
        load_audio(media["stereo_48k"], 0)
