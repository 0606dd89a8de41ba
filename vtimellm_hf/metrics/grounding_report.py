"""Does a grounding score come from reading the query? The figures that tell, beside mIoU and R1@t:

* Multi-event queries: those of videos with several queries, where the query is the only way to choose a moment.
  On videos of one event, finding the event in the frames is enough.
* Query-blind baselines on the same queries, which read neither the query nor the frames: the video's first event
  (the earliest reference moment of its video: a rule that knows where the events are, but not which one is asked),
  and the best single fixed span (the one span, as shares of the duration, that scores best on these very queries:
  an upper bound of what any one span can do). `query_blind` is the better of the two.
* Query swap: each multi-event query asked with the sentence of the next query of its video (its queries in a
  cycle, in their order) and scored against the original moment. A model that reads the query answers the other
  moment and fails; one that gives every query of a video the same answer scores as well as on the real queries.
* 95% bootstrap intervals, resampling videos with replacement (a video's queries are not independent), seeded.

Every IoU is [`grounding_ious`]'s: matched, clipped and rounded as [`score_grounding`] scores. Scores here are
fractions in [0, 1], not percent.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..data.raw_annotations import GroundingQuery
from .grounding import GROUNDING_THRESHOLDS, grounding_ious

__all__ = [
    "MULTI_EVENT_KEYS",
    "best_fixed_span",
    "bootstrap_interval",
    "first_event_predictions",
    "fixed_span_predictions",
    "grounding_report",
    "multi_event_queries",
    "swapped_queries",
]

# The figures about the queries of videos with several queries, and their intervals
MULTI_EVENT_KEYS = tuple(
    name
    for key in (
        "multi_event_miou",
        *(f"multi_event_r1@{threshold}" for threshold in GROUNDING_THRESHOLDS),
        "first_event_miou",
        "fixed_span_miou",
        "query_blind_miou",
        "query_swap_miou",
    )
    for name in (key, f"{key}_ci")
) + ("fixed_span",)
# Step of the grid of shares of the duration the best fixed span is searched on: VTimeLLM's 100 frame indices.
_FIXED_SPAN_STEP = 0.01


def multi_event_queries(references: Sequence[GroundingQuery]) -> list[GroundingQuery]:
    """The references of videos with at least two references, in their order."""
    counts: dict[str, int] = {}
    for reference in references:
        counts[reference.video_id] = counts.get(reference.video_id, 0) + 1
    return [reference for reference in references if counts[reference.video_id] >= 2]


def first_event_predictions(references: Sequence[GroundingQuery]) -> list[dict[str, Any]]:
    """For each reference, the moment of its video's earliest reference (by start, then end) as the prediction."""
    first: dict[str, tuple[float, float]] = {}
    for reference in references:
        span = (reference.start, reference.end)
        first[reference.video_id] = min(first.get(reference.video_id, span), span)
    return [_prediction(reference, first[reference.video_id]) for reference in references]


def fixed_span_predictions(references: Sequence[GroundingQuery], span: tuple[float, float]) -> list[dict[str, Any]]:
    """For each reference, `span` (start and end as shares of its video's duration) as the prediction."""
    _require_durations(references)
    return [
        _prediction(reference, (span[0] * reference.duration, span[1] * reference.duration)) for reference in references
    ]


def best_fixed_span(references: Sequence[GroundingQuery]) -> tuple[float, float]:
    """The span, as shares of the duration on a grid of hundredths, of highest mean (rounded) IoU over `references`
    when every one of them is answered with it; the earliest such span on ties."""
    _require_durations(references)
    if not references:
        raise ValueError("no references to search a fixed span on")
    grid = np.round(np.arange(0, 1 + _FIXED_SPAN_STEP / 2, _FIXED_SPAN_STEP), 2)
    starts, ends = np.meshgrid(grid, grid, indexing="ij")
    keep = starts < ends
    starts, ends = starts[keep][:, None], ends[keep][:, None]
    durations = np.array([reference.duration for reference in references])
    target_starts = np.array([reference.start for reference in references]) / durations
    target_ends = np.array([reference.end for reference in references]) / durations
    intersection = np.clip(np.minimum(ends, target_ends) - np.maximum(starts, target_starts), 0, None)
    union = (ends - starts) + (target_ends - target_starts) - intersection
    ious = np.round(np.where(target_ends > target_starts, intersection / union, 0.0), 2)
    best = int(np.argmax(ious.mean(axis=1)))
    return float(starts[best, 0]), float(ends[best, 0])


def swapped_queries(references: Sequence[GroundingQuery]) -> list[GroundingQuery]:
    """Each multi-event reference with the sentence of the next reference of its video (the last takes the first's),
    its moment unchanged: what a model that reads the query must get wrong."""
    by_video: dict[str, list[GroundingQuery]] = {}
    for reference in multi_event_queries(references):
        by_video.setdefault(reference.video_id, []).append(reference)
    return [
        replace(reference, query=video_references[(position + 1) % len(video_references)].query)
        for video_references in by_video.values()
        for position, reference in enumerate(video_references)
    ]


def bootstrap_interval(
    values: Sequence[float], groups: Sequence[str], seed: int = 0, resamples: int = 1000, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampling whole groups (videos) with replacement.

    Args:
        values: one value per query (an IoU, or 1/0 for R1@t).
        groups: the group (video id) of each value; the mean of a resample is over the values of the groups drawn.
        seed: seed of the resampling.
        resamples: number of resamples.
        confidence: share of the resampled means between the bounds.
    """
    if len(values) != len(groups) or not values:
        raise ValueError(f"need one group per value and at least one value, got {len(values)} and {len(groups)}")
    names = sorted(set(groups))
    index = {name: position for position, name in enumerate(names)}
    sums, counts = np.zeros(len(names)), np.zeros(len(names))
    for value, group in zip(values, groups):
        sums[index[group]] += value
        counts[index[group]] += 1
    drawn = np.random.default_rng(seed).integers(len(names), size=(resamples, len(names)))
    means = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def grounding_report(
    references: Sequence[GroundingQuery],
    predictions: Iterable[Mapping[str, Any]],
    control_predictions: Iterable[Mapping[str, Any]],
    swap_predictions: Iterable[Mapping[str, Any]],
    seed: int = 0,
    resamples: int = 1000,
) -> dict[str, Any]:
    """Every figure of the module docstring, with `<key>_ci` = [low, high] for each score.

    Args:
        references: the held-out queries.
        predictions: the model's answers to `references`.
        control_predictions: its answers to `references` with each video's frames shuffled.
        swap_predictions: its answers to [`swapped_queries`]`(references)`.
        seed, resamples: of the bootstrap intervals.

    Returns:
        Scores in [0, 1]: `miou`, `r1@t` (t in 0.3, 0.5, 0.7), `multi_event_miou`, `multi_event_r1@t`,
        `first_event_miou`, `fixed_span_miou`, `query_blind_miou`, `query_swap_miou`, `control_miou`; and `n`,
        `n_multi_event`, `fixed_span` (the best fixed span, as shares of the duration), `unparsed` and
        `control_unparsed` (answers that name no moment). Without a video of several queries, the figures about
        them (`MULTI_EVENT_KEYS`) are None.
    """
    predictions, control_predictions = list(predictions), list(control_predictions)
    multi = multi_event_queries(references)
    ious = grounding_ious(predictions, references)
    per_query = {"miou": (ious, references)}
    for threshold in GROUNDING_THRESHOLDS:
        per_query[f"r1@{threshold}"] = ([float(iou >= threshold) for iou in ious], references)
    per_query["control_miou"] = (grounding_ious(control_predictions, references), references)
    fixed_span = None
    if multi:
        multi_ious = grounding_ious(_answers_to(predictions, multi), multi)
        fixed_span = best_fixed_span(multi)
        first_event_ious = grounding_ious(first_event_predictions(multi), multi)
        fixed_span_ious = grounding_ious(fixed_span_predictions(multi, fixed_span), multi)
        swapped = swapped_queries(references)
        per_query["multi_event_miou"] = (multi_ious, multi)
        for threshold in GROUNDING_THRESHOLDS:
            per_query[f"multi_event_r1@{threshold}"] = ([float(iou >= threshold) for iou in multi_ious], multi)
        per_query.update(
            first_event_miou=(first_event_ious, multi),
            fixed_span_miou=(fixed_span_ious, multi),
            query_blind_miou=(max(first_event_ious, fixed_span_ious, key=sum), multi),
            # The swapped queries' answers, scored against the moments they did not ask about
            query_swap_miou=(grounding_ious(swap_predictions, swapped), swapped),
        )
    report: dict[str, Any] = {}
    for key, (values, queries) in per_query.items():
        report[key] = sum(values) / len(values)
        groups = [query.video_id for query in queries]
        report[f"{key}_ci"] = list(bootstrap_interval(values, groups, seed=seed, resamples=resamples))
    for key in MULTI_EVENT_KEYS:
        report.setdefault(key, None)
    report.update(
        fixed_span=list(fixed_span) if fixed_span else None,
        n=len(references),
        n_multi_event=len(multi),
        unparsed=sum(prediction["timestamp"] is None for prediction in predictions),
        control_unparsed=sum(prediction["timestamp"] is None for prediction in control_predictions),
    )
    return report


def _answers_to(predictions: Sequence[Mapping[str, Any]], references: Sequence[GroundingQuery]) -> list:
    """The predictions of `references`' `(video_id, query)` pairs."""
    wanted = {(reference.video_id, reference.query) for reference in references}
    return [prediction for prediction in predictions if (prediction["video_id"], prediction["query"]) in wanted]


def _prediction(reference: GroundingQuery, span: tuple[float, float]) -> dict[str, Any]:
    return {"video_id": reference.video_id, "query": reference.query, "timestamp": list(span)}


def _require_durations(references: Sequence[GroundingQuery]) -> None:
    missing = [reference for reference in references if reference.duration is None]
    if missing:
        raise ValueError(
            f"a fixed span is a share of the duration: {len(missing)} reference(s) have none, the first "
            f"{missing[0].video_id!r} ({missing[0].query!r})"
        )
