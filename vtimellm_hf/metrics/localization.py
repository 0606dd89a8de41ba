"""Dense audio-visual event localisation scored as UnAV-100 scores it: mean average precision over the event classes at
temporal IoU thresholds 0.5, 0.6, 0.7, 0.8, 0.9, and their average (the ActivityNet detection protocol, which
UnAV-100's evaluation adopts).

For one class and one threshold, the predictions of that class over all videos are taken by descending score (ties
in the order given: an LLM's events have no score, so they keep the order of its answer); each is a true positive
when some ground-truth event of its video and class that no earlier prediction took overlaps it with tIoU at least
the threshold (of those, the one of highest tIoU), else a false positive. Precision and recall after each prediction
give the average precision as the area under the precision envelope (each precision raised to the best precision at
any higher recall; recall 0 to the first recall, and beyond the last recall, count precision 0). A class without
predictions has AP 0; classes are those of the ground truth. mAP is the mean over classes.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["UNAV_TIOU_THRESHOLDS", "Event", "average_precision", "localization_map", "temporal_iou"]

UNAV_TIOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Event:
    """One event of a video: its class, start and end in seconds, and a confidence (predictions only)."""

    video_id: str
    label: str
    start: float
    end: float
    score: float = 1.0


def temporal_iou(first: tuple[float, float], second: tuple[float, float]) -> float:
    """Intersection over union of two `(start, end)` spans; 0 when they do not overlap or both are empty."""
    intersection = max(0.0, min(first[1], second[1]) - max(first[0], second[0]))
    union = (first[1] - first[0]) + (second[1] - second[0]) - intersection
    return intersection / union if union > 0 else 0.0


def average_precision(ground_truth: Sequence[Event], predictions: Sequence[Event], threshold: float) -> float:
    """AP of one class at one tIoU threshold (the events given are that class's; see the module's docstring)."""
    if not ground_truth:
        raise ValueError("average_precision needs the ground-truth events of the class: its recall is undefined.")
    by_video = defaultdict(list)
    for index, event in enumerate(ground_truth):
        by_video[event.video_id].append(index)
    taken = set()
    true_positives = []
    # sorted() is stable: equal scores keep the given order
    for prediction in sorted(predictions, key=lambda event: -event.score):
        span = (prediction.start, prediction.end)
        overlaps = [(temporal_iou(span, (ground_truth[i].start, ground_truth[i].end)), i)
                    for i in by_video.get(prediction.video_id, ())]  # fmt: skip
        # The untaken event of highest tIoU, if it reaches the threshold
        overlaps.sort(key=lambda pair: -pair[0])
        match = next((i for overlap, i in overlaps if overlap >= threshold and i not in taken), None)
        if match is not None:
            taken.add(match)
        true_positives.append(match is not None)
    precisions, recalls, found = [], [], 0
    for count, hit in enumerate(true_positives, start=1):
        found += hit
        precisions.append(found / count)
        recalls.append(found / len(ground_truth))
    # The envelope: precision at each point raised to the best at any later (higher-recall) point
    envelope = [*precisions, 0.0]
    for index in range(len(envelope) - 2, -1, -1):
        envelope[index] = max(envelope[index], envelope[index + 1])
    area, previous_recall = 0.0, 0.0
    for recall, precision in zip(recalls, envelope):
        area += (recall - previous_recall) * precision
        previous_recall = recall
    return area


def localization_map(
    ground_truth: Iterable[Event],
    predictions: Iterable[Event],
    thresholds: Sequence[float] = UNAV_TIOU_THRESHOLDS,
) -> dict[str, float]:
    """
    UnAV-100's dense localisation scores: `{"mAP@0.5": ..., ..., "mAP@0.9": ..., "average_mAP": ...}`, in percent.

    Args:
        ground_truth: every annotated event of the evaluated videos.
        predictions: the predicted events (a prediction of a class absent from the ground truth counts nowhere).
        thresholds: the tIoU thresholds (UnAV-100: 0.5 to 0.9 by 0.1).
    """
    truth_by_class, predicted_by_class = defaultdict(list), defaultdict(list)
    for event in ground_truth:
        if not event.end >= event.start:
            raise ValueError(f"Ground-truth event {event} ends before it starts.")
        truth_by_class[event.label].append(event)
    if not truth_by_class:
        raise ValueError("No ground-truth events: mAP is undefined.")
    for event in predictions:
        predicted_by_class[event.label].append(event)
    scores = {}
    for threshold in thresholds:
        per_class = [average_precision(events, predicted_by_class.get(label, []), threshold)
                     for label, events in truth_by_class.items()]  # fmt: skip
        scores[f"mAP@{threshold:g}"] = 100 * sum(per_class) / len(per_class)
    scores["average_mAP"] = sum(scores.values()) / len(thresholds)
    return scores
