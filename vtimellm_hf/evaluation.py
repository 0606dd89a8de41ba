"""Benchmarks from the command line: answer a benchmark's queries with a checkpoint, then score the answers.

    vtimellm-hf evaluate grounding --model M --annotations charades_sta_test.txt --videos DIR --out results.jsonl
    vtimellm-hf evaluate captioning --model M --annotations val_2.json --features DIR --out predictions.json
    vtimellm-hf score grounding --predictions results.jsonl --annotations charades_sta_test.txt
    vtimellm-hf score captioning --predictions predictions.json --references val_2.json
    vtimellm-hf evaluate longvale --model M --annotations A --features V --audio-features A --speech-features S \
        --out longvale.jsonl
    vtimellm-hf score longvale --answers longvale.jsonl --annotations A

Grounding annotations are read by their extension: Charades-STA `.txt` (`VIDEO_ID START END##sentence`),
ActivityNet Captions `.json` (one query per event, either layout), or JSON lines `.jsonl` of
`{"video_id", "query", "start", "end", "duration"}` (what `vtimellm-hf convert --task grounding` writes).
Charades-STA gives no video durations, and a frame index means nothing without one: they come from the videos
(`--videos`), or from `--durations` (a JSON object of seconds by video id, or Charades' own `Charades_v1_test.csv`).

Both evaluations resume where a killed run stopped, and answer a subset with `--video-ids` or `--limit`; give
`score` the same selection to score that subset. `score` prints one JSON object, in percent, as its last line.
Under `torchrun` or `accelerate launch`, the processes share the videos, each on its own GPU, and the main process
merges their answers into `--out` (see [`vtimellm_hf.evaluation_runs`]).
"""

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .data.raw_annotations import (
    GroundingQuery,
    Video,
    grounding_queries,
    is_finite_number,
    read_activitynet_captions,
    read_charades_sta,
)
from .checkpoints import load_model_and_processor
from .cli import USAGE_ERRORS, positive_int, reports_errors
from .distributed import Processes, job_status, process_files
from .files import check_text, read_json_records
from .evaluation_runs import (
    captioning_answers_file,
    evaluate_captioning,
    evaluate_grounding,
    feature_store_loader,
    keyed,
    read_jsonl_records,
    settings_file,
    video_folder_loader,
)
from .inference import (
    CAPTIONING_MAX_NEW_TOKENS,
    GROUNDING_MAX_NEW_TOKENS,
    add_generation_arguments,
    add_question_argument,
    generation_kwargs_from_args,
)
from .family_evaluation import LONGVALE_TASKS
from .model import CAPTIONING, GROUNDING

__all__ = [
    "add_subcommand",
    "read_grounding_annotations",
    "read_grounding_query_lines",
    "select_videos",
    "with_durations",
]

Item = TypeVar("Item")
# What the evaluation commands report as `error: MESSAGE` (exit status 2) rather than as a traceback
_EVALUATION_ERRORS = (*USAGE_ERRORS, KeyError, RuntimeError)


def read_grounding_query_lines(path: str | Path) -> list[GroundingQuery]:
    """
    Grounding queries from JSON lines `{"video_id", "query", "start", "end", "duration"}` (seconds; `duration` may
    be null or absent), or a JSON list of them. Blank lines are skipped.

    Raises:
        ValueError: naming the file and line, on invalid JSON, a missing or mistyped field, or a span that is not
            `0 <= start <= end` or a duration that is not positive.
    """
    queries = []
    for where, record in read_json_records(path):
        try:
            queries.append(_grounding_query(record))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    return queries


def _grounding_query(record: Any) -> GroundingQuery:
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, found {type(record).__name__}")
    missing = [field for field in ("video_id", "query", "start", "end") if field not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(map(repr, missing))}")
    if not isinstance(record["video_id"], str) or not isinstance(record["query"], str) or not record["query"].strip():
        raise ValueError("'video_id' must be a string and 'query' a non-empty string")
    start, end = _seconds(record["start"], "start"), _seconds(record["end"], "end")
    if not 0 <= start <= end:
        raise ValueError(f"the span [{start}, {end}] is not 0 <= start <= end")
    duration = record.get("duration")
    if duration is not None and _seconds(duration, "duration") <= 0:
        raise ValueError(f"'duration' must be positive, found {duration}")
    return GroundingQuery(
        record["video_id"], record["query"], start, end, None if duration is None else float(duration)
    )


def _seconds(value: Any, name: str) -> float:
    if not is_finite_number(value):
        raise ValueError(f"{name!r} must be a finite number of seconds, found {value!r}")
    return float(value)


def read_grounding_annotations(path: str | Path) -> list[GroundingQuery]:
    """
    Grounding queries from a Charades-STA `.txt`, an ActivityNet Captions `.json` (one query per event) or a
    `.jsonl` of queries, chosen by the extension. Charades-STA queries have no duration (see [`with_durations`]).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".txt":
        return read_charades_sta(path)
    if suffix == ".json":
        return grounding_queries(read_activitynet_captions(path))
    if suffix == ".jsonl":
        return read_grounding_query_lines(path)
    raise ValueError(
        f"{path}: grounding annotations must be a Charades-STA .txt, an ActivityNet Captions .json or a .jsonl of "
        f"queries, not a {suffix or 'bare'} file."
    )


def with_durations(queries: Sequence[GroundingQuery], durations: Mapping[str, float] | None) -> list[GroundingQuery]:
    """The queries, those without a duration given their video's from `durations` where it has one."""
    if not durations:
        return list(queries)
    return [
        dataclasses.replace(query, duration=durations[query.video_id])
        if query.duration is None and query.video_id in durations
        else query
        for query in queries
    ]


def select_videos(
    items: Sequence[Item],
    video_id: Callable[[Item], str],
    source: str | Path,
    video_ids: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Item]:
    """
    The items (queries or videos, in file order) of the videos `video_ids` (all when None), then the first `limit`.

    Raises:
        ValueError: when a requested video is not in `source`, or nothing is left.
    """
    if video_ids:
        present = {video_id(item) for item in items}
        absent = [wanted for wanted in video_ids if wanted not in present]
        if absent:
            raise ValueError(f"{source}: no video {', '.join(absent)} in the annotations.")
        wanted = set(video_ids)
        items = [item for item in items if video_id(item) in wanted]
    items = list(items[:limit] if limit is not None else items)
    if not items:
        raise ValueError(f"{source}: nothing to evaluate.")
    return items


# Command line


def add_subcommand(subparsers) -> None:
    """Registers `evaluate {grounding,captioning}` and `score {grounding,captioning}`; each sets `run(args)`."""
    evaluate = subparsers.add_parser(
        "evaluate",
        help="answer a benchmark's queries with a checkpoint (resumable)",
        description="Answer a benchmark with a VTimeLLM checkpoint. A rerun with the same --out goes on where a "
        "killed run stopped.",
    )
    tasks = evaluate.add_subparsers(dest="task", metavar="TASK", required=True)

    parser = tasks.add_parser(
        "grounding",
        help="temporal grounding: one moment per query",
        description="Ground every query and append {video_id, query, timestamp: [start, end] | null, answer, "
        "duration} lines to --out (seconds, grounding convention: s/100 and e/100 of the duration).",
    )
    _add_evaluation_arguments(parser, "results.jsonl")
    parser.add_argument(
        "--durations",
        metavar="FILE",
        help="video lengths in seconds, for annotations without them (Charades-STA) with --features: a JSON object "
        "{video_id: seconds} or a CSV with id and length columns (Charades_v1_test.csv)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="queries per batch (default: %(default)s)")
    add_question_argument(parser, GROUNDING)
    add_generation_arguments(parser, GROUNDING_MAX_NEW_TOKENS)
    parser.set_defaults(run=_run_evaluate_grounding)

    parser = tasks.add_parser(
        "captioning",
        help="dense video captioning: events with their times",
        description="Caption every video of ActivityNet Captions annotations into --out in the ActivityNet "
        'challenge format {"results": {"v_ID": [{"sentence", "timestamp": [start, end]}]}} (seconds, captioning '
        "convention: s/100 and (e+1)/100 of the duration). Answers are kept, as they come, in "
        "OUT_STEM.answers.jsonl beside --out, from which a rerun resumes.",
    )
    _add_evaluation_arguments(parser, "predictions.json")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="videos per batch (default: %(default)s)")
    add_question_argument(parser, CAPTIONING)
    add_generation_arguments(parser, CAPTIONING_MAX_NEW_TOKENS)
    parser.set_defaults(run=_run_evaluate_captioning)

    parser = tasks.add_parser(
        "longvale",
        help="LongVALE-LLM: grounding, dense and segment captioning with video, audio and speech",
        description="Ask LongVALE's questions (its exact prompts) about every video of its annotations "
        "{video_id: {duration, timestamps, sentences}} and append {task, video_id, sentence_id, answer} lines to "
        "--out, from which a rerun resumes. A video without video features is skipped; a missing audio or speech "
        "file is that stream absent.",
    )
    parser.add_argument("--annotations", required=True, metavar="FILE", help="LongVALE's evaluation annotations")
    parser.add_argument("--features", required=True, metavar="PATH", help="video features: {id}.npy folder or store")
    parser.add_argument("--audio-features", metavar="PATH", help="BEATs audio features by id")
    parser.add_argument("--speech-features", metavar="PATH", help="Whisper speech features by id")
    parser.add_argument("--out", required=True, metavar="FILE", help="where answers go (e.g. longvale.jsonl)")
    parser.add_argument("--tasks", nargs="+", choices=LONGVALE_TASKS, default=list(LONGVALE_TASKS),
                        help="the tasks asked (default: all three)")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=8, help="questions per batch (default: %(default)s)")
    _add_selection_arguments(parser)
    add_generation_arguments(parser, CAPTIONING_MAX_NEW_TOKENS)
    parser.set_defaults(run=_run_evaluate_longvale)

    score = subparsers.add_parser(
        "score", help="score predictions against references", description="Score predictions; the last line is JSON."
    )
    tasks = score.add_subparsers(dest="task", metavar="TASK", required=True)
    parser = tasks.add_parser(
        "grounding", help="R1@{0.3,0.5,0.7} and mIoU", description="R1@{0.3,0.5,0.7} and mIoU, in percent."
    )
    parser.add_argument("--predictions", required=True, metavar="FILE", help="results of `evaluate grounding`")
    parser.add_argument(
        "--annotations",
        required=True,
        metavar="FILE",
        help="the references: Charades-STA .txt, ActivityNet .json or .jsonl",
    )
    parser.add_argument(
        "--durations", metavar="FILE", help="video lengths (JSON or CSV), to clip predictions to their video"
    )
    parser.add_argument(
        "--exact-iou", action="store_true",
        help="score the exact IoU (default: rounded to 2 decimals first, as VTimeLLM's script and paper)",
    )  # fmt: skip
    _add_selection_arguments(parser)
    parser.set_defaults(run=_run_score_grounding)

    parser = tasks.add_parser(
        "captioning",
        help="SODA_c, CIDEr and METEOR",
        description="SODA_c, and CIDEr and METEOR averaged over tIoU {0.3, 0.5, 0.7, 0.9}, in percent (needs "
        "pycocoevalcap and Java).",
    )
    parser.add_argument("--predictions", required=True, metavar="FILE", help="ActivityNet challenge format JSON")
    parser.add_argument("--references", required=True, metavar="FILE", help="ActivityNet Captions annotations")
    _add_selection_arguments(parser)
    parser.set_defaults(run=_run_score_captioning)

    parser = tasks.add_parser(
        "longvale",
        help="LongVALE's grounding, dense captioning and segment captioning scores",
        description="Grounding R1@{0.3,0.5,0.7} and mIoU, dense captioning SODA_c, CIDEr and METEOR, segment "
        "captioning BLEU-4, METEOR, ROUGE-L and CIDEr, in percent, of each task answered (captioning needs "
        "pycocoevalcap and Java).",
    )
    parser.add_argument("--answers", required=True, metavar="FILE", help="answers of `evaluate longvale`")
    parser.add_argument("--annotations", required=True, metavar="FILE", help="LongVALE's evaluation annotations")
    _add_selection_arguments(parser)
    parser.set_defaults(run=_run_score_longvale)


def _add_evaluation_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--annotations", required=True, metavar="FILE", help="the benchmark's annotation file")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--features", metavar="PATH", help="precomputed features: a folder of {id}.npy or a .safetensors"
    )
    inputs.add_argument("--videos", metavar="DIR", help="folder of the videos {id}.mp4 (decoded and encoded once each)")
    parser.add_argument("--out", required=True, metavar="FILE", help=f"where answers go (e.g. {default_out})")
    _add_selection_arguments(parser)
    parser.set_defaults(written_files=_written_files)


def _written_files(args: argparse.Namespace) -> list[Path]:
    """What an evaluation writes beside --out: the captioning answers, the settings of the answers."""
    return [captioning_answers_file(args.out), settings_file(args.out)]


def _add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video-ids", nargs="+", metavar="ID", help="only the queries or videos of these videos")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="only the first N queries or videos")


def _set_up(args: argparse.Namespace, processes: Processes):
    """`(model, processor, load_features)` of this process, the model on its own device."""
    model, processor = load_model_and_processor(
        args.model, str(processes.device(args.device)), args.dtype, args.trust_remote_code
    )
    if args.videos:
        return model, processor, video_folder_loader(processor, args.videos)
    from .data.features import open_feature_store

    # Features the model cannot take are refused by name, not answered
    load_features = feature_store_loader(
        open_feature_store(args.features),
        num_frames=model.config.num_frames,
        mm_hidden_size=model.config.mm_hidden_size,
    )
    return model, processor, load_features


def _records_so_far(path: str | Path, required: Sequence[str]) -> int:
    """How many answers `path` and the files of the processes of a killed run hold."""
    return sum(len(read_jsonl_records(source, required)) for source in [path, *process_files(path)])


def _durations(path: str | None) -> dict[str, float] | None:
    if path is None:
        return None
    from .data.converters import read_durations

    return read_durations(path)


def _selected_queries(args: argparse.Namespace) -> list[GroundingQuery]:
    queries = select_videos(
        _as_text(read_grounding_annotations(args.annotations), args.annotations), lambda query: query.video_id,
        args.annotations, args.video_ids, args.limit,
    )  # fmt: skip
    return with_durations(queries, _durations(args.durations))


def _as_text(items: Sequence[Item], source: str | Path) -> Sequence[Item]:
    """The queries or videos, refused by number where an id or query is no text (a lone surrogate): it could be
    neither asked nor written."""
    for index, item in enumerate(items):
        for name in ("video_id", "query"):
            if isinstance(value := getattr(item, name, None), str):
                check_text(value, f"{source}: the {name} of query or video #{index}")
    return items


@reports_errors("evaluate grounding", {_EVALUATION_ERRORS: 2})
def _run_evaluate_grounding(args: argparse.Namespace) -> int:
    def run(processes: Processes) -> int:
        kwargs = generation_kwargs_from_args(args)
        queries = _selected_queries(args)
        undated = sorted({query.video_id for query in queries if query.duration is None})
        if undated and not args.videos:
            raise ValueError(
                f"{args.annotations}: {len(undated)} video(s) have no duration (Charades-STA annotations give none), "
                f"for instance {undated[0]}; a frame index cannot become seconds without it. Pass --videos DIR to "
                "read durations from the videos, or --durations FILE (a JSON object of seconds by video id, or "
                "Charades_v1_test.csv)."
            )
        answered_before = _records_so_far(args.out, ("video_id", "query")) if processes.is_main else 0
        model, processor, load_features = processes.set_up_each(lambda: _set_up(args, processes))
        evaluate_grounding(
            model, processor, queries, args.out, load_features, question=args.question, batch_size=args.batch_size,
            progress=True, **kwargs,
        )  # fmt: skip
        if not processes.is_main:
            return 0
        by_key = dict(keyed(read_jsonl_records(args.out, ("video_id", "query", "timestamp"))))
        records = [by_key[key] for key, _ in keyed(dataclasses.asdict(query) for query in queries)]
        unparsed = sum(record["timestamp"] is None for record in records)
        print(
            f"evaluate grounding: {len(records)} queries answered in {args.out} ({answered_before} by an earlier "
            f"run); {unparsed} answer(s) name no moment (timestamp null, IoU 0 when scored)",
            file=sys.stderr,
        )
        return 0

    return job_status(run)


@reports_errors("evaluate captioning", {_EVALUATION_ERRORS: 2})
def _run_evaluate_captioning(args: argparse.Namespace) -> int:
    def run(processes: Processes) -> int:
        kwargs = generation_kwargs_from_args(args)
        videos = select_videos(
            _as_text(read_activitynet_captions(args.annotations), args.annotations), lambda video: video.video_id,
            args.annotations, args.video_ids, args.limit,
        )  # fmt: skip
        model, processor, load_features = processes.set_up_each(lambda: _set_up(args, processes))
        evaluate_captioning(
            model, processor, videos, args.out, load_features, question=args.question, batch_size=args.batch_size,
            progress=True, **kwargs,
        )  # fmt: skip
        if not processes.is_main:
            return 0
        answers = {
            record["video_id"]: record
            for record in read_jsonl_records(captioning_answers_file(args.out), ("video_id", "events"))
        }
        empty = sum(not answers[video.video_id]["events"] for video in videos)
        print(
            f"evaluate captioning: {len(videos)} videos captioned in {args.out} (answers in "
            f"{captioning_answers_file(args.out)}); {empty} answer(s) name no event (an empty list when scored)",
            file=sys.stderr,
        )
        return 0

    return job_status(run)


@reports_errors("score grounding")
def _run_score_grounding(args: argparse.Namespace) -> int:
    from .metrics import read_grounding_predictions, score_grounding

    references = _selected_queries(args)
    predictions = read_grounding_predictions(args.predictions)
    scores = score_grounding(predictions, references, iou_decimals=None if args.exact_iou else 2)
    print(
        f"R1@0.3 {scores['r1@0.3']:.2f}  R1@0.5 {scores['r1@0.5']:.2f}  R1@0.7 {scores['r1@0.7']:.2f}  "
        f"mIoU {scores['miou']:.2f}  ({scores['n']} queries, {scores['unparsed']} unparsed, "
        f"{scores['missing']} missing)"
    )
    print(json.dumps(scores))
    return 0


@reports_errors("score captioning", {(*USAGE_ERRORS, RuntimeError, ImportError): 2})
def _run_score_captioning(args: argparse.Namespace) -> int:
    from .metrics import read_captioning_predictions, score_captioning

    references: list[Video] = select_videos(
        read_activitynet_captions(args.references), lambda video: video.video_id, args.references,
        args.video_ids, args.limit,
    )  # fmt: skip
    scores = score_captioning(read_captioning_predictions(args.predictions), references)
    print(
        f"SODA_c {scores['soda_c']:.2f}  CIDEr {scores['cider']:.2f}  METEOR {scores['meteor']:.2f}  "
        f"({scores['n']} videos, {scores['missing']} missing)"
    )
    print(json.dumps(scores))
    return 0


@reports_errors("evaluate longvale", {_EVALUATION_ERRORS: 2})
def _run_evaluate_longvale(args: argparse.Namespace) -> int:
    from .data.features import open_feature_store
    from .family_evaluation import evaluate_longvale, longvale_stream_loader

    kwargs = generation_kwargs_from_args(args)
    videos = select_videos(read_activitynet_captions(args.annotations), lambda video: video.video_id,
                           args.annotations, args.video_ids, args.limit)  # fmt: skip
    stores = [open_feature_store(path) if path else None
              for path in (args.features, args.audio_features, args.speech_features)]  # fmt: skip
    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.trust_remote_code)
    evaluate_longvale(model, processor, videos, args.out, longvale_stream_loader(*stores), tasks=args.tasks,
                      batch_size=args.batch_size, progress=True, **kwargs)  # fmt: skip
    print(f"evaluate longvale: {len(read_jsonl_records(args.out))} answers in {args.out}", file=sys.stderr)
    return 0


@reports_errors("score longvale", {(*USAGE_ERRORS, RuntimeError, ImportError): 2})
def _run_score_longvale(args: argparse.Namespace) -> int:
    from .family_evaluation import score_longvale

    videos = select_videos(read_activitynet_captions(args.annotations), lambda video: video.video_id,
                           args.annotations, args.video_ids, args.limit)  # fmt: skip
    scores = score_longvale(args.answers, videos)
    for task, values in scores.items():
        print(f"{task}: " + "  ".join(f"{name} {value:.2f}" for name, value in values.items()
                                      if isinstance(value, float)))  # fmt: skip
    print(json.dumps(scores))
    return 0
