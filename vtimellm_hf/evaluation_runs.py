"""Runs of the benchmark evaluations: every query answered in batches, resumably, by one process or several.

[`evaluate_grounding`] and [`evaluate_captioning`] (`vtimellm-hf evaluate grounding|captioning`) append each answer
to a JSON-lines file as it comes, so that a killed run loses nothing it answered and a rerun answers only the rest.
Started by a launcher (`torchrun`, `accelerate launch`; see [`vtimellm_hf.distributed`]), each process answers every
`world_size`-th video left to do on its own device and appends to its own file (`results.rankR.jsonl`); once all
have finished, the main process merges them into the results file, in the order one process writes it, and removes
them. A rerun with any number of processes merges what a killed run left first.
"""

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from tqdm.auto import tqdm

from ._deprecated import moved_names
from .data.features import load_checked_feature
from .data.media import VideoFolder, stored_id
from .distributed import Processes, current_processes, process_files
from .files import atomic_write, exclusive_lock, read_json, remove_stale_temporaries, write_lines_atomically
from .inference import (
    CAPTIONING_MAX_NEW_TOKENS,
    CAPTIONING_QUESTION,
    GROUNDING_QUESTION,
    caption_events,
    generate_answers,
    grounding_question,
    user_turn,
)
from .model import VTimeProcessor, parse_grounding_answer

__all__ = [
    "answer_settings",
    "captioning_answers_file",
    "evaluate_captioning",
    "evaluate_grounding",
    "feature_store_loader",
    "keyed",
    "read_finished_keys",
    "read_jsonl_records",
    "settings_file",
    "video_folder_loader",
]

logger = logging.getLogger(__name__)

# `load_features(video_id) -> (features (rows, D) float tensor on the CPU, video duration in seconds or None)`
FeatureLoader = Callable[[str], tuple[torch.Tensor, float | None]]
# What every line of a grounding results file holds; a process's own file adds the query's occurrence (see `keyed`)
_GROUNDING_FIELDS = ("video_id", "query")
_CAPTIONING_FIELDS = ("video_id", "events")
# Finding a video by its id moved to `vtimellm_hf.data.media`, beside extraction's; the old name still works
__getattr__ = moved_names(__name__, {"find_video": "vtimellm_hf.data.media:find_video"})


def keyed(queries: Iterable[Mapping]) -> Iterator[tuple[tuple[str, str, int], Mapping]]:
    """Each query with its key: the k-th repeat of a (video_id, query) pair is occurrence k, in file order."""
    seen = Counter()
    for query in queries:
        pair = (query["video_id"], query["query"])
        yield (*pair, seen[pair]), query
        seen[pair] += 1


def evaluate_grounding(
    model,
    processor: VTimeProcessor,
    queries: Sequence,
    output_file: str | Path,
    load_features: FeatureLoader,
    question: str = GROUNDING_QUESTION,
    batch_size: int = 8,
    progress: bool = False,
    **generation_kwargs,
) -> Path:
    """
    Answers grounding queries and writes one JSON line per query to `output_file`:
    `{"video_id", "query", "timestamp": [start, end] | null, "answer", "duration"}`, seconds by the grounding
    convention, from the answer's first "NN to NN" pair as the original reads it; `timestamp` is null where the answer
    names no moment or its first pair is reversed ([`parse_grounding_answer`]).

    The lines come grouped by video, videos in the order of their first query, queries in their order: the order one
    process answers them in, whatever the number of processes and interruptions. Lines of other queries (from an
    earlier run on another selection) are kept, after them.

    Resumes: queries already in `output_file` (or in the files of the processes of a killed run) are skipped; a
    truncated last line is dropped. Queries are grouped by video, so each video's features are loaded (or computed)
    once, and several questions about one video share a batch (see [`generate_answers`]). The answers are kept
    only where they were made with the same model, question and generation settings ([`answer_settings`], recorded
    in [`settings_file`]); another run writing to `output_file` at the same time is refused ([`exclusive_lock`]).

    Args:
        queries: [`GroundingQuery`]s or dicts with `video_id`, `query` and `duration` (None: the video's, from
            `load_features`).
        load_features: `video_id -> (features (rows, D) tensor, duration or None)`.
        progress: show a progress bar (the main process's share).

    Raises:
        ProcessFailedError: on every process of a job of several, once the answers are merged, when one of them
            raised (a missing feature, say); a job of one process raises the error itself.
    """
    processes = current_processes()
    output_file = Path(output_file)
    by_video: dict[str, list] = {}
    for key, query in keyed(_as_mapping(query) for query in queries):
        by_video.setdefault(query["video_id"], []).append((key, query))
    order = [key for video_queries in by_video.values() for key, _ in video_queries]
    settings = answer_settings(model, question, generation_kwargs)

    def plan() -> list[list]:
        done = _merge_grounding_answers(output_file, order)
        record_settings(output_file, settings, len(done))
        pending = [[(key, query) for key, query in video if key not in done] for video in by_video.values()]
        pending = [video for video in pending if video]
        if done:
            left = sum(map(len, pending))
            logger.info("%s: %d queries already answered, %d to go", output_file, len(done), left)
        return pending

    _run_job(
        processes, output_file, plan,
        lambda share: _answer_grounding(processes, share, output_file, model, processor, load_features, question,
                                        batch_size, progress, generation_kwargs),
        lambda answered: _merge_grounding_answers(output_file, order),
    )  # fmt: skip
    return output_file


def _run_job(processes: Processes, output_file: Path, plan, answer, finish) -> None:
    """
    The steps of an evaluation, under the lock of `output_file` ([`_output_lock`]): the main process plans
    (`plan() -> pending`), every process answers its share (`answer(share)`), the main process finishes
    (`finish(gathered)`: merges, writes), and only then are the errors of the processes raised.
    """
    with _output_lock(processes, output_file):
        pending = processes.run_on_main(plan)
        gathered = processes.run_on_each(lambda: answer(processes.share(pending)))
        processes.run_on_main(lambda: finish(gathered))
    processes.raise_errors(gathered)


@contextmanager
def _output_lock(processes: Processes, output_file: Path) -> Iterator[None]:
    """
    The lock of `output_file` ([`exclusive_lock`]), held by the main process over the block (the other processes
    write only their own files); the stale temporary files of a killed writer of `output_file` go first. Every
    process raises when the lock is held by another run.
    """
    held = ExitStack()

    def take() -> None:
        output_file.parent.mkdir(parents=True, exist_ok=True)
        held.enter_context(exclusive_lock(output_file))
        remove_stale_temporaries(output_file.parent, output_file.name)

    processes.run_on_main(take)
    with held:
        yield


def settings_file(output_file: str | Path) -> Path:
    """Where the settings of the answers of an evaluation are recorded: `results.jsonl` -> `results.settings.json`."""
    output_file = Path(output_file)
    return output_file.with_name(f"{output_file.stem}.settings.json")


def answer_settings(model, question: str, generation_kwargs: Mapping[str, Any]) -> dict:
    """
    What an evaluation's answers depend on: the model (its folder's absolute path, or its Hub id) and dtype, the
    question and the generation settings; not the batch size, which changes no answer.
    """
    name = getattr(model, "name_or_path", None)
    if name and Path(name).is_dir():
        name = str(Path(name).resolve())
    dtype = getattr(model, "dtype", None)
    settings = {"model": name or None, "dtype": None if dtype is None else str(dtype), "question": question,
                "generation": dict(sorted(generation_kwargs.items()))}  # fmt: skip
    # As it reads back from the file: tuples become lists
    return json.loads(json.dumps(settings))


def record_settings(output_file: Path, settings: Mapping[str, Any], answered: int) -> None:
    """
    Records `settings` in [`settings_file`] for the `answered` answers already in `output_file` and those to come.

    Raises:
        ValueError: when `output_file` holds answers recorded with other settings, naming each difference: a rerun
            with another model, question or number of tokens would otherwise keep the earlier answers silently.
    """
    path = settings_file(output_file)
    recorded = read_json(path) if path.is_file() else None
    if answered and isinstance(recorded, dict) and recorded != settings:
        differences = "; ".join(
            f"{key}: {recorded.get(key)!r} then, {settings.get(key)!r} now"
            for key in sorted(set(recorded) | set(settings)) if recorded.get(key) != settings.get(key)
        )  # fmt: skip
        raise ValueError(
            f"{output_file} holds {answered} answer(s) made with other settings ({differences}; see {path}). Use "
            "another output file, or remove both files to answer everything again."
        )
    if answered and recorded is None:
        logger.warning("%s: %d answer(s) of a run that recorded no settings; kept, as made with these", output_file,
                       answered)  # fmt: skip
    if recorded != settings:
        write_lines_atomically(path, [json.dumps(settings, indent=1, ensure_ascii=False)])


def _answer_grounding(
    processes: Processes, videos, output_file, model, processor, load_features, question, batch_size, progress,
    generation_kwargs,
) -> None:  # fmt: skip
    """Answers this process's share, `[[(key, query)] per video]`, appending to its record file."""
    sink_path = processes.record_file(output_file)
    # A process's own file names each query's occurrence: the merge then tells it from an answer merged already
    with_occurrence = sink_path != output_file
    total = sum(map(len, videos))
    with (
        _appending(sink_path) as sink,
        tqdm(total=total, desc="grounding", unit="query", disable=not (progress and processes.is_main)) as bar,
    ):
        batch: list[tuple] = []
        for video in videos:
            video_id = video[0][1]["video_id"]
            features, video_duration = load_features(video_id)
            for key, query in video:
                duration = query.get("duration") or video_duration
                if duration is None:
                    raise ValueError(
                        f"Query {query['query']!r} of video {video_id}: no duration in the annotations, and the "
                        "features do not give one; pass the videos or the durations."
                    )
                batch.append((key, query, features, duration))
                if len(batch) == batch_size:
                    _answer_grounding_batch(model, processor, batch, question, sink, with_occurrence, generation_kwargs)
                    bar.update(len(batch))
                    batch = []
        if batch:
            _answer_grounding_batch(model, processor, batch, question, sink, with_occurrence, generation_kwargs)
            bar.update(len(batch))


def _answer_grounding_batch(model, processor, batch, question, sink, with_occurrence, generation_kwargs) -> None:
    conversations = [[user_turn(grounding_question(query["query"], question))] for _, query, _, _ in batch]
    answers = generate_answers(
        model, processor, conversations, [features for _, _, features, _ in batch], batch_size=len(batch),
        **generation_kwargs,
    )  # fmt: skip
    for (key, query, _, duration), answer in zip(batch, answers, strict=True):
        moment = parse_grounding_answer(answer, duration, processor.num_frames)
        record = {
            "video_id": query["video_id"],
            "query": query["query"],
            "timestamp": list(moment) if moment is not None else None,
            "answer": answer,
            "duration": duration,
        }
        if with_occurrence:
            record["occurrence"] = key[2]
        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    # Flushed per batch so that a killed run keeps what it answered
    sink.flush()


def _merge_grounding_answers(output_file: Path, order: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
    """
    Merges the files of processes (of this run, or of a killed one) into `output_file`, answers in `order` (of their
    keys) and then any other; returns the keys answered. An answer already in `output_file` (a merge killed before it
    removed the process files) is kept once.
    """
    records = read_jsonl_records(output_file, _GROUNDING_FIELDS)
    by_key = dict(keyed(records))
    leftovers = process_files(output_file)
    for path in leftovers:
        for number, record in enumerate(read_jsonl_records(path, (*_GROUNDING_FIELDS, "occurrence")), start=1):
            occurrence = record.pop("occurrence")
            if isinstance(occurrence, bool) or not isinstance(occurrence, int) or occurrence < 0:
                raise ValueError(f"{path}, record {number}: 'occurrence' must be a count, found {occurrence!r}.")
            by_key.setdefault((record["video_id"], record["query"], occurrence), record)
    done = set(by_key)
    merged = [by_key.pop(key) for key in order if key in by_key] + list(by_key.values())
    if leftovers or merged != records:
        write_lines_atomically(output_file, [json.dumps(record, ensure_ascii=False) for record in merged])
    for path in leftovers:
        path.unlink()
    return done


def captioning_answers_file(output_file: str | Path) -> Path:
    """The progress file of [`evaluate_captioning`] beside its output: `preds.json` -> `preds.answers.jsonl`."""
    output_file = Path(output_file)
    return output_file.with_name(f"{output_file.stem}.answers.jsonl")


def evaluate_captioning(
    model,
    processor: VTimeProcessor,
    videos: Sequence,
    output_file: str | Path,
    load_features: FeatureLoader,
    question: str = CAPTIONING_QUESTION,
    batch_size: int = 8,
    progress: bool = False,
    **generation_kwargs,
) -> Path:
    """
    Dense captions of `videos`, written to `output_file` in the ActivityNet challenge format
    `{"results": {"v_ID": [{"sentence", "timestamp": [start, end]}, ...]}}` (seconds by the captioning convention;
    repeats of a caption over touching moments merged as the original evaluation merges them, see
    [`merge_repeated_events`]; an answer that names no event gives an empty list).

    Resumes: each answer is appended as it comes to the JSON-lines file [`captioning_answers_file`] beside the
    output (`{"video_id", "duration", "answer", "events"}`, in the order of `videos` once merged); videos already
    there are not answered again (when made with the same settings, as [`evaluate_grounding`]), and the output is
    written, whole, from that file once every video has its answer.

    Args:
        videos: [`Video`]s (from [`read_activitynet_captions`]) or dicts with `video_id` and `duration` (None: the
            video's, from `load_features`).
        load_features: `video_id -> (features (rows, D) tensor, duration or None)`.
        progress: show a progress bar (the main process's share).

    Raises:
        ProcessFailedError: as [`evaluate_grounding`]; the output is then not written.
    """
    processes = current_processes()
    videos = [_as_mapping(video) for video in videos]
    output_file = Path(output_file)
    answers_file = captioning_answers_file(output_file)
    order = [video["video_id"] for video in videos]
    generation_kwargs = {"max_new_tokens": CAPTIONING_MAX_NEW_TOKENS, **generation_kwargs}
    settings = answer_settings(model, question, generation_kwargs)

    def plan() -> list[Mapping]:
        remove_stale_temporaries(answers_file.parent, answers_file.name)
        done = _merge_captioning_answers(answers_file, order)
        record_settings(output_file, settings, len(done))
        return [video for video in videos if video["video_id"] not in done]

    _run_job(
        processes, output_file, plan,
        lambda share: _answer_captioning(processes, share, answers_file, model, processor, load_features, question,
                                         batch_size, progress, generation_kwargs),
        lambda captioned: _write_captions(answers_file, output_file, order, captioned),
    )  # fmt: skip
    return output_file


def _write_captions(answers_file: Path, output_file: Path, order: Sequence[str], captioned) -> None:
    """Merges the answers of the processes, then, when none failed, writes the captions of `order` to
    `output_file`."""
    _merge_captioning_answers(answers_file, order)
    if captioned.errors:
        return
    answered = {record["video_id"]: record["events"] for record in read_jsonl_records(answers_file, _CAPTIONING_FIELDS)}
    results = {video_id: answered[video_id] for video_id in order}
    with atomic_write(output_file) as file:
        file.write((json.dumps({"results": results}, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def _answer_captioning(
    processes: Processes, videos, answers_file, model, processor, load_features, question, batch_size, progress,
    generation_kwargs,
) -> None:  # fmt: skip
    """Captions this process's share of the videos, appending to its record file."""
    with (
        _appending(processes.record_file(answers_file)) as sink,
        tqdm(total=len(videos), desc="captioning", unit="video", disable=not (progress and processes.is_main)) as bar,
    ):
        for start in range(0, len(videos), batch_size):
            batch = videos[start : start + batch_size]
            loaded = [load_features(video["video_id"]) for video in batch]
            durations = [video.get("duration") or duration for video, (_, duration) in zip(batch, loaded, strict=True)]
            for video, duration in zip(batch, durations, strict=True):
                if duration is None:
                    raise ValueError(f"Video {video['video_id']}: no duration in the annotations or the features.")
            answers = generate_answers(
                model, processor, [[user_turn(question)]] * len(batch), [features for features, _ in loaded],
                batch_size=len(batch), **generation_kwargs,
            )  # fmt: skip
            for video, duration, answer in zip(batch, durations, answers, strict=True):
                events = [
                    {"sentence": sentence, "timestamp": [start_s, end_s]}
                    for start_s, end_s, sentence in caption_events(answer, duration, processor.num_frames)
                ]
                record = {"video_id": video["video_id"], "duration": duration, "answer": answer, "events": events}
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(len(batch))


@contextmanager
def _appending(path: Path) -> Iterator[TextIO]:
    """`path` opened to append records; a file that this block created and that got none is removed at its end (a
    run that failed before its first answer leaves no empty results file)."""
    existed = path.exists()
    sink = path.open("a", encoding="utf-8")
    try:
        yield sink
    finally:
        empty = sink.tell() == 0
        sink.close()
        if empty and not existed:
            path.unlink(missing_ok=True)


def _merge_captioning_answers(answers_file: Path, order: Sequence[str]) -> set[str]:
    """Merges the files of processes into `answers_file`, answers in `order` (of video ids) and then any other, each
    video once; returns the videos answered."""
    records = read_jsonl_records(answers_file, _CAPTIONING_FIELDS)
    by_video = {record["video_id"]: record for record in records}
    leftovers = process_files(answers_file)
    for path in leftovers:
        for record in read_jsonl_records(path, _CAPTIONING_FIELDS):
            by_video.setdefault(record["video_id"], record)
    done = set(by_video)
    merged = [by_video.pop(video_id) for video_id in order if video_id in by_video] + list(by_video.values())
    if leftovers or merged != records:
        write_lines_atomically(answers_file, [json.dumps(record, ensure_ascii=False) for record in merged])
    for path in leftovers:
        path.unlink()
    return done


def read_finished_keys(output_file: str | Path) -> set[tuple[str, str, int]]:
    """Keys (see [`keyed`]) of the queries already answered in a grounding results file."""
    return {key for key, _ in keyed(read_jsonl_records(output_file, _GROUNDING_FIELDS))}


def read_jsonl_records(path: str | Path, required: Sequence[str] = ()) -> list[dict]:
    """
    The records of a JSON-lines results file written by an evaluation, `[]` when there is none yet.

    A last line cut short by a killed run (no newline at its end and not valid JSON) is removed from the file, and a
    complete last line without its newline gets one, so that appending goes on from a clean end. A damaged line
    elsewhere raises a `ValueError` naming the file and line instead: dropping the rest would lose finished work.
    """
    path = Path(path)
    if not path.is_file():
        return []
    content = path.read_bytes()
    lines = content.split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if number < len(lines):
                raise ValueError(
                    f"{path}, line {number}: not a JSON record ({error}); fix or remove the line."
                ) from None
            logger.warning("%s: dropping an incomplete last line left by an interrupted run", path)
            with path.open("r+b") as handle:
                handle.truncate(len(content) - len(line))
            return records
        missing = [field for field in required if not isinstance(record, dict) or field not in record]
        if missing:
            raise ValueError(f"{path}, line {number}: the record lacks {', '.join(map(repr, missing))}.")
        records.append(record)
    if lines[-1].strip():
        with path.open("ab") as handle:
            handle.write(b"\n")
    return records


def _as_mapping(item) -> Mapping:
    """A query or video as a mapping: dataclasses ([`GroundingQuery`], [`Video`]) become dicts."""
    return asdict(item) if is_dataclass(item) else item


def feature_store_loader(
    feature_store,
    durations: Mapping[str, float] | None = None,
    shuffle_seed: int | None = None,
    *,
    num_frames: int | None = None,
    mm_hidden_size: int | None = None,
) -> FeatureLoader:
    """
    `load_features` for the evaluations over precomputed features (a [`FeatureStore`]); durations come from
    `durations` when given. With `shuffle_seed`, each video's frame rows are permuted: a control in which a model that
    reads the video must fail.

    Each feature is checked as it is loaded ([`check_feature`]): float16 or float32, finite, and of shape
    `(num_frames, mm_hidden_size)` where those of the model are given (any rows or width where not). A feature that
    fails raises a `ValueError` naming its id and file, rather than failing deep in the model or, worse, being
    answered and scored as if the video had been seen.
    """

    def load(video_id: str):
        stored = stored_id(video_id, feature_store.__contains__)
        array = load_checked_feature(feature_store, stored, num_frames, mm_hidden_size)
        features = torch.from_numpy(np.asarray(array, dtype=np.float32))
        if shuffle_seed is not None:
            generator = torch.Generator().manual_seed(shuffle_seed)
            features = features[torch.randperm(features.shape[0], generator=generator)]
        return features, (durations or {}).get(video_id)

    return load


def video_folder_loader(processor: VTimeProcessor, video_dir: str | Path) -> FeatureLoader:
    """
    `load_features` for the evaluations: decodes and encodes the video of each id in `video_dir` (see
    [`~vtimellm_hf.data.media.VideoFolder`]: `{id}.mp4` or another video extension, `v_` ids also without the
    prefix), and gives its duration. An id that is a path (`../x`, `/abs/x`) is refused with a `ValueError`.
    """
    videos = VideoFolder(video_dir)

    def load(video_id: str):
        if video_id in ("", ".", "..") or Path(video_id).name != video_id or "\\" in video_id:
            raise ValueError(
                f"Video id {video_id!r} names a path outside {video_dir}: an id is the name of a file in the folder."
            )
        return processor.encode_video(videos.path(video_id))

    return load
