"""UnAV-100's dense localisation mAP against cases worked by hand."""

import pytest

from vtimellm_hf.metrics.localization import Event, average_precision, localization_map, temporal_iou


def test_temporal_iou():
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 10), (10, 20)) == 0.0
    assert temporal_iou((20, 27.5), (20, 30)) == pytest.approx(0.75)
    assert temporal_iou((3, 3), (3, 3)) == 0.0


def test_map_over_classes_and_thresholds_by_hand():
    truth = [Event("a", "dog", 0, 10), Event("a", "dog", 20, 30), Event("a", "siren", 5, 15)]
    predictions = [
        Event("b", "dog", 0, 5, score=0.95),    # a video without dogs: false positive
        Event("a", "dog", 0, 10, score=0.9),    # tIoU 1 with the first dog
        Event("a", "dog", 20, 27.5, score=0.8),  # tIoU 0.75 with the second
        Event("a", "dog", 0, 10, score=0.7),    # the first dog again: taken, false positive
    ]
    # dog at 0.5-0.7: FP, TP, TP, FP -> precision 0, 1/2, 2/3, 1/2 at recall 0, 1/2, 1, 1;
    #   envelope 2/3, 2/3, 2/3, 1/2 -> AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3
    # dog at 0.8-0.9: FP, TP, FP, FP -> precision 0, 1/2, 1/3, 1/4 at recall 0, 1/2, 1/2, 1/2 -> AP = 1/2 * 1/2
    # siren: no prediction -> AP 0
    assert average_precision(truth[:2], predictions, 0.7) == pytest.approx(2 / 3)
    assert average_precision(truth[:2], predictions, 0.8) == pytest.approx(1 / 4)
    scores = localization_map(truth, predictions)
    expected = {"mAP@0.5": 100 / 3, "mAP@0.6": 100 / 3, "mAP@0.7": 100 / 3, "mAP@0.8": 12.5, "mAP@0.9": 12.5,
                "average_mAP": (3 * 100 / 3 + 2 * 12.5) / 5}
    assert scores == pytest.approx(expected)


def test_highest_overlap_untaken_event_and_ties_in_given_order():
    truth = [Event("a", "x", 0, 10), Event("a", "x", 8, 20)]
    # The first takes the event it overlaps most (tIoU 0.9, not 1/20); the second overlaps that one at 0.9 and the
    # other at 2/19: a false positive at 0.5
    first, second = Event("a", "x", 0, 9, 0.9), Event("a", "x", 1, 10, 0.8)
    assert average_precision(truth, [first, second], 0.5) == pytest.approx(1 / 2)  # precision 1 at recall 1/2
    # Equal scores keep the given order (an LLM's answer has no scores)
    miss, hit = Event("b", "x", 0, 10), Event("a", "x", 0, 10)
    assert average_precision(truth[:1], [miss, hit], 0.5) == pytest.approx(1 / 2)
    assert average_precision(truth[:1], [hit, miss], 0.5) == pytest.approx(1.0)


def test_refuses_what_has_no_score():
    with pytest.raises(ValueError, match="No ground-truth events"):
        localization_map([], [Event("a", "x", 0, 1)])
    with pytest.raises(ValueError, match="ends before it starts"):
        localization_map([Event("a", "x", 5, 1)], [])
