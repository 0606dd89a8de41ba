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
from pathlib import Path

from tqdm.auto import tqdm

from ..distributed import process_files
from ..files import write_lines_atomically
from .media import ExtractionFailure, MediaItem

__all__ = ["FAILURES_FILE", "SETTINGS_FILE", "FailureLog", "announce", "merge_failures", "merge_settings",
           "read_settings"]  # fmt: skip

FAILURES_FILE = "failures.jsonl"
SETTINGS_FILE = "extraction.jsonl"


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
    tqdm.write(f"failed: {failure.feature_id} ({failure.path}): {failure.reason}", file=sys.stderr)


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
