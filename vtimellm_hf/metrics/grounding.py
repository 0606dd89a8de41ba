"""Temporal grounding metrics: R1@{0.3, 0.5, 0.7} and mIoU, as VTimeLLM reports them.

Conventions (each one changes numbers):

* IoU is intersection over union of the two spans, rounded to 2 decimals before the thresholds and the mean, as
  VTimeLLM's grounding script rounds it (`iou_decimals=None` keeps it exact). The rounding moves R1@t: an IoU of
  0.6965 counts at 0.7.
* A zero-length span, or a reversed one (end < start), has no extent: its IoU with anything is 0, itself
  included. densevid_eval gives the same 0 (it divides by `union + 1e-8`); VTimeLLM's grounding script would
  divide by zero on two identical points.
* R1@t counts a query when its IoU >= t (not > t), as VTimeLLM's script does.
* Predictions are in seconds already: turning the model's frame indices into seconds (start = s/100 and
  end = e/100 of the duration for grounding in the original) happens before, not here.
* Predicted times are clipped to [0, duration] when the reference knows its duration, and to [0, inf) when it
  does not. Reference times are used as given, even when they end after the duration (VTimeLLM does not clip
  them either).
* A prediction whose timestamp is `None` (the reply did not parse) scores IoU 0 and is counted in `unparsed`;
  a reference without any prediction scores IoU 0 and is counted in `missing`. Both stay in the denominator,
  which is always the number of references.
* Predictions are matched to references by `(video_id, query)`. When a pair repeats, the k-th prediction of
  that pair goes with its k-th reference, in order. A prediction left without a reference raises a
  `ValueError`: it means the predictions and references come from different sets, and dropping it quietly
  would score something else than what was asked.
"""

import math
import numbers
import os
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from ..data.raw_annotations import GroundingQuery
from ..files import read_json_records

__all__ = ["GROUNDING_THRESHOLDS", "grounding_ious", "read_grounding_predictions", "score_grounding", "temporal_iou"]

GROUNDING_THRESHOLDS = (0.3, 0.5, 0.7)


def temporal_iou(span: Sequence[float], other: Sequence[float]) -> float:
    """Intersection over union of two `(start, end)` spans in seconds.

    A span with no extent (zero-length, or reversed: end < start) has IoU 0 with every span, itself included,
    so two identical points do not count as a match.

    Example:
        `temporal_iou((0, 10), (5, 15)) == 5 / 15`
    """
    start, end = span
    other_start, other_end = other
    if end <= start or other_end <= other_start:
        return 0.0
    intersection = max(0.0, min(end, other_end) - max(start, other_start))
    union = (end - start) + (other_end - other_start) - intersection
    return intersection / union


class _Prediction(NamedTuple):
    video_id: str
    query: str
    timestamp: tuple[float, float] | None


def score_grounding(
    predictions: Iterable[Mapping[str, Any]], references: Sequence[GroundingQuery], iou_decimals: int | None = 2
) -> dict[str, float]:
    """Score top-1 temporal grounding predictions against reference queries.

    Args:
        predictions: dicts `{"video_id": str, "query": str, "timestamp": [start, end] | None}` in seconds, with
            any further keys (an `"answer"` with the raw reply, say) ignored.
        references: the queries, for instance from [`read_charades_sta`] or [`grounding_queries`].
        iou_decimals: decimals each IoU is rounded to before it is scored, 2 as in VTimeLLM's script (the figures
            of its paper); `None` scores the exact IoU.

    Returns:
        `{"r1@0.3", "r1@0.5", "r1@0.7", "miou"}` in percent over all references, and the counts `"n"`
        (references), `"unparsed"` (predictions whose timestamp is `None`) and `"missing"` (references with no
        prediction). See the module docstring for the conventions.

    Raises:
        ValueError: on no references, a malformed prediction (naming its position), or predictions that match no
            reference (naming how many and the first of them).
    """
    matched = _match_predictions(predictions, references)
    ious = _ious(matched, references, iou_decimals)
    n = len(references)
    scores = {
        f"r1@{threshold}": 100.0 * sum(iou >= threshold for iou in ious) / n for threshold in GROUNDING_THRESHOLDS
    }
    scores["miou"] = 100.0 * sum(ious) / n
    scores["n"] = n
    scores["unparsed"] = sum(prediction.timestamp is None for prediction in matched.values())
    scores["missing"] = n - len(matched)
    return scores


def grounding_ious(
    predictions: Iterable[Mapping[str, Any]], references: Sequence[GroundingQuery], iou_decimals: int | None = 2
) -> list[float]:
    """The IoU of each reference's prediction, in the order of `references`, as [`score_grounding`] scores it
    (matched, clipped and rounded the same way; 0 for an unparsed or missing prediction): what per-query statistics,
    such as bootstrap intervals, are computed from.

    Raises:
        ValueError: as [`score_grounding`].
    """
    return _ious(_match_predictions(predictions, references), references, iou_decimals)


def _match_predictions(
    predictions: Iterable[Mapping[str, Any]], references: Sequence[GroundingQuery]
) -> dict[int, _Prediction]:
    """`{reference index: its prediction}`, matched by `(video_id, query)` as the module docstring says."""
    if not references:
        raise ValueError("no references to score against")
    pending = defaultdict(deque)
    for index, reference in enumerate(references):
        pending[reference.video_id, reference.query].append(index)

    matched: dict[int, _Prediction] = {}
    unmatched = []
    for position, raw_prediction in enumerate(predictions):
        try:
            prediction = _parse_prediction(raw_prediction)
        except ValueError as error:
            raise ValueError(f"prediction #{position}: {error}") from None
        queue = pending.get((prediction.video_id, prediction.query))
        if queue:
            matched[queue.popleft()] = prediction
        else:
            unmatched.append((position, prediction))
    if unmatched:
        position, prediction = unmatched[0]
        raise ValueError(
            f"{len(unmatched)} prediction(s) match no reference (or repeat a (video_id, query) pair more often "
            f"than the references do); the first is prediction #{position}: video_id={prediction.video_id!r}, "
            f"query={prediction.query!r}"
        )
    return matched


def _ious(
    matched: Mapping[int, _Prediction], references: Sequence[GroundingQuery], iou_decimals: int | None
) -> list[float]:
    ious = []
    for index, reference in enumerate(references):
        prediction = matched.get(index)
        if prediction is None or prediction.timestamp is None:
            ious.append(0.0)
        else:
            predicted = _clip(prediction.timestamp, reference.duration)
            iou = temporal_iou(predicted, (reference.start, reference.end))
            ious.append(iou if iou_decimals is None else round(iou, iou_decimals))
    return ious


def read_grounding_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read grounding predictions from a JSON-lines file, one object a line, blank lines skipped (or a JSON list).

    Each line is `{"video_id": str, "query": str, "timestamp": [start, end] | null, ...}` (further keys, such as
    `"answer"`, are kept).

    Raises:
        ValueError: naming the file and line, on bytes that are not UTF-8, invalid JSON, an object that repeats a
            key, or a line that is not a prediction object.
    """
    predictions = []
    for where, prediction in read_json_records(path):
        try:
            _parse_prediction(prediction)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        predictions.append(prediction)
    return predictions


def _parse_prediction(prediction: Any) -> _Prediction:
    if not isinstance(prediction, Mapping):
        raise ValueError(f"expected an object, found {type(prediction).__name__}")
    for field in ("video_id", "query", "timestamp"):
        if field not in prediction:
            raise ValueError(f"missing field {field!r}")
    video_id, query, timestamp = prediction["video_id"], prediction["query"], prediction["timestamp"]
    if not isinstance(video_id, str) or not isinstance(query, str):
        raise ValueError("'video_id' and 'query' must be strings")
    if timestamp is None:
        return _Prediction(video_id, query, None)
    if isinstance(timestamp, (str, bytes)) or not isinstance(timestamp, Sequence) or len(timestamp) != 2:
        raise ValueError(f"'timestamp' must be [start, end] or null, found {timestamp!r}")
    for value in timestamp:
        # bool is an int subclass, and NaN would make every comparison false: neither is a time.
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"'timestamp' must hold two finite numbers, found {timestamp!r}")
    return _Prediction(video_id, query, (float(timestamp[0]), float(timestamp[1])))


def _clip(span: tuple[float, float], duration: float | None) -> tuple[float, float]:
    upper = math.inf if duration is None else duration
    return min(max(span[0], 0.0), upper), min(max(span[1], 0.0), upper)
