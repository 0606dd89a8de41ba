"""LongVALE's evaluation (1,171 videos): its three tasks asked with its exact prompts, answered in batches, resumably,
and scored as its `eval/metric.py` scores them.

* Grounding: per annotated event, `"<video>\\n" + GROUNDING` about the sentence (stripped, lower-cased, without a
  final full stop); R1@0.3/0.5/0.7 and mIoU of the first "NN to NN" pair (IoU rounded to 2 decimals, as VTimeLLM's
  and LongVALE's scripts; [`vtimellm_hf.metrics.grounding.score_grounding`]).
* Dense captioning: per video, `"<video>\\n " + CAPTIONING` (note the space after the line break, in both captioning
  prompts, and none in grounding's); events read as `From NN to NN, sentence`, near-identical neighbours merged
  (difflib ratio > 0.98, at most one index apart) before `start * d / 100`, `(end + 1) * d / 100`; SODA_c, CIDEr and
  METEOR ([`vtimellm_hf.metrics.captioning.score_captioning`]).
* Segment captioning: per event, `"<video>\\n " + SEGMENT_CAPTIONING` with the event's indices
  (`min(round(t / d * 100), 99)`); BLEU-4, METEOR, ROUGE-L, CIDEr
  ([`vtimellm_hf.metrics.segment_captioning.score_segment_captioning`]).

Every answer is appended to a JSON-lines file as it comes (`{"task", "video_id", "sentence_id", "answer"}`;
`sentence_id` is null for dense captioning), so that a killed run loses nothing it answered and a rerun asks only
the rest. A video whose video features are missing is skipped, as the original does (and logged); a missing audio or
speech file is that stream absent. One process answers: the multi-process runs of VTimeLLM's evaluation
([`vtimellm_hf.evaluation_runs`]) read one video stream.
"""

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.raw_annotations import GroundingQuery, Video
from .evaluation_runs import read_jsonl_records
from .inference import caption_events, grounding_question, user_turn
from .metrics.captioning import score_captioning
from .metrics.grounding import score_grounding
from .metrics.segment_captioning import score_segment_captioning
from .model import format_index, parse_grounding_answer, seconds_to_index
from .model.configuration_vtime_llama import STREAM_NAMES

__all__ = [
    "LONGVALE_QUESTIONS",
    "LONGVALE_TASKS",
    "evaluate_longvale",
    "longvale_queries",
    "longvale_stream_loader",
    "score_longvale",
]

logger = logging.getLogger(__name__)

LONGVALE_TASKS = ("captioning", "grounding", "seg_captioning")
# LongVALE's eval/eval.py, word for word ("fromat" included); the captioning prompts start with the space its
# "<video>\n " prefix puts after the line break
LONGVALE_QUESTIONS = {
    "grounding": "At which time interval can we find {query} taking place in the video? Give the timestamps in the "
    "fromat: From xx to xx.",
    "captioning": " Could you please detail the events that took place during different time segments in the video? "
    "List the events in the format: From xx to xx, event1. \n From xx to xx, event2. \n ...",
    "seg_captioning": " Can you describe what occurred from {start} to {end} in the video? Please give the event "
    "description directly.",
}
_FIELDS = ("task", "video_id", "sentence_id", "answer")

# `load_streams(video_id) -> {"video": (rows, D) tensor, "audio": tensor or None, "speech": tensor or None}`, or
# None when the video's features are missing
StreamLoader = Callable[[str], dict | None]


def longvale_stream_loader(video_store, audio_store=None, speech_store=None) -> StreamLoader:
    """`load_streams` from LongVALE's three feature stores (`vtimellm_hf.data.features.open_feature_store`): `None`
    without video features, a stream `None` where its store lacks the video."""

    def load_streams(video_id: str) -> dict | None:
        if video_id not in video_store:
            return None
        stores = {"video": video_store, "audio": audio_store, "speech": speech_store}
        return {name: torch.from_numpy(np.asarray(store.load(video_id), dtype=np.float32))
                if store is not None and video_id in store else None for name, store in stores.items()}  # fmt: skip

    return load_streams


def longvale_queries(
    videos: Sequence[Video], tasks: Sequence[str] = LONGVALE_TASKS, questions: Mapping[str, str] = LONGVALE_QUESTIONS
) -> list[dict]:
    """The questions of `tasks` about `videos`, in the original's order (per video: captioning, grounding, segment
    captioning): `{"task", "video_id", "sentence_id", "question"}`, each from its template in `questions`
    (LongVALE's; the demo asks its training data's grounding question)."""
    unknown = sorted(set(tasks) - set(LONGVALE_TASKS))
    if unknown:
        raise ValueError(f"LongVALE's tasks are {', '.join(LONGVALE_TASKS)}, not {', '.join(unknown)}.")
    queries = []
    for video in videos:
        if "captioning" in tasks:
            queries.append(_query("captioning", video, None, questions["captioning"]))
        if "grounding" in tasks:
            for index, event in enumerate(video.events):
                question = grounding_question(event.sentence, questions["grounding"])
                queries.append(_query("grounding", video, index, question))
        if "seg_captioning" in tasks:
            for index, event in enumerate(video.events):
                start, end = (format_index(seconds_to_index(t, video.duration)) for t in (event.start, event.end))
                question = questions["seg_captioning"].format(start=start, end=end)
                queries.append(_query("seg_captioning", video, index, question))
    return queries


def _query(task: str, video: Video, sentence_id: int | None, question: str) -> dict:
    return {"task": task, "video_id": video.video_id, "sentence_id": sentence_id, "question": question}


def _key(record: dict) -> tuple:
    return record["task"], record["video_id"], record["sentence_id"]


def evaluate_longvale(
    model,
    processor,
    videos: Sequence[Video],
    output_file: str | Path,
    load_streams: StreamLoader,
    tasks: Sequence[str] = LONGVALE_TASKS,
    batch_size: int = 8,
    progress: bool = False,
    questions: Mapping[str, str] = LONGVALE_QUESTIONS,
    **generation_kwargs,
) -> Path:
    """
    Answers LongVALE's questions ([`longvale_queries`], `questions` their templates) about `videos` and appends one
    JSON line per answer to `output_file`; questions already answered there are skipped (a cut last line is dropped).
    Generation is greedy unless `generation_kwargs` say otherwise (the original sampled at temperature 0.05), 1,024
    new tokens at most.
    """
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    done = {_key(record) for record in read_jsonl_records(output_file, _FIELDS)}
    pending = [query for query in longvale_queries(videos, tasks, questions) if _key(query) not in done]
    if done:
        logger.info("%s: %d questions already answered, %d to go", output_file, len(done), len(pending))
    generation_kwargs = {"max_new_tokens": 1024, "do_sample": False, **generation_kwargs}
    streams_of: dict[str, dict | None] = {}
    skipped = set()
    with output_file.open("a", encoding="utf-8") as sink, tqdm(total=len(pending), disable=not progress) as bar:
        batch = []
        for index, query in enumerate(pending):
            video_id = query["video_id"]
            if video_id not in streams_of:
                # One video's streams at a time, kept while its questions are asked
                streams_of = {video_id: load_streams(video_id)}
            if streams_of[video_id] is None:
                skipped.add(video_id)
            else:
                batch.append((query, streams_of[video_id]))
            last = index == len(pending) - 1
            if batch and (len(batch) == batch_size or last or pending[index + 1]["video_id"] != video_id):
                for record in _answer(model, processor, batch, generation_kwargs):
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                bar.update(len(batch))
                batch = []
    if skipped:
        logger.warning("%d videos have no video features and were skipped, as the original skips them: %s",
                       len(skipped), ", ".join(sorted(skipped)[:10]))  # fmt: skip
    return output_file


def _answer(model, processor, batch: list[tuple[dict, dict]], generation_kwargs: dict) -> list[dict]:
    prompts = [processor.apply_chat_template([user_turn(query["question"])], add_generation_prompt=True)
               for query, _ in batch]  # fmt: skip
    features = {f"{name}_features": [streams.get(name) for _, streams in batch] for name in STREAM_NAMES}
    features = {name: value for name, value in features.items() if any(item is not None for item in value)}
    inputs = processor(text=prompts, padding=True, padding_side="left", return_tensors="pt", **features)
    attention_mask = inputs["attention_mask"]
    # Left padding: positions count from each prompt's first token
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": attention_mask, "position_ids": position_ids}
    model_inputs = {name: tensor.to(model.device) for name, tensor in model_inputs.items()}
    for name in features:
        value = inputs[name]
        model_inputs[name] = value.to(model.device) if isinstance(value, torch.Tensor) else \
            [None if item is None else torch.as_tensor(item).to(model.device) for item in value]  # fmt: skip
    with torch.no_grad():
        output = model.generate(**model_inputs, **generation_kwargs)
    answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [{"task": query["task"], "video_id": query["video_id"], "sentence_id": query["sentence_id"],
             "answer": answer.strip()} for (query, _), answer in zip(batch, answers, strict=True)]  # fmt: skip


def score_longvale(answers_file: str | Path, videos: Sequence[Video], num_frames: int = 100) -> dict[str, dict]:
    """
    The scores of each task answered in `answers_file` (from [`evaluate_longvale`]) against `videos`:
    `{"grounding": {...}, "captioning": {...}, "seg_captioning": {...}}`, each over the videos answered for it (as
    the original, which scores the videos in its log). Captioning and segment captioning need Java (METEOR, PTB).
    """
    records = read_jsonl_records(answers_file, _FIELDS)
    by_task: dict[str, dict] = {}
    for record in records:
        by_task.setdefault(record["task"], {})[(record["video_id"], record["sentence_id"])] = record["answer"]
    by_id = {video.video_id: video for video in videos}
    unknown = sorted({video_id for answers in by_task.values() for video_id, _ in answers if video_id not in by_id})
    if unknown:
        raise ValueError(f"{answers_file}: answers about {len(unknown)} videos not in the annotations, e.g. "
                         f"{unknown[0]!r}.")  # fmt: skip
    scores = {}
    if "grounding" in by_task:
        answers = by_task["grounding"]
        answered = [by_id[video_id] for video_id in dict.fromkeys(video_id for video_id, _ in answers)]
        references, predictions = [], []
        for video in answered:
            for index, event in enumerate(video.events):
                reference = GroundingQuery(video.video_id, event.sentence, event.start, event.end, video.duration)
                references.append(reference)
                answer = answers.get((video.video_id, index))
                if answer is not None:
                    moment = parse_grounding_answer(answer, video.duration, num_frames)
                    predictions.append({"video_id": video.video_id, "query": event.sentence,
                                        "timestamp": None if moment is None else list(moment)})  # fmt: skip
        scores["grounding"] = score_grounding(predictions, references)
    if "captioning" in by_task:
        answers = by_task["captioning"]
        results = {
            video_id: [{"sentence": sentence, "timestamp": [start, end]}
                       for start, end, sentence in caption_events(answer, by_id[video_id].duration, num_frames)]
            for (video_id, _), answer in answers.items()
        }  # fmt: skip
        scores["captioning"] = score_captioning({"results": results}, [by_id[video_id] for video_id in results])
    if "seg_captioning" in by_task:
        answers = by_task["seg_captioning"]
        videos_answered = dict.fromkeys(video_id for video_id, _ in answers)
        references = {(video_id, index): event.sentence for video_id in videos_answered
                      for index, event in enumerate(by_id[video_id].events)}  # fmt: skip
        scores["seg_captioning"] = score_segment_captioning(answers, references)
    return scores
