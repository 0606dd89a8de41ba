"""Segment captioning metrics, as LongVALE reports them: BLEU-4, METEOR, ROUGE-L and CIDEr of the COCO caption tools
(`pycocoevalcap`), corpus-level over every (prediction, reference) pair, after the PTB tokenizer.

Each pair is one annotated event: the model's description of the moment against the event's sentence (one
reference). LongVALE's script pairs its i-th answer with the i-th sentence of the annotation file (its answers come
in that order and are complete); here pairs are matched by `(video_id, sentence_id)`, which gives the same pairs for
such a file and cannot shift them when one is missing (a missing pair is refused, naming it).
"""

from collections.abc import Mapping

from .captioning import _require_coco_tools, ptb_tokenize

__all__ = ["SEGMENT_CAPTIONING_METRICS", "score_segment_captioning"]

SEGMENT_CAPTIONING_METRICS = ("bleu4", "meteor", "rouge_l", "cider")


def score_segment_captioning(
    predictions: Mapping[tuple[str, int], str], references: Mapping[tuple[str, int], str]
) -> dict[str, float]:
    """
    `{"bleu4", "meteor", "rouge_l", "cider"}` in percent, and `"n"`, of `predictions[key]` against `references[key]`
    for every key `(video_id, sentence_id)` of `references`.

    Raises:
        ValueError: when a reference has no prediction or a prediction no reference (naming the first).
    """
    missing = [key for key in references if key not in predictions]
    extra = [key for key in predictions if key not in references]
    if missing or extra:
        what = f"{len(missing)} reference(s) without a prediction" if missing else f"{len(extra)} prediction(s) " \
            "without a reference"
        raise ValueError(f"{what}, for instance {(missing or extra)[0]!r}: score complete, matching sets.")
    if not references:
        raise ValueError("No references to score against.")
    _require_coco_tools()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    keys = list(references)
    tokenized = ptb_tokenize([predictions[key] for key in keys] + [references[key] for key in keys])
    hypotheses = {index: [tokenized[index]] for index in range(len(keys))}
    truths = {index: [tokenized[len(keys) + index]] for index in range(len(keys))}
    bleu, _ = Bleu(4).compute_score(truths, hypotheses)
    meteor = Meteor()
    scores = {
        "bleu4": bleu[3],
        "meteor": meteor.compute_score(truths, hypotheses)[0],
        "rouge_l": Rouge().compute_score(truths, hypotheses)[0],
        "cider": Cider().compute_score(truths, hypotheses)[0],
    }
    return {**{name: 100.0 * float(value) for name, value in scores.items()}, "n": len(keys)}
