"""Files read with errors that name their line, files and folders written atomically, and the leftovers of writers
that were killed.

Reading: [`read_text_lines`], [`read_json`] and [`read_json_records`] (a JSON list or JSON lines) raise a
`ValueError` naming the file and the line on bytes that are not UTF-8, invalid JSON, or an object that repeats a key
(which `json` would resolve silently by keeping the last one).

Writing: what a killed run leaves must never be mistaken for finished work: every feature, merged record file and
consolidated store is written under a hidden temporary name beside its destination and renamed into place. The
temporary names say which host and process wrote them (`.{name}.{token}.{host}-{pid}.tmp`), so that a later run
removes those of dead processes and keeps those that another live process is writing.

Sharing: two runs that would write one file (two evaluations with the same `--out`) take its lock
([`exclusive_lock`]); the second is refused with the name of the first.
"""

import datetime
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "FileLockedError",
    "atomic_write",
    "check_text",
    "exclusive_lock",
    "read_json",
    "read_json_records",
    "read_text_lines",
    "remove_stale_temporaries",
    "temporary_path",
    "write_lines_atomically",
]

_HOST = socket.gethostname()
_TEMPORARY_PATTERN = re.compile(rf"^\..+\.[A-Za-z0-9_]+\.{re.escape(_HOST)}-(?P<pid>\d+)\.tmp$")
# Bytes read at a time while looking for the first character of a file
_SNIFF_SIZE = 4096


def read_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """`(line_number, line)` pairs, line endings removed; decoded line by line so that an error names its line."""
    with open(path, "rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            try:
                # A byte-order mark would otherwise end up glued to the first video id.
                line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {line_number}: not valid UTF-8 (byte {raw_line[error.start]:#04x} at column "
                    f"{error.start + 1})"
                ) from None
            yield line_number, line.rstrip("\r\n")


def read_json(path: str | os.PathLike) -> Any:
    """
    The content of a JSON file (a byte-order mark allowed).

    Raises:
        ValueError: naming the file and line, on bytes that are not UTF-8, invalid JSON or an object that repeats a
            key (`json` would keep the last one silently).
    """
    with open(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}, line {line_number}: not valid UTF-8 (byte {raw[error.start]:#04x})") from None
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}, column {error.colno}: invalid JSON: {error.msg}") from None
    except _DuplicateKeyError as error:
        raise ValueError(f"{path}: {error}") from None


class _DuplicateKeyError(ValueError):
    pass


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # `json` silently keeps the last of repeated keys, which would drop a video of the original layout.
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"key {key!r} appears more than once in the same object")
        result[key] = value
    return result


def read_json_records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """
    `(where, record)` of a JSON list or a JSON-lines file (blank lines skipped), told apart by the first character;
    `where` names the file and the record or line, for the caller's own errors about the record.

    Raises:
        ValueError: naming the file and line, on bytes that are not UTF-8, invalid JSON or an object that repeats
            a key.
    """
    if _first_significant_byte(path) == b"[":
        for index, record in enumerate(read_json(path)):
            yield f"{path}, record #{index}", record
        return
    for line_number, line in read_text_lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {line_number}"
        try:
            record = json.loads(line, object_pairs_hook=_object_without_duplicate_keys)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: invalid JSON: {error.msg} (column {error.colno})") from None
        except _DuplicateKeyError as error:
            raise ValueError(f"{where}: {error}") from None
        yield where, record


def _first_significant_byte(path: str | os.PathLike) -> bytes:
    """The first byte of the file after a byte-order mark and whitespace, or b"" if there is none."""
    with open(path, "rb") as file:
        chunk = file.read(_SNIFF_SIZE)
        if chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        while chunk:
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]
            chunk = file.read(_SNIFF_SIZE)
    return b""


def temporary_path(path: str | os.PathLike) -> Path:
    """A new hidden name beside `path`, naming it and this process: `.{name}.{token}.{host}-{pid}.tmp`."""
    path = Path(path)
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.{_HOST}-{os.getpid()}.tmp"


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """
    A binary file that becomes `path` when the block ends without an error, and vanishes otherwise.

    The data goes to a hidden temporary file in the same folder, flushed to disk and renamed over `path`
    (`os.replace`): a reader, or a later run, sees the complete old file, the complete new one, or none, never a
    truncated file, whatever interrupts the writer (an exception, SIGKILL, a power cut). The file gets the mode of
    any new file (the umask's), not the private mode of `tempfile`'s.
    """
    path = Path(path)
    while True:
        temporary = temporary_path(path)
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            # Without fsync, a crash after the rename can leave an empty file on file systems that reorder the two
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_lines_atomically(path: str | os.PathLike, lines: list[str]) -> None:
    """Replaces the text file `path` by `lines` (each without its newline), atomically ([`atomic_write`])."""
    with atomic_write(path) as file:
        file.write("".join(line + "\n" for line in lines).encode("utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """
    Deletes the temporary files and folders that killed writers left in `folder` (of the destination `name` only,
    when given), and returns them.

    Only those written on this host by a process that no longer runs are removed: another run writing into the same
    folder (from this host or, on a shared file system, from another one) keeps what it has in progress.
    """
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMPORARY_PATTERN.match(entry.name)
            of_name = name is None or entry.name.startswith(f".{name}.")
            if match and of_name and not _process_alive(int(match["pid"])):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the process exists and belongs to another user
        return True
    return True


# Several writers of one file: a lock naming its holder


class FileLockedError(OSError):
    """Another run holds the lock of a file ([`exclusive_lock`]); the message names it."""


@contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """
    Holds the lock of `path` over the block: the hidden file `.{name}.lock` beside it, locked with `flock` and
    naming its holder (host, process, command, since when). A second run that asks for it while it is held raises
    a [`FileLockedError`] naming that holder, rather than writing into the same file.

    The kernel releases the lock of a process that dies (on NFS too, where `flock` is a lock of the server), so a
    killed run never leaves a lock that stops the next one; the file itself is removed when the block ends.
    """
    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or "a run that is starting"
            os.close(descriptor)
            raise FileLockedError(
                f"{path} is being written by another run ({holder}); wait for it to end, or use another output file."
            ) from None
        # The holder before us may have removed the file between our open and our lock: lock the file at `path`
        try:
            same_file = os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    holder = f"process {os.getpid()} on {_HOST} since {since}: {' '.join(sys.argv)}"
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, holder.encode("utf-8", "replace"), 0)
    try:
        yield lock_path
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(descriptor)


# Text that JSON can hold and UTF-8 cannot


def check_text(text: str, where: str) -> str:
    """
    `text`, refused with a `ValueError` naming `where` when it holds a lone surrogate: JSON's `"\\ud800"` escape
    without its pair decodes to a `str` that no UTF-8 file, tokenizer or Arrow table can hold.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} holds {text[error.start]!r}, a lone surrogate (a \\u escape without its pair), which is not "
            f"text: {text[max(0, error.start - 30) : error.start + 1]!r}"
        ) from None
    return text
