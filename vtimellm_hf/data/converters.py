"""
Converters from raw annotations (ActivityNet Captions, Charades-STA, DiDeMo, InternVid-10M-FLT) to VTimeLLM
training dialogues and to evaluation sets.

**Dialogues** ([`videos_to_dialogues`]) follow VTimeLLM's stage-2 recipe and record format, the one
[`~vtimellm_hf.data.loaders.load_stage2`] reads:

```python
{"source": "internvid", "id": "3n3oCNerzV0",
 "conversations": [{"from": "human", "value": "<video>\\nDescribe the video one event at a time, ..."},
                   {"from": "gpt", "value": "From <s0> to <e0>, a woman counts money. From <s1> to <e1>, ..."}],
 "meta": {"split": [129.8, 183.0], "duration": 53.2, "token": {"<s0>": 0.0, "<e0>": 9.4, "<s1>": 49.4, ...}}}
```

A share of the records (`dense_share`, 20% in VTimeLLM) is single-turn dense captioning: one question, answered by
every event in time order, `"From <sK> to <eK>, sentence."`. The rest are multi-turn: one turn per event, in random
order, each either event captioning (the question gives `<sK>`/`<eK>`, the answer is the sentence) or grounding (the
question gives the sentence, the answer `<sK>`/`<eK>`), with even odds. Questions come from about ten templates per
task. Placeholders are numbered by start time; `meta.token` holds their times in seconds, and the loader turns them
into two-digit frame indices (`min(round(seconds / duration * 100), 99)`), as the original does, so the records
carry no index themselves. Everything random is drawn from one seeded generator: the same videos and seed give the
same records, byte for byte once written.

**Windows.** VTimeLLM trains on InternVid clips of at most 120 s, cut from long YouTube videos. A record names its
video and its features with one `id` (`vtimellm_hf.data.extract` reads `{video_root}/{id}.*` and the time window
`meta.split`, and writes `{id}.npy`), so each video gives at most one record: where a video is cut, the window kept is
the one holding the most events (the earliest among equals), from the start of its first event to the end of its
last one (or of the video, where an annotation runs past it); `meta.split` gives it in the source video's seconds,
`meta.duration` its length, and event times are relative to its start. InternVid does not give the length of its
source videos, so InternVid videos are always cut (an uncut record would have to place its events in a video of
unknown length); other sources are cut only where `max_window_seconds` is given and a video is longer.

**Other dialogues.** The templates and the turn builder live in `data/dialogues.py`
([`~vtimellm_hf.data.dialogues.DialogueTurns`], [`~vtimellm_hf.data.dialogues.dialogue_record`]), with which
dialogues of other kinds (the synthetic data's stage-3 dialogues) ask their turns the same way.

**Evaluation sets.** Grounding queries are JSON lines `{"video_id", "query", "start", "end", "duration"}` in
seconds, the file `vtimellm_hf.evaluation_runs.evaluate_grounding` and the synthetic dataset use; dense-captioning
references are the original ActivityNet Captions layout `{"v_ID": {"duration", "timestamps", "sentences"}}`, which
[`~vtimellm_hf.data.raw_annotations.read_activitynet_captions`] reads back.

**Durations.** Charades-STA and InternVid give no video lengths, and the same moment in seconds is a different
frame index in a video of another length. Give them with `durations` (see [`read_durations`]). Without them, a
grounding query's `duration` is `null`, which makes the evaluation read the length from the video itself, while
dialogues and captioning references, which need a number, use the end of the video's last-ending moment, a lower
bound of its length (a warning says how many videos this concerns).

**Events left out.** An event that starts at or after the end of its video names no frame, and a sentence holding
`<video>` or a `<sK>`/`<eK>`-like tag would be taken for a placeholder by the loader: both are left out of
dialogues, as are the events outside the window cut from a video, and warnings count them. A video left with no event
gives no record. Evaluation sets keep every annotation as it is.
"""

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .._deprecated import moved_names, renamed_keywords
from ..cli import reports_errors
from ..files import atomic_write, check_text
from ..model.processing_vtime import VIDEO_TOKEN
from .dialogues import (
    DENSE_CAPTIONING_QUESTIONS,
    EVENT_CAPTIONING_QUESTIONS,
    GROUNDING_ANSWERS,
    GROUNDING_QUESTIONS,
    DialogueTurns,
    dialogue_record,
)
from .raw_annotations import (
    Event,
    GroundingQuery,
    Video,
    grounding_queries,
    read_activitynet_captions,
    read_charades_sta,
    read_didemo,
    read_internvid,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DENSE_SHARE",
    "DEFAULT_MAX_WINDOW_SECONDS",
    "DENSE_CAPTIONING_QUESTIONS",
    "DialogueTurns",
    "EVENT_CAPTIONING_QUESTIONS",
    "GROUNDING_ANSWERS",
    "GROUNDING_QUESTIONS",
    "SOURCE_FORMATS",
    "SOURCE_NAMES",
    "TASKS",
    "add_subcommand",
    "captioning_references",
    "convert",
    "dialogue_record",
    "read_durations",
    "read_source",
    "source_queries",
    "videos_to_dialogues",
    "write_captioning_references",
    "write_dialogues",
    "write_grounding_queries",
]

PathLike = str | os.PathLike

SOURCE_FORMATS = ("activitynet", "charades", "didemo", "internvid")
# The `source` field of the records, as VTimeLLM's data names its sources.
SOURCE_NAMES = {"activitynet": "anet", "charades": "charades", "didemo": "didemo", "internvid": "internvid"}
TASKS = ("dialogues", "grounding", "captioning")
DEFAULT_DENSE_SHARE = 0.2
DEFAULT_MAX_WINDOW_SECONDS = 120.0
# Clip-relative times are differences of times as written; rounding removes the binary noise of the subtraction
# (184.0 - 129.8 = 54.19999999999999) and keeps the microseconds that any annotation format writes.
_TIME_DECIMALS = 6

# What the loader would take for a placeholder, were it part of a sentence.
_RESERVED_TEXT = re.compile(rf"<[se]\d+>|{re.escape(VIDEO_TOKEN)}")
_WORD = re.compile(r"\w")


class _Window(NamedTuple):
    """What one record covers: `video` with its usable events in start order, in seconds from the start of `split`
    (the part of the source video cut for the record, in its seconds), or of the whole video where `split` is None."""

    video: Video
    split: tuple[float, float] | None


# Reading.


def read_durations(path: PathLike) -> dict[str, float]:
    """
    Read video lengths in seconds by video id, from a JSON object or a CSV file.

    * `.json`: `{"VIDEO_ID": seconds, ...}`.
    * `.csv`: a header row naming an id column (`id` or `video_id`) and a length column (`length` or `duration`):
      Charades' own `Charades_v1_test.csv` (whose `length` column gives the seconds) is such a file.

    Raises:
        ValueError: naming the file and the entry, on another extension, bytes that are not UTF-8, invalid JSON, a
            missing column, a video id on two rows, or a length that is not a positive number.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{path}: durations must be a .json object or a .csv table, not a {suffix or 'bare'} file")
    try:
        entries = _read_duration_json(path) if suffix == ".json" else _read_duration_rows(path)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 (byte {error.object[error.start]:#04x})") from None
    durations = {}
    for where, video_id, value in entries:
        if video_id in durations:
            raise ValueError(f"{path}, {where}: video {video_id!r} appears more than once")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{path}, {where}: length {value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{path}, {where}: length must be a positive number of seconds, found {value!r}")
        durations[video_id] = float(value)
    return durations


def _read_duration_json(path: PathLike) -> list[tuple[str, str, Any]]:
    with open(path, encoding="utf-8-sig") as file:
        try:
            data = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of lengths by video id, found {type(data).__name__}")
    return [(f"video {video_id!r}", video_id, value) for video_id, value in data.items()]


def _read_duration_rows(path: PathLike) -> list[tuple[str, str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        id_column = next((name for name in ("id", "video_id") if name in columns), None)
        length_column = next((name for name in ("length", "duration") if name in columns), None)
        if id_column is None or length_column is None:
            raise ValueError(
                f"{path}: the header must name an id column ('id' or 'video_id') and a length column ('length' or "
                f"'duration'), found {columns}"
            )
        return [(f"line {reader.line_num}", row[id_column], row[length_column]) for row in reader]


def read_source(source_format: str, path: PathLike, durations: Mapping[str, float] | None = None) -> list[Video]:
    """
    Read a raw annotation file as a list of [`Video`]s.

    Args:
        source_format: one of [`SOURCE_FORMATS`]: `"activitynet"` (either layout, see
            [`~vtimellm_hf.data.raw_annotations.read_activitynet_captions`]; videos whose caption cannot be split
            one sentence per segment are left out with a warning), `"charades"` (queries grouped by video),
            `"didemo"` or `"internvid"`.
        path: the annotation file.
        durations: video lengths in seconds by video id. Charades-STA and InternVid: where not given, a video lasts
            until the end of its last-ending moment, a lower bound of its length (Charades-STA logs a warning; the
            InternVid dialogues of [`convert`] do not depend on it, being cut into clips). DiDeMo: where not given,
            30 s, the span DiDeMo annotates (with a warning). ActivityNet: ignored, its annotations have them.

    Raises:
        ValueError: on an unknown format, or whatever the reader raises on the file.
    """
    _check_choice("source_format", source_format, SOURCE_FORMATS)
    if source_format == "activitynet":
        return read_activitynet_captions(path)
    if source_format == "didemo":
        return read_didemo(path, durations)
    if source_format == "internvid":
        return read_internvid(path, durations)
    return _charades_videos(path, read_charades_sta(path, durations))


def _charades_videos(path: PathLike, queries: Sequence[GroundingQuery]) -> list[Video]:
    events_by_video: dict[str, list[Event]] = {}
    durations: dict[str, float | None] = {}
    for query in queries:
        events_by_video.setdefault(query.video_id, []).append(Event(query.start, query.end, query.query))
        durations[query.video_id] = query.duration
    guessed = [video_id for video_id, duration in durations.items() if duration is None]
    if guessed:
        logger.warning(
            "%s: no lengths given for %d videos: each lasts until its last-ending moment, a lower bound of its length",
            path,
            len(guessed),
        )
    videos = []
    for video_id, events in events_by_video.items():
        duration = durations[video_id]
        if duration is None:
            duration = max(event.end for event in events)
            if duration <= 0:
                raise ValueError(f"{path}: video {video_id!r} has no length given and all its moments end at 0 s")
        videos.append(Video(video_id, duration, tuple(events)))
    return videos


def source_queries(
    source_format: str, path: PathLike, durations: Mapping[str, float] | None = None
) -> list[GroundingQuery]:
    """
    The grounding queries of a raw annotation file, one per annotated moment: in file order, or video by video where
    the reader groups moments by video (DiDeMo, InternVid).

    A query's `duration` is `None` where the annotations do not give its video's length (Charades-STA and InternVid
    without `durations`): the grounding evaluation then reads it from the video, which is exact, where a guessed
    length would move every predicted moment.

    Args:
        source_format, path, durations: see [`read_source`].
    """
    _check_choice("source_format", source_format, SOURCE_FORMATS)
    if source_format == "charades":
        return read_charades_sta(path, durations)
    if source_format == "internvid" and durations is None:
        videos = read_internvid(path)
        return [dataclasses.replace(query, duration=None) for query in grounding_queries(videos)]
    return grounding_queries(read_source(source_format, path, durations))


# Dialogues.


@renamed_keywords(max_clip_seconds="max_window_seconds", clip_every_video="window_every_video")
def videos_to_dialogues(
    videos: Iterable[Video],
    source: str,
    *,
    dense_share: float = DEFAULT_DENSE_SHARE,
    seed: int = 0,
    max_window_seconds: float | None = None,
    window_every_video: bool = False,
) -> list[dict[str, Any]]:
    """
    VTimeLLM stage-2 style dialogues, one per video: dense captioning or multi-turn event captioning and grounding.

    See the module's documentation for the record format, the mix and the windows.

    Args:
        videos: the videos and their events; events may come in any order.
        source: the records' `source` field (`"internvid"`, `"anet"`, `"didemo"`, ...).
        dense_share: share of the records that are single-turn dense captioning, in [0, 1]: exactly
            `round(dense_share * n)` of the `n` records, drawn at random; the rest are multi-turn.
        seed: seed of every random choice (which records are dense, templates, turn order and kinds).
        max_window_seconds: longest window to cut from a video. A video longer than this is cut to the window
            holding the most events; `None` keeps videos whole (or, with `window_every_video`, does not bound the
            window).
        window_every_video: cut every video to a window spanning its events, long or not, so that every record says
            with `meta.split` which part of its video it covers (needed where video lengths are unknown, as for
            InternVid).

    Returns:
        The records, in the order of `videos`, leaving out videos without a usable event.

    Raises:
        ValueError: on a `dense_share` outside [0, 1], a `max_window_seconds` that is not positive, or a video id that
            appears twice (two records of one id would share one feature file).
    """
    if not 0 <= dense_share <= 1:
        raise ValueError(f"dense_share must lie in [0, 1], got {dense_share}")
    if max_window_seconds is not None and not max_window_seconds > 0:
        raise ValueError(f"max_window_seconds must be positive, got {max_window_seconds}")
    dropped: Counter[str] = Counter()
    without_events = []
    windows = []
    seen_ids = set()
    for video in videos:
        if video.video_id in seen_ids:
            raise ValueError(f"video {video.video_id!r} appears more than once; each video gives one record")
        seen_ids.add(video.video_id)
        window = _window_of(video, max_window_seconds, window_every_video, dropped)
        if window is None:
            without_events.append(video.video_id)
        else:
            windows.append(window)
    _warn_about_left_out(dropped, without_events)
    turns = DialogueTurns((event.sentence for window in windows for event in window.video.events), seed)
    dense = set(turns.shuffled(range(len(windows)))[: round(dense_share * len(windows))])
    records = []
    for number, (video, split) in enumerate(windows):
        sentences = [event.sentence for event in video.events]
        dialogue = [turns.dense_captioning(sentences)] if number in dense else turns.multi_turn(sentences)
        records.append(dialogue_record(video, source, dialogue, split))
    return records


def _window_of(
    video: Video, max_window_seconds: float | None, window_every_video: bool, dropped: Counter[str]
) -> _Window | None:
    """The part of `video` that its record covers, with its usable events; `None` where no event is usable."""
    events = []
    for event in video.events:
        if _RESERVED_TEXT.search(event.sentence):
            dropped["hold <video> or a <sK>/<eK>-like tag in their sentence"] += 1
        elif not _WORD.search(event.sentence):
            dropped["have no word in their sentence"] += 1
        elif event.start >= video.duration:
            dropped["start at or after the end of their video"] += 1
        else:
            events.append(event._replace(sentence=" ".join(event.sentence.split())))
    events.sort(key=lambda event: (event.start, event.end))
    if not window_every_video and (max_window_seconds is None or video.duration <= max_window_seconds):
        return _Window(Video(video.video_id, video.duration, tuple(events)), None) if events else None
    # Annotations may end after their video does (ActivityNet has such events); a window stops with its video, and
    # an index past the end is the last one either way, so such events end with the video.
    events = [event._replace(end=min(event.end, video.duration)) for event in events]
    window = _busiest_window(events, math.inf if max_window_seconds is None else max_window_seconds)
    if window is None:
        if events:
            dropped["fit in no window (longer than the window limit, or of zero length)"] += len(events)
        return None
    start, end, members = window
    dropped["fall outside the window cut from their video"] += len(events) - len(members)
    relative = tuple(
        Event(_relative(member.start, start), _relative(member.end, start), member.sentence) for member in members
    )
    return _Window(Video(video.video_id, _relative(end, start), relative), (start, end))


def _busiest_window(events: Sequence[Event], max_seconds: float) -> tuple[float, float, list[Event]] | None:
    """
    `(start, end, events)` of the window of at most `max_seconds` that holds the most events (the earliest among
    equals), running from its first event's start to its last event's end; `None` where no window of positive length
    holds any. `events` must be sorted by start.
    """
    best = None
    for index, first in enumerate(events):
        limit = first.start + max_seconds
        if first.end > limit:
            continue
        members = []
        for event in events[index:]:
            if event.start > limit:
                # Sorted by start: no later event can end within the window either.
                break
            if event.end <= limit:
                members.append(event)
        end = max(member.end for member in members)
        if end > first.start and (best is None or len(members) > len(best[2])):
            best = (first.start, end, members)
    return best


def _relative(seconds: float, origin: float) -> float:
    return round(seconds - origin, _TIME_DECIMALS)


def _warn_about_left_out(dropped: Counter[str], without_events: list[str]) -> None:
    for reason, count in sorted(dropped.items()):
        if count:
            logger.warning("left out %d event(s) that %s", count, reason)
    if without_events:
        shown = ", ".join(without_events[:5]) + (", ..." if len(without_events) > 5 else "")
        logger.warning("%d videos have no usable event and give no record: %s", len(without_events), shown)


# Evaluation sets.


def captioning_references(videos: Iterable[Video]) -> dict[str, dict[str, Any]]:
    """
    Dense-captioning references in the original ActivityNet Captions layout: `{"v_ID": {"duration", "timestamps",
    "sentences"}}`, events in the order given, times in seconds as they are.

    Raises:
        ValueError: on a video id that appears twice.
    """
    references = {}
    for video in videos:
        if video.video_id in references:
            raise ValueError(f"video {video.video_id!r} appears more than once")
        references[video.video_id] = {
            "duration": video.duration,
            "timestamps": [[event.start, event.end] for event in video.events],
            "sentences": [event.sentence for event in video.events],
        }
    return references


# Writing. Files are written whole to a temporary name and then renamed, so that a failed run leaves no half file.


def write_dialogues(records: Sequence[Mapping[str, Any]], path: PathLike) -> None:
    """Write dialogue records as a JSON list, one record a line (the layout `load_stage2` and `load_stage3` read)."""
    _write_text(path, _json_list(records))


def write_grounding_queries(queries: Iterable[GroundingQuery], path: PathLike) -> None:
    """Write grounding queries as JSON lines `{"video_id", "query", "start", "end", "duration"}`."""
    _write_text(path, "".join(_json(dataclasses.asdict(query)) + "\n" for query in queries))


def write_captioning_references(videos: Iterable[Video], path: PathLike) -> None:
    """Write [`captioning_references`] of `videos` as a JSON object, one video a line."""
    references = captioning_references(videos)
    lines = [f"{_json(video_id)}: {_json(reference)}" for video_id, reference in references.items()]
    _write_text(path, "{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n")


def _json_list(items: Sequence[Any]) -> str:
    return "[\n" + ",\n".join(_json(item) for item in items) + "\n]\n" if items else "[]\n"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _write_text(path: PathLike, text: str) -> None:
    # A lone surrogate (a JSON "\ud800" escape) cannot be written: refused by name before any file is made
    data = check_text(text, f"{path}: what would be written").encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        file.write(data)


# One call, and the command line.


@renamed_keywords(max_clip_seconds="max_window_seconds")
def convert(
    source_format: str,
    input_path: PathLike,
    output_path: PathLike,
    *,
    task: str = "dialogues",
    dense_share: float = DEFAULT_DENSE_SHARE,
    seed: int = 0,
    max_window_seconds: float | None = None,
    durations: Mapping[str, float] | None = None,
) -> int:
    """
    Convert a raw annotation file to dialogues, grounding queries or dense-captioning references.

    Args:
        source_format: one of [`SOURCE_FORMATS`].
        input_path: the raw annotation file.
        output_path: the file to write (its folder is created): a JSON list of dialogues for `"dialogues"`, JSON
            lines of queries for `"grounding"`, an ActivityNet Captions JSON object for `"captioning"`.
        task: one of [`TASKS`].
        dense_share, seed: dialogues only, see [`videos_to_dialogues`].
        max_window_seconds: dialogues only: longest window cut from a video. `None` takes
            [`DEFAULT_MAX_WINDOW_SECONDS`] for InternVid, whose videos are always cut, and keeps the videos of other
            sources whole.
        durations: video lengths in seconds by video id, see [`read_source`] and [`source_queries`].

    Returns:
        How many dialogues, queries or videos were written.

    Raises:
        OSError: if the annotation file cannot be read or the output written.
        ValueError: on an unknown format or task, an invalid setting, or an invalid annotation file.
    """
    _check_choice("source_format", source_format, SOURCE_FORMATS)
    _check_choice("task", task, TASKS)
    if task == "grounding":
        queries = source_queries(source_format, input_path, durations)
        write_grounding_queries(queries, output_path)
        return len(queries)
    videos = read_source(source_format, input_path, durations)
    if task == "captioning":
        if source_format == "internvid" and durations is None:
            logger.warning(
                "%s: InternVid gives no video lengths and none were given: each video lasts until its last clip ends",
                input_path,
            )
        write_captioning_references(videos, output_path)
        return len(videos)
    window_every_video = source_format == "internvid"
    if window_every_video and max_window_seconds is None:
        max_window_seconds = DEFAULT_MAX_WINDOW_SECONDS
    records = videos_to_dialogues(
        videos,
        SOURCE_NAMES[source_format],
        dense_share=dense_share,
        seed=seed,
        max_window_seconds=max_window_seconds,
        window_every_video=window_every_video,
    )
    write_dialogues(records, output_path)
    return len(records)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """
    Registers `convert SOURCE_FORMAT INPUT OUTPUT [options]` on an argparse `subparsers` object; the parsed
    arguments carry `run(args) -> exit status` (0: written, 2: unusable arguments or annotation file).
    """
    parser = subparsers.add_parser(
        "convert",
        help="convert raw annotations to VTimeLLM dialogues or evaluation sets",
        description="Convert ActivityNet Captions, Charades-STA, DiDeMo or InternVid-10M-FLT annotations to "
        "VTimeLLM stage-2 style dialogues (a JSON list: 20% dense captioning, 80% multi-turn event captioning "
        "and grounding, by default), grounding queries (JSON lines) or dense-captioning references (ActivityNet "
        "Captions JSON).",
    )
    parser.add_argument(
        "source_format", metavar="SOURCE_FORMAT", choices=SOURCE_FORMATS, help="one of: " + ", ".join(SOURCE_FORMATS)
    )
    parser.add_argument("input", metavar="INPUT", help="the raw annotation file")
    parser.add_argument("output", metavar="OUTPUT", help="the file to write")
    parser.add_argument("--task", choices=TASKS, default="dialogues", help="what to write (default: %(default)s)")
    parser.add_argument(
        "--dense-share",
        type=_share,
        default=DEFAULT_DENSE_SHARE,
        help="dialogues: share of single-turn dense captioning (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="dialogues: seed of every random choice (default: 0)")
    parser.add_argument(
        "--max-window-seconds",
        "--max-clip-seconds",  # the old name, still accepted
        type=_positive_float,
        default=None,
        help=f"dialogues: cut longer videos to the window of at most this many seconds that holds the most events "
        f"(default: {DEFAULT_MAX_WINDOW_SECONDS:g} for internvid, whose videos are always cut; others stay whole)",
    )
    parser.add_argument(
        "--durations",
        metavar="FILE",
        default=None,
        help="video lengths in seconds: a JSON object {video_id: seconds} or a CSV with id and length columns "
        "(such as Charades_v1_test.csv); for charades and internvid, which give none",
    )
    parser.set_defaults(run=_run)
    return parser


def _number_argument(accepts: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: a number that `accepts` takes, else an error saying that `expected` was expected."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_share = _number_argument(lambda value: 0 <= value <= 1, "a share in [0, 1]")
_positive_float = _number_argument(lambda value: value > 0 and math.isfinite(value), "a positive number")


@reports_errors("convert")
def _run(args: argparse.Namespace) -> int:
    durations = read_durations(args.durations) if args.durations is not None else None
    count = convert(
        args.source_format,
        args.input,
        args.output,
        task=args.task,
        dense_share=args.dense_share,
        seed=args.seed,
        max_window_seconds=args.max_window_seconds,
        durations=durations,
    )
    what = {"dialogues": "dialogues", "grounding": "grounding queries", "captioning": "videos"}[args.task]
    print(f"convert: wrote {count} {what} to {args.output}", file=sys.stderr)
    return 0


__getattr__ = moved_names(__name__, {"DEFAULT_MAX_CLIP_SECONDS": f"{__name__}:DEFAULT_MAX_WINDOW_SECONDS"})
