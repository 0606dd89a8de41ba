"""What an extraction records beside its features, and how the records of several processes become one.

* `extraction.jsonl`: a line per feature written, what it was made from (id, window, frames, encoder), so that a
  resumed run tells a feature made with other settings from a finished one;
* `failures.jsonl`: a line per input that gave no feature (`{"id", "path", "reason"}`), for the latest run.

Each process of a job appends to its own files (`extraction.rankR.jsonl`, `failures.rankR.jsonl`, see
[`~vtimellm_hf.distributed.Processes.record_file`]); the main process merges them into these two, the same files
whatever the number of processes.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..distributed import process_files
from ..files import write_lines_atomically
from .media import ExtractionFailure, MediaItem

__all__ = ["FAILURES_FILE", "SETTINGS_FILE", "ExtractionReport", "FailureLog", "announce", "merge_failures",
           "merge_settings", "read_settings"]  # fmt: skip

FAILURES_FILE = "failures.jsonl"
SETTINGS_FILE = "extraction.jsonl"


@dataclass
class ExtractionReport:
    """
    What [`extract_features`] did.

    Attributes:
        output_dir: the folder of `{id}.npy` files.
        total: distinct inputs (videos and images).
        extracted: features written by this run.
        skipped: inputs whose features were already complete.
        failures: inputs that gave no feature, also listed in `{output_dir}/failures.jsonl`.
        seconds: time spent decoding, encoding and writing (loading the encoder excluded).
        consolidated: the consolidated store written, if any.
        without_audio: for an audio stream, the videos recorded without an audio track (no file, no failure).
        streams: with `--streams`, the report of each stream, by name (this report adds them up).
    """

    output_dir: Path
    total: int
    extracted: int
    skipped: int
    failures: list[ExtractionFailure] = field(default_factory=list)
    seconds: float = 0.0
    consolidated: Path | None = None
    without_audio: int = 0
    streams: dict[str, "ExtractionReport"] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures and all(report.ok for report in self.streams.values())

    @property
    def videos_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.streams:
            return "; ".join(f"{name}: {report.summary()}" for name, report in self.streams.items())
        text = (
            f"{self.extracted} extracted, {self.skipped} already done, {len(self.failures)} failed of {self.total} "
            f"in {self.seconds:.1f} s ({self.videos_per_second:.2f} videos/s) into {self.output_dir}"
        )
        if self.failures:
            text += f"; failures are listed in {self.output_dir / FAILURES_FILE}"
        if self.without_audio:
            text += f"; {self.without_audio} video(s) without an audio track (no file, see {SETTINGS_FILE})"
        if self.consolidated is not None:
            text += f"; consolidated into {self.consolidated}"
        return text


class FailureLog:
    """A process's failures, on stderr and in its record file, created on its first failure."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def add(self, failure: ExtractionFailure) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        # One flushed line per failure: a killed run still leaves the failures it met
        self._file.write(failure.to_json() + "\n")
        self._file.flush()
        announce(failure)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def announce(failure: ExtractionFailure) -> None:
    text = f"failed: {failure.feature_id} ({failure.path}): {failure.reason}"
    # An id may hold a lone surrogate (a JSON "\ud800" escape), which a UTF-8 stream cannot write: shown escaped
    tqdm.write(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def _read_json_lines(path: Path) -> list[dict]:
    """The JSON objects of a record file, in order; a line that is not one (cut short by a killed run) is skipped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def read_settings(output_dir: Path) -> dict[str, dict]:
    """
    The settings of each feature of earlier runs, by id, from `extraction.jsonl` and the record files that processes
    of a killed run left beside it (the last line of an id wins). Unreadable lines (cut short by a killed run) are
    skipped, so their features are made again if their settings differ.
    """
    settings = {}
    for path in [output_dir / SETTINGS_FILE, *process_files(output_dir / SETTINGS_FILE)]:
        records = _read_json_lines(path)
        settings.update((record["id"], record) for record in records if isinstance(record.get("id"), str))
    return settings


def merge_settings(output_dir: Path) -> None:
    """`extraction.jsonl` made one line per id, sorted, with the records of every process merged in; the same file
    whatever the number of processes that wrote them."""
    merged = [json.dumps(record) for _, record in sorted(read_settings(output_dir).items())]
    leftovers = process_files(output_dir / SETTINGS_FILE)
    path = output_dir / SETTINGS_FILE
    if leftovers or not path.is_file() or path.read_text(encoding="utf-8", errors="replace").splitlines() != merged:
        write_lines_atomically(path, merged)
    for leftover in leftovers:
        leftover.unlink()


def merge_failures(
    output_dir: Path, input_failures: list[ExtractionFailure], todo: list[MediaItem]
) -> list[ExtractionFailure]:
    """
    `failures.jsonl` of this run, from the processes' record files: `input_failures` (the inputs that named no
    usable file), then the failed items of `todo` in its order; absent when nothing failed. Returns the failures.
    """
    path = output_dir / FAILURES_FILE
    sources = [path, *process_files(path)]
    position = {item.feature_id: index for index, item in enumerate(todo)}
    failed = [
        ExtractionFailure(record["id"], record.get("path"), record.get("reason", ""))
        for source in sources
        for record in _read_json_lines(source)
        if record.get("id") in position
    ]
    failures = input_failures + sorted(failed, key=lambda failure: position[failure.feature_id])
    if failures:
        write_lines_atomically(path, [failure.to_json() for failure in failures])
    else:
        path.unlink(missing_ok=True)
    for source in sources[1:]:
        source.unlink()
    return failures
