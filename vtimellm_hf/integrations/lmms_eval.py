"""The lmms-eval plugin of VTimeLLM: what it asks, how it answers, and its registration (no lmms-eval needed here).

`lmms-eval --model vtimellm --model_args pretrained=DIR --tasks temporal_grounding_charades --batch_size 8` runs a
checkpoint on lmms-eval's benchmarks. lmms-eval finds the model through the entry point `vtimellm` of its
`lmms_eval.models` group (setup.cfg), which names [`manifest`]; the model class, `VTimeLLM` of `lmms_eval_model.py`,
imports lmms-eval and hands each list of requests to [`answer_requests`].

* Temporal grounding: a request whose document holds a query and its moment in a layout of lmms-eval's grounding
  tasks (`caption` and `timestamp`: `temporal_grounding_charades`; `query` and `span`: `timelens_*`) is asked as
  the model was trained and evaluated, "During which frames can we see {query}?" (`grounding_question`), not with
  the task's prompt, which asks for seconds the model never learned to write. The answer's frame indices become
  seconds of that video by the original grounding convention (start = s / 100 x duration, the duration that of the
  decoded video), and the reply is "The event happens in START - END seconds.", the layout those tasks read, each
  time written exactly (the shortest decimal that reads back as the same float). An answer that names no moment,
  or whose first pair is reversed, becomes a reply with no number in it, which those tasks score 0, as
  `vtimellm-hf score grounding` scores an unparsed answer.
* Any other request is asked with the task's text after the video, and its answer is returned as generated.

Generation: greedy unless the task sets `do_sample` (then its `temperature` and `top_p` apply); `max_new_tokens`
and `num_beams` as the task sets them; each answer is cut at the first of the task's `until` strings. Requests
are grouped by those settings, sorted by video and answered `batch_size` at a time by `generate_answers` (the
questions of a batch about one video share its prompt start and KV cache); each video is decoded and encoded once
per batch that asks about it. A video that cannot be decoded gets an empty reply for each of its requests (scored
0) and a warning naming it, and the run goes on; a video that is not there stops the run (`FileNotFoundError`), as
lmms-eval's own tasks do, since a wrong video folder would otherwise score every request 0.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import parse_grounding_answer
from ..inference import generate_answers, grounding_question, user_turn

__all__ = ["GROUNDING_LAYOUTS", "LmmsRequest", "answer_requests", "grounding_reply", "manifest", "read_request"]

logger = logging.getLogger(__name__)

# (query field, moment field) of the documents of lmms-eval's temporal grounding tasks
GROUNDING_LAYOUTS = (("caption", "timestamp"), ("query", "span"))
# Generation settings of lmms-eval's tasks that `generate` takes as they are
_PASSED_SETTINGS = ("max_new_tokens", "num_beams")
_SAMPLING_SETTINGS = ("temperature", "top_p")


def manifest():
    """The `lmms_eval.models` entry point: registers `--model vtimellm` (called by lmms-eval, which is then there)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vtimellm", simple_class_path="vtimellm_hf.integrations.lmms_eval_model.VTimeLLM")


@dataclass(frozen=True)
class LmmsRequest:
    """
    One lmms-eval request as the model takes it: the video (a path), the task's text, the grounding query where
    the document is a grounding one (else `None`), the settings of `generate` and the strings that end an answer.
    """

    video: str
    text: str
    query: str | None
    generation: tuple[tuple[str, Any], ...]
    until: tuple[str, ...]


def read_request(text: str, generation_kwargs: Mapping[str, Any], visuals: Sequence, doc: Mapping) -> LmmsRequest:
    """
    An lmms-eval request (`text` from the task's `doc_to_text`, its `generation_kwargs`, `visuals` from its
    `doc_to_visual`, the document itself) as an [`LmmsRequest`].

    Raises:
        ValueError: when the request does not show exactly one video given by its path.
    """
    if len(visuals) != 1 or not isinstance(visuals[0], str):
        shown = ", ".join(type(visual).__name__ for visual in visuals) or "nothing"
        raise ValueError(f"VTimeLLM answers about one video given by its path; this request shows {shown}")
    generation = {"do_sample": bool(generation_kwargs.get("do_sample", False))}
    names = _PASSED_SETTINGS + (_SAMPLING_SETTINGS if generation["do_sample"] else ())
    generation.update((name, generation_kwargs[name]) for name in names if generation_kwargs.get(name) is not None)
    until = generation_kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    return LmmsRequest(visuals[0], text, _grounding_query(doc), tuple(sorted(generation.items())), until)


def grounding_reply(answer: str, duration: float, num_frames: int = 100) -> str:
    """The reply lmms-eval's grounding tasks read: the answer's moment in seconds, or no number where it names none."""
    moment = parse_grounding_answer(answer, duration, num_frames)
    if moment is None:
        return "The answer names no moment."
    start, end = (np.format_float_positional(time, trim="-") for time in moment)
    return f"The event happens in {start} - {end} seconds."


def answer_requests(
    model,
    processor,
    requests: Sequence[LmmsRequest],
    batch_size: int = 8,
    progress: Callable[[int], Any] | None = None,
) -> list[str]:
    """
    The replies to `requests`, in their order (see the module docstring); `progress(n)` is called as each batch of
    `n` requests is answered.
    """
    groups: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.generation, []).append(index)
    replies = [""] * len(requests)
    encoded: dict[str, tuple | None] = {}
    for generation, indices in groups.items():
        indices.sort(key=lambda index: requests[index].video)
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            videos = {requests[index].video for index in batch}
            encoded = {video: encoded[video] for video in videos if video in encoded}
            for video in videos - encoded.keys():
                encoded[video] = _encode(processor, video)
            answerable = [index for index in batch if encoded[requests[index].video] is not None]
            conversations = [[user_turn(_question(requests[index]))] for index in answerable]
            features = [encoded[requests[index].video][0] for index in answerable]
            answers = generate_answers(model, processor, conversations, features, len(batch), **dict(generation))
            for index, answer in zip(answerable, answers, strict=True):
                replies[index] = _reply(requests[index], answer, encoded[requests[index].video][1], processor)
            if progress is not None:
                progress(len(batch))
    return replies


def _grounding_query(doc: Mapping) -> str | None:
    for query_field, moment_field in GROUNDING_LAYOUTS:
        if isinstance(doc.get(query_field), str) and doc.get(moment_field) is not None:
            return doc[query_field]
    return None


def _question(request: LmmsRequest) -> str:
    return request.text if request.query is None else grounding_question(request.query)


def _reply(request: LmmsRequest, answer: str, duration: float, processor) -> str:
    for stop in filter(None, request.until):
        answer = answer.split(stop, 1)[0]
    if request.query is None:
        return answer
    return grounding_reply(answer, duration, processor.num_frames)


def _encode(processor, video: str):
    """`(features, duration)` of a video, or `None` with a warning where it cannot be decoded."""
    try:
        return processor.encode_video(video)
    except ValueError as error:
        logger.warning("%s; its requests get an empty reply", error)
        return None
