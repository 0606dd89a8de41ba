"""VTimeLLM's timestamps: seconds <-> the two-digit frame indices the model writes, and the parsers of its answers.

VTimeLLM writes a moment as two indices into the `num_frames` (100) sampled frames ("from 05 to 23"); these helpers
convert between seconds and indices, with the two conventions of the original evaluation, and read moments and
events from generated text.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`), imported by `processing_vtime.py`,
which re-exports its names: it imports only the standard library.
"""

import json
import re

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


__all__ = [
    "CAPTIONING",
    "GROUNDING",
    "format_index",
    "indices_to_seconds",
    "parse_event_indices",
    "parse_events",
    "parse_grounding_answer",
    "parse_moment_indices",
    "parse_moments",
    "seconds_to_index",
]
