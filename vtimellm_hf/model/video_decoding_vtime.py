"""Reading VTimeLLM's frames from a video file: which frames to sample, and decoding them.

A video whose frame rate is constant is sampled by index, as the original does ([`sample_frame_indices`]); one whose
rate varies, by time. Decoding is one seam, [`_open_video`]: decord, with the ffmpeg of imageio-ffmpeg for the frames
decord fails on. [`VTimeVideoProcessor`] (`video_processing_vtime.py`) preprocesses what this file decodes.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`), imported by
`video_processing_vtime.py`: it imports only torch and numpy (decord is imported when a video file is decoded,
imageio-ffmpeg where decord fails).
"""

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

# Decoded frames held at once while a video is sampled: 100 frames of 640x480 fit, or 3 frames of 4000x3000
DECODE_CHUNK_BYTES = 128 * 2**20


# Sampling


def sample_frame_indices(
    total_frames: int, num_frames: int = 100, fps: float | None = None, window: Sequence[float] | None = None
) -> np.ndarray:
    """
    The original sampling: `np.linspace(first, last, num_frames)` as int32, first and last frame included.

    Args:
        total_frames: frames in the video.
        num_frames: frames to sample (indices repeat when the video has fewer).
        fps: average frame rate, needed with `window`.
        window: `(start_seconds, end_seconds)` of the part of the video to sample; its frame bounds are
            `round(seconds * fps)`, clamped to the last frame.
    """
    if total_frames < 1:
        raise ValueError("The video has no frames.")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    first, last = 0, total_frames - 1
    if window is not None:
        if fps is None or fps <= 0:
            raise ValueError(f"A window needs the video's frame rate, got fps={fps}.")
        _check_window(window, total_frames / fps)
        first = min(round(window[0] * fps), last)
        last = min(round(window[1] * fps), last)
    return np.linspace(first, last, num_frames, dtype=np.int32)


def _check_window(window: Sequence[float], duration: float) -> None:
    start_seconds, end_seconds = window
    if not 0 <= start_seconds < end_seconds or start_seconds >= duration:
        raise ValueError(
            f"Window [{start_seconds}, {end_seconds}] s lies outside the video ({duration:.2f} s) or is empty."
        )


def _sample_frame_times(
    frame_times: np.ndarray, num_frames: int, window: Sequence[float] | None, duration: float
) -> np.ndarray:
    """
    Sampling by time, for a video whose frame rate varies: the frames nearest to `num_frames` evenly spaced times
    from its first frame to its last (or from the start of `window` to its end, stopping at the last frame), as
    [`sample_frame_indices`] spaces indices at a constant rate.

    Args:
        frame_times: the start of each frame in seconds from the first frame, sorted; two frames at least.
        duration: the video's, to check `window` against.
    """
    first, last = frame_times[0], frame_times[-1]
    if window is not None:
        _check_window(window, duration)
        first, last = min(window[0], last), min(window[1], last)
    targets = np.linspace(first, last, num_frames)
    after = np.clip(np.searchsorted(frame_times, targets), 1, len(frame_times) - 1)
    before = after - 1
    nearest = np.where(targets - frame_times[before] <= frame_times[after] - targets, before, after)
    return nearest.astype(np.int32)


# Decoding


def _open_video(path: Path) -> "_DecordVideo":
    """
    The decoder of the video at `path`: the one place that chooses how videos are decoded. A decoder tells its
    frame count (`len`) and `timing()`, and decodes the frames at given indices (`decode`); see [`_DecordVideo`].
    """
    return _DecordVideo(path)


class _DecordVideo:
    """A video file decoded by decord, and by the ffmpeg of imageio-ffmpeg from the first frames decord fails on."""

    def __init__(self, path: Path):
        """Opens `path`; a `ValueError` naming the file when it holds no decodable video."""
        try:
            from decord import VideoReader, cpu
        except ImportError as error:
            raise ImportError("Decoding videos needs decord: `pip install decord`.") from error
        if not path.is_file():
            raise FileNotFoundError(f"Video not found: {path}")
        try:
            reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
            total_frames = len(reader)
        except Exception as error:  # decord raises its own DECORDError and RuntimeError subclasses
            raise ValueError(f"Cannot decode video {path}: {error}") from error
        if total_frames < 1:
            raise ValueError(f"Cannot decode video {path}: it holds no frames.")
        self.path, self.reader = path, reader

    def __len__(self) -> int:
        return len(self.reader)

    def timing(self) -> tuple[float, np.ndarray | None, float]:
        """
        `(average fps, frame_times, duration in seconds)` of the video.

        `frame_times` (the start of each frame in seconds from the first) is `None` when the frame rate is constant:
        every frame starts within half a frame of `index / fps`. Such videos are sampled by index and last
        `frames / fps`, exactly as in the original. Where the rate varies, the index of a frame says nothing of its
        time: those videos are sampled by time and last as long as their frames span, plus one mean frame interval
        (which is `frames / fps` at a constant rate).
        """
        path, reader = self.path, self.reader
        total_frames, fps = len(reader), reader.get_avg_fps()
        if not fps > 0:
            raise ValueError(f"Cannot decode video {path}: it reports a frame rate of {fps}.")
        try:
            starts = reader.get_frame_timestamp(np.arange(total_frames))[:, 0].astype(np.float64)
        except Exception as error:  # decord's own errors
            raise ValueError(f"Cannot read the frame times of video {path}: {error}") from error
        frame_times = starts - starts[0]
        # One frame, or frames that all claim the same time, give nothing to sample by time
        single_time = total_frames < 2 or not frame_times[-1] > 0
        if single_time or np.abs(frame_times - np.arange(total_frames) / fps).max() <= 0.5 / fps:
            return fps, None, total_frames / fps
        return fps, frame_times, float(frame_times[-1]) * total_frames / (total_frames - 1)

    def decode(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """
        The frames `indices` (distinct, sorted) as uint8 chunks `(frames, height, width, 3)` of at most
        `DECODE_CHUNK_BYTES` (one frame at least), decoded by decord or, from the first chunk it fails on, by ffmpeg.
        """
        # The first frame comes alone: its size sets the length of the other chunks
        frames_per_chunk, start = 1, 0
        while start < len(indices):
            chunk = indices[start : start + frames_per_chunk]
            try:
                frames = self.reader.get_batch(chunk.tolist()).asnumpy()
            except Exception as error:  # such as decord's DECORDArrayCopyFromTo on frames 16, 24, 48 or 72 px wide
                yield from _decode_frames_with_ffmpeg(self.path, indices[start:], error)
                return
            frames_per_chunk = max(1, DECODE_CHUNK_BYTES // frames[0].nbytes)
            start += len(chunk)
            yield frames
            # Not held while the next chunk is decoded
            del frames


def _decode_frames_with_ffmpeg(path: Path, indices: np.ndarray, decord_error: Exception) -> Iterator[np.ndarray]:
    """
    [`_DecordVideo.decode`] by the ffmpeg binary of imageio-ffmpeg, for what decord failed to decode (`decord_error`).

    The frames are those decord indexes: ffmpeg's `select` filter counts decoded frames in presentation order as
    decord does, and `-fps_mode passthrough` keeps it from dropping or duplicating frames to reach a constant rate.
    """
    reason = f"Cannot decode frames of video {path}: decord failed ({decord_error})"
    try:
        import imageio_ffmpeg
    except ImportError as error:
        raise ValueError(
            f"{reason}, and the fallback decoder needs imageio-ffmpeg: `pip install imageio-ffmpeg`."
        ) from error
    selection = "+".join(f"eq(n,{index})" for index in indices)
    # One decoding thread, as decord is given: extraction runs a decoder in each of its worker processes
    decoded_frames = imageio_ffmpeg.read_frames(
        str(path),
        input_params=["-threads", "1"],
        output_params=["-vf", f"select='{selection}'", "-fps_mode", "passthrough", "-frames:v", str(len(indices))],
    )
    decoded = 0
    try:
        width, height = next(decoded_frames)["size"]
        frames_per_chunk = max(1, DECODE_CHUNK_BYTES // (width * height * 3))
        chunk = []
        for data in decoded_frames:
            chunk.append(np.frombuffer(data, np.uint8).reshape(height, width, 3))
            if len(chunk) == frames_per_chunk or decoded + len(chunk) == len(indices):
                decoded += len(chunk)
                yield np.stack(chunk)
                chunk = []
    except (OSError, RuntimeError) as error:  # imageio-ffmpeg's errors quote ffmpeg's log
        raise ValueError(f"{reason}, and so did ffmpeg: {error}") from error
    finally:
        decoded_frames.close()
    if decoded < len(indices):
        raise ValueError(f"{reason}, and ffmpeg decoded {decoded} of its {len(indices)} sampled frames.")


def load_video_frames(
    path: str | Path,
    num_frames: int = 100,
    window: Sequence[float] | None = None,
    preprocess: Callable[[np.ndarray], torch.Tensor | np.ndarray] | None = None,
) -> tuple[np.ndarray | torch.Tensor, float]:
    """
    Decodes the sampled frames of a video with decord, or with the ffmpeg of imageio-ffmpeg where decord fails.

    A video whose frame rate is constant is sampled by index, as the original does ([`sample_frame_indices`]); one
    whose rate varies, by time (the frames nearest to evenly spaced times), so that frame `k` of `num_frames` stays
    at about `k / num_frames` of the duration.

    Each sampled frame is decoded once, however often it is repeated, and at most `DECODE_CHUNK_BYTES` of decoded
    frames are held at a time: with `preprocess`, each chunk is preprocessed before the next is decoded, so that
    the memory needed does not grow with the resolution times the number of frames.

    Args:
        path: the video file.
        num_frames: frames to sample.
        window: `(start_seconds, end_seconds)` of the part of the video to sample.
        preprocess: applied to each chunk of decoded uint8 frames `(frames, height, width, 3)`, giving a tensor or
            array with one item per frame (such as [`preprocess_frames`]).

    Returns:
        `(frames, duration)`: the uint8 frames `(num_frames, height, width, 3)`, or what `preprocess` makes of
        them, in sampled order; and the duration in seconds of the video, or of the window when one is given.
    """
    path = Path(path)
    video = _open_video(path)
    fps, frame_times, video_duration = video.timing()
    try:
        if frame_times is None:
            indices = sample_frame_indices(len(video), num_frames, fps, window)
        else:
            indices = _sample_frame_times(frame_times, num_frames, window, video_duration)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    distinct, positions = np.unique(indices, return_inverse=True)
    chunks = []
    for decoded in video.decode(distinct):
        chunks.append(decoded if preprocess is None else preprocess(decoded))
        # Not held while the next chunk is decoded
        del decoded
    is_tensor = isinstance(chunks[0], torch.Tensor)
    frames = torch.cat(chunks) if is_tensor else np.concatenate(chunks)
    del chunks
    if len(distinct) < len(indices):
        frames = frames[torch.from_numpy(positions) if is_tensor else positions]
    # A window running past the end lasts until the end: its frames stop there, and so must its moments
    duration = min(window[1], video_duration) - window[0] if window is not None else video_duration
    return frames, float(duration)


def get_video_duration(path: str | Path) -> float:
    """Duration in seconds of a video, as [`load_video_frames`] gives it: frames / average fps at a constant rate."""
    return _open_video(Path(path)).timing()[2]


__all__ = ["get_video_duration", "load_video_frames", "sample_frame_indices"]
