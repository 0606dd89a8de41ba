"""Reading VTimeLLM's frames from a video file: which frames to sample, and decoding them.

A video whose frame rate is constant is sampled by index, as the original does ([`sample_frame_indices`]); one whose
rate varies, by time. Decoding has one seam, [`_open_video`], and two backends ([`VIDEO_BACKENDS`]): PyAV, the
default, and decord, an optional extra (`pip install vtimellm-hf[decord]`) used only when asked for. Both give the
same frames: frame `i` is the `i`-th in presentation order, as decord indexes them, turned upright by the stream's
rotation as decord turns it. [`VTimeVideoProcessor`] (`video_processing_vtime.py`) preprocesses what this file decodes.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`), imported by
`video_processing_vtime.py` (and `audio_decoding_vtime.py`, which opens files with [`open_media_file`]): it imports
only torch and numpy; PyAV is imported when a file is opened, decord when a video is decoded with it.
"""

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

# Decoded frames held at once while a video is sampled: 100 frames of 640x480 fit, or 3 frames of 4000x3000
DECODE_CHUNK_BYTES = 128 * 2**20
# The decoders of `backend=`: PyAV (the default, wheels for every platform) and decord (an optional extra)
VIDEO_BACKENDS = ("pyav", "decord")
# Frame times are compared with this slack (seconds), so that float rounding does not move a bound across a frame
_TIME_SLACK = 1e-6


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
        window: `(start_seconds, end_seconds)` of the part of the video to sample; its frame bounds are those of
            the original's feature extraction (its `VideoExtractor`): `max(int(fps * start), 0)` and
            `min(int(fps * end), total_frames - 1)`, truncated rather than rounded.
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
        first = max(int(fps * window[0]), 0)
        last = min(int(fps * window[1]), last)
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
    Sampling by time, for a video whose frame rate varies: the frames shown at `num_frames` evenly spaced times
    from its first frame to its last (or from the frame shown at the start of `window` to the one shown at its end,
    stopping at the last frame), as [`sample_frame_indices`] spaces indices at a constant rate.

    The frame shown at a time is the last one starting at or before it: at a constant rate, that is the original's
    `int(fps * seconds)`, so both ways of sampling give the same frames there.

    Args:
        frame_times: the start of each frame in seconds from the first frame, sorted; two frames at least.
        duration: the video's, to check `window` against.
    """
    first, last = 0, len(frame_times) - 1
    if window is not None:
        _check_window(window, duration)
        first, last = _frames_shown_at(frame_times, np.asarray(window, dtype=np.float64))
    targets = np.linspace(frame_times[first], frame_times[last], num_frames)
    return _frames_shown_at(frame_times, targets).astype(np.int32)


def _frames_shown_at(frame_times: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """The index of the frame shown at each of `seconds` (>= 0): the last frame starting at or before it."""
    return np.searchsorted(frame_times, seconds + _TIME_SLACK, side="right") - 1


# Decoding


def open_media_file(path: Path, reading: str):
    """
    PyAV's container of the media file at `path`: the one way this package opens a video or audio file. `reading`
    says what is read of it, for the errors (`"video"`, `"the audio of"`).

    Raises:
        ImportError: where PyAV is not installed.
        FileNotFoundError: `File not found: PATH`.
        ValueError: `Cannot decode READING PATH: REASON`, where ffmpeg cannot open it.
    """
    try:
        import av
    except ImportError as error:
        raise ImportError("Decoding videos and audio tracks needs PyAV: `pip install av`.") from error
    if not path.is_file():
        raise FileNotFoundError(f"File not found: {path}")
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise ValueError(f"Cannot decode {reading} {path}: {error}") from error


def _open_video(path: Path, backend: str = "pyav") -> "_Video":
    """
    The decoder of the video at `path`: the one place that chooses how videos are decoded. A decoder tells its
    frame count (`len`) and `timing()`, and decodes the frames at given indices (`decode`); see [`_Video`].
    """
    check_video_backend(backend)
    return _PyAVVideo(path) if backend == "pyav" else _DecordVideo(path)


def check_video_backend(backend: str) -> None:
    """
    Whether videos can be decoded with `backend` here, before any is: a `ValueError` for a name not in
    [`VIDEO_BACKENDS`], an `ImportError` saying what to install where decord is asked for and not installed.
    """
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, VIDEO_BACKENDS))}, got {backend!r}.")
    if backend == "decord":
        try:
            import decord  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "backend='decord' needs decord, which is not installed: `pip install vtimellm-hf[decord]`, or use the "
                "default backend, 'pyav'."
            ) from error


class _Video:
    """
    An open video file of one backend, closed by `close()` or at the end of a `with` block.

    Its frames are indexed as decord indexes them: frame `i` is the `i`-th in presentation order, of as many frames
    as the file has video packets. A backend gives `len(video)`, `video.timing()` (see [`_timing`]) and
    `video.decode(indices)`: the frames `indices` (distinct, sorted) as uint8 chunks `(frames, height, width, 3)` of
    at most `DECODE_CHUNK_BYTES` (one frame at least), turned upright by the video's rotation.
    """

    path: Path

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Releases the file."""


def _timing(
    path: Path, fps: float, total_frames: int, starts: np.ndarray | None
) -> tuple[float, np.ndarray | None, float]:
    """
    `(average fps, frame_times, duration in seconds)` of a video of `total_frames` frames at an average rate of
    `fps`, which start at `starts` seconds (sorted; `None` where the container gives no frame times).

    `frame_times` (the start of each frame in seconds from the first) is `None` when the frame rate is constant:
    every frame starts within half a frame of `index / fps`. Such videos are sampled by index and last
    `frames / fps`, exactly as in the original. Where the rate varies, the index of a frame says nothing of its
    time: those videos are sampled by time and last as long as their frames span, plus one mean frame interval
    (which is `frames / fps` at a constant rate).
    """
    if not fps > 0:
        raise ValueError(f"Cannot decode video {path}: it reports a frame rate of {fps}.")
    if starts is None:
        return fps, None, total_frames / fps
    frame_times = starts - starts[0]
    # One frame, or frames that all claim the same time, give nothing to sample by time
    single_time = total_frames < 2 or not frame_times[-1] > 0
    if single_time or np.abs(frame_times - np.arange(total_frames) / fps).max() <= 0.5 / fps:
        return fps, None, total_frames / fps
    return fps, frame_times, float(frame_times[-1]) * total_frames / (total_frames - 1)


class _PyAVVideo(_Video):
    """
    A video file decoded by PyAV (the libraries of ffmpeg), on one thread: extraction runs a decoder in each of its
    worker processes.

    Opening reads the video's packets without decoding them, as decord does: they give the frame count (counted,
    whatever the container states or where it states none, as .webm and .mkv files do), each frame's time and the
    keyframes. Packets the container marks as discarded (before the start of an edit list) are never shown and are
    not frames. Where the packets carry no distinct times, the frames are counted as they are decoded, from the
    start, and the rate is taken as constant.

    Sampled frames are decoded forwards, and the decoder seeks to a keyframe only where one lies between the last
    frame decoded and the next sampled frame: seeking there decodes fewer frames than going on. So a video whose
    keyframes are far apart is read through once, and one whose keyframes are close is read in short runs; frames
    between sampled ones are decoded but never converted to RGB.
    """

    def __init__(self, path: Path):
        self.path = path
        self._open()
        try:
            self._read_index()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self._container = open_media_file(self.path, "video")
        self._stream = self._container.streams.best("video")
        if self._stream is not None:
            self._stream.codec_context.thread_count = 1

    def close(self) -> None:
        self._container.close()

    def _read_index(self) -> None:
        import av

        if self._stream is None:
            raise ValueError(f"Cannot decode video {self.path}: it holds no video stream.")
        times, keyframes = [], []
        try:
            for packet in self._container.demux(self._stream):
                # PyAV ends with an empty packet that drains the decoder
                if packet.size and not packet.is_discard:
                    times.append(packet.pts)
                    keyframes.append(packet.is_keyframe)
        except av.FFmpegError as error:
            raise ValueError(f"Cannot decode video {self.path}: {error}") from error
        if not times:
            raise ValueError(f"Cannot decode video {self.path}: it holds no frames.")
        self._total_frames = len(times)
        rate = self._stream.average_rate
        self._fps = float(rate) if rate else 0.0
        self._frame_pts = self._index_of_pts = None
        self._keyframes = np.zeros(0, np.int64)
        if None in times or len(set(times)) < len(times):
            return
        order = np.argsort(times, kind="stable")
        self._frame_pts = np.asarray(times, np.int64)[order]
        self._index_of_pts = {pts: index for index, pts in enumerate(self._frame_pts.tolist())}
        # Keyframes by their index in presentation order
        self._keyframes = np.flatnonzero(np.asarray(keyframes, bool)[order])

    def __len__(self) -> int:
        return self._total_frames

    def timing(self) -> tuple[float, np.ndarray | None, float]:
        starts = None if self._frame_pts is None else self._frame_pts * float(self._stream.time_base)
        return _timing(self.path, self._fps, self._total_frames, starts)

    def decode(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        import av

        try:
            yield from _in_chunks(self._sampled_frames(indices), len(indices), self.path)
        except av.FFmpegError as error:
            raise ValueError(f"Cannot decode frames of video {self.path}: {error}") from error

    def _sampled_frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """The frames `indices` (distinct, sorted) as uint8 `(height, width, 3)` arrays, upright."""
        from av.video.reformatter import VideoReformatter

        reformatter = VideoReformatter()
        frames, position = None, -1
        for target in indices.tolist():
            keyframe = self._keyframe_before(target)
            # A second try reads from the start: for a seek that landed past the frame, on a file badly indexed
            for from_start in (False, True):
                if from_start or frames is None or (keyframe is not None and keyframe > position + 1):
                    frames = self._decoded_from(None if from_start else keyframe)
                position, frame = next(((index, frame) for index, frame in frames if index >= target), (None, None))
                if position == target:
                    break
                frames, position = None, -1
            else:
                raise ValueError(
                    f"Cannot decode frames of video {self.path}: frame {target} of its {len(self)} never came out of "
                    "the decoder."
                )
            yield _upright(reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray(), frame.rotation)

    def _keyframe_before(self, index: int) -> int | None:
        """The last keyframe at or before frame `index`; `None` where there is none (or no index of them)."""
        position = np.searchsorted(self._keyframes, index, side="right") - 1
        return None if position < 0 else int(self._keyframes[position])

    def _decoded_from(self, keyframe: int | None) -> Iterator[tuple[int, object]]:
        """`(index, frame)` of each frame decoded after seeking to `keyframe`, or, for `None`, from the start of the
        file (reopened: the one sure way back to the first frame)."""
        if keyframe is None:
            self.close()
            self._open()
        else:
            # To the last keyframe at or before the keyframe's time: mp4 and Matroska index keyframes by that time
            self._container.seek(int(self._frame_pts[keyframe]), stream=self._stream, backward=True)
        counted = -1
        for packet in self._container.demux(self._stream):
            for frame in packet.decode():
                counted += 1
                index = counted if self._index_of_pts is None else self._index_of_pts.get(frame.pts)
                if index is None:
                    raise ValueError(
                        f"Cannot decode frames of video {self.path}: a decoded frame's time ({frame.pts}) is none of "
                        "its packets' times."
                    )
                yield index, frame


def _upright(frame: np.ndarray, rotation: float) -> np.ndarray:
    """
    `frame` (height, width, 3) turned by the counterclockwise `rotation` in degrees of the stream's display matrix,
    a multiple of 90, as decord turns it (ffmpeg's angle of the matrix; a mirrored matrix is turned by its angle,
    not mirrored, as decord does).
    """
    turns = round(rotation / 90) % 4
    return np.rot90(frame, turns) if turns else frame


def _in_chunks(frames: Iterator[np.ndarray], count: int, path: Path) -> Iterator[np.ndarray]:
    """
    The `count` frames of `frames` stacked in uint8 chunks `(frames, height, width, 3)` of at most
    `DECODE_CHUNK_BYTES`: the first frame comes alone, and its size sets the length of the other chunks.
    """
    chunk_length, chunk, filled, shape = 1, None, 0, None
    for frame in frames:
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise ValueError(f"Cannot decode frames of video {path}: its frame size changes, {shape} to {frame.shape}.")
        if chunk is None:
            chunk = np.empty((min(chunk_length, count), *shape), np.uint8)
        chunk[filled] = frame
        filled += 1
        if filled == len(chunk):
            count -= filled
            chunk_length = max(1, DECODE_CHUNK_BYTES // frame.nbytes)
            yield chunk
            # Not held while the next chunk is decoded
            chunk, filled = None, 0


class _DecordVideo(_Video):
    """
    A video file decoded by decord (one thread), and by PyAV from the first frames decord fails on (such as frames
    16, 24, 48 or 72 px wide, which it cannot copy: dmlc/decord#336).
    """

    def __init__(self, path: Path):
        """Opens `path`; a `ValueError` naming the file when it holds no decodable video."""
        check_video_backend("decord")
        from decord import VideoReader, cpu

        if not path.is_file():
            raise FileNotFoundError(f"File not found: {path}")
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
        try:
            starts = self.reader.get_frame_timestamp(np.arange(len(self.reader)))[:, 0].astype(np.float64)
        except Exception as error:  # decord's own errors
            raise ValueError(f"Cannot read the frame times of video {self.path}: {error}") from error
        return _timing(self.path, self.reader.get_avg_fps(), len(self.reader), starts)

    def decode(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        # The first frame comes alone: its size sets the length of the other chunks
        frames_per_chunk, start = 1, 0
        while start < len(indices):
            chunk = indices[start : start + frames_per_chunk]
            try:
                frames = self.reader.get_batch(chunk.tolist()).asnumpy()
            except Exception as error:  # such as decord's DECORDArrayCopyFromTo on frames 16, 24, 48 or 72 px wide
                yield from _decode_with_pyav_after(self.path, indices[start:], error)
                return
            frames_per_chunk = max(1, DECODE_CHUNK_BYTES // frames[0].nbytes)
            start += len(chunk)
            yield frames
            # Not held while the next chunk is decoded
            del frames


def _decode_with_pyav_after(path: Path, indices: np.ndarray, decord_error: Exception) -> Iterator[np.ndarray]:
    """The frames `indices` decoded by PyAV, for what decord failed to decode (`decord_error`)."""
    try:
        with _PyAVVideo(path) as video:
            yield from video.decode(indices)
    except (ImportError, ValueError) as error:
        raise ValueError(
            f"Cannot decode frames of video {path}: decord failed ({decord_error}), and so did PyAV ({error})."
        ) from error


def load_video_frames(
    path: str | Path,
    num_frames: int = 100,
    window: Sequence[float] | None = None,
    preprocess: Callable[[np.ndarray], torch.Tensor | np.ndarray] | None = None,
    backend: str = "pyav",
) -> tuple[np.ndarray | torch.Tensor, float]:
    """
    Decodes the sampled frames of a video, with PyAV or (`backend="decord"`) decord: the same frames either way.

    A video whose frame rate is constant is sampled by index, as the original does ([`sample_frame_indices`]); one
    whose rate varies, by time (the frames shown at evenly spaced times), so that frame `k` of `num_frames` stays
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
        backend: `"pyav"` or `"decord"` (installed with `pip install vtimellm-hf[decord]`); see [`VIDEO_BACKENDS`].

    Returns:
        `(frames, duration)`: the uint8 frames `(num_frames, height, width, 3)`, or what `preprocess` makes of
        them, in sampled order; and the duration in seconds of the video, or of the window when one is given.
    """
    path = Path(path)
    with _open_video(path, backend) as video:
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


def get_video_duration(path: str | Path, backend: str = "pyav") -> float:
    """Duration in seconds of a video, as [`load_video_frames`] gives it: frames / average fps at a constant rate."""
    with _open_video(Path(path), backend) as video:
        return video.timing()[2]


__all__ = [
    "VIDEO_BACKENDS",
    "check_video_backend",
    "get_video_duration",
    "load_video_frames",
    "sample_frame_indices",
]
