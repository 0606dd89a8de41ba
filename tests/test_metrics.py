"""Grounding and dense captioning metrics on hand-computed cases.

The captioning cases use an exact-match caption scorer, so that SODA_c and the tIoU averaging are checked without
Java; the tests at the end run the real COCO scorers (METEOR, CIDEr, PTB tokenizer), skip where Java is not
installed, and compare with the numbers of VTimeLLM's own evaluator on real ActivityNet videos.
"""

import json
import math
import random
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtimellm_hf.data.raw_annotations import (
    Event,
    GroundingQuery,
    Video,
    grounding_queries,
    read_activitynet_captions,
    read_charades_sta,
)
from vtimellm_hf.metrics import (
    CocoMeteor,
    parse_captioning_predictions,
    read_captioning_predictions,
    read_grounding_predictions,
    score_captioning,
    score_grounding,
    soda_c,
    temporal_iou,
    tiou_averaged_score,
)

# temporal_iou


@pytest.mark.parametrize(
    ("span", "other", "expected"),
    [
        ((0, 10), (0, 10), 1.0),
        ((0, 10), (5, 15), 5 / 15),
        ((0, 10), (0, 5), 0.5),
        ((0, 10), (10, 20), 0.0),  # touching spans share no time
        ((0, 10), (20, 30), 0.0),
        ((2, 4), (0, 10), 0.2),
        ((5, 5), (0, 10), 0.0),  # zero-length span inside another
        ((5, 5), (5, 5), 0.0),  # two identical points are not a match
        ((8, 2), (0, 10), 0.0),  # reversed span has no extent
    ],
)
def test_temporal_iou(span, other, expected):
    assert temporal_iou(span, other) == pytest.approx(expected)


spans = st.tuples(st.floats(0, 1e4), st.floats(0, 1e4))


@given(spans, spans)
def test_temporal_iou_is_symmetric_and_bounded(span, other):
    iou = temporal_iou(span, other)
    assert iou == temporal_iou(other, span)
    assert 0.0 <= iou <= 1.0


@given(st.floats(0, 1e4), st.floats(1e-3, 1e4))
def test_temporal_iou_of_a_span_with_itself_is_one(start, length):
    assert temporal_iou((start, start + length), (start, start + length)) == 1.0


# score_grounding


def prediction(video_id, query, timestamp, **extra):
    return {"video_id": video_id, "query": query, "timestamp": timestamp, **extra}


REFERENCES = [
    GroundingQuery("v1", "a", 0.0, 10.0, 20.0),
    GroundingQuery("v1", "b", 0.0, 10.0, 20.0),
    GroundingQuery("v2", "c", 10.0, 20.0, 20.0),
    GroundingQuery("v2", "d", 0.0, 10.0, 20.0),
    GroundingQuery("v3", "e", 0.0, 10.0, None),
]


def test_score_grounding_hand_computed():
    predictions = [
        prediction("v1", "a", [0, 10], answer="From 00 to 50."),  # IoU 1
        prediction("v1", "b", [5, 10]),  # IoU exactly 0.5: counts at 0.5 (>=)
        prediction("v2", "c", [15, 30]),  # clipped to [15, 20] of the 20 s video: IoU 0.5 (0.25 unclipped)
        prediction("v2", "d", None),  # unparsed: IoU 0
        # no prediction for v3 / "e": missing, IoU 0
    ]
    assert score_grounding(predictions, REFERENCES) == {
        "r1@0.3": 60.0,
        "r1@0.5": 60.0,
        "r1@0.7": 20.0,
        "miou": 40.0,
        "n": 5,
        "unparsed": 1,
        "missing": 1,
    }


def test_score_grounding_rounds_each_iou_to_two_decimals_as_the_original_unless_told():
    # IoU 69.65 / 100.5 = 0.6930 and 70 / 100.5 = 0.6965: rounded, the second counts at 0.7, the first does not
    references = [GroundingQuery("v", "a", 0.0, 100.5, 200.0), GroundingQuery("v", "b", 0.0, 100.5, 200.0)]
    predictions = [prediction("v", "a", [0, 69.65]), prediction("v", "b", [0, 70])]
    rounded = score_grounding(predictions, references)
    assert rounded["r1@0.7"] == 50.0 and rounded["miou"] == pytest.approx(100 * (0.69 + 0.70) / 2)
    exact = score_grounding(predictions, references, iou_decimals=None)
    assert exact["r1@0.7"] == 0.0 and exact["miou"] == pytest.approx(100 * (69.65 + 70) / 100.5 / 2)


def test_score_grounding_without_predictions_scores_zero():
    assert score_grounding([], REFERENCES) == {
        "r1@0.3": 0.0,
        "r1@0.5": 0.0,
        "r1@0.7": 0.0,
        "miou": 0.0,
        "n": 5,
        "unparsed": 0,
        "missing": 5,
    }


def test_score_grounding_clips_predictions():
    references = [GroundingQuery("v", "inside", 15.0, 20.0, 20.0), GroundingQuery("v", "no duration", 0.0, 10.0)]
    # Entirely after the end: clipped to the point [20, 20], which matches nothing.
    after_the_end = score_grounding([prediction("v", "inside", [25, 30])], references[:1])
    assert after_the_end["miou"] == 0.0
    # Without a duration only the start is clipped, to 0.
    assert score_grounding([prediction("v", "no duration", [-10, 10])], references[1:])["miou"] == 100.0


def test_score_grounding_matches_repeated_pairs_in_order():
    references = [GroundingQuery("v", "q", 0.0, 10.0, 30.0), GroundingQuery("v", "q", 20.0, 30.0, 30.0)]
    in_order = [prediction("v", "q", [0, 10]), prediction("v", "q", [20, 30])]
    swapped = in_order[::-1]
    assert score_grounding(in_order, references)["miou"] == 100.0
    assert score_grounding(swapped, references)["miou"] == 0.0
    assert score_grounding(in_order[:1], references)["missing"] == 1


def test_score_grounding_refuses_predictions_without_reference():
    predictions = [prediction("v1", "a", [0, 10]), prediction("v9", "zzz", [0, 1])]
    with pytest.raises(ValueError, match=r"1 prediction\(s\) match no reference .* prediction #1: video_id='v9'"):
        score_grounding(predictions, REFERENCES)
    repeated = [prediction("v1", "a", [0, 10]), prediction("v1", "a", [0, 10])]
    with pytest.raises(ValueError, match=r"the first is prediction #1: video_id='v1', query='a'"):
        score_grounding(repeated, REFERENCES)


def test_score_grounding_accepts_numpy_times_and_reversed_spans():
    references = REFERENCES[:1]
    assert score_grounding([prediction("v1", "a", [np.float32(0), np.float64(10)])], references)["miou"] == 100.0
    reversed_span = score_grounding([prediction("v1", "a", [10, 0])], references)
    assert reversed_span["miou"] == 0.0 and reversed_span["unparsed"] == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"video_id": "v1", "query": "a"}, r"prediction #0: missing field 'timestamp'"),
        (prediction("v1", "a", [1]), r"prediction #0: 'timestamp' must be \[start, end\] or null"),
        (prediction("v1", "a", "0 to 5"), r"'timestamp' must be \[start, end\] or null"),
        (prediction("v1", "a", [0, math.nan]), r"'timestamp' must hold two finite numbers"),
        (prediction("v1", "a", [True, 5]), r"'timestamp' must hold two finite numbers"),
        (prediction("v1", 3, [0, 5]), r"'video_id' and 'query' must be strings"),
        (["v1", "a", [0, 5]], r"prediction #0: expected an object, found list"),
    ],
)
def test_score_grounding_malformed_predictions(bad, message):
    with pytest.raises(ValueError, match=message):
        score_grounding([bad], REFERENCES)


def test_score_grounding_needs_references():
    with pytest.raises(ValueError, match="no references"):
        score_grounding([], [])


def test_read_grounding_predictions(tmp_path):
    path = tmp_path / "predictions.jsonl"
    lines = [prediction("v1", "a", [0, 10], answer="From 00 to 50."), prediction("v2", "d", None)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    assert read_grounding_predictions(path) == lines


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"video_id": "v1", "query": "a", "timestamp": null}\n{"video_id": "v1",\n', r"line 2: invalid JSON"),
        (b'{"video_id": "v1", "query": "a"}\n', r"line 1: missing field 'timestamp'"),
        (b'\n\n{"video_id": "v1", "query": "a", "timestamp": [0]}\n', r"line 3: 'timestamp' must be"),
        (b'{"video_id": "v1", "query": "caf\xe9", "timestamp": null}\n', r"line 1: not valid UTF-8 \(byte 0xe9 at"),
        (b'{"video_id": "v1", "video_id": "v2", "query": "a", "timestamp": null}\n', r"line 1: key 'video_id' appears"),
        (b"[1, 2]\n", r"record #0: expected an object, found int"),
    ],
)
def test_read_grounding_predictions_names_the_bad_line(tmp_path, content, message):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_grounding_predictions(path)
    assert str(path) in str(error.value)


def test_real_charades_references_score_themselves_perfectly(real_data):
    references = read_charades_sta(real_data / "charades_sta_test.txt")
    predictions = [prediction(query.video_id, query.query, [query.start, query.end]) for query in references]
    scores = score_grounding(predictions, references)
    assert scores == {"r1@0.3": 100.0, "r1@0.5": 100.0, "r1@0.7": 100.0, "miou": 100.0, "n": 3720} | {
        "unparsed": 0,
        "missing": 0,
    }


# Captioning with an exact-match caption scorer


def exact_match(references, hypotheses):
    """A caption scorer without Java: 1 when the hypothesis equals one of its references; the corpus score is
    the mean."""
    scores = {key: float(hypotheses[key] in references[key]) for key in references}
    return sum(scores.values()) / len(scores), scores


def lowercase(sentences):
    return [" ".join(sentence.lower().split()) for sentence in sentences]


def events(*triples):
    return [Event(*triple) for triple in triples]


# Two reference events; p1 lands on A with A's caption, p2 straddles both with B's caption (tIoU 1/3 with each).
REFERENCE_EVENTS = {"v1": events((0, 10, "a"), (10, 20, "b"))}
PREDICTED_EVENTS = {"v1": events((0, 10, "a"), (5, 15, "b"))}


def test_tiou_averaged_score_hand_computed():
    # tIoU 0.3: pairs (p1, A) = 1, (p2, A) = 0, (p2, B) = 1 -> 2/3. tIoU 0.5: (p1, A) = 1, p2 against the
    # unmatchable reference = 0 -> 1/2. Mean 7/12.
    assert tiou_averaged_score(PREDICTED_EVENTS, REFERENCE_EVENTS, exact_match, (0.3, 0.5)) == pytest.approx(7 / 12)
    # A second reference video without predictions scores 0 and halves the average.
    references = REFERENCE_EVENTS | {"v2": events((0, 5, "c"))}
    assert tiou_averaged_score(PREDICTED_EVENTS, references, exact_match, (0.3, 0.5)) == pytest.approx(7 / 24)


def test_captioning_pairs_fail_on_an_exact_threshold_as_in_densevid_eval():
    # tIoU of [0, 10] and [0, 20] is exactly 0.5; densevid_eval and SODA divide by union + 1e-8, so 0.5 - 5e-10.
    references = {"v": events((0, 20, "a"))}
    predictions = {"v": events((0, 10, "a"))}
    assert tiou_averaged_score(predictions, references, exact_match, (0.5,)) == 0.0
    assert tiou_averaged_score(predictions, references, exact_match, (0.5 - 1e-9,)) == 1.0
    # SODA_c weighs the pair by that tIoU: F = 2 T / 2.
    assert soda_c(predictions, references, exact_match) == pytest.approx(10 / (20 + 1e-8), rel=1e-12)


def test_tiou_averaged_score_runs_the_scorer_once_per_video_and_threshold():
    calls = []

    def recording_scorer(references, hypotheses):
        calls.append((dict(references), dict(hypotheses)))
        return exact_match(references, hypotheses)

    tiou_averaged_score(PREDICTED_EVENTS, REFERENCE_EVENTS, recording_scorer, (0.5,))
    assert calls == [({0: ["a"], 1: ["abc123"]}, {0: "a", 1: "b"})]


def test_soda_c_hand_computed():
    # Weights tIoU x match: (A, p1) = 1, (B, p2) = 1/3, the others 0; both pairs keep the order: T = 4/3,
    # precision = recall = T / 2, F = 2/3.
    assert soda_c(PREDICTED_EVENTS, REFERENCE_EVENTS, exact_match) == pytest.approx(2 / 3)


def test_soda_c_asks_the_scorer_with_the_roles_reversed_as_the_reference_evaluator():
    # The reference evaluator calls Meteor.compute_score(gts=predictions, res=reference): the reference sentence
    # is the hypothesis. A recall-like scorer (share of the reference words found in the hypothesis) tells the
    # two orders apart: the prediction "a b c d" holds all of the reference "a b" (1), the reference "a b" holds
    # half of the prediction (1/2).
    def recall(references, hypotheses):
        scores = {
            key: len(set(references[key][0].split()) & set(hypotheses[key].split())) / len(references[key][0].split())
            for key in references
        }
        return sum(scores.values()) / len(scores), scores

    references = {"v": events((0, 10, "a b"))}
    predictions = {"v": events((0, 10, "a b c d"))}
    # One pair, tIoU 1 / (1 + 1e-8), precision = recall = T: SODA_c = T = the reversed score, 1/2.
    assert soda_c(predictions, references, recall) == pytest.approx(0.5)
    assert soda_c(references, predictions, recall) == pytest.approx(1.0)


def test_soda_c_keeps_the_temporal_order():
    references = {"v": events((0, 10, "x"), (5, 15, "y"))}
    # Sorted by start, (A, p2) and (B, p1) would cross: only one of them, 1/3, counts. F = 2 (1/3) / 4.
    # Listing the predictions backwards must not change that: both sides are sorted by start first.
    backwards = {"v": events((5, 15, "x"), (0, 10, "y"))}
    assert soda_c(backwards, references, exact_match) == pytest.approx(1 / 6)


def test_soda_c_penalizes_redundant_predictions_where_densevid_does_not():
    references = {"v": events((0, 10, "a"))}
    three_copies = {"v": events((0, 10, "a"), (0, 10, "a"), (0, 10, "a"))}
    # One caption can be matched once: T = 1, precision 1/3, recall 1, F = 1/2.
    assert soda_c(three_copies, references, exact_match) == pytest.approx(0.5)
    assert tiou_averaged_score(three_copies, references, exact_match) == pytest.approx(1.0)


def test_soda_c_edge_cases():
    references = {"v": events((0, 10, "a")), "w": events((0, 10, "b"))}
    assert soda_c({}, references, exact_match) == 0.0
    assert soda_c({"v": [], "w": events((0, 10, "b"))}, references, exact_match) == pytest.approx(0.5)
    # Zero-length predictions overlap nothing, even at the same instant as a zero-length reference.
    points = {"v": events((5, 5, "a")), "w": events((0, 10, "b"))}
    assert soda_c(points, {"v": events((5, 5, "a")), "w": events((0, 10, "b"))}, exact_match) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no reference videos"):
        soda_c({}, {}, exact_match)


def submission(results):
    return {"version": "VERSION 1.0", "results": results, "external_data": {}}


VIDEOS = [
    Video("v1", 20.0, tuple(events((0, 10, "A man runs."), (10, 20, "He stops.")))),
    Video("v2", 8.0, tuple(events((0, 8, "A dog barks.")))),
]


def test_score_captioning_with_pluggable_scorers():
    predictions = submission(
        {
            "v1": [
                {"sentence": "a man runs.", "timestamp": [0, 10]},
                {"sentence": "He   stops.", "timestamp": [10, 20]},
            ]
        }
    )
    scores = score_captioning(predictions, VIDEOS, meteor=exact_match, cider=exact_match, tokenizer=lowercase)
    # v1 is perfect on every metric, v2 has no predictions: half of everything (SODA_c's perfect tIoU is
    # 1 / (1 + 1e-8), as in the reference evaluator).
    assert scores == pytest.approx({"soda_c": 50.0, "cider": 50.0, "meteor": 50.0, "n": 2, "missing": 1}, abs=1e-6)
    nothing = score_captioning(submission({}), VIDEOS, meteor=exact_match, cider=exact_match, tokenizer=lowercase)
    assert nothing == {"soda_c": 0.0, "cider": 0.0, "meteor": 0.0, "n": 2, "missing": 2}


def test_score_captioning_tokenizes_each_distinct_sentence_once_after_replacing_non_ascii():
    seen = []

    def recording_tokenizer(sentences):
        seen.append(list(sentences))
        return lowercase(sentences)

    predictions = submission(
        {"v2": [{"sentence": "A dog barks.", "timestamp": [0, 8]}, {"sentence": "Café", "timestamp": [0, 1]}]}
    )
    score_captioning(predictions, VIDEOS, meteor=exact_match, cider=exact_match, tokenizer=recording_tokenizer)
    assert seen == [["A dog barks.", "Caf ", "A man runs.", "He stops."]]


def test_score_captioning_refuses_predictions_for_unknown_videos():
    predictions = submission({"v1": [], "v_unknown": [{"sentence": "x", "timestamp": [0, 1]}]})
    with pytest.raises(ValueError, match=r"1 predicted video\(s\) are not among the references, for instance 'v_un"):
        score_captioning(predictions, VIDEOS, meteor=exact_match, cider=exact_match, tokenizer=lowercase)


def test_score_captioning_refuses_repeated_or_absent_references():
    with pytest.raises(ValueError, match=r"reference video 'v1' appears more than once"):
        score_captioning(
            submission({}), VIDEOS + VIDEOS[:1], meteor=exact_match, cider=exact_match, tokenizer=lowercase
        )
    with pytest.raises(ValueError, match=r"no reference videos"):
        score_captioning(submission({}), [], meteor=exact_match, cider=exact_match, tokenizer=lowercase)


@pytest.mark.parametrize(
    ("predictions", "message"),
    [
        ({"v1": []}, r'predictions must be an object with a "results" object'),
        (submission({"v1": {"sentence": "x"}}), r"results\['v1'\] must be a list of events, found dict"),
        (submission({"v1": ["x"]}), r"results\['v1'\]\[0\] must be an object, found str"),
        (submission({"v1": [{"timestamp": [0, 1]}]}), r"results\['v1'\]\[0\]: 'sentence' must be a string"),
        (submission({"v1": [{"sentence": "x", "timestamp": [0]}]}), r"results\['v1'\]\[0\]: 'timestamp' must be"),
        (submission({"v1": [{"sentence": "x", "timestamp": [0, None]}]}), r"'timestamp' must hold two finite"),
    ],
)
def test_malformed_captioning_predictions(predictions, message):
    with pytest.raises(ValueError, match=message):
        parse_captioning_predictions(predictions)


def test_read_captioning_predictions(tmp_path):
    path = tmp_path / "dvc.json"
    predictions = submission({"v1": [{"sentence": "A man runs.", "timestamp": [0, 10]}]})
    path.write_text(json.dumps(predictions), encoding="utf-8")
    assert read_captioning_predictions(path) == predictions
    path.write_text('{"results": {"v1": [{"sentence": "x", "timestamp": [0]}]}}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"dvc.json: results\['v1'\]\[0\]: 'timestamp' must be"):
        read_captioning_predictions(path)
    path.write_text('{"results": {\n"v1": [,]}}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"dvc.json, line 2, column 8: invalid JSON"):
        read_captioning_predictions(path)
    path.write_bytes(b'{"results": {"v1": [{"sentence": "caf\xe9", "timestamp": [0, 1]}]}}')
    with pytest.raises(ValueError, match=r"dvc.json, line 1: not valid UTF-8 \(byte 0xe9\)"):
        read_captioning_predictions(path)


def test_default_scorers_say_when_java_is_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"no `java` was found on PATH"):
        score_captioning(submission({}), VIDEOS)


def test_real_activitynet_references_score_themselves_perfectly_on_soda(real_data):
    videos = read_activitynet_captions(real_data / "activitynet_captions_val_coco_format.json")
    references = {video.video_id: list(video.events) for video in videos}
    assert soda_c(references, references, exact_match) == pytest.approx(1.0)
    assert len(grounding_queries(videos)) == sum(map(len, references.values()))


# The real COCO scorers


@pytest.fixture(scope="module")
def coco_meteor():
    """One METEOR process for the module: loading its paraphrase table is most of these tests' time."""
    if shutil.which("java") is None:
        pytest.skip("METEOR and the PTB tokenizer need Java, not on PATH")
    pytest.importorskip("pycocoevalcap", reason="the default caption scorers need pycocoevalcap")
    return CocoMeteor()


def test_real_coco_scorers_on_a_tiny_case(coco_meteor):
    references = [
        Video(
            "v1", 30.0, tuple(events((0, 10, "A man is riding a horse."), (10, 30, "The man falls off the horse.")))
        ),
        Video("v2", 12.0, tuple(events((0, 6, "A woman chops onions."), (6, 12, "She puts them in a pan.")))),
    ]
    perfect = submission(
        {
            video.video_id: [
                {"sentence": event.sentence, "timestamp": [event.start, event.end]} for event in video.events
            ]
            for video in references
        }
    )
    wrong = submission(
        {
            "v1": [{"sentence": "Two kids play football.", "timestamp": [0, 10]}],
            "v2": [{"sentence": "A dog barks at a car.", "timestamp": [0, 12]}],
        }
    )
    perfect_scores = score_captioning(perfect, references, meteor=coco_meteor)
    wrong_scores = score_captioning(wrong, references, meteor=coco_meteor)
    assert perfect_scores["n"] == wrong_scores["n"] == 2
    # METEOR 1.5 gives an exact copy 1; CIDEr-D gives it 10 (its scale), once a video has two pairs to draw
    # document frequencies from.
    assert perfect_scores["soda_c"] == pytest.approx(100.0)
    assert perfect_scores["meteor"] == pytest.approx(100.0)
    assert perfect_scores["cider"] == pytest.approx(1000.0)
    assert wrong_scores["cider"] == 0.0
    assert 0 < wrong_scores["soda_c"] < 2 and 0 < wrong_scores["meteor"] < 2


def test_soda_c_equals_meteor_with_the_reference_sentence_as_hypothesis(coco_meteor):
    prediction_sentence = "a man in a red shirt is riding a brown horse along the beach"
    reference_sentence = "a man rides a horse"
    # CocoMeteor(references, hypotheses) hands them to pycocoevalcap's compute_score(gts, res) as documented:
    # asked both ways, METEOR differs (it is asymmetric).
    as_documented = coco_meteor({0: [reference_sentence]}, {0: prediction_sentence})[1][0]
    as_the_reference_evaluator = coco_meteor({0: [prediction_sentence]}, {0: reference_sentence})[1][0]
    assert abs(as_documented - as_the_reference_evaluator) > 0.1
    # One video, one pair with tIoU 8 / 10: SODA_c = T = 0.8 x METEOR of the pair, asked the reference's way.
    predictions = {"v": events((0, 8, prediction_sentence))}
    score = soda_c(predictions, {"v": events((0, 10, reference_sentence))}, coco_meteor)
    assert score == pytest.approx(0.8 * as_the_reference_evaluator, rel=1e-6)


def perturbed_model_like_predictions(videos, seed):
    """Predictions as `evaluate captioning` writes them, from the references: events dropped, words dropped,
    replaced and shuffled, times shifted and snapped to the model's grid (s * d / 100, (e + 1) * d / 100, which
    puts some pairs exactly on a tIoU threshold); in about a third of the videos, an event with a reference's
    times and a longer caption."""
    rng = random.Random(seed)
    filler = ["man", "woman", "the", "a", "is", "ball", "playing", "dog", "then", "water", "shown", "camera"]
    results = {}
    for video in videos:
        duration, predicted = video.duration, []
        for event in video.events:
            if rng.random() < 0.15:
                continue
            kept = [word for word in event.sentence.split() if rng.random() > 0.15]
            words = [rng.choice(filler) if rng.random() < 0.3 else word for word in kept]
            if rng.random() < 0.3:
                rng.shuffle(words)
            shift = rng.uniform(-0.2, 0.2) * duration
            start = min(max(round((event.start + shift) / duration * 100), 0), 99)
            end = min(max(round((event.end + shift) / duration * 100) - 1, start), 99)
            timestamp = [start * duration / 100, (end + 1) * duration / 100]
            predicted.append({"sentence": " ".join(words) or "something", "timestamp": timestamp})
        if rng.random() < 0.33:
            copied = rng.choice(video.events)
            predicted.append({"sentence": "a man " + copied.sentence.lower(), "timestamp": [copied.start, copied.end]})
        results[video.video_id] = sorted(predicted, key=lambda event: event["timestamp"][0])
    return submission(results)


@pytest.mark.slow
def test_scores_equal_vtimellms_evaluator_on_real_activitynet_videos(real_data, coco_meteor):
    videos = read_activitynet_captions(real_data / "activitynet_captions_val_coco_format.json")[:150]
    # Seed 5 puts 2 of the 8,488 (prediction, reference, threshold) triples exactly on a threshold.
    scores = score_captioning(perturbed_model_like_predictions(videos, seed=5), videos, meteor=coco_meteor)
    # VTimeLLM's evaluator (vtimellm/eval/metric.py: its vendored SODA and densevid_eval, random seed 0) on the
    # same references and predictions, run once outside this project (its SODA licence forbids copying it here).
    reference = {"soda_c": 17.928973978543645, "cider": 147.3907207907309, "meteor": 20.897658798919334}
    assert scores == pytest.approx(reference | {"n": 150, "missing": 0}, rel=1e-9)
