"""The audio streams of `vtimellm-hf extract-features --streams`: LongVALE's BEATs audio and Whisper speech, AVicuna's
CLAP audio, one `{id}.npy` per video and stream, as the originals' extraction scripts write them.

Each stream has its folder (`audio_features/`, `speech_features/`, beside `video_features/`) with its own
`extraction.jsonl` (a line per video: id, clip window, encoder settings, rows, 0 rows for a video without an audio
track) and `failures.jsonl`, so that it resumes, retries its failures and is shared among processes as the video
stream is. A video without an audio track gets no file and a record saying so: not a failure, and not read again.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..distributed import Processes, current_processes
from ..model.audio_processing_vtime import AudioTrack, build_stream_encoder
from .extraction_records import (
    FAILURES_FILE,
    SETTINGS_FILE,
    ExtractionReport,
    FailureLog,
    merge_failures,
    merge_settings,
    read_settings,
)
from .features import FEATURE_DTYPE, check_feature, feature_path, read_npy_header, write_feature
from .media import ExtractionFailure, MediaItem, collect_media

__all__ = ["AUDIO_STREAMS", "STREAMS", "audio_stream_encoders", "extract_streams", "parse_streams", "stream_folder"]

# `--streams` names: the encoder kind of each audio stream (CLAP is AVicuna's audio stream)
AUDIO_STREAMS = {"audio": "beats", "speech": "whisper", "clap": "clap"}
STREAMS = ("video", *AUDIO_STREAMS)


def stream_folder(output_dir: Path, stream: str) -> Path:
    """`{output_dir}/{video,audio,speech}_features`: the originals' folders (CLAP features are the audio stream's)."""
    return output_dir / f"{'audio' if stream == 'clap' else stream}_features"


def audio_stream_encoders(streams, names: dict[str, str | None], reader: str | None, device, dtype) -> dict:
    """
    `{stream: encoder}` of the audio streams among `streams`, built from `names` (`{stream: name_or_path}`; `None`:
    the original's checkpoint, which BEATs has not), each reading audio as `reader` says or as its original did.
    """
    if "audio" in streams and "clap" in streams:
        raise ValueError("--streams names both audio (BEATs, LongVALE) and clap (CLAP, AVicuna): one audio stream.")
    settings = {"device": device, "dtype": dtype, **({} if reader is None else {"reader": reader})}
    return {stream: build_stream_encoder(kind, names.get(stream), **settings)
            for stream, kind in AUDIO_STREAMS.items() if stream in streams}  # fmt: skip


def _record(item: MediaItem, encoder) -> dict:
    # The batch size changes no feature
    settings = {key: value for key, value in encoder.to_dict().items() if key != "batch_size"}
    return {"id": item.feature_id, "window": None if item.window is None else list(item.window), "encoder": settings}


def _is_done(folder: Path, item: MediaItem, encoder, earlier: dict[str, dict]) -> bool:
    recorded = earlier.get(item.feature_id)
    expected = _record(item, encoder)
    if recorded is not None and {key: recorded.get(key) for key in expected} != expected:
        return False
    if recorded is not None and recorded.get("rows") == 0:
        # Recorded without an audio track: nothing to read again
        return True
    try:
        header = read_npy_header(feature_path(folder, item.feature_id))
    except (OSError, ValueError):
        return False
    rows = None if recorded is None else recorded.get("rows")
    return (
        header.complete
        and header.dtype == FEATURE_DTYPE
        and len(header.shape) == 2
        and rows in (None, header.shape[0])
        and header.shape[1] == encoder.feature_size
    )


@dataclass
class AudioStreamPlan:
    """What the main process found to do for the audio streams: the videos (`total`), those left to encode for each
    stream (`todo`), and every video that some stream still needs (`items`, shared among the processes)."""

    output_dir: Path
    total: int
    todo: dict[str, list[MediaItem]]
    items: list[MediaItem]


def plan_audio_streams(items: list[MediaItem], output_dir: Path, encoders: dict) -> AudioStreamPlan:
    """The main process's plan: every video (images have no audio track), less the features each stream has made
    with the same settings; earlier records merged, earlier failures cleared to be retried."""
    videos = [item for item in items if not item.is_image]
    todo = {}
    for stream, encoder in encoders.items():
        folder = stream_folder(output_dir, stream)
        folder.mkdir(parents=True, exist_ok=True)
        merge_settings(folder)
        (folder / FAILURES_FILE).unlink(missing_ok=True)
        earlier = read_settings(folder)
        todo[stream] = [item for item in videos if not _is_done(folder, item, encoder, earlier)]
    wanted = {item.feature_id for stream_todo in todo.values() for item in stream_todo}
    return AudioStreamPlan(output_dir, len(videos), todo, [item for item in videos if item.feature_id in wanted])


def extract_audio_share(plan: AudioStreamPlan, encoders: dict, processes: Processes, progress) -> dict[str, int]:
    """Encodes this process's share of `plan` into each stream's folder; returns the features written by stream."""
    items = processes.share(plan.items)
    todo = {stream: {item.feature_id for item in plan.todo[stream]} for stream in encoders}
    written = dict.fromkeys(encoders, 0)
    logs = {stream: (FailureLog(processes.record_file(stream_folder(plan.output_dir, stream) / FAILURES_FILE)),
                     open(processes.record_file(stream_folder(plan.output_dir, stream) / SETTINGS_FILE), "a",
                          encoding="utf-8"))
            for stream in encoders}  # fmt: skip
    show = progress if processes.is_main else False
    try:
        for item in tqdm(items, unit="video", desc="audio streams", disable=None if show is None else not show):
            track = AudioTrack(item.path, item.window)
            for stream, encoder in encoders.items():
                if item.feature_id not in todo[stream]:
                    continue
                failures, settings_log = logs[stream]
                folder = stream_folder(plan.output_dir, stream)
                try:
                    features = track.encode(encoder)
                    array = None if features is None else features.numpy().astype(FEATURE_DTYPE)
                    if array is not None:
                        check_feature(array, None, encoder.feature_size, item.feature_id)
                except (OSError, ValueError, RuntimeError) as error:  # what a damaged file or track raises
                    failures.add(ExtractionFailure(item.feature_id, str(item.path), f"{type(error).__name__}: {error}"))
                    continue
                # The record first, without the stale file it would describe (as the video stream's)
                path = feature_path(folder, item.feature_id)
                path.unlink(missing_ok=True)
                settings_log.write(json.dumps({**_record(item, encoder), "rows": 0 if array is None else len(array)}))
                settings_log.write("\n")
                settings_log.flush()
                if array is not None:
                    write_feature(path, array)
                    written[stream] += 1
    finally:
        for failures, settings_log in logs.values():
            failures.close()
            settings_log.close()
    return written


def merge_audio_streams(
    plan: AudioStreamPlan, input_failures: list[ExtractionFailure], written: list[dict | None]
) -> dict[str, dict]:
    """
    Each stream's records merged from every process's files, and its counts: `{stream: {"output_dir", "total",
    "extracted", "skipped", "failures", "without_audio"}}` (`without_audio`: videos recorded without an audio track).
    """
    reports = {}
    for stream, todo in plan.todo.items():
        folder = stream_folder(plan.output_dir, stream)
        merge_settings(folder)
        reports[stream] = {
            "output_dir": folder,
            "total": plan.total + len(input_failures),
            "extracted": sum(counts.get(stream, 0) for counts in written if counts),
            "skipped": plan.total - len(todo),
            "failures": merge_failures(folder, input_failures, todo),
            "without_audio": sum(record.get("rows") == 0 for record in read_settings(folder).values()),
        }
    return reports


def parse_streams(streams: str | Sequence[str]) -> tuple[str, ...]:
    names = [name.strip() for name in (streams.split(",") if isinstance(streams, str) else streams)]
    unknown = [name for name in names if name not in STREAMS]
    if unknown or not names or len(set(names)) < len(names):
        raise ValueError(f"streams must name distinct streams among {', '.join(STREAMS)}, got {streams!r}.")
    return tuple(name for name in STREAMS if name in names)


def extract_streams(
    inputs,
    output_dir: Path,
    streams: tuple[str, ...],
    extract_video,
    video: dict,
    names: dict | None,
    reader: str | None,
) -> ExtractionReport:
    """
    Every stream of `streams`, each into its folder of `output_dir`: the video stream by `extract_video`
    ([`~vtimellm_hf.data.extract.extract_features`] with the settings `video`), then the audio streams, their
    encoders named by `names` (`{stream: name_or_path}`) and reading tracks as `reader` says.
    """
    names = dict(names or {})
    unknown = sorted(set(names) - set(AUDIO_STREAMS))
    if unknown:
        raise ValueError(f"audio_encoders names {unknown}; the audio streams are {', '.join(AUDIO_STREAMS)}.")
    processes = current_processes()

    def set_up() -> dict:
        return audio_stream_encoders(streams, names, reader, processes.device(video["device"]), video["dtype"])

    # Built (not loaded) first: unusable encoder settings are refused before any stream is made
    encoders = processes.set_up_each(set_up)
    reports = {}
    if "video" in streams:
        reports["video"] = extract_video(inputs, stream_folder(output_dir, "video"), **video)

    def plan():
        items, input_failures = collect_media(inputs, video["video_root"])
        return plan_audio_streams(items, output_dir, encoders), input_failures

    audio_plan, input_failures = processes.run_on_main(plan)
    start = time.perf_counter()
    written = processes.run_on_each(lambda: extract_audio_share(audio_plan, encoders, processes, video["progress"]))
    seconds = time.perf_counter() - start
    merged = processes.run_on_main(lambda: merge_audio_streams(audio_plan, input_failures, written.values))
    processes.raise_errors(written)
    for stream, fields in merged.items():
        reports[stream] = ExtractionReport(**fields, seconds=seconds)
    return ExtractionReport(
        output_dir=output_dir,
        total=max(report.total for report in reports.values()),
        extracted=sum(report.extracted for report in reports.values()),
        skipped=sum(report.skipped for report in reports.values()),
        seconds=sum(report.seconds for report in reports.values()),
        streams=reports,
    )
