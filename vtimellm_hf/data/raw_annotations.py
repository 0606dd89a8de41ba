"""Readers for the raw annotation files of the evaluation benchmarks, returning plain Python structures.

* Charades-STA: one query a line, `VIDEO_ID START END##sentence` ([`read_charades_sta`]).
* ActivityNet Captions, in either of its two common layouts ([`read_activitynet_captions`]):
  the original `{"v_ID": {"duration", "timestamps", "sentences"}}` and the coco-style conversion
  `{"annotations": [{"image_id", "caption", "segments", "duration", "id"}]}`.

Every reader checks what it reads and raises a `ValueError` naming the file, the line or record, and what is
wrong. Times stay in seconds exactly as written; nothing is rounded, clipped or reordered. Events that end after
the video's duration are kept as they are (real ActivityNet and Charades-STA annotations contain them); the
metrics decide what to do with them.
"""

import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

logger = logging.getLogger(__name__)

__all__ = [
    "Event",
    "GroundingQuery",
    "Video",
    "grounding_queries",
    "read_activitynet_captions",
    "read_charades_sta",
    "split_sentences",
]

PathLike = str | os.PathLike

# A sentence ends at ".", "!" or "?" when a letter follows, with or without a space: the coco-style file joins
# sentences both ways ("...on a mat. The man..." and "...green vehicle.One of the girls..."). A digit after the
# stop does not end a sentence, so "2.5 meters" stays whole.
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])\s*(?=[A-Za-z])")


class Event(NamedTuple):
    """One annotated moment of a video: `start` and `end` in seconds and the sentence that describes it."""

    start: float
    end: float
    sentence: str


@dataclass(frozen=True)
class GroundingQuery:
    """One temporal grounding query: find the moment of `video_id` that `query` describes.

    Attributes:
        video_id: the video id exactly as the annotation file writes it (ActivityNet ids keep their `v_` prefix).
        query: the sentence to ground.
        start: start of the reference moment, in seconds.
        end: end of the reference moment, in seconds.
        duration: length of the video in seconds, or `None` where the annotation does not say (Charades-STA).
    """

    video_id: str
    query: str
    start: float
    end: float
    duration: float | None = None


@dataclass(frozen=True)
class Video:
    """A video with its annotated events, in file order.

    Attributes:
        video_id: the video id (ActivityNet ids keep their `v_` prefix).
        duration: length of the video in seconds, as annotated.
        events: the `(start, end, sentence)` events, as [`Event`] tuples, in the order of the file.
    """

    video_id: str
    duration: float
    events: tuple[Event, ...]


def grounding_queries(videos: Iterable[Video]) -> list[GroundingQuery]:
    """One grounding query per event, video by video, each carrying its video's duration."""
    return [
        GroundingQuery(video.video_id, event.sentence, event.start, event.end, video.duration)
        for video in videos
        for event in video.events
    ]


def read_charades_sta(path: PathLike, durations: Mapping[str, float] | None = None) -> list[GroundingQuery]:
    """Read a Charades-STA annotation file: one query a line, `VIDEO_ID START END##sentence`.

    Blank lines are skipped. The sentence is everything after the first `##`, with surrounding whitespace removed.

    Args:
        path: the `.txt` file (for instance `charades_sta_test.txt`, 3,720 queries).
        durations: video lengths in seconds by video id. Charades-STA lines carry no duration; when this is given,
            every video of the file must be in it, and each query gets its video's duration.

    Returns:
        The queries in file order.

    Raises:
        ValueError: naming the file and line, on a line that is not valid UTF-8, lacks the `##` separator, does not
            have exactly three fields before it, has a time that is not a finite number, a negative start, a start
            after its end or an empty sentence, or whose video has no positive duration in `durations`.
    """
    queries = []
    for line_number, line in _read_text_lines(path):
        if not line.strip():
            continue
        try:
            queries.append(_parse_charades_line(line, durations))
        except ValueError as error:
            raise ValueError(f"{path}, line {line_number}: {error}: {line!r}") from None
    return queries


def _parse_charades_line(line: str, durations: Mapping[str, float] | None) -> GroundingQuery:
    head, separator, sentence = line.partition("##")
    if not separator:
        raise ValueError("missing the '##' before the sentence (expected 'VIDEO_ID START END##sentence')")
    fields = head.split()
    if len(fields) != 3:
        raise ValueError(f"expected 'VIDEO_ID START END' before '##', found {len(fields)} field(s)")
    video_id, start_text, end_text = fields
    start = _parse_seconds(start_text, "start")
    end = _parse_seconds(end_text, "end")
    _check_span(start, end)
    query = sentence.strip()
    if not query:
        raise ValueError("empty sentence after '##'")
    duration = None
    if durations is not None:
        if video_id not in durations:
            raise ValueError(f"video {video_id!r} is not in `durations`")
        duration = _check_duration(durations[video_id])
    return GroundingQuery(video_id, query, start, end, duration)


def read_activitynet_captions(path: PathLike, *, on_unaligned: Literal["skip", "raise"] = "skip") -> list[Video]:
    """Read ActivityNet Captions annotations, in the original layout or the coco-style conversion.

    The layout is detected from the content: a top-level object whose `"annotations"` member is a list is the
    coco-style conversion; any other object is the original layout.

    * Original (`train.json`, `val_1.json`, `val_2.json`): `{"v_ID": {"duration": s, "timestamps": [[s, e], ...],
      "sentences": [...]}}`. Video ids are kept as they are; sentences lose their surrounding whitespace (the
      files often start them with a space).
    * Coco-style (`activitynet_captions_val_coco_format.json`): `{"annotations": [{"image_id": "v_ID.mp4",
      "caption": all sentences joined, "segments": [[s, e], ...], "duration": s, "id": n}]}`. `image_id` is a
      file name: the video id is its name without the extension (`"v_ID.mp4"` -> `"v_ID"`, the id the original
      layout and prediction files use). The caption is split into sentences after `.`, `!` or `?` followed by
      a letter, and the i-th sentence is paired with the i-th segment. Where the number of sentences differs
      from the number of segments (18 of the 4,909 val videos: numbered or quoted captions, truncated text),
      the pairing is unknown, and `on_unaligned` decides.

    Args:
        path: the JSON file.
        on_unaligned: coco-style layout only: `"skip"` leaves out videos whose sentences cannot be paired with
            their segments and logs one warning naming them; `"raise"` raises a `ValueError` on the first one.

    Returns:
        The videos, in file order.

    Raises:
        ValueError: naming the file and the video or record, on bytes that are not UTF-8, invalid JSON, a
            duplicated video id, a missing or mistyped field, timestamps and sentences of different lengths, a time
            that is not a finite number, a negative start, a start after its end or a non-positive duration.
    """
    if on_unaligned not in ("skip", "raise"):
        raise ValueError(f"on_unaligned must be 'skip' or 'raise', not {on_unaligned!r}")
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    if isinstance(data.get("annotations"), list):
        return _read_activitynet_coco(path, data["annotations"], on_unaligned)
    return [_parse_activitynet_record(path, video_id, record) for video_id, record in data.items()]


def _parse_activitynet_record(path: PathLike, video_id: str, record: Any) -> Video:
    try:
        if not isinstance(record, dict):
            raise ValueError(f"expected an object, found {type(record).__name__}")
        duration = _check_duration(_require(record, "duration"))
        spans = _parse_spans(_require(record, "timestamps"), "timestamps")
        sentences = _require(record, "sentences")
        if not isinstance(sentences, list) or not all(isinstance(sentence, str) for sentence in sentences):
            raise ValueError("'sentences' must be a list of strings")
        if len(sentences) != len(spans):
            raise ValueError(f"'timestamps' has {len(spans)} entries but 'sentences' has {len(sentences)}")
    except ValueError as error:
        raise ValueError(f"{path}, video {video_id!r}: {error}") from None
    events = tuple(
        Event(start, end, sentence.strip()) for (start, end), sentence in zip(spans, sentences, strict=True)
    )
    return Video(video_id, duration, events)


def _read_activitynet_coco(
    path: PathLike, annotations: list[Any], on_unaligned: Literal["skip", "raise"]
) -> list[Video]:
    videos = []
    unaligned = []
    seen_ids = set()
    for index, annotation in enumerate(annotations):
        where = f"{path}, annotation #{index}"
        try:
            if not isinstance(annotation, dict):
                raise ValueError(f"expected an object, found {type(annotation).__name__}")
            image_id = _require(annotation, "image_id")
            if not isinstance(image_id, str) or not image_id:
                raise ValueError("'image_id' must be a non-empty string")
            where += f" ({image_id!r})"
            video_id = posixpath.splitext(image_id)[0]
            if video_id in seen_ids:
                raise ValueError(f"video {video_id!r} appears more than once")
            seen_ids.add(video_id)
            duration = _check_duration(_require(annotation, "duration"))
            spans = _parse_spans(_require(annotation, "segments"), "segments")
            caption = _require(annotation, "caption")
            if not isinstance(caption, str):
                raise ValueError("'caption' must be a string")
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        sentences = split_sentences(caption)
        if len(sentences) != len(spans):
            if on_unaligned == "raise":
                raise ValueError(
                    f"{where}: the caption splits into {len(sentences)} sentence(s) but there are {len(spans)} "
                    "segments, so sentences cannot be paired with segments"
                )
            unaligned.append(video_id)
            continue
        events = tuple(Event(start, end, sentence) for (start, end), sentence in zip(spans, sentences, strict=True))
        videos.append(Video(video_id, duration, events))
    if unaligned:
        logger.warning(
            "%s: skipped %d of %d videos whose caption does not split into one sentence per segment: %s",
            path,
            len(unaligned),
            len(annotations),
            ", ".join(unaligned),
        )
    return videos


def split_sentences(caption: str) -> list[str]:
    """Split a paragraph into sentences after `.`, `!` or `?` followed by a letter (see `_SENTENCE_BOUNDARY`)."""
    return [sentence.strip() for sentence in _SENTENCE_BOUNDARY.split(caption) if sentence.strip()]


def _read_text_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """`(line_number, line)` pairs, line endings removed; decoded line by line so that an error names its line."""
    with open(path, "rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            try:
                # A byte-order mark would otherwise end up glued to the first video id.
                line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {line_number}: not valid UTF-8 (byte {raw_line[error.start]:#04x} at column "
                    f"{error.start + 1})"
                ) from None
            yield line_number, line.rstrip("\r\n")


def _load_json(path: PathLike) -> Any:
    with open(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}, line {line_number}: not valid UTF-8 (byte {raw[error.start]:#04x})") from None
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}, column {error.colno}: invalid JSON: {error.msg}") from None
    except _DuplicateKeyError as error:
        raise ValueError(f"{path}: {error}") from None


class _DuplicateKeyError(ValueError):
    pass


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # `json` silently keeps the last of repeated keys, which would drop a video of the original layout.
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"key {key!r} appears more than once in the same object")
        result[key] = value
    return result


def _require(record: dict[str, Any], field: str) -> Any:
    if field not in record:
        raise ValueError(f"missing field {field!r}")
    return record[field]


def _parse_seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} {text!r} is not a finite number")
    return value


def _as_seconds(value: Any, name: str) -> float:
    # bool is an int subclass: `true` in a JSON file is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, found {value!r}")
    return float(value)


def _check_span(start: float, end: float) -> None:
    if start < 0:
        raise ValueError(f"negative start {start}")
    if start > end:
        raise ValueError(f"start {start} is after end {end}")


def _check_duration(value: Any) -> float:
    duration = _as_seconds(value, "duration")
    if duration <= 0:
        raise ValueError(f"duration must be positive, found {value!r}")
    return duration


def _parse_spans(value: Any, field: str) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise ValueError(f"{field!r} must be a list of [start, end] pairs")
    spans = []
    for index, span in enumerate(value):
        if not isinstance(span, Sequence) or isinstance(span, str) or len(span) != 2:
            raise ValueError(f"{field}[{index}] must be a [start, end] pair, found {span!r}")
        start = _as_seconds(span[0], f"{field}[{index}] start")
        end = _as_seconds(span[1], f"{field}[{index}] end")
        try:
            _check_span(start, end)
        except ValueError as error:
            raise ValueError(f"{field}[{index}]: {error}") from None
        spans.append((start, end))
    return spans
