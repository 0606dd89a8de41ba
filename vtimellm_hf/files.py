"""Files and folders written atomically, and the leftovers of writers that were killed.

What a killed run leaves must never be mistaken for finished work: every feature, merged record file and
consolidated store is written under a hidden temporary name beside its destination and renamed into place. The
temporary names say which host and process wrote them (`.{name}.{token}.{host}-{pid}.tmp`), so that a later run
removes those of dead processes and keeps those that another live process is writing.
"""

import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "remove_stale_temporaries", "temporary_path", "write_lines_atomically"]

_HOST = socket.gethostname()
_TEMPORARY_PATTERN = re.compile(rf"^\..+\.[A-Za-z0-9_]+\.{re.escape(_HOST)}-(?P<pid>\d+)\.tmp$")


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


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """
    Deletes the temporary files and folders that killed writers left in `folder`, and returns them.

    Only those written on this host by a process that no longer runs are removed: another run writing into the same
    folder (from this host or, on a shared file system, from another one) keeps what it has in progress.
    """
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMPORARY_PATTERN.match(entry.name)
            if match and not _process_alive(int(match["pid"])):
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
