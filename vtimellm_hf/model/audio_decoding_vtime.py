"""Reading the audio track of a video (or an audio file) as the LongVALE and AVicuna feature extractions read it.

[`load_audio`] decodes the track with PyAV (the libraries of ffmpeg) and gives it as mono float32 at the rate asked,
read one of three ways (`reader`):

- `"moviepy"`: LongVALE's (`VideoFileClip(path).audio.to_soundarray(fps=rate)` of moviepy 1.0.3, then the mean of
  the channels). ffmpeg converts the track to 44.1 kHz stereo int16 (`-ar 44100 -ac 2`), and moviepy takes, for each
  output sample `k`, the decoded sample `round(44100 * k / rate)`: no low-pass filter, so what lies above the new
  Nyquist frequency folds into the band. moviepy reads in chunks of ~3.1 s through a buffer of ~4.5 s that it
  re-centres on the last sample of a chunk reaching past it: the first ~27% of every chunk after the first lie
  before the new buffer and are read at negative positions, which wrap to the buffer's end, so they hold the audio
  of ~4.5 s later; the rest slip by one more sample at each refill (the buffer keeps one sample too many). The clip
  lasts the container's duration rounded to 10 ms. All of this is reproduced ([`_moviepy_stream_indices`]): the
  samples equal moviepy's, and so LongVALE's audio and speech features.
- `"librosa"`: AVicuna's (`ffmpeg -i video -acodec pcm_s16le -ar 44100 audio.wav`, then
  `librosa.load(audio.wav, sr=rate)`): 44.1 kHz int16 with the track's own channels, their mean, then soxr's
  high-quality resampler (as librosa's default `res_type="soxr_hq"`), `ceil(n * rate / 44100)` samples long.
- `"ffmpeg"`: the clean way: the track resampled once by ffmpeg's resampler, straight to the rate, kept in float,
  channels averaged.

This file travels to the Hub with a checkpoint that reads audio (`trust_remote_code=True`): it imports only numpy,
transformers' logging, its sibling `video_decoding_vtime.py` (which opens media files for both) and, where a track is
read, PyAV (and soxr for the `"librosa"` reader).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers.utils import logging

from .video_decoding_vtime import open_media_file

logger = logging.get_logger(__name__)

AUDIO_READERS = ("ffmpeg", "moviepy", "librosa")
# The rate ffmpeg converts the track to for moviepy's reader and for AVicuna's wav files
ORIGINAL_DECODING_RATE = 44100


def load_audio(
    path: str | Path, sampling_rate: int, window: Sequence[float] | None = None, reader: str = "ffmpeg"
) -> np.ndarray | None:
    """
    The audio track of a video file (or an audio file) as mono float32 samples in [-1, 1] at `sampling_rate`.

    Args:
        path: the file.
        sampling_rate: samples per second of the result.
        window: `(start_seconds, end_seconds)`: the samples `int(start * rate)` to `int(end * rate)` of the whole
            track, read as `reader` reads it.
        reader: `"ffmpeg"` (resampled once, in float), `"moviepy"` (LongVALE's extraction) or `"librosa"`
            (AVicuna's); see the module's docstring.

    Returns:
        float32 `(samples,)`, or `None` (and a log line) where the file holds no audio track or its track no sample.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: naming the file, where it cannot be decoded or the window lies outside its audio.
    """
    if reader not in AUDIO_READERS:
        raise ValueError(f"reader must be one of {', '.join(map(repr, AUDIO_READERS))}, got {reader!r}.")
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate < 1:
        raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate!r}.")
    path = Path(path)
    if reader == "ffmpeg":
        track = _decode_track(path, "flt", sampling_rate, mono=True)
        waveform = None if track is None else track[0][:, 0]
    elif reader == "moviepy":
        track = _decode_track(path, "s16", ORIGINAL_DECODING_RATE, stereo=True)
        waveform = None if track is None else _read_as_moviepy(*track, sampling_rate)
    else:
        track = _decode_track(path, "s16", ORIGINAL_DECODING_RATE)
        waveform = None if track is None else _read_as_librosa(track[0], sampling_rate)
    if waveform is None:
        return None
    if window is not None:
        start_seconds, end_seconds = window
        duration = len(waveform) / sampling_rate
        if not 0 <= start_seconds < end_seconds or start_seconds >= duration:
            raise ValueError(
                f"{path}: window [{start_seconds}, {end_seconds}] s lies outside its audio ({duration:.2f} s) or is "
                "empty."
            )
        waveform = waveform[int(start_seconds * sampling_rate) : int(end_seconds * sampling_rate)]
    return np.ascontiguousarray(waveform, dtype=np.float32)


def _decode_track(
    path: Path, sample_format: str, rate: int, stereo: bool = False, mono: bool = False
) -> tuple[np.ndarray, float | None] | None:
    """
    `(samples (n, channels), container duration in seconds or None)` of the best audio track of `path`, converted
    by ffmpeg's resampler to `sample_format` ("s16" or "flt") at `rate`, in stereo or the track's own channels (with
    `mono`, their mean, in float32); `None` (and a log line) where the file holds no audio track or sample.

    As the ffmpeg program does, the samples past the track's declared duration (the padding of its last packet)
    are dropped before resampling.
    """
    with open_media_file(path, "the audio of") as container:
        # Installed, since the file opened
        import av

        if not container.streams.audio:
            logger.warning("%s has no audio track.", path)
            return None
        stream = container.streams.best("audio")
        stream.codec_context.thread_count = 1
        duration = None if container.duration is None else container.duration / 1_000_000
        end = None if stream.duration is None else (stream.start_time or 0) + stream.duration
        layout = "stereo" if stereo else None
        resampler = None
        chunks = []
        try:
            for frame in container.decode(stream):
                frame = _trimmed(av, frame, end, stream.time_base)
                if frame is None:
                    continue
                if resampler is None:
                    # The track's own layout unless one is asked for: ffmpeg's `-ar` alone keeps the channels
                    resampler = av.AudioResampler(format=sample_format, layout=layout or frame.layout.name, rate=rate)
                chunks.extend(converted.to_ndarray() for converted in resampler.resample(frame))
            if resampler is not None:
                chunks.extend(converted.to_ndarray() for converted in resampler.resample(None))
        except av.FFmpegError as error:
            raise ValueError(f"Cannot decode the audio of {path}: {error}") from error
    # Packed formats come as (1, samples * channels)
    samples = [chunk.reshape(-1, len(resampler.layout.channels)) for chunk in chunks if chunk.size]
    if not samples:
        logger.warning("%s has an audio track without samples.", path)
        return None
    samples = np.concatenate(samples)
    if mono and samples.shape[1] > 1:
        samples = samples.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    return samples, duration


def _trimmed(av, frame, end: int | None, time_base):
    """`frame` without its samples at or past `end` (in `time_base` units); `None` where none is left. `av` is the
    PyAV module (imported where decoding starts, so that transformers does not require it of a checkpoint's code)."""
    if end is None or frame.pts is None:
        return frame
    kept = int(round((end - frame.pts) * time_base * frame.sample_rate))
    if kept >= frame.samples:
        return frame
    if kept <= 0:
        return None
    planes = frame.to_ndarray()
    # Planar formats hold one row per channel, packed ones one row of interleaved channels
    columns = kept if frame.format.is_planar else kept * len(frame.layout.channels)
    trimmed = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(planes[:, :columns]), format=frame.format.name, layout=frame.layout.name
    )
    trimmed.sample_rate, trimmed.pts, trimmed.time_base = frame.sample_rate, frame.pts, frame.time_base
    return trimmed


def _read_as_moviepy(samples: np.ndarray, duration: float | None, rate: int) -> np.ndarray:
    """
    moviepy 1.0.3's `to_soundarray(fps=rate)` of the 44.1 kHz stereo int16 `samples`, then the mean of its two
    channels (LongVALE's `audio_np.mean(axis=1)`), as float32.
    """
    if duration is None:
        duration = len(samples) / ORIGINAL_DECODING_RATE
    # moviepy reads the duration ffmpeg prints, "HH:MM:SS.ss": rounded to 10 ms
    duration = int((duration * 1_000_000 + 5000) // 10000) / 100
    indices = _moviepy_stream_indices(duration, len(samples), rate)
    sums = samples.astype(np.float64).sum(axis=1)
    # Samples past the end of the stream are zeros in moviepy
    waveform = np.where(indices >= 0, sums[np.maximum(indices, 0)], 0.0) / (2 * 32768.0)
    return waveform.astype(np.float32)


def _moviepy_stream_indices(
    duration: float,
    available: int,
    rate: int,
    stream_rate: int = ORIGINAL_DECODING_RATE,
    buffer_size: int = 200000,
    chunk_size: int = 50000,
) -> np.ndarray:
    """
    For each sample moviepy 1.0.3 gives of a clip of `duration` seconds at `rate` (`to_soundarray(fps=rate)`), the
    index of the decoded sample it holds (of `available` at `stream_rate`), or -1 where it holds a zero.

    moviepy asks for the samples in chunks of `chunk_size` times (`iter_chunks`), each the decoded sample
    `round(stream_rate * t)` read from a buffer of `buffer_size` decoded samples (`FFMPEG_AudioReader`, whose buffer
    a `VideoFileClip` makes 200000 long). When a chunk reaches past the buffer, the buffer is re-centred on the
    chunk's last sample: it keeps the end of the old buffer, one sample more than it should, so that from then on
    each sample read is the one before (the slip grows by one at each refill), and the chunk's samples before the new
    buffer's start are read at negative positions, which numpy wraps to the buffer's end (`buffer_size - 1` samples
    later). A buffer cut short by the end of the stream shifts its reads back. This mirrors that bookkeeping on sample
    indices instead of samples.
    """
    total = int(stream_rate * duration)
    buffer_size = min(total + 1, buffer_size)
    state = {"stream": 0, "position": 0, "buffer": np.arange(0), "start": 0}

    def read(count: int) -> np.ndarray:
        first = state["stream"]
        state["stream"] = min(first + count, available)
        state["position"] += count
        return np.arange(first, state["stream"])

    def seek(position: int) -> None:
        if position < state["position"] or position > state["position"] + 1000000:
            # moviepy restarts ffmpeg at that time; ffmpeg's seek lands on the sample at that time
            state["stream"] = min(position, available)
        elif position > state["position"]:
            state["stream"] = min(state["stream"] + position - state["position"], available)
        state["position"] = position

    def refill(frame: int, first_fill: bool = False) -> None:
        start = max(0, frame - buffer_size // 2)
        end = state["start"] + buffer_size
        if not first_fill and start < end < start + buffer_size:
            kept = end - start + 1
            state["buffer"] = np.concatenate([state["buffer"][-kept:], read(buffer_size - kept)])
        else:
            seek(start)
            state["buffer"] = read(buffer_size)
        state["start"] = start

    def samples_at(times: np.ndarray) -> np.ndarray:
        in_time = (times >= 0) & (times < duration)
        frames = np.round(stream_rate * times).astype(int)[in_time]
        buffer = state["buffer"]
        if not 0 <= frames.min() - state["start"] < len(buffer):
            refill(frames.min())
        elif not 0 <= frames.max() - state["start"] < len(buffer):
            refill(frames.max())
        buffer = state["buffer"]
        positions = frames - state["start"]
        if len(buffer) < buffer_size // 2:
            positions = positions - (buffer_size // 2 - len(buffer) + 1)
        # Past the end of a short buffer moviepy repeats its last sample; negative positions wrap, as numpy's do
        positions = np.minimum(positions, len(buffer) - 1)
        indices = np.full(len(times), -1)
        indices[in_time] = buffer[positions] if len(buffer) else -1
        return indices

    refill(1, first_fill=True)
    if duration <= chunk_size / rate:
        return samples_at(np.arange(0, duration, 1.0 / rate))
    total_out = int(rate * duration)
    bounds = np.linspace(0, total_out, total_out // chunk_size + 2, endpoint=True, dtype=int)
    return np.concatenate(
        [samples_at((1.0 / rate) * np.arange(low, high)) for low, high in zip(bounds[:-1], bounds[1:])]
    )


def _read_as_librosa(samples: np.ndarray, rate: int) -> np.ndarray:
    """
    `librosa.load(wav, sr=rate)` of the 44.1 kHz int16 `samples` (n, channels): float32 `/ 32768` (soundfile's
    reading), the mean of the channels, then soxr's high-quality resampler, padded or cut to
    `ceil(n * rate / 44100)` samples (librosa's `fix_length`).
    """
    waveform = (samples.astype(np.float32) / np.float32(32768.0)).mean(axis=1, dtype=np.float32)
    if rate == ORIGINAL_DECODING_RATE:
        return waveform
    try:
        import soxr
    except ImportError as error:
        raise ImportError(
            "AVicuna's audio reading resamples with soxr: `pip install soxr` (or `pip install vtimellm-hf[audio]`)."
        ) from error
    resampled = soxr.resample(waveform, ORIGINAL_DECODING_RATE, rate, quality="HQ")
    length = int(np.ceil(len(waveform) * rate / ORIGINAL_DECODING_RATE))
    if len(resampled) < length:
        resampled = np.pad(resampled, (0, length - len(resampled)))
    return resampled[:length].astype(np.float32)


__all__ = ["AUDIO_READERS", "load_audio"]
