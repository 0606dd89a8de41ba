"""Evaluation metrics of VTimeLLM: temporal grounding (R1@{0.3, 0.5, 0.7}, mIoU) and dense video captioning
(SODA_c, and CIDEr and METEOR averaged over tIoU {0.3, 0.5, 0.7, 0.9}). All scores are returned in percent.

Every convention that changes the numbers:

* Timestamps are seconds. Turning the model's two-digit frame indices into seconds is NOT done here; the
  original does it differently for the two tasks (grounding: s/100 and e/100 of the duration; captioning:
  s * duration / 100 and (e + 1) * duration / 100), and whatever parses the replies must pick the right one.
* IoU of spans: intersection over union in floating point, no tolerance. A zero-length or reversed span has
  IoU 0 with every span, itself included (densevid_eval also gives 0; VTimeLLM's grounding script would
  divide by zero on two identical points). Grounding rounds each IoU to 2 decimals before R1@t and mIoU, as
  VTimeLLM's script does (`score_grounding(iou_decimals=None)`, `score grounding --exact-iou`: exact).
* Thresholds use >=: R1@t counts IoU >= t, and densevid_eval pairs captions with tIoU >= t. Captioning uses
  densevid_eval's and SODA's tIoU, intersection / (union + 1e-8), as they do: a caption pair sitting exactly on
  a threshold is not paired (a grounding IoU is exact, then rounded as above).
* Clipping: grounding predictions are clipped to [0, duration] when the reference knows its duration (to
  [0, inf) when it does not); references are never clipped. Captioning times are not clipped (densevid_eval
  does not clip).
* Duplicate merging: none here. VTimeLLM's captioning script merges consecutive, nearly identical captions of
  adjacent moments before scoring; `evaluate_captioning` does it as it reads the replies
  (`vtimellm_hf.inference.merge_repeated_events`).
* Denominators: every reference counts. A grounding reply that does not parse (`timestamp` None) scores IoU 0
  (`unparsed`); a reference query or video with no prediction scores 0 (`missing`).
* Matching: grounding predictions go to references by `(video_id, query)`, the k-th repeat of a pair to the
  k-th reference with that pair. A prediction with no reference (grounding) or a predicted video that is not
  among the references (captioning) raises a `ValueError` instead of being dropped.
* Captioning text: non-ASCII characters become spaces, then the PTB tokenizer (lower case, no punctuation);
  CIDEr and METEOR are computed per video on that video's pairs and averaged over videos, then thresholds; a
  prediction that reaches no reference event is paired with a fixed reference no caption can match
  (densevid_eval's random string gives the same numbers).
* SODA_c (written from the ECCV 2020 paper, equal to the SODA code behind the published numbers): per video,
  the order-keeping matching of largest total tIoU x METEOR; F-measure 2T / (#predictions + #references);
  averaged over videos. METEOR is asked with the roles reversed, as that code does (the reference sentence as
  the hypothesis, the prediction as its reference); METEOR is asymmetric, and the documented order gives
  other numbers (17.60 instead of 17.93 on 150 real videos; see `captioning.py`).
"""

from .captioning import (
    DENSEVID_TIOUS,
    CaptionScorer,
    CocoCider,
    CocoMeteor,
    Tokenizer,
    parse_captioning_predictions,
    ptb_tokenize,
    read_captioning_predictions,
    score_captioning,
    soda_c,
    tiou_averaged_score,
)
from .grounding import (
    GROUNDING_THRESHOLDS,
    grounding_ious,
    read_grounding_predictions,
    score_grounding,
    temporal_iou,
)

__all__ = [
    "DENSEVID_TIOUS",
    "GROUNDING_THRESHOLDS",
    "CaptionScorer",
    "CocoCider",
    "CocoMeteor",
    "Tokenizer",
    "grounding_ious",
    "parse_captioning_predictions",
    "ptb_tokenize",
    "read_captioning_predictions",
    "read_grounding_predictions",
    "score_captioning",
    "score_grounding",
    "soda_c",
    "temporal_iou",
    "tiou_averaged_score",
]
