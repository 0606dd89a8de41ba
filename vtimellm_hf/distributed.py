"""One job on several processes: the ranks of `torchrun` or `accelerate launch`, on one machine or several.

`vtimellm-hf extract-features` and `vtimellm-hf evaluate` run unchanged on one process or under a launcher:

    torchrun --nproc_per_node 8 -m vtimellm_hf extract-features videos/ features/
    accelerate launch -m vtimellm_hf evaluate grounding --model M --annotations A --features F --out results.jsonl

A launcher's processes find each other through the environment it sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`) and meet in a gloo process group, which only carries small Python objects (plans,
counts, error messages): it works on CPUs and beside whatever the GPUs run. A job goes in steps ([`Processes`]):

1. the main process plans (what is left to do, after merging what earlier runs wrote) and every process receives
   the plan, or the main process's error;
2. every process does its share of the plan (`pending[rank::world_size]`), writing its own records, and an error in
   one process is held, not raised, so that the others finish their shares;
3. once all have finished, the main process merges the records, and only then are the held errors raised.

`torchrun` ends every process as soon as one exits with a failure: so no process exits before the main one has
merged, and the exit status of the job is the main process's (see [`job_status`]).
"""

import atexit
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TypeVar

import torch

__all__ = ["Gathered", "ProcessFailedError", "Processes", "current_processes", "job_status", "process_files"]

logger = logging.getLogger(__name__)

Value = TypeVar("Value")

# How long a process waits for the others in one step. The last step waits for the slowest share: on a job of days,
# shares end hours apart. A process that dies makes the launcher end the others, so a long wait hangs nothing.
WAIT_LIMIT = timedelta(days=7)


class ProcessFailedError(RuntimeError):
    """Work that failed in one or more processes of a job, raised on every process once the main one has merged what
    all of them wrote. The message names each failed process and its error."""


@dataclass
class Gathered:
    """
    What every process of a step returned ([`Processes.run_on_each`]).

    Attributes:
        values: each process's result, by rank (`None` for a process that failed).
        errors: `(rank, "Type: message")` of each process that failed.
        own_error: this process's exception, when it failed.
    """

    values: list
    errors: list[tuple[int, str]] = field(default_factory=list)
    own_error: BaseException | None = None


@dataclass(frozen=True)
class Processes:
    """
    This process's place in its job: `rank` of `world_size` processes, `local_rank` of `local_world_size` on its
    machine.

    A job of one process (no launcher) runs every step itself, without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_first_on_its_machine(self) -> bool:
        return self.local_rank == 0

    def describe(self) -> str:
        return f"process {self.rank} of {self.world_size}"

    def device(self, requested: str | torch.device | None = None) -> torch.device:
        """
        The device of this process: `requested`, where a bare `"cuda"` (or nothing, on a machine with CUDA) means the
        process's own GPU, `cuda:LOCAL_RANK`, when the job has several processes.
        """
        if requested is None:
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(requested)
        if device.type == "cuda" and self.world_size > 1:
            if device.index is None:
                available = torch.cuda.device_count()
                if self.local_rank >= available:
                    raise ValueError(
                        f"LOCAL_RANK={self.local_rank}, but this machine has {available} CUDA device(s): start at most "
                        f"{available} processes per machine (torchrun --nproc_per_node {available})."
                    )
                device = torch.device("cuda", self.local_rank)
            # Otherwise each process makes a CUDA context on GPU 0 (pinned memory, kernels launched before `.to`)
            torch.cuda.set_device(device)
        return device

    def share(self, items: Sequence[Value]) -> list[Value]:
        """This process's share of `items`: every `world_size`-th item from its `rank`. The shares are disjoint,
        cover `items`, and interleave, so that where the items come sorted (by folder, by length) each gets a mix."""
        return list(items[self.rank :: self.world_size])

    def record_file(self, path: str | os.PathLike) -> Path:
        """
        Where this process appends the records (answers, features written, failures) that the main process merges
        into `path`: `path` itself in a job of one process, `{stem}.rank{rank}{suffix}` beside it otherwise.
        """
        path = Path(path)
        return path if self.world_size == 1 else path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")

    def set_up_each(self, function: Callable[[], Value]) -> Value:
        """
        `function()` (loading a model, say) run by every process, its result kept by its own process. Where any
        process fails, every process raises (see [`raise_errors`]) rather than wait for one that stopped.
        """
        results = []
        self.raise_errors(self.run_on_each(lambda: results.append(function())))
        return results[0]

    def run_on_main(self, function: Callable[[], Value]) -> Value:
        """
        `function()` run by the main process, its result returned to every process, the others waiting for it. Its
        exception is raised on every process: as it is in a job of one, as a [`ProcessFailedError`] otherwise.
        """
        value = error = None
        if self.is_main:
            try:
                value = function()
            except Exception as exception:  # noqa: BLE001 - every process must learn of it, whatever it is
                if self.world_size == 1:
                    raise
                error = exception
        if self.world_size == 1:
            return value
        message = [value, None if error is None else _describe(error)]
        torch.distributed.broadcast_object_list(message, src=0, group=_process_group())
        value, text = message
        if text is not None:
            raise ProcessFailedError(f"process 0 of {self.world_size}: {text}") from error
        return value

    def run_on_each(self, function: Callable[[], Value]) -> Gathered:
        """
        `function()` run by every process; what each returned, or its error, gathered on every process. An error is
        held, not raised: raise it with [`raise_errors`] once what the processes wrote is merged.
        """
        try:
            value, own_error = function(), None
        except Exception as exception:  # noqa: BLE001 - held for the others to learn of it
            value, own_error = None, exception
            if self.world_size > 1 and not isinstance(exception, (OSError, ValueError)):
                # The main process will print its message; the traceback is only here
                logger.error("%s failed", self.describe(), exc_info=True)
        text = None if own_error is None else _describe(own_error)
        if self.world_size == 1:
            return Gathered([value], [] if own_error is None else [(0, text)], own_error)
        everyone = [None] * self.world_size
        torch.distributed.all_gather_object(everyone, (value, text), group=_process_group())
        values = [value for value, _ in everyone]
        errors = [(rank, text) for rank, (_, text) in enumerate(everyone) if text is not None]
        return Gathered(values, errors, own_error)

    def raise_errors(self, gathered: Gathered) -> None:
        """Raises the errors of a step, if any: as they are in a job of one process, as a [`ProcessFailedError`]
        naming every failed process otherwise."""
        if not gathered.errors:
            return
        if self.world_size == 1:
            raise gathered.own_error
        messages = "; ".join(f"process {rank} of {self.world_size}: {text}" for rank, text in gathered.errors)
        raise ProcessFailedError(messages) from gathered.own_error

    def barrier(self) -> None:
        """Waits until every process of the job gets here."""
        if self.world_size > 1:
            torch.distributed.barrier(group=_process_group())


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _environment_integer(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"WORLD_SIZE is set but {name} is not: start the processes with torchrun or accelerate.")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"Environment variable {name}={text!r} is not an integer.") from None


@cache
def current_processes() -> Processes:
    """
    This process's [`Processes`], from the launcher's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`); one process
    where `WORLD_SIZE` is unset or 1. The first call of a job of several joins their process group (all must call it).
    """
    world_size = _environment_integer("WORLD_SIZE", 1)
    if world_size <= 1:
        return Processes()
    processes = Processes(
        _environment_integer("RANK"),
        world_size,
        _environment_integer("LOCAL_RANK"),
        _environment_integer("LOCAL_WORLD_SIZE", world_size),
    )
    if not 0 <= processes.rank < world_size:
        raise ValueError(f"RANK={processes.rank} is not within WORLD_SIZE={world_size}.")
    _process_group()
    return processes


@cache
def _process_group():
    """A gloo group of every process: the default group, joined here, or beside it where it has another backend."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=WAIT_LIMIT)
        atexit.register(dist.destroy_process_group)
        return None
    if dist.get_backend() == "gloo":
        return None
    # A script that set up NCCL (accelerate, a Trainer): Python objects go through a gloo group of their own
    return dist.new_group(backend="gloo", timeout=WAIT_LIMIT)


def process_files(path: str | os.PathLike) -> list[Path]:
    """The record files of `path` that processes of this or an earlier (killed) job left, by rank (see
    [`Processes.record_file`])."""
    path = Path(path)
    pattern = re.compile(rf"{re.escape(path.stem)}\.rank(\d+){re.escape(path.suffix)}")
    if not path.parent.is_dir():
        return []
    found = [(int(match[1]), entry) for entry in path.parent.iterdir() if (match := pattern.fullmatch(entry.name))]
    return [entry for _, entry in sorted(found)]


def job_status(run: Callable[[Processes], int]) -> int:
    """
    The exit status of a command `run(processes)` in a job ([`current_processes`]): its status on the main process,
    0 on the others.

    An error shared by the processes ([`ProcessFailedError`]) is raised by the main process alone, once every process
    has got here, so that the command reports it once (see `vtimellm_hf.cli.reports_errors`); the others return 0. A
    launcher that ends all processes when one fails then cuts nothing short. An error of this process alone is raised
    at once (the others may be anywhere; the launcher ends them, and nothing they wrote is lost).
    """
    processes = current_processes()
    try:
        status = run(processes)
    except ProcessFailedError:
        processes.barrier()
        if processes.is_main:
            raise
        return 0
    processes.barrier()
    return status if processes.is_main else 0


def command_status(name: str, run: Callable[[Processes], int], errors: tuple = (OSError, ValueError)) -> int:
    """Deprecated: [`job_status`] inside a command decorated with `vtimellm_hf.cli.reports_errors`."""
    from ._deprecated import warn_moved
    from .cli import reports_errors

    warn_moved("vtimellm_hf.distributed.command_status", "vtimellm_hf.distributed.job_status")
    return reports_errors(name, {(*errors, ProcessFailedError): 2})(lambda _: job_status(run))(None)
