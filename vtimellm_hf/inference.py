"""Inference: ground a query, caption a video, chat; and batched grounding evaluation that resumes.

Every video is decoded and encoded once, whatever the number of questions about it; questions are generated in
batches with left padding.
"""

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .model import CAPTIONING, GROUNDING, VTimeProcessor, get_video_duration, load_video_frames, parse_events, parse_moments

logger = logging.getLogger(__name__)

# The questions of the original evaluation
GROUNDING_QUESTION = "During which frames can we see {query}?"
CAPTIONING_QUESTION = (
    "Could you please detail the events that took place during different time segments in the video? "
    "List the events in the format: From xx to xx, event1. From xx to xx, event2."
)


@dataclass(frozen=True)
class Moment:
    """A grounded moment in seconds (`None` when the answer did not parse) and the raw answer."""

    start: float | None
    end: float | None
    answer: str


def load_model_and_processor(name_or_path: str, device: str | None = None, dtype: str = "auto"):
    """A VTimeLLM checkpoint (a folder or a Hub id) and its processor, the model in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor.frame_encoder_device = device
    return model.to(device).eval(), processor


def video_features(processor: VTimeProcessor, video: str | Path, window: Sequence[float] | None = None):
    """`(features (rows, D), duration in seconds)` of a video file: decoded once, encoded once."""
    frames, duration = load_video_frames(video, processor.num_frames, window)
    return processor.encode_frames(frames), duration


def user_turn(question: str) -> dict:
    return {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}


@torch.no_grad()
def generate_answers(
    model,
    processor: VTimeProcessor,
    conversations: Sequence[list[dict]],
    features: Sequence[torch.Tensor],
    batch_size: int = 8,
    **generation_kwargs,
) -> list[str]:
    """
    Answers to conversations (the last turn a user's), each about one video given by its features
    `(rows, mm_hidden_size)`, generated `batch_size` at a time with left padding. Greedy unless
    `generation_kwargs` say otherwise.
    """
    generation_kwargs = {"max_new_tokens": 64, "do_sample": False, **generation_kwargs}
    answers = []
    for start in range(0, len(conversations), batch_size):
        prompts = [
            processor.apply_chat_template(conversation, add_generation_prompt=True)
            for conversation in conversations[start : start + batch_size]
        ]
        inputs = processor(
            text=prompts,
            video_features=list(features[start : start + batch_size]),
            padding_side="left",
            return_tensors="pt",
        ).to(model.device)
        output = model.generate(**inputs, **generation_kwargs)
        answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def ground(model, processor, video, query: str, question: str = GROUNDING_QUESTION, **generation_kwargs) -> Moment:
    """The moment of `query` in `video` (a path), in seconds by the original grounding convention."""
    features, duration = video_features(processor, video)
    answer = generate_answers(model, processor, [[user_turn(question.format(query=query))]], [features],
                              **generation_kwargs)[0]
    moments = parse_moments(answer, duration, GROUNDING)
    return Moment(*(moments[0] if moments else (None, None)), answer)


def caption(model, processor, video, question: str = CAPTIONING_QUESTION, **generation_kwargs):
    """Dense captions of `video`: `(events [(start, end, sentence)] in seconds, raw answer)`."""
    features, duration = video_features(processor, video)
    answer = generate_answers(model, processor, [[user_turn(question)]], [features], **generation_kwargs)[0]
    return parse_events(answer, duration, CAPTIONING), answer


def query_key(video_id: str, query: str, occurrence: int) -> tuple[str, str, int]:
    return video_id, query, occurrence


def keyed(queries: Iterable[dict]) -> Iterator[tuple[tuple[str, str, int], dict]]:
    """Each query with its key: the k-th repeat of a (video_id, query) pair is occurrence k, in file order."""
    seen = Counter()
    for query in queries:
        pair = (query["video_id"], query["query"])
        yield query_key(*pair, seen[pair]), query
        seen[pair] += 1


def evaluate_grounding(
    model,
    processor: VTimeProcessor,
    queries: Sequence[dict],
    output_file: str | Path,
    load_features,
    question: str = GROUNDING_QUESTION,
    batch_size: int = 8,
    **generation_kwargs,
) -> Path:
    """
    Answers grounding queries and appends one JSON line per query to `output_file`:
    `{"video_id", "query", "timestamp": [start, end] | null, "answer"}`, seconds by the grounding convention.

    Resumes: queries already in `output_file` are skipped (a truncated last line, from a killed run, is dropped).
    Queries are grouped by video, so each video's features are loaded (or computed) once.

    Args:
        queries: dicts with `video_id`, `query` and `duration` (None: read from the video by `load_features`).
        load_features: `video_id -> (features (rows, D) tensor, duration or None)`.
    """
    output_file = Path(output_file)
    done = read_finished_keys(output_file)
    pending = [(key, query) for key, query in keyed(queries) if key not in done]
    if done:
        logger.info("%s: %d queries already answered, %d to go", output_file, len(done), len(pending))
    by_video: dict[str, list] = {}
    for key, query in pending:
        by_video.setdefault(query["video_id"], []).append((key, query))

    output_file.parent.mkdir(parents=True, exist_ok=True)
    with output_file.open("a", encoding="utf-8") as sink:
        batch: list[tuple[tuple, dict, torch.Tensor, float]] = []
        for video_id, items in by_video.items():
            features, video_duration = load_features(video_id)
            for key, query in items:
                duration = query.get("duration") or video_duration
                if duration is None:
                    raise ValueError(f"Query {query['query']!r} of {video_id}: no duration in the annotations or video.")
                batch.append((key, query, features, duration))
                if len(batch) == batch_size:
                    _answer_batch(model, processor, batch, question, sink, generation_kwargs)
                    batch = []
        if batch:
            _answer_batch(model, processor, batch, question, sink, generation_kwargs)
    return output_file


def _answer_batch(model, processor, batch, question, sink, generation_kwargs) -> None:
    conversations = [[user_turn(question.format(query=query["query"]))] for _, query, _, _ in batch]
    answers = generate_answers(
        model, processor, conversations, [features for _, _, features, _ in batch], batch_size=len(batch),
        **generation_kwargs,
    )
    for (_, query, _, duration), answer in zip(batch, answers):
        moments = parse_moments(answer, duration, GROUNDING)
        record = {"video_id": query["video_id"], "query": query["query"],
                  "timestamp": list(moments[0]) if moments else None, "answer": answer}
        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    # Flushed per batch so that a killed run keeps what it answered
    sink.flush()


def read_finished_keys(output_file: Path) -> set:
    """Keys of the queries already answered in a results file; a truncated last line is cut off the file."""
    if not output_file.is_file():
        return set()
    lines = output_file.read_bytes().split(b"\n")
    complete, records = 0, []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        complete += len(line) + 1
    if complete < output_file.stat().st_size:
        logger.warning("%s: dropping an incomplete last line left by an interrupted run", output_file)
        with output_file.open("r+b") as handle:
            handle.truncate(complete)
    return {key for key, _ in keyed(records)}


def feature_store_loader(feature_store, durations: dict[str, float] | None = None, shuffle_seed: int | None = None):
    """
    `load_features` for [`evaluate_grounding`] over precomputed features. With `shuffle_seed`, each video's frame
    rows are permuted: a control in which a model that reads the video must fail.
    """

    def load(video_id: str):
        features = torch.from_numpy(np.asarray(feature_store.load(video_id), dtype=np.float32))
        if shuffle_seed is not None:
            generator = torch.Generator().manual_seed(shuffle_seed)
            features = features[torch.randperm(features.shape[0], generator=generator)]
        return features, (durations or {}).get(video_id)

    return load


def video_folder_loader(processor: VTimeProcessor, video_dir: str | Path):
    """`load_features` for [`evaluate_grounding`] that decodes and encodes `{video_dir}/{video_id}.*` once."""
    video_dir = Path(video_dir)

    def load(video_id: str):
        matches = sorted(video_dir.glob(f"{video_id}.*"))
        if not matches:
            raise FileNotFoundError(f"No video for {video_id} in {video_dir}.")
        features, _ = video_features(processor, matches[0])
        return features, get_video_duration(matches[0])

    return load
