"""Dense video captioning metrics: SODA_c, and CIDEr and METEOR averaged over tIoU thresholds.

Predictions use the ActivityNet challenge format, `{"results": {"v_ID": [{"sentence": str, "timestamp": [s, e]},
...]}}`, in seconds; references are [`Video`]s (for instance from [`read_activitynet_captions`]).

**CIDEr and METEOR** follow densevid_eval, the ActivityNet Captions scorer VTimeLLM uses. For each tIoU threshold
t in (0.3, 0.5, 0.7, 0.9) and each reference video, every prediction is paired with every reference event whose
tIoU with it is >= t; a prediction that reaches no event is paired with a reference no caption can match. The
caption scorer is then run once per video on that video's pairs (so CIDEr's document frequencies come from the
video's own pairs, and METEOR is its corpus-level score over them, not a mean of pair scores), videos are
averaged, and thresholds are averaged.

**SODA_c** follows its paper (Fujita et al., "SODA: Story Oriented Dense Video Captioning Evaluation Framework",
ECCV 2020) and the reference evaluator behind the published numbers (the SODA code VTimeLLM and its peers vendor;
its licence forbids copying, so this is written from the paper and checked against its output). Per video,
predictions and reference events are each sorted by start time (ties keep their order) and every (reference,
prediction) pair is weighted by tIoU x METEOR of the two sentences. Dynamic programming finds the matching of
largest total weight among those that keep both orders (no two matched pairs cross, each caption used at most
once). With that total T, precision is T / #predictions, recall is T / #references and SODA_c is their
F-measure, 2T / (#predictions + #references); videos are averaged.

Conventions (each one changes numbers):

* METEOR in SODA_c scores each pair with the roles reversed, as the reference evaluator does: it calls the COCO
  tools' `Meteor.compute_score(gts, res)` with the predictions as `gts` and the reference sentence as `res`, so
  the reference sentence is METEOR's hypothesis and the predicted sentence its only reference. METEOR is
  asymmetric (recall weighs 9 times precision), so the order changes the numbers: on 150 ActivityNet val videos
  with model-like predictions (`tests/test_metrics.py`), SODA_c is 17.93 in this order, as VTimeLLM's evaluator
  gives, and 17.60 in the documented order. No documented-order variant is offered, for want of a user: the
  SODA code (fujiso/SODA) and every vendored copy found (VTimeLLM's among them) make the same call. The
  tIoU-averaged METEOR uses the documented order, as densevid_eval does.
* tIoU is densevid_eval's (and SODA's): intersection / (union + 1e-8), so a pair whose exact tIoU is a threshold
  (a prediction [0, 10] against a reference [0, 20] at 0.5) is not paired, and a perfect match weighs
  1 - 1e-8 in SODA_c; a zero-length or reversed span matches nothing. Such ties come with the model's answers,
  whose times are multiples of duration / 100 and often start at 0 or end at the duration as references do:
  on the same 150 videos, 2 of 8,488 (prediction, reference, threshold) triples sit on a threshold, and exact
  ties would give CIDEr 147.26 and METEOR 20.87 instead of densevid_eval's 147.39 and 20.90.
* A prediction that reaches no event is paired with a fixed token no caption contains; densevid_eval draws a
  random string of 10 to 20 letters instead. That changes nothing (it is not the source of CIDEr gaps): the
  string's n-grams are in no hypothesis, so no CIDEr-D document frequency or other pair moves; densevid_eval
  gives CIDEr 147.3907207907309 on those videos with random seeds 0, 1 and 2 and with this fixed token alike.
* Times are seconds as given. Turning the model's frame indices into seconds (start = s * duration / 100,
  end = (e + 1) * duration / 100 for captioning in the original) happens before, not here; neither predictions
  nor references are clipped to the duration (densevid_eval does not clip).
* No merging of repeated captions happens here. VTimeLLM's script merges consecutive captions that are nearly
  identical (difflib ratio > 0.98) and adjacent (within one frame index) before converting indices to seconds;
  that step belongs with whatever turns replies into events, and it raises the scores.
* Characters outside ASCII become spaces before tokenization, as in densevid_eval and SODA; the default
  tokenizer is the PTB tokenizer of the COCO caption tools (lower case, punctuation removed).
* densevid_eval keeps the first 1,000 predictions of a video; nothing is cut here.
* The average is over all reference videos: one absent from the predictions scores 0 on every metric and is
  counted in `missing`; one present with an empty list scores 0 too. VTimeLLM's script averages over the videos
  it has predictions for; `evaluate captioning` writes every video (an empty list where the answer names no
  event), so the two agree on its output while `missing` is 0. A prediction for a video that is not among the
  references raises a `ValueError` rather than being dropped (densevid_eval ignores it).
* The reference SODA evaluator scores 0 for a video whose matching its recursive dynamic programming cannot
  finish (about 1,000 predictions and references together, Python's recursion limit); nothing is cut here.

The caption scorers are pluggable: a [`CaptionScorer`] takes `references` (`{key: [reference, ...]}`) and
`hypotheses` (`{key: hypothesis}`) of tokenized sentences and returns `(corpus_score, {key: score})`, like
`compute_score` of the COCO caption tools. The defaults ([`CocoMeteor`], [`CocoCider`], [`ptb_tokenize`]) need
`pycocoevalcap` and Java.
"""

import math
import numbers
import os
import shutil
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from ..data.raw_annotations import Event, Video
from ..files import read_json

__all__ = [
    "DENSEVID_TIOUS",
    "CaptionScorer",
    "CocoCider",
    "CocoMeteor",
    "Tokenizer",
    "parse_captioning_predictions",
    "ptb_tokenize",
    "read_captioning_predictions",
    "score_captioning",
    "soda_c",
    "tiou_averaged_score",
]

DENSEVID_TIOUS = (0.3, 0.5, 0.7, 0.9)

CaptionScorer = Callable[
    [Mapping[Hashable, Sequence[str]], Mapping[Hashable, str]], tuple[float, Mapping[Hashable, float]]
]
"""`scorer(references, hypotheses) -> (corpus_score, {key: score})` on tokenized sentences."""

Tokenizer = Callable[[Sequence[str]], Sequence[str]]
"""`tokenizer(sentences) -> tokenized sentences`, one for one, called once on every sentence to score."""

# Paired with a prediction that overlaps no reference event enough (densevid_eval uses a random string of 10 to 20
# letters; the module docstring shows that this changes nothing): no caption shares a word with it, so the pair
# scores 0 yet still counts in the video's score.
_UNMATCHED_REFERENCE = "abc123"


def score_captioning(
    predictions: Mapping[str, Any],
    references: Sequence[Video],
    *,
    tious: Sequence[float] = DENSEVID_TIOUS,
    meteor: CaptionScorer | None = None,
    cider: CaptionScorer | None = None,
    tokenizer: Tokenizer | None = None,
) -> dict[str, float]:
    """Score dense captioning predictions with SODA_c and with CIDEr and METEOR averaged over tIoU thresholds.

    Args:
        predictions: the ActivityNet challenge format, `{"results": {"v_ID": [{"sentence", "timestamp"}]}}`.
        references: the reference videos; each video id must be unique.
        tious: the tIoU thresholds CIDEr and METEOR are averaged over.
        meteor: the METEOR scorer, used by both SODA_c and the tIoU average; default [`CocoMeteor`].
        cider: the CIDEr scorer; default [`CocoCider`].
        tokenizer: applied once to every sentence (after non-ASCII characters become spaces); default
            [`ptb_tokenize`].

    Returns:
        `{"soda_c", "cider", "meteor"}` in percent, `"n"` the number of reference videos and `"missing"` the number
        of them absent from the predictions. See the module docstring for the conventions.

    Raises:
        ValueError: on malformed predictions, no references, repeated reference videos, or predictions for videos
            that are not among the references.
        RuntimeError: when a default scorer or tokenizer is needed and Java is not installed.
        ImportError: when a default scorer or tokenizer is needed and `pycocoevalcap` is not installed.
    """
    predicted = parse_captioning_predictions(predictions)
    if not references:
        raise ValueError("no reference videos to score against")
    reference_events = {}
    for video in references:
        if video.video_id in reference_events:
            raise ValueError(f"reference video {video.video_id!r} appears more than once")
        reference_events[video.video_id] = video.events
    unknown = [video_id for video_id in predicted if video_id not in reference_events]
    if unknown:
        raise ValueError(
            f"{len(unknown)} predicted video(s) are not among the references, for instance {unknown[0]!r}; "
            "keep only the predictions of the videos to score"
        )

    if tokenizer is None:
        tokenizer = ptb_tokenize
    if meteor is None:
        meteor = CocoMeteor()
    if cider is None:
        cider = CocoCider()
    tokenized_predictions, tokenized_references = _tokenize_events(predicted, reference_events, tokenizer)
    return {
        "soda_c": 100.0 * soda_c(tokenized_predictions, tokenized_references, meteor),
        "cider": 100.0 * tiou_averaged_score(tokenized_predictions, tokenized_references, cider, tious),
        "meteor": 100.0 * tiou_averaged_score(tokenized_predictions, tokenized_references, meteor, tious),
        "n": len(reference_events),
        "missing": sum(video_id not in predicted for video_id in reference_events),
    }


def soda_c(
    predictions: Mapping[str, Sequence[Event]],
    references: Mapping[str, Sequence[Event]],
    scorer: CaptionScorer,
) -> float:
    """SODA_c, as a fraction: the F-measure of the best order-keeping matching, averaged over reference videos.

    Args:
        predictions: predicted events by video id, sentences already tokenized.
        references: reference events by video id, sentences already tokenized; every video here is averaged.
        scorer: the caption scorer of each (reference, prediction) pair (METEOR in the paper); only its per-pair
            scores are used, in a single call over all pairs that overlap in time. As in the reference
            evaluator, it is called with the roles reversed: the reference sentence is the hypothesis and the
            predicted sentence its only reference.

    Raises:
        ValueError: when there are no reference videos.
    """
    if not references:
        raise ValueError("no reference videos to score against")
    ordered = {}
    pair_references, pair_hypotheses = {}, {}
    for video_id, video_references in references.items():
        video_predictions = _by_start(predictions.get(video_id, ()))
        video_references = _by_start(video_references)
        ordered[video_id] = (video_predictions, video_references)
        for i, reference in enumerate(video_references):
            for j, prediction in enumerate(video_predictions):
                # A pair without overlap weighs 0 whatever its caption score: do not ask the scorer about it.
                if _tiou(prediction, reference) > 0:
                    pair_references[video_id, i, j] = [prediction.sentence]
                    pair_hypotheses[video_id, i, j] = reference.sentence
    pair_scores = scorer(pair_references, pair_hypotheses)[1] if pair_hypotheses else {}

    f_measures = []
    for video_id, (video_predictions, video_references) in ordered.items():
        weights = [
            [
                _tiou(prediction, reference) * pair_scores.get((video_id, i, j), 0.0)
                for j, prediction in enumerate(video_predictions)
            ]
            for i, reference in enumerate(video_references)
        ]
        total = _best_order_keeping_matching(weights)
        # F-measure of precision total / #predictions and recall total / #references.
        size = len(video_predictions) + len(video_references)
        f_measures.append(2.0 * total / size if total > 0 else 0.0)
    return sum(f_measures) / len(f_measures)


def tiou_averaged_score(
    predictions: Mapping[str, Sequence[Event]],
    references: Mapping[str, Sequence[Event]],
    scorer: CaptionScorer,
    tious: Sequence[float] = DENSEVID_TIOUS,
) -> float:
    """A caption score with densevid_eval's semantics, averaged over videos and then over tIoU thresholds.

    Args:
        predictions: predicted events by video id, sentences already tokenized.
        references: reference events by video id, sentences already tokenized; every video here is averaged.
        scorer: the caption scorer (CIDEr, METEOR, ...); its corpus score is taken once per video and threshold.
        tious: the thresholds; a prediction and a reference event form a pair when their tIoU is >= the threshold.

    Raises:
        ValueError: when there are no reference videos or no thresholds.
    """
    if not references:
        raise ValueError("no reference videos to score against")
    if not tious:
        raise ValueError("no tIoU thresholds given")
    threshold_scores = []
    for tiou in tious:
        video_scores = []
        for video_id, video_references in references.items():
            pair_references, pair_hypotheses = {}, {}
            for prediction in predictions.get(video_id, ()):
                matches = [
                    reference.sentence
                    for reference in video_references
                    if _tiou(prediction, reference) >= tiou
                ]
                for sentence in matches or [_UNMATCHED_REFERENCE]:
                    pair_references[len(pair_hypotheses)] = [sentence]
                    pair_hypotheses[len(pair_hypotheses)] = prediction.sentence
            video_scores.append(float(scorer(pair_references, pair_hypotheses)[0]) if pair_hypotheses else 0.0)
        threshold_scores.append(sum(video_scores) / len(video_scores))
    return sum(threshold_scores) / len(threshold_scores)


def parse_captioning_predictions(predictions: Mapping[str, Any]) -> dict[str, list[Event]]:
    """Check predictions in the ActivityNet challenge format and return their events by video id.

    `predictions` is `{"results": {"v_ID": [{"sentence": str, "timestamp": [start, end]}, ...]}, ...}`; other
    top-level keys (`"version"`, `"external_data"`) and other event keys are ignored.

    Raises:
        ValueError: naming the video and event that is malformed.
    """
    if not isinstance(predictions, Mapping) or not isinstance(predictions.get("results"), Mapping):
        raise ValueError('predictions must be an object with a "results" object: {"results": {"v_ID": [...]}}')
    events = {}
    for video_id, video_events in predictions["results"].items():
        if not isinstance(video_events, list):
            raise ValueError(f"results[{video_id!r}] must be a list of events, found {type(video_events).__name__}")
        events[video_id] = [_parse_event(video_id, index, event) for index, event in enumerate(video_events)]
    return events


def read_captioning_predictions(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a prediction file in the ActivityNet challenge format (see [`parse_captioning_predictions`]).

    Raises:
        ValueError: naming the file and what is wrong: bytes that are not UTF-8, invalid JSON, a repeated key, a
            malformed event.
    """
    predictions = read_json(path)
    try:
        parse_captioning_predictions(predictions)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return predictions


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenize with the Stanford PTB tokenizer of the COCO caption tools: lower case, punctuation removed (Java)."""
    _require_coco_tools()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The tokenizer reads one sentence a line: a line break inside a sentence would shift every later one.
    captions = {index: [{"caption": " ".join(sentence.split())}] for index, sentence in enumerate(sentences)}
    tokenized = PTBTokenizer().tokenize(captions)
    return [tokenized[index][0] for index in range(len(sentences))]


class CocoMeteor:
    """METEOR 1.5 of the COCO caption tools, as a [`CaptionScorer`]. Starts one Java process, kept while in use."""

    def __init__(self):
        _require_coco_tools()
        from pycocoevalcap.meteor.meteor import Meteor

        self._meteor = Meteor()

    def __call__(
        self, references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str]
    ) -> tuple[float, dict[Hashable, float]]:
        keys = list(references)
        # METEOR reads one request a line, fields separated by "|||": a line break would desynchronize it.
        score, scores = self._meteor.compute_score(
            {key: [" ".join(reference.split()) for reference in references[key]] for key in keys},
            {key: [" ".join(hypotheses[key].split())] for key in keys},
        )
        return float(score), dict(zip(keys, map(float, scores), strict=True))


class CocoCider:
    """CIDEr-D of the COCO caption tools, as a [`CaptionScorer`]; document frequencies come from each call."""

    def __init__(self):
        _require_coco_tools()
        from pycocoevalcap.cider.cider import Cider

        self._cider = Cider()

    def __call__(
        self, references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str]
    ) -> tuple[float, dict[Hashable, float]]:
        keys = list(references)
        score, scores = self._cider.compute_score(
            {key: list(references[key]) for key in keys}, {key: [hypotheses[key]] for key in keys}
        )
        return float(score), dict(zip(keys, map(float, scores), strict=True))


def _require_coco_tools() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "The default caption scorers and tokenizer (METEOR, the PTB tokenizer) run on Java, and no `java` was "
            "found on PATH: install a Java runtime (for instance `apt-get install default-jre`), or pass your own "
            "`meteor`, `cider` and `tokenizer`."
        )
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        raise ImportError(
            "The default caption scorers need `pycocoevalcap`: `pip install vtimellm-hf[eval]`."
        ) from None


def _tokenize_events(
    predictions: Mapping[str, Sequence[Event]], references: Mapping[str, Sequence[Event]], tokenizer: Tokenizer
) -> tuple[dict[str, list[Event]], dict[str, list[Event]]]:
    """Both sides with tokenized sentences, the tokenizer called once on every distinct sentence."""
    all_events = [event for events in (*predictions.values(), *references.values()) for event in events]
    sentences = list(dict.fromkeys(_ascii_only(event.sentence) for event in all_events))
    tokenized = list(tokenizer(sentences))
    if len(tokenized) != len(sentences):
        raise ValueError(f"the tokenizer returned {len(tokenized)} sentences for {len(sentences)}")
    vocabulary = dict(zip(sentences, tokenized, strict=True))

    def tokenize(events: Iterable[Event]) -> list[Event]:
        return [event._replace(sentence=vocabulary[_ascii_only(event.sentence)]) for event in events]

    return (
        {video_id: tokenize(events) for video_id, events in predictions.items()},
        {video_id: tokenize(events) for video_id, events in references.items()},
    )


def _ascii_only(text: str) -> str:
    return "".join(character if ord(character) < 128 else " " for character in text)


def _tiou(event: Event, other: Event) -> float:
    """densevid_eval's and SODA's tIoU: intersection / (union + 1e-8), so an exact tie falls below its threshold."""
    intersection = min(event.end, other.end) - max(event.start, other.start)
    if intersection <= 0:  # also every zero-length or reversed span
        return 0.0
    union = max(event.end, other.end) - min(event.start, other.start)  # the spans overlap
    return intersection / (union + 1e-8)


def _by_start(events: Iterable[Event]) -> list[Event]:
    return sorted(events, key=lambda event: event.start)


def _best_order_keeping_matching(weights: Sequence[Sequence[float]]) -> float:
    """Largest total weight of a matching between rows and columns in which no two matched pairs cross.

    `best[i][j]` is the answer for the first i rows and first j columns: either row i or column j stays unmatched,
    or they are matched to each other on top of the best for the rows and columns before both.
    """
    n_columns = len(weights[0]) if weights else 0
    previous = [0.0] * (n_columns + 1)
    for row in weights:
        current = [0.0] * (n_columns + 1)
        for j, weight in enumerate(row):
            current[j + 1] = max(previous[j + 1], current[j], previous[j] + weight)
        previous = current
    return previous[-1]


def _parse_event(video_id: str, index: int, event: Any) -> Event:
    where = f"results[{video_id!r}][{index}]"
    if not isinstance(event, Mapping):
        raise ValueError(f"{where} must be an object, found {type(event).__name__}")
    sentence, timestamp = event.get("sentence"), event.get("timestamp")
    if not isinstance(sentence, str):
        raise ValueError(f"{where}: 'sentence' must be a string, found {sentence!r}")
    if isinstance(timestamp, (str, bytes)) or not isinstance(timestamp, Sequence) or len(timestamp) != 2:
        raise ValueError(f"{where}: 'timestamp' must be [start, end], found {timestamp!r}")
    for value in timestamp:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{where}: 'timestamp' must hold two finite numbers, found {timestamp!r}")
    return Event(float(timestamp[0]), float(timestamp[1]), sentence)
