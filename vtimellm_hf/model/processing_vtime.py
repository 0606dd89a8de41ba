"""VTimeProcessor: text, frame sampling, CLIP preprocessing and encoding, and the `<video>` expansion of VTimeLLM.

Also the public timestamp helpers: VTimeLLM writes a moment as two-digit indices into the 100 sampled frames
("from 05 to 23"); these helpers convert between seconds and indices and parse generated text.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`): it imports only torch, numpy
and transformers (decord is imported when a video file is decoded, imageio-ffmpeg where decord fails).
"""

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.image_utils import is_pil_image

VIDEO_TOKEN = "<video>"
DEFAULT_FRAME_ENCODER = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Decoded frames held at once while a video is sampled: 100 frames of 640x480 fit, or 3 frames of 4000x3000
DECODE_CHUNK_BYTES = 128 * 2**20
# float32 pixels that `preprocess_frames` converts at once by default (one frame at least): two frames of 480x270,
# so that each resize pass reads the previous one's output from cache (chunks of 8 such frames run 1.3x slower)
PREPROCESS_CHUNK_BYTES = 2 * 2**20

# The Vicuna v1 prompt of the original, byte for byte: "SYSTEM USER: <video>\n... ASSISTANT: answer</s>USER: ...".
# The `generation` markers let `apply_chat_template(return_assistant_tokens_mask=True)` find the trained tokens.
VICUNA_V1_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = 'A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- system_message + ' ' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set content = message['content'] -%}"
    "{%- else -%}"
    "{%- set parts = namespace(text='') -%}"
    "{%- for block in message['content'] -%}"
    "{%- if block['type'] in ['video', 'image'] -%}{%- set parts.text = parts.text + '<video>\\n' -%}"
    "{%- elif block['type'] == 'text' -%}{%- set parts.text = parts.text + block['text'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set content = parts.text -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' + content + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}{%- generation -%}{{- content + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- raise_exception('VTimeLLM conversations hold user and assistant turns after an optional system message, "
    "got role ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# `ProcessorMixin.apply_chat_template` passes these to every processor; they concern audio and text-level
# placeholder expansion, and this processor expands ids, so their values change nothing here.
_CHAT_TEMPLATE_CALL_KWARGS = {"load_audio_from_video", "audio_from_video_indices", "return_text_replacement_offsets"}

GROUNDING = "grounding"
CAPTIONING = "captioning"
_MOMENT_PATTERN = re.compile(r"(?<!\d)(\d{2})\s+(?:to|and)\s+(\d{2})(?!\d)", re.IGNORECASE)
# A moment as a phrase of an event: the pair and the "from" or "between" that leads it in
_TIME_PHRASE = re.compile(r"(?:\b(?:from|between)\s+)?(?<!\d)(\d{2})\s+(?:to|and)\s+(\d{2})(?!\d)", re.IGNORECASE)
# Ends a sentence or a preamble ("Here are the events:")
_TERMINATOR = re.compile(r"[.;!?:\n]")
# Between a moment and the caption that follows it ("From 00 to 12, a man ...", "00 to 12: a man ...")
_SEPARATOR = re.compile(r"\s*[,:]?\s*")
# Words that link one event to the next ("... enters. Then from 13 to 40, ..."): part of no caption
_LINK = (
    r"\b(?:and|then|next|later|finally|afterwards?|after\s+that|subsequently|lastly|first(?:ly)?|second(?:ly)?|also)\b"
)
_LEADING_LINKS = re.compile(rf"(?:[\s,;.:!?]|{_LINK})*", re.IGNORECASE)
_TRAILING_LINKS = re.compile(rf"(?:{_LINK}[\s,;]*)+$", re.IGNORECASE)
# One flat JSON object: the original's dense-captioning question asks for {"event": "xx", "timestamps": "from xx to xx"}
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def seconds_to_index(seconds: float, duration: float, num_frames: int = 100) -> int:
    """
    The frame index VTimeLLM writes for a moment: `min(round(seconds / duration * num_frames), num_frames - 1)`.

    Python's `round` (half to even) is kept on purpose: the original training text was built with it.
    """
    if duration <= 0:
        raise ValueError(f"The duration must be positive to place a moment in it, got {duration}.")
    return min(round(seconds / duration * num_frames), num_frames - 1)


def format_index(index: int) -> str:
    """An index as the model writes it: two digits, zero-padded (`5 -> "05"`)."""
    return f"{index:02d}"


def indices_to_seconds(
    start_index: int, end_index: int, duration: float, convention: str = GROUNDING, num_frames: int = 100
) -> tuple[float, float]:
    """
    Seconds of a predicted moment, with one of the two conventions of the original evaluation.

    - `"grounding"` (temporal grounding): `start = s / num_frames * duration`, `end = e / num_frames * duration`.
    - `"captioning"` (dense captioning): `start = s * duration / num_frames`, `end = (e + 1) * duration / num_frames`,
      i.e. the end index counts its whole frame.
    """
    if convention == GROUNDING:
        return start_index / num_frames * duration, end_index / num_frames * duration
    if convention == CAPTIONING:
        return start_index * duration / num_frames, (end_index + 1) * duration / num_frames
    raise ValueError(f"Unknown timestamp convention {convention!r}; use {GROUNDING!r} or {CAPTIONING!r}.")


def parse_moment_indices(text: str) -> list[tuple[int, int]]:
    """
    Every `(start, end)` index pair written as two two-digit numbers joined by "to" or "and" ("from 05 to 23").

    Never raises: junk gives an empty list. A pair whose start comes after its end is dropped, as it names no
    moment.
    """
    if not isinstance(text, str):
        return []
    pairs = [(int(start), int(end)) for start, end in _MOMENT_PATTERN.findall(text)]
    return [(start, end) for start, end in pairs if start <= end]


def parse_moments(
    text: str, duration: float, convention: str = GROUNDING, num_frames: int = 100
) -> list[tuple[float, float]]:
    """The moments of a generated answer in seconds (see [`indices_to_seconds`] for `convention` and `num_frames`)."""
    return [indices_to_seconds(s, e, duration, convention, num_frames) for s, e in parse_moment_indices(text)]


def parse_grounding_answer(text: str, duration: float, num_frames: int = 100) -> tuple[float, float] | None:
    """
    The moment a grounding answer names, in seconds by the grounding convention, as the original evaluation reads
    it: the first "NN to NN" pair. `None` where there is none, or where that first pair is reversed (the original
    scores it IoU 0; a later pair does not stand in for it).
    """
    match = _MOMENT_PATTERN.search(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) > int(match.group(2)):
        return None
    return indices_to_seconds(int(match.group(1)), int(match.group(2)), duration, GROUNDING, num_frames)


def parse_event_indices(text: str) -> list[tuple[int, int, str]]:
    """
    Dense-captioning events of a generated answer as `(start_index, end_index, sentence)`, in the order written.

    Read from the trained layout, "From 00 to 12, a man enters. From 13 to 40, he leaves." (each caption runs to the
    next moment), and from the layouts a model also writes: "00 to 12: a man enters, ...", captions before their
    moments ("A man enters from 00 to 12. He leaves from 13 to 40."), and the JSON the original evaluation asks for
    (`[{"event": "a man enters", "timestamps": "from 00 to 12"}, ...]`; where the text holds such objects, only they
    count). Linking words between events ("Then from 13 to 40") belong to no caption. Never raises; reversed pairs
    are dropped.
    """
    if not isinstance(text, str):
        return []
    events = _json_events(text)
    if events is None:
        events = _text_events(text)
    return [(start, end, sentence) for start, end, sentence in events if start <= end]


def parse_events(
    text: str, duration: float, convention: str = CAPTIONING, num_frames: int = 100
) -> list[tuple[float, float, str]]:
    """
    The events of [`parse_event_indices`] as `(start_seconds, end_seconds, sentence)` (see [`indices_to_seconds`]
    for `convention` and `num_frames`).
    """
    return [
        (*indices_to_seconds(start, end, duration, convention, num_frames), sentence)
        for start, end, sentence in parse_event_indices(text)
    ]


def _clean_caption(text: str) -> str:
    return text.strip(" ,.\n")


def _json_events(text: str) -> list[tuple[int, int, str]] | None:
    """The events of the JSON objects with an "event" in `text`, or `None` where it holds none."""
    items = []
    for match in _JSON_OBJECT.finditer(text):
        try:
            item = json.loads(match.group())
        except (ValueError, RecursionError):  # not JSON, or brackets nested past the parser's depth
            continue
        if isinstance(item, dict) and "event" in item:
            items.append(item)
    if not items:
        return None
    events = []
    for item in items:
        timestamps = item.get("timestamps", item.get("timestamp"))
        pair = _MOMENT_PATTERN.search(timestamps) if isinstance(timestamps, str) else None
        if pair is not None and isinstance(item["event"], str):
            events.append((int(pair.group(1)), int(pair.group(2)), _clean_caption(item["event"])))
    return events


def _text_events(text: str) -> list[tuple[int, int, str]]:
    """
    The events of a free-text answer. Each moment takes the caption after it where it opens its sentence and text
    follows it ("From 00 to 12, a man enters"), the caption before it where it closes a sentence that it does not
    open ("A man enters from 00 to 12."); a moment that is neither, or both, does as the first one that is either.
    """
    phrases = list(_TIME_PHRASE.finditer(text))
    if not phrases:
        return []
    # Where the first moment reads "from 00 to 12", the others do too: a bare pair is caption text ("players 10 and
    # 23 score"), as the trained layout has always been read
    if phrases[0].start() < phrases[0].start(1):
        phrases = [phrase for phrase in phrases if phrase.start() < phrase.start(1)]
    bounds = [0, *(position for phrase in phrases for position in phrase.span()), len(text)]
    # gaps[k]: the text before phrase k (gaps[-1]: after the last one)
    gaps = [text[bounds[2 * k] : bounds[2 * k + 1]] for k in range(len(phrases) + 1)]
    follows = []
    for k in range(len(phrases)):
        opens = _only_links(_after_last_terminator(gaps[k]))
        after = gaps[k + 1][_SEPARATOR.match(gaps[k + 1]).end() :]
        closes = not _TERMINATOR.split(after, maxsplit=1)[0].strip()
        follows.append(opens if opens != closes else None)
    layout = next((follow for follow in follows if follow is not None), True)
    follows = [layout if follow is None else follow for follow in follows]

    captions = [""] * len(phrases)
    for k, gap in enumerate(gaps):
        previous_takes = k > 0 and follows[k - 1]
        next_takes = k < len(phrases) and not follows[k]
        if k < len(phrases):
            # Whitespace before a moment belongs to no caption (a tab included, which the final strip keeps)
            gap = gap.rstrip()
        if previous_takes:
            gap = gap[_SEPARATOR.match(gap).end() :]
        if previous_takes and next_takes:
            # A caption that follows its moment ends with its sentence; the rest leads to the next moment
            cut = max((match.end() for match in _TERMINATOR.finditer(gap)), default=gap.rfind(",") + 1)
            captions[k - 1], gap = _clean_caption(gap[:cut]), gap[cut:]
        elif previous_takes:
            if k < len(phrases):
                gap = _TRAILING_LINKS.sub("", gap)
            captions[k - 1] = _clean_caption(gap)
        if next_takes:
            if k == 0:
                # What opens the text before the first caption is a preamble ("Sure! Here are the events:")
                gap = _after_last_terminator(gap)
            captions[k] = _clean_caption(gap[_LEADING_LINKS.match(gap).end() :])
    return [(int(phrase.group(1)), int(phrase.group(2)), caption) for phrase, caption in zip(phrases, captions)]


def _after_last_terminator(text: str) -> str:
    return _TERMINATOR.split(text)[-1]


def _only_links(text: str) -> bool:
    return _LEADING_LINKS.match(text).end() == len(text)


def sample_frame_indices(
    total_frames: int, num_frames: int = 100, fps: float | None = None, window: Sequence[float] | None = None
) -> np.ndarray:
    """
    The original sampling: `np.linspace(first, last, num_frames)` as int32, first and last frame included.

    Args:
        total_frames: frames in the video.
        num_frames: frames to sample (indices repeat when the video has fewer).
        fps: average frame rate, needed with `window`.
        window: `(start_seconds, end_seconds)` of a clip cut from the video; its frame bounds are
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


def _open_video(path: Path):
    """decord's reader of the video at `path`; a `ValueError` naming the file when it holds no decodable video."""
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
    return reader


def _video_timing(path: Path, reader) -> tuple[float, np.ndarray | None, float]:
    """
    `(average fps, frame_times, duration in seconds)` of a video.

    `frame_times` (the start of each frame in seconds from the first) is `None` when the frame rate is constant:
    every frame starts within half a frame of `index / fps`. Such videos are sampled by index and last
    `frames / fps`, exactly as in the original. Where the rate varies, the index of a frame says nothing of its
    time: those videos are sampled by time and last as long as their frames span, plus one mean frame interval
    (which is `frames / fps` at a constant rate).
    """
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
        window: `(start_seconds, end_seconds)` of a clip of the video.
        preprocess: applied to each chunk of decoded uint8 frames `(frames, height, width, 3)`, giving a tensor or
            array with one item per frame (such as [`preprocess_frames`]).

    Returns:
        `(frames, duration)`: the uint8 frames `(num_frames, height, width, 3)`, or what `preprocess` makes of
        them, in sampled order; and the duration in seconds of the video, or of the window when one is given.
    """
    path = Path(path)
    reader = _open_video(path)
    fps, frame_times, video_duration = _video_timing(path, reader)
    try:
        if frame_times is None:
            indices = sample_frame_indices(len(reader), num_frames, fps, window)
        else:
            indices = _sample_frame_times(frame_times, num_frames, window, video_duration)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    distinct, positions = np.unique(indices, return_inverse=True)
    chunks = []
    for decoded in _decode_frames(path, reader, distinct):
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


def _decode_frames(path: Path, reader, indices: np.ndarray) -> Iterator[np.ndarray]:
    """
    The frames `indices` (distinct, sorted) as uint8 chunks `(frames, height, width, 3)` of at most
    `DECODE_CHUNK_BYTES` (one frame at least), decoded by decord or, from the first chunk it fails on, by ffmpeg.
    """
    # The first frame comes alone: its size sets the length of the other chunks
    frames_per_chunk, start = 1, 0
    while start < len(indices):
        chunk = indices[start : start + frames_per_chunk]
        try:
            frames = reader.get_batch(chunk.tolist()).asnumpy()
        except Exception as error:  # such as decord's DECORDArrayCopyFromTo on frames 16, 24, 48 or 72 px wide
            yield from _decode_frames_with_ffmpeg(path, indices[start:], error)
            return
        frames_per_chunk = max(1, DECODE_CHUNK_BYTES // frames[0].nbytes)
        start += len(chunk)
        yield frames
        # Not held while the next chunk is decoded
        del frames


def _decode_frames_with_ffmpeg(path: Path, indices: np.ndarray, decord_error: Exception) -> Iterator[np.ndarray]:
    """
    [`_decode_frames`] by the ffmpeg binary of imageio-ffmpeg, for what decord failed to decode (`decord_error`).

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


def get_video_duration(path: str | Path) -> float:
    """Duration in seconds of a video, as [`load_video_frames`] gives it: frames / average fps at a constant rate."""
    path = Path(path)
    return _video_timing(path, _open_video(path))[2]


def preprocess_frames(
    frames: torch.Tensor | np.ndarray,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """
    The original CLIP transform, batched on tensors: `/255`, bicubic resize of the short side to `size` (no
    antialiasing, as torchvision did on tensors), center crop, normalise.

    The separable resize runs as banded matrix products for the rows and columns the crop keeps only, a few frames
    at a time so that each pass finds the previous one's output in cache: several times faster than
    `interpolate(mode="bicubic")` on a CPU, equal to it up to float32 rounding.

    Args:
        frames: uint8 RGB frames of shape `(num_frames, height, width, 3)`.
        chunk_size: frames converted to float32 at a time; by default as many as fit in `PREPROCESS_CHUNK_BYTES`.
            A frame's output does not depend on the chunk it was in.
    Returns:
        float32 tensor of shape `(num_frames, 3, size, size)`.
    """
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Frames must have shape (num_frames, height, width, 3), got {tuple(frames.shape)}.")
    num_frames, height, width = frames.shape[:3]
    short, long = min(height, width), max(height, width)
    long_resized = int(size * long / short)
    resized_height, resized_width = (size, long_resized) if height <= width else (long_resized, size)
    top = int(round((resized_height - size) / 2.0))
    left = int(round((resized_width - size) / 2.0))
    # The vertical products are as wide as a chunk of frames, so short blocks (fewer zeros multiplied in the band)
    # lose nothing; the horizontal ones are as wide as their block, and 16 outputs is the fastest width measured
    row_blocks = _bicubic_blocks(height, resized_height, top, size, block=8)
    column_blocks = _bicubic_blocks(width, resized_width, left, size, block=16)
    row_first = row_blocks[0][1]
    rows = max(low + weights.shape[1] for _, low, weights in row_blocks) - row_first
    column_first = column_blocks[0][1]
    columns = max(low + weights.shape[1] for _, low, weights in column_blocks) - column_first
    if chunk_size is None:
        chunk_size = max(1, PREPROCESS_CHUNK_BYTES // (rows * columns * 3 * 4))
    # (x / 255 - mean) / std = x * scale + shift
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float64))).float().view(1, 3, 1, 1)
    shift = (-torch.tensor(mean, dtype=torch.float64) / torch.tensor(std, dtype=torch.float64)).float().view(1, 3, 1, 1)
    output = torch.empty(num_frames, 3, size, size)
    # Rows leading, the frames of a chunk side by side in each row: one product per block of output rows
    window = frames[:, row_first : row_first + rows, column_first : column_first + columns].transpose(0, 1)
    for start in range(0, num_frames, chunk_size):
        count = min(chunk_size, num_frames - start)
        pixels = window[:, start : start + count].to(torch.float32, memory_format=torch.contiguous_format)
        pixels = pixels.view(rows, -1)
        vertical = torch.empty(size, count * columns * 3)
        for first, low, weights in row_blocks:
            inputs = slice(low - row_first, low - row_first + weights.shape[1])
            torch.mm(weights, pixels[inputs], out=vertical[first : first + len(weights)])
        # One pass splits the channels into planes and normalises them; the horizontal weights sum to 1, so
        # normalising before that pass gives the same result
        planes = torch.empty(count, 3, size, columns)
        torch.addcmul(shift, vertical.view(size, count, columns, 3).permute(1, 3, 0, 2), scale, out=planes)
        planes = planes.view(-1, columns)
        chunk_output = output[start : start + count].view(-1, size)
        for first, low, weights in column_blocks:
            inputs = slice(low - column_first, low - column_first + weights.shape[1])
            torch.mm(planes[:, inputs], weights.T, out=chunk_output[:, first : first + len(weights)])
    return output


def _bicubic_blocks(in_size: int, out_size: int, start: int, count: int, block: int):
    """
    Outputs `start .. start + count` of a bicubic resize `in_size -> out_size` (a = -0.75, half-pixel centres, edges
    clamped, no antialiasing: what `interpolate(mode="bicubic")` computes), as blocks of `block` outputs:
    `[(first_output, first_input, float32 weights (outputs, inputs))]`, each reading only the inputs it weighs.
    """
    source = (torch.arange(start, start + count, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5
    base = source.floor()
    distance = ((source - base)[:, None] - torch.arange(-1, 3, dtype=torch.float64)).abs()
    weights = torch.where(
        distance <= 1, (1.25 * distance - 2.25) * distance**2 + 1, ((-0.75 * distance + 3.75) * distance - 6) * distance + 3
    )
    taps = (base.long()[:, None] + torch.arange(-1, 3)).clamp(0, in_size - 1)
    matrix = torch.zeros(count, in_size, dtype=torch.float64).scatter_add_(1, taps, weights)
    blocks = []
    for first in range(0, count, block):
        rows = taps[first : first + block]
        low, high = int(rows.min()), int(rows.max()) + 1
        blocks.append((first, low, matrix[first : first + block, low:high].float()))
    return blocks


def read_frame_preprocessing(frame_encoder_name_or_path: str, default_size: int = 224) -> dict:
    """
    `{"frame_size", "image_mean", "image_std"}` of a CLIP checkpoint, read from its `preprocessor_config.json` as
    plain JSON (no image processor class, hence no torchvision, is needed). Without that file: `default_size` and
    CLIP's mean and std.
    """
    from transformers.utils import cached_file

    # cached_file resolves local folders and Hub ids alike, offline included; a missing file gives None
    config_file = cached_file(
        frame_encoder_name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
    )
    if config_file is None:
        return {"frame_size": default_size, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}
    with open(config_file, encoding="utf-8") as handle:
        config = json.load(handle)
    crop = config.get("crop_size", default_size)
    crop_height, crop_width = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
    size = config.get("size", crop_height)
    shortest_edge = size.get("shortest_edge") if isinstance(size, dict) else size
    # The original transform resizes the short side to the crop size, then crops a square
    if not crop_height == crop_width == shortest_edge:
        raise ValueError(
            f"{config_file}: the VTimeLLM transform needs a square crop equal to the resized short side, got "
            f"size {size} and crop_size {crop}."
        )
    return {
        "frame_size": crop_height,
        "image_mean": list(config.get("image_mean", CLIP_MEAN)),
        "image_std": list(config.get("image_std", CLIP_STD)),
    }


class VTimeProcessor(ProcessorMixin):
    r"""
    Turns text and videos into the inputs of [`VTimeLlamaForCausalLM`].

    Each `<video>` in the text becomes as many placeholder tokens as its video has feature rows (100 frames, or 1
    for an image). Videos are decoded (only the sampled frames), preprocessed and encoded by a CLIP image encoder,
    loaded the first time raw videos or images are given; precomputed features skip all of that.

    The text is tokenized piece by piece around each `<video>` and special token, as the original's slow
    SentencePiece tokenizer did: each piece as a standalone string, so that a LLaMA tokenizer prefixes every piece
    with its space marker, and the ids equal those a released checkpoint was trained on.

    Args:
        tokenizer: a LLaMA tokenizer that knows the `<video>` token.
        chat_template: defaults to the Vicuna v1 template of the original.
        frame_encoder_name_or_path: the `CLIPVisionModelWithProjection` whose `image_embeds` are the frame features.
        num_frames: frames sampled per video.
        frame_size: side of the square crop fed to the encoder.
        image_mean, image_std: normalisation of the encoder.
        frame_encoder: an already loaded encoder (not saved; the name or path is).
        encoder_batch_size: frames encoded per forward pass of the encoder.
    """

    def __init__(
        self,
        tokenizer=None,
        chat_template=None,
        frame_encoder_name_or_path: str = DEFAULT_FRAME_ENCODER,
        num_frames: int = 100,
        frame_size: int = 224,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        encoder_batch_size: int = 64,
        frame_encoder=None,
        **kwargs,
    ):
        self.frame_encoder_name_or_path = str(frame_encoder_name_or_path)
        self.num_frames = num_frames
        self.frame_size = frame_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.encoder_batch_size = encoder_batch_size
        self._frame_encoder = frame_encoder
        # Where the encoder runs once loaded; not configuration, so not saved
        self.frame_encoder_device = "cpu"
        super().__init__(tokenizer, chat_template=chat_template or VICUNA_V1_CHAT_TEMPLATE, **kwargs)

    @classmethod
    def for_frame_encoder(cls, tokenizer, frame_encoder_name_or_path: str = DEFAULT_FRAME_ENCODER, **kwargs):
        """A processor whose crop size, mean and std are those of the encoder (see [`read_frame_preprocessing`])."""
        settings = read_frame_preprocessing(frame_encoder_name_or_path)
        return cls(tokenizer=tokenizer, frame_encoder_name_or_path=frame_encoder_name_or_path, **settings, **kwargs)

    @property
    def video_token(self) -> str:
        return VIDEO_TOKEN

    @property
    def video_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {VIDEO_TOKEN} token. Add it with "
                f"`tokenizer.add_special_tokens({{'additional_special_tokens': ['{VIDEO_TOKEN}']}})` and resize the "
                "model's embeddings."
            )
        return token_id

    @property
    def frame_encoder(self):
        """The CLIP image encoder, loaded on first use from `frame_encoder_name_or_path`."""
        if self._frame_encoder is None:
            from transformers import CLIPVisionModelWithProjection

            self._frame_encoder = CLIPVisionModelWithProjection.from_pretrained(self.frame_encoder_name_or_path)
            self._frame_encoder.to(self.frame_encoder_device).eval()
        return self._frame_encoder

    def to_dict(self):
        # The encoder is a model, not configuration: only its name or path is saved, and it must not be deep-copied
        encoder, self._frame_encoder = self._frame_encoder, None
        try:
            return super().to_dict()
        finally:
            self._frame_encoder = encoder

    def frame_pixels(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """
        The encoder's input, float32 `(num_frames, 3, frame_size, frame_size)`, of uint8 RGB frames
        `(num_frames, height, width, 3)`: [`preprocess_frames`] with this processor's size, mean and std.
        """
        return preprocess_frames(frames, self.frame_size, self.image_mean, self.image_std)

    def encode_frames(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """
        CLIP image embeddings of uint8 RGB frames `(num_frames, height, width, 3)` -> float32 `(num_frames, D)`.
        """
        return self.encode_pixels(self.frame_pixels(frames))

    def encode_video(
        self, path: str | Path, window: Sequence[float] | None = None, num_frames: int | None = None
    ) -> tuple[torch.Tensor, float]:
        """
        `(features (num_frames, D), duration in seconds)` of a video file, or of its `window`: each chunk of decoded
        frames is preprocessed before the next is decoded, so that a video of huge frames is never held whole (see
        [`load_video_frames`]). The features equal `encode_frames` of the decoded frames. `num_frames` defaults to
        this processor's.
        """
        num_frames = self.num_frames if num_frames is None else num_frames
        pixels, duration = load_video_frames(path, num_frames, window, self.frame_pixels)
        return self.encode_pixels(pixels), duration

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings of preprocessed frames (see [`frame_pixels`]) -> float32 `(num_frames, D)`."""
        encoder = self.frame_encoder
        parameter = next(encoder.parameters())
        embeddings = [
            encoder(pixel_values=batch.to(parameter.device, parameter.dtype)).image_embeds.float().cpu()
            for batch in pixels.split(self.encoder_batch_size)
        ]
        return torch.cat(embeddings)

    def _visual_features(
        self, videos, images, video_features, video_windows, num_frames: int, do_sample_frames: bool
    ) -> list[torch.Tensor]:
        """One `(rows, D)` tensor per visual input, in order: precomputed features, else videos, else images."""
        given = [name for name, value in (("videos", videos), ("images", images), ("video_features", video_features))
                 if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass one kind of visual input per call, got {', '.join(given)}.")
        if video_features is not None:
            if isinstance(video_features, (np.ndarray, torch.Tensor)) and video_features.ndim == 3:
                video_features = list(video_features)
            features = []
            for index, feature in enumerate(_flatten(video_features)):
                feature = torch.as_tensor(feature)
                if feature.ndim == 1:
                    feature = feature.unsqueeze(0)
                if feature.ndim != 2:
                    raise ValueError(
                        f"video_features[{index}] must have shape (rows, hidden) or (hidden,), "
                        f"got {tuple(feature.shape)}."
                    )
                features.append(feature.float())
            return features
        if videos is not None:
            videos = _batched_videos(videos)
            windows = list(video_windows) if video_windows is not None else [None] * len(videos)
            if len(windows) != len(videos):
                raise ValueError(f"Got {len(videos)} videos but {len(windows)} video_windows.")
            return [
                self._encode_video(video, window, num_frames, do_sample_frames, index)
                for index, (video, window) in enumerate(zip(videos, windows))
            ]
        if images is not None:
            return [self.encode_frames(image_as_frame(image)) for image in _flatten(images)]
        return []

    def _encode_video(self, video, window, num_frames: int, do_sample_frames: bool, index: int) -> torch.Tensor:
        if isinstance(video, (str, Path)):
            if not do_sample_frames:
                raise ValueError(
                    f"videos[{index}] is the file {video}, of which VTimeLLM samples num_frames frames; "
                    "do_sample_frames=False takes decoded frames."
                )
            return self.encode_video(video, window, num_frames)[0]
        if window is not None:
            # A window is in seconds, and decoded frames come without their frame rate
            raise ValueError(
                f"video_windows[{index}] is {window}, but videos[{index}] is decoded frames: windows cut video files; "
                "pass the frames of the clip instead."
            )
        total = len(video)
        if total < 1:
            raise ValueError(f"videos[{index}] holds no frames.")
        indices = sample_frame_indices(total, num_frames) if do_sample_frames else np.arange(total)
        if isinstance(video, list):
            # Only the frames sampled from a list of frames are converted
            frames = [np.asarray(video[i].convert("RGB") if is_pil_image(video[i]) else video[i]) for i in indices]
            shapes = sorted({frame.shape for frame in frames})
            if len(shapes) > 1:
                raise ValueError(f"The frames of videos[{index}] differ in shape: {shapes}.")
            frames = np.stack(frames)
        else:
            frames = np.asarray(video)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"A decoded video must have shape (frames, height, width, 3), got {frames.shape} for videos[{index}]."
            )
        if frames.dtype not in (np.uint8, torch.uint8):
            # Float frames in [0, 1] would be divided by 255 once more and encoded as black
            raise ValueError(
                f"A decoded video must be uint8 RGB (0-255), got dtype {frames.dtype} for videos[{index}]."
            )
        return self.encode_frames(frames if isinstance(video, list) else frames[indices])

    def encode_prompt(
        self,
        text: str,
        rows: int,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        sanitize_control_tokens: bool = False,
    ) -> dict:
        """
        Token ids (and, on request, character offsets) of one prompt, each `<video>` replaced by `rows` placeholders.

        As the original's slow SentencePiece tokenizer did, the text is cut at `<video>` and at every special token
        (`</s>` between turns) and each piece is tokenized as a standalone string, so each gets SentencePiece's
        leading space marker. A whole-string fast tokenization drops that marker after `<video>` and `</s>`, giving
        ids a released checkpoint never saw.

        With `sanitize_control_tokens` (set by `apply_chat_template(..., sanitize_control_tokens=True)`), the special
        tokens that it marked in user input are tokenized as the plain text of their piece, and are no `<video>`.
        """
        if sanitize_control_tokens and return_offsets_mapping:
            raise ValueError("sanitize_control_tokens gives no offsets mapping: its markers move the characters.")
        special_tokens = {VIDEO_TOKEN, *self.tokenizer.all_special_tokens}
        pieces = _special_token_pattern(special_tokens, sanitize_control_tokens).split(text)
        input_ids, offsets, char_start = [], [], 0
        if add_special_tokens:
            input_ids += self.tokenizer("", add_special_tokens=True)["input_ids"]
            offsets += [(0, 0)] * len(input_ids)
        for index, piece in enumerate(pieces):
            char_end = char_start + len(piece)
            # The split's pattern captures the special tokens: they are the odd pieces
            if index % 2 and piece == VIDEO_TOKEN:
                input_ids += [self.video_token_id] * rows
                offsets += [(char_start, char_end)] * rows
            elif index % 2:
                input_ids.append(self.tokenizer.convert_tokens_to_ids(piece))
                offsets.append((char_start, char_end))
            elif piece and sanitize_control_tokens:
                start_marker, end_marker = _control_token_markers()
                plain = piece.replace(start_marker, "").replace(end_marker, "")
                if plain:
                    input_ids += self.tokenizer(plain, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            elif piece:
                encoded = self.tokenizer(
                    piece, add_special_tokens=False, return_offsets_mapping=return_offsets_mapping
                )
                input_ids += encoded["input_ids"]
                if return_offsets_mapping:
                    offsets += [(start + char_start, end + char_start) for start, end in encoded["offset_mapping"]]
            char_start = char_end
        return {"input_ids": input_ids, "offset_mapping": offsets}

    def __call__(
        self,
        text: str | list[str] | None = None,
        videos=None,
        images=None,
        video_features=None,
        video_windows: Sequence[Sequence[float] | None] | None = None,
        return_tensors: str | None = None,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        num_frames: int | None = None,
        do_sample_frames: bool | None = None,
        sanitize_control_tokens: bool = False,
        audio=None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Args:
            text: one prompt or a batch; each holds at most one `<video>`.
            videos: one per `<video>`, in order, as transformers takes videos: a path, decoded uint8 frames
                `(frames, height, width, 3)` as an array or tensor, or a list of frames (arrays `(height, width, 3)`
                or PIL images) is one video; a 5-D array or tensor `(videos, frames, height, width, 3)`, a list of
                videos, or a list of them per sample (as `apply_chat_template` passes them), a batch.
            images: one per `<video>`: PIL images or uint8 arrays `(height, width, 3)`; each is a 1-frame video.
            video_features: precomputed features, one per `<video>`: `(rows, mm_hidden_size)` or `(mm_hidden_size,)`.
            video_windows: `(start_seconds, end_seconds)` per video file, to sample a clip of it.
            return_tensors: `"pt"` for tensors, else lists.
            padding, pad_to_multiple_of, padding_side: as for the tokenizer (no padding by default; `True` pads a
                batch to its longest prompt, left padding for batched generation). Prompts of one length need no
                pad token.
            truncation, max_length: as for the tokenizer, on the side of `tokenizer.truncation_side`; a prompt
                whose cut would reach the rows of its video is refused.
            num_frames: frames sampled per video (default: this processor's `num_frames`).
            do_sample_frames: `False` encodes every frame of decoded videos as given, one row each.
            sanitize_control_tokens: set by `apply_chat_template(..., sanitize_control_tokens=True)`; see
                [`encode_prompt`].

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` `(batch, seq_len)`, and `video_features`
            `(batch, rows, mm_hidden_size)` when visual inputs were given.
        """
        if audio is not None:
            raise ValueError("VTimeLLM takes no audio input.")
        unexpected = {key for key, value in kwargs.items() if value is not None} - _CHAT_TEMPLATE_CALL_KWARGS
        if unexpected:
            raise TypeError(f"VTimeProcessor got unexpected arguments: {', '.join(sorted(unexpected))}.")
        if text is None:
            raise ValueError("VTimeProcessor needs text with a <video> placeholder for each visual input.")
        texts = [text] if isinstance(text, str) else list(text)

        num_frames = self.num_frames if num_frames is None else num_frames
        features = self._visual_features(
            videos, images, video_features, video_windows, num_frames, do_sample_frames is not False
        )
        video_pattern = _special_token_pattern({VIDEO_TOKEN}, sanitize_control_tokens)
        placeholders = [len(video_pattern.findall(sample)) for sample in texts]
        for index, count in enumerate(placeholders):
            if count > 1:
                raise ValueError(
                    f"Text {index} holds {count} {VIDEO_TOKEN} placeholders; VTimeLLM takes one video per sample."
                )
        if sum(placeholders) != len(features):
            raise ValueError(
                f"The text holds {sum(placeholders)} {VIDEO_TOKEN} placeholders but {len(features)} visual inputs "
                "were given; pass one video (or image, or features) per placeholder."
            )
        if features and not all(placeholders):
            missing = [index for index, count in enumerate(placeholders) if count == 0]
            raise ValueError(
                f"Texts {missing} hold no {VIDEO_TOKEN}: in a batch with videos, every sample needs one video."
            )
        if len({tuple(feature.shape) for feature in features}) > 1:
            shapes = [tuple(feature.shape) for feature in features]
            raise ValueError(f"All videos of a batch need features of one shape, got {shapes}.")

        rows = features[0].shape[0] if features else 0
        encoded = [
            self.encode_prompt(sample, rows, add_special_tokens, return_offsets_mapping, sanitize_control_tokens)
            for sample in texts
        ]
        # As tokenizers do: a max_length alone truncates
        if truncation is None and max_length is not None and padding is False:
            truncation = True
        if truncation not in (None, False, "do_not_truncate"):
            if truncation not in (True, "longest_first", "only_first"):
                raise ValueError(
                    f"truncation={truncation!r} does not apply: VTimeProcessor truncates single prompts, with "
                    "truncation=True, 'longest_first' or 'only_first'."
                )
            limit = self.tokenizer.model_max_length if max_length is None else max_length
            encoded = [self._truncate(sample, limit, index, rows) for index, sample in enumerate(encoded)]
        batch = {"input_ids": [sample["input_ids"] for sample in encoded]}
        if return_offsets_mapping:
            batch["offset_mapping"] = [sample["offset_mapping"] for sample in encoded]
        lengths = {len(ids) for ids in batch["input_ids"]}
        if (padding is True or padding == "longest") and len(lengths) <= 1 and pad_to_multiple_of is None:
            # Nothing to pad, but the tokenizer would still ask for a pad token (stock Vicuna has none)
            padding = False
        padding_side = padding_side or self.tokenizer.padding_side
        data = dict(
            self.tokenizer.pad(
                batch,
                padding=padding,
                max_length=max_length if padding == "max_length" else None,
                pad_to_multiple_of=pad_to_multiple_of,
                return_attention_mask=True,
                padding_side=padding_side,
            )
        )
        if return_offsets_mapping:
            data["offset_mapping"] = [
                _pad_offsets(offsets, len(ids), padding_side)
                for offsets, ids in zip(data["offset_mapping"], data["input_ids"])
            ]
        if features:
            data["video_features"] = torch.stack(features) if return_tensors == "pt" else [f.numpy() for f in features]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _truncate(self, sample: dict, limit: int, index: int, rows: int) -> dict:
        """`sample` cut to `limit` tokens on the tokenizer's truncation side; never into the rows of its video."""
        ids = sample["input_ids"]
        excess = len(ids) - limit
        if excess <= 0:
            return sample
        kept = slice(0, limit) if self.tokenizer.truncation_side == "right" else slice(excess, None)
        if rows and ids[kept].count(self.video_token_id) != rows:
            raise ValueError(
                f"Text {index} is {len(ids)} tokens, {rows} of them the rows of its video; truncating it to "
                f"max_length={limit} on the {self.tokenizer.truncation_side} would cut into those rows. "
                "Raise max_length or shorten the text."
            )
        return {"input_ids": ids[kept], "offset_mapping": sample["offset_mapping"][kept]}

    def parse_moments(self, text: str, duration: float, convention: str = GROUNDING) -> list[tuple[float, float]]:
        """The moments of a generated answer in seconds, as indices into this processor's `num_frames`; see
        [`parse_moments`]."""
        return parse_moments(text, duration, convention, self.num_frames)

    def parse_events(self, text: str, duration: float, convention: str = CAPTIONING) -> list[tuple[float, float, str]]:
        """The dense-captioning events of a generated answer, as indices into this processor's `num_frames`; see
        [`parse_events`]."""
        return parse_events(text, duration, convention, self.num_frames)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "video_features"]


def _flatten(items) -> list:
    """Visual inputs as a flat list: one item, a list, or a list per sample (as `apply_chat_template` gives)."""
    if isinstance(items, (str, Path, np.ndarray, torch.Tensor)) or not isinstance(items, Sequence):
        return [items]
    flat = []
    for item in items:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
        else:
            flat.append(item)
    return flat


def _is_frame(item) -> bool:
    return is_pil_image(item) or (isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 3)


def _batched_videos(videos) -> list:
    """
    Videos as a flat list of paths, 4-D arrays or tensors, and lists of frames, by the conventions of transformers'
    `make_batched_videos`: a list holding only frames is one video, a 5-D array a batch, a 3-D one a single frame.
    """
    if isinstance(videos, (str, Path)):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 3:
            return [videos[None]]
        if videos.ndim == 4:
            return [videos]
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(
            "A video array must have shape (frames, height, width, 3), or (videos, frames, height, width, 3) for a "
            f"batch, got {tuple(videos.shape)}."
        )
    if is_pil_image(videos):
        return [[videos]]
    if not isinstance(videos, (list, tuple)):
        raise ValueError(
            "videos must be paths, arrays or tensors (frames, height, width, 3), lists of frames, or lists of these; "
            f"got {type(videos).__name__}."
        )
    if videos and all(_is_frame(item) for item in videos):
        return [list(videos)]
    flat = []
    for item in videos:
        if _is_frame(item):
            raise ValueError(
                "videos mixes single frames with whole videos; a video given as frames is a list of frames only."
            )
        flat.extend(_batched_videos(item))
    return flat


def _control_token_markers() -> tuple[str, str]:
    """What `apply_chat_template(..., sanitize_control_tokens=True)` wraps the control tokens of user input in."""
    # Imported where used: the markers are private to transformers, and only sanitized calls need them
    from transformers.utils.chat_template_utils import _CONTROL_TOKEN_END, _CONTROL_TOKEN_START

    return _CONTROL_TOKEN_START, _CONTROL_TOKEN_END


def _special_token_pattern(tokens, sanitize_control_tokens: bool) -> re.Pattern:
    """A pattern capturing `tokens`, longest first; with `sanitize_control_tokens`, none that is marked as user text."""
    alternatives = "|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True))
    if not sanitize_control_tokens:
        return re.compile(f"({alternatives})")
    return re.compile(f"(?<!{re.escape(_control_token_markers()[0])})({alternatives})")


def _pad_offsets(offsets: list, length: int, padding_side: str) -> list:
    """Offsets padded with empty spans to the padded length of their ids."""
    padding = [(0, 0)] * (length - len(offsets))
    return padding + offsets if padding_side == "left" else offsets + padding


def image_as_frame(image) -> np.ndarray:
    """An image as one RGB frame `(1, height, width, 3)`; greyscale, alpha and CMYK PIL images are converted."""
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    array = np.array(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"An image must be RGB with shape (height, width, 3), got {array.shape}.")
    if array.dtype != np.uint8:
        # A float image in [0, 1] would be divided by 255 once more and encoded as black
        raise ValueError(f"An image array must be uint8 RGB (0-255), got dtype {array.dtype}.")
    return array[None]


__all__ = [
    "VTimeProcessor",
    "indices_to_seconds",
    "format_index",
    "get_video_duration",
    "load_video_frames",
    "parse_events",
    "parse_moment_indices",
    "parse_moments",
    "preprocess_frames",
    "image_as_frame",
    "read_frame_preprocessing",
    "sample_frame_indices",
    "seconds_to_index",
]
