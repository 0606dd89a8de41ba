"""The figures that tell whether grounding reads the query (`vtimellm_hf.metrics.grounding_report`), against hand
computations and brute force."""

import itertools
import math
import random

import pytest

from vtimellm_hf.data.raw_annotations import GroundingQuery
from vtimellm_hf.metrics import grounding_ious, temporal_iou
from vtimellm_hf.metrics.grounding_report import (
    MULTI_EVENT_KEYS,
    best_fixed_span,
    bootstrap_interval,
    first_event_predictions,
    fixed_span_predictions,
    grounding_report,
    multi_event_queries,
    swapped_queries,
)

REFERENCES = [
    GroundingQuery("a", "a red circle appears", 0.0, 4.0, 10.0),
    GroundingQuery("a", "a blue square appears", 5.0, 10.0, 10.0),
    GroundingQuery("b", "x", 10.0, 20.0, 20.0),
    GroundingQuery("b", "y", 2.0, 6.0, 20.0),
    GroundingQuery("b", "z", 4.0, 12.0, 20.0),
    GroundingQuery("c", "solo", 1.0, 3.0, 10.0),
]
MULTI = REFERENCES[:5]


def answers(pairs):
    return [{"video_id": video_id, "query": query, "timestamp": span} for video_id, query, span in pairs]


def test_grounding_ious_scores_each_reference_as_score_grounding_does():
    predictions = answers([("a", "a red circle appears", [0, 2]), ("b", "y", None), ("c", "solo", [1, 3])])
    # [0, 2] vs [0, 4]: 0.5; unparsed: 0; missing: 0; exact: 1
    assert grounding_ious(predictions, REFERENCES) == [0.5, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_multi_event_queries_are_those_of_videos_with_several():
    assert multi_event_queries(REFERENCES) == MULTI


def test_first_event_answers_each_query_with_its_videos_earliest_moment():
    predicted = [prediction["timestamp"] for prediction in first_event_predictions(MULTI)]
    assert predicted == [[0.0, 4.0], [0.0, 4.0], [2.0, 6.0], [2.0, 6.0], [2.0, 6.0]]
    # a: 1, 0; b: [2, 6] vs [10, 20] 0, itself 1, vs [4, 12] 2/10
    assert grounding_ious(first_event_predictions(MULTI), MULTI) == [1.0, 0.0, 0.0, 1.0, 0.2]


def test_fixed_span_is_a_share_of_each_duration():
    predicted = [prediction["timestamp"] for prediction in fixed_span_predictions(MULTI, (0.5, 1.0))]
    assert predicted == [[5.0, 10.0], [5.0, 10.0], [10.0, 20.0], [10.0, 20.0], [10.0, 20.0]]
    with pytest.raises(ValueError, match="share of the duration: 1 reference"):
        fixed_span_predictions([GroundingQuery("v", "q", 0.0, 1.0)], (0.0, 1.0))


def test_best_fixed_span_is_the_best_span_of_the_hundredths_grid_by_brute_force():
    rng = random.Random(3)
    references = []
    for number in range(12):
        duration = float(rng.randint(5, 40))
        start, end = sorted(rng.sample(range(101), 2))
        references.append(GroundingQuery(f"v{number}", "q", start * duration / 100, end * duration / 100, duration))
    # A coarser brute force in plain Python, then the best of the fine grid must do at least as well
    best_coarse = max(
        sum(
            round(temporal_iou((start / 20 * r.duration, end / 20 * r.duration), (r.start, r.end)), 2)
            for r in references
        )
        for start, end in itertools.combinations(range(21), 2)
    )
    span = best_fixed_span(references)
    found = sum(grounding_ious(fixed_span_predictions(references, span), references))
    assert found >= best_coarse - 1e-9
    # ... and no span of the fine grid does better
    for start, end in itertools.combinations(range(0, 101, 7), 2):
        other = sum(grounding_ious(fixed_span_predictions(references, (start / 100, end / 100)), references))
        assert other <= found + 1e-9


def test_best_fixed_span_of_one_reference_is_that_reference():
    assert best_fixed_span([GroundingQuery("v", "q", 2.0, 6.0, 10.0)]) == (0.2, 0.6)


def test_swapped_queries_ask_the_next_sentence_of_the_video_for_the_same_moment():
    swapped = swapped_queries(REFERENCES)
    assert [(query.video_id, query.query, query.start, query.end) for query in swapped] == [
        ("a", "a blue square appears", 0.0, 4.0),
        ("a", "a red circle appears", 5.0, 10.0),
        ("b", "y", 10.0, 20.0),
        ("b", "z", 2.0, 6.0),
        ("b", "x", 4.0, 12.0),
    ]


def test_bootstrap_interval_of_constant_values_is_that_value():
    assert bootstrap_interval([0.3] * 10, list("abcdefghij")) == pytest.approx((0.3, 0.3))


def test_bootstrap_interval_matches_the_normal_approximation_on_independent_values():
    rng = random.Random(0)
    values = [rng.random() for _ in range(400)]
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1) / len(values))
    low, high = bootstrap_interval(values, [str(number) for number in range(400)], seed=1, resamples=4000)
    assert low == pytest.approx(mean - 1.96 * spread, abs=0.2 * spread)
    assert high == pytest.approx(mean + 1.96 * spread, abs=0.2 * spread)


def test_bootstrap_interval_resamples_whole_groups_and_is_seeded():
    rng = random.Random(1)
    values = [rng.random() for _ in range(50)]
    singles = bootstrap_interval(values, [str(number) for number in range(50)], seed=2)
    # Each value twice in its group: the same groups drawn, the same means, the same interval (not a narrower one)
    doubled = bootstrap_interval(
        [value for value in values for _ in range(2)], [str(number) for number in range(50) for _ in range(2)], seed=2
    )
    assert doubled == pytest.approx(singles)
    assert bootstrap_interval(values, [str(number) for number in range(50)], seed=2) == singles
    assert bootstrap_interval(values, [str(number) for number in range(50)], seed=3) != singles


def test_report_of_a_model_that_answers_every_query_with_the_first_event():
    first_event = {("a",): [0.0, 4.0], ("b",): [2.0, 6.0], ("c",): [1.0, 3.0]}
    predictions = answers((r.video_id, r.query, first_event[r.video_id,]) for r in REFERENCES)
    swap = answers((r.video_id, r.query, first_event[r.video_id,]) for r in swapped_queries(REFERENCES))
    control = answers((r.video_id, r.query, [0.0, 1.0]) for r in REFERENCES)
    report = grounding_report(REFERENCES, predictions, control, swap)
    # Multi-event IoUs 1, 0, 0, 1, 0.2 (as the first-event rule); the single-event query 1
    assert report["multi_event_miou"] == pytest.approx(2.2 / 5)
    assert report["first_event_miou"] == pytest.approx(2.2 / 5)
    assert report["miou"] == pytest.approx(3.2 / 6)
    assert report["r1@0.3"] == pytest.approx(3 / 6)
    assert report["multi_event_r1@0.3"] == pytest.approx(2 / 5)
    # The swapped answers are the same spans, scored against the same moments
    assert report["query_swap_miou"] == pytest.approx(2.2 / 5)
    assert report["query_blind_miou"] == max(report["first_event_miou"], report["fixed_span_miou"])
    # control: [0, 1] vs a [0, 4]: 0.25; vs c [1, 3]: 0; the rest 0
    assert report["control_miou"] == pytest.approx(0.25 / 6)
    assert (report["n"], report["n_multi_event"], report["unparsed"]) == (6, 5, 0)
    for key in ("miou", "multi_event_miou", "query_blind_miou", "query_swap_miou", "control_miou", "r1@0.7"):
        low, high = report[f"{key}_ci"]
        assert low <= report[key] <= high


def test_report_of_a_model_that_reads_the_query_fails_the_swap():
    predictions = answers((r.video_id, r.query, [r.start, r.end]) for r in REFERENCES)
    moments = {(r.video_id, r.query): [r.start, r.end] for r in REFERENCES}
    swap = answers((r.video_id, r.query, moments[r.video_id, r.query]) for r in swapped_queries(REFERENCES))
    report = grounding_report(REFERENCES, predictions, predictions, swap)
    assert report["miou"] == report["multi_event_miou"] == 1.0
    # Asked about the other moment, scored against the original: a 0, 0; b [10, 20] vs [2, 6] 0,
    # [4, 12] vs [10, 20] 2/16 rounded to 0.12, [2, 6] vs [4, 12] 0.2
    assert report["query_swap_miou"] == pytest.approx((0.12 + 0.2) / 5)
    assert report["multi_event_miou_ci"] == [1.0, 1.0]


def test_report_without_a_video_of_several_queries_leaves_their_figures_out():
    single = [REFERENCES[-1]]
    report = grounding_report(single, answers([("c", "solo", [1.0, 2.0])]), [], [])
    # [1, 2] vs [1, 3]: 0.5; no control answer: 0
    assert (report["miou"], report["r1@0.5"], report["control_miou"], report["n_multi_event"]) == (0.5, 1.0, 0.0, 0)
    assert all(report[key] is None for key in MULTI_EVENT_KEYS)
