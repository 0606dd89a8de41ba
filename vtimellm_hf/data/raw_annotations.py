"""Readers for the raw annotation files of the evaluation benchmarks and training sources, returning plain Python
structures.

* Charades-STA: one query a line, `VIDEO_ID START END##sentence` ([`read_charades_sta`]).
* ActivityNet Captions, in either of its two common layouts ([`read_activitynet_captions`]):
  the original `{"v_ID": {"duration", "timestamps", "sentences"}}` and the coco-style conversion
  `{"annotations": [{"image_id", "caption", "segments", "duration", "id"}]}`.
* DiDeMo: one description a record, its moment given as 5-second segment indices by several annotators
  ([`read_didemo`]).
* InternVid-10M-FLT: one captioned clip of a YouTube video a record, times as `HH:MM:SS.mmm` ([`read_internvid`]).

Every reader checks what it reads and raises a `ValueError` naming the file, the line or record, and what is
wrong. Times stay in seconds exactly as written; nothing is clipped or reordered, and nothing is rounded but
InternVid's clock times, to the microsecond, which removes the binary noise of adding up hours, minutes and seconds
(DiDeMo's segment indices become whole multiples of 5 s). Events that end after the video's duration are kept as
they are (real ActivityNet and Charades-STA annotations contain them); the metrics decide what to do with them.
"""

import logging
import math
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ..files import read_json, read_json_records, read_text_lines

logger = logging.getLogger(__name__)

__all__ = [
    "Event",
    "GroundingQuery",
    "Video",
    "grounding_queries",
    "is_finite_number",
    "read_activitynet_captions",
    "read_charades_sta",
    "read_didemo",
    "read_internvid",
    "split_sentences",
]

PathLike = str | os.PathLike

# A sentence ends at ".", "!" or "?" when a letter follows, with or without a space: the coco-style file joins
# sentences both ways ("...on a mat. The man..." and "...green vehicle.One of the girls..."). A digit after the
# stop does not end a sentence, so "2.5 meters" stays whole.
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])\s*(?=[A-Za-z])")

# DiDeMo cuts every video into 5-second segments and annotates at most the first six: a clip of 30 s.
DIDEMO_SEGMENT_SECONDS = 5.0
DIDEMO_NUM_SEGMENTS = 6
DIDEMO_DURATION = DIDEMO_SEGMENT_SECONDS * DIDEMO_NUM_SEGMENTS

# InternVid timestamps: hours, minutes (< 60) and seconds (< 60, with an optional fraction), "00:07:33.689".
_CLOCK_TIME = re.compile(r"(\d+):([0-5]?\d):([0-5]?\d(?:\.\d*)?)")


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
    for line_number, line in read_text_lines(path):
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
    data = read_json(path)
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


def read_didemo(path: PathLike, durations: Mapping[str, float] | None = None) -> list[Video]:
    """Read DiDeMo annotations (`train_data.json`, `val_data.json`, `test_data.json`): one description a record.

    A record is `{"video": "ID.mp4", "description": str, "times": [[s, e], ...], ...}`; other fields
    (`annotation_id`, `num_segments`, `download_link`, ...) are ignored. `times` holds one pair of segment indices
    per annotator, and segment k covers [5k, 5k + 5) seconds, so the pair `[s, e]` is the moment `[5s, 5e + 5]`. The
    pair kept is the one most annotators gave, the single moment most grounding papers evaluate on; among tied
    pairs, the first one given.

    Records are grouped into one [`Video`] per video, in order of first appearance, its events in file order. The
    video id is the `video` file name without its extension (`"ID.mp4"` -> `"ID"`), the name that feature files
    take. A video lasts what `durations` says: its times become indices of that length, as its features sample the
    whole file. Without `durations` it lasts 30 s (DiDeMo annotates six 5-second segments) and a warning says so: a
    longer file's features would then cover more than the times count, so give the lengths for those.

    Args:
        path: the JSON file, a list of records.
        durations: video lengths in seconds by video id (without extension); when given, every video of the file
            must be in it.

    Returns:
        The videos, in order of first appearance.

    Raises:
        ValueError: naming the file and the record, on bytes that are not UTF-8, invalid JSON, a top level that is
            not a list, a missing or mistyped field, an empty description, no annotator times, a segment index that
            is not an integer from 0 to 5, a pair whose start comes after its end, or a video without a positive
            duration in `durations`.
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records at the top level, found {type(data).__name__}")
    events_by_video: dict[str, list[Event]] = {}
    for index, record in enumerate(data):
        where = f"{path}, record #{index}"
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected an object, found {type(record).__name__}")
            video = _require(record, "video")
            if not isinstance(video, str) or not video:
                raise ValueError("'video' must be a non-empty string")
            where += f" ({video!r})"
            description = _require(record, "description")
            if not isinstance(description, str) or not description.strip():
                raise ValueError("'description' must be a non-empty string")
            first, last = _most_common_pair(_parse_segment_pairs(_require(record, "times")))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        start = first * DIDEMO_SEGMENT_SECONDS
        end = (last + 1) * DIDEMO_SEGMENT_SECONDS
        video_id = posixpath.splitext(video)[0]
        events_by_video.setdefault(video_id, []).append(Event(start, end, description.strip()))
    if durations is None:
        logger.warning(
            "%s: no lengths given for %d videos: each lasts the 30 s that DiDeMo annotates; a longer file's moments "
            "would be misplaced against features of the whole file",
            path,
            len(events_by_video),
        )
    videos = []
    for video_id, events in events_by_video.items():
        duration = DIDEMO_DURATION if durations is None else _duration_of(path, video_id, durations)
        videos.append(Video(video_id, duration, tuple(events)))
    return videos


def _parse_segment_pairs(value: Any) -> list[tuple[int, int]]:
    if not isinstance(value, list) or not value:
        raise ValueError("'times' must be a non-empty list of [start, end] segment index pairs")
    pairs = []
    for number, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"times[{number}] must be a [start, end] pair of segment indices, found {pair!r}")
        for bound in pair:
            # bool is an int subclass; 2.0 is not an index either, and DiDeMo writes none.
            if type(bound) is not int or not 0 <= bound < DIDEMO_NUM_SEGMENTS:
                raise ValueError(
                    f"times[{number}] = {pair!r}: segment indices are integers from 0 to {DIDEMO_NUM_SEGMENTS - 1}"
                )
        if pair[0] > pair[1]:
            raise ValueError(f"times[{number}] = {pair!r}: the start segment comes after the end segment")
        pairs.append((pair[0], pair[1]))
    return pairs


def _most_common_pair(pairs: list[tuple[int, int]]) -> tuple[int, int]:
    counts: dict[tuple[int, int], int] = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    # `max` returns the first of equal maxima, and dicts keep insertion order: ties go to the pair given first.
    return max(counts, key=counts.__getitem__)


def read_internvid(path: PathLike, durations: Mapping[str, float] | None = None) -> list[Video]:
    """Read InternVid-10M-FLT clip annotations, as JSON lines (`InternVid-10M-flt.jsonl`) or as a JSON list.

    A record is `{"YoutubeID": str, "Start_timestamp": "HH:MM:SS.mmm", "End_timestamp": "HH:MM:SS.mmm",
    "Caption": str, ...}`; other fields (`Aesthetic_Score`, `UMT_Score`, ...) are ignored. The layout is told from
    the first character: `[` starts a JSON list, anything else is one object a line (blank lines skipped).

    Clips are grouped into one [`Video`] per `YoutubeID`, in order of first appearance, the clips as its events in
    file order, captions stripped of surrounding whitespace. InternVid does not give the length of its source
    videos: where `durations` does not either, a video's duration is the end of its last-ending clip, a lower bound
    of its real length. Anything that places moments in the whole video needs the real length; VTimeLLM instead cuts
    clips out of these videos (see `vtimellm_hf.data.converters`), which needs none.

    Args:
        path: the JSON-lines or JSON file.
        durations: source-video lengths in seconds by YouTube id; when given, every video of the file must be in it.

    Returns:
        The videos, in order of first appearance.

    Raises:
        ValueError: naming the file and the line (JSON lines) or record (JSON list), on bytes that are not UTF-8,
            invalid JSON, a missing or mistyped field, an empty caption, a timestamp that is not `HH:MM:SS[.fff]`, a
            start after its end, or a video without a positive duration in `durations`.
    """
    events_by_video: dict[str, list[Event]] = {}
    for where, record in read_json_records(path):
        try:
            video_id, event = _parse_internvid_record(record)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        events_by_video.setdefault(video_id, []).append(event)
    videos = []
    for video_id, events in events_by_video.items():
        if durations is not None:
            duration = _duration_of(path, video_id, durations)
        else:
            duration = max(event.end for event in events)
            if duration <= 0:
                raise ValueError(
                    f"{path}, video {video_id!r}: no duration given and every clip ends at 0 s, so the video has no "
                    "length to place its clips in"
                )
        videos.append(Video(video_id, duration, tuple(events)))
    return videos


def _parse_internvid_record(record: Any) -> tuple[str, Event]:
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, found {type(record).__name__}")
    video_id = _require(record, "YoutubeID")
    if not isinstance(video_id, str) or not video_id:
        raise ValueError("'YoutubeID' must be a non-empty string")
    start = _parse_clock_time(_require(record, "Start_timestamp"), "Start_timestamp")
    end = _parse_clock_time(_require(record, "End_timestamp"), "End_timestamp")
    _check_span(start, end)
    caption = _require(record, "Caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"video {video_id!r}: 'Caption' must be a non-empty string")
    return video_id, Event(start, end, caption.strip())


def _parse_clock_time(value: Any, name: str) -> float:
    match = _CLOCK_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{name} must be a time 'HH:MM:SS.mmm', found {value!r}")
    hours, minutes, seconds = match.groups()
    # Rounded to the microsecond: the sum of the parts carries binary noise ("00:01:01.029" -> 61.028999999999996).
    return round(int(hours) * 3600 + int(minutes) * 60 + float(seconds), 6)


def _duration_of(path: PathLike, video_id: str, durations: Mapping[str, float]) -> float:
    if video_id not in durations:
        raise ValueError(f"{path}: video {video_id!r} is not in `durations`")
    try:
        return _check_duration(durations[video_id])
    except ValueError as error:
        raise ValueError(f"{path}: video {video_id!r}: {error}") from None


def split_sentences(caption: str) -> list[str]:
    """Split a paragraph into sentences after `.`, `!` or `?` followed by a letter (see `_SENTENCE_BOUNDARY`)."""
    return [sentence.strip() for sentence in _SENTENCE_BOUNDARY.split(caption) if sentence.strip()]


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


def is_finite_number(value: Any) -> bool:
    """
    Whether `value`, read from JSON, is a finite number: an int or a float, not a bool (`true` in a file is a mistake,
    not 1), NaN, an infinity or an integer too large for a float.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _as_seconds(value: Any, name: str) -> float:
    if not is_finite_number(value):
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
