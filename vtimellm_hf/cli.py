"""The `vtimellm-hf` command line: one subcommand per task, each registered by the module that implements it.

    vtimellm-hf [-v | -vv | -q] COMMAND ...

The global options go before the command: `-v` shows the package's progress messages (`logging` INFO) and
transformers' info messages, `-vv` their debug messages too, `-q` errors only. Without them, warnings show, and
transformers keeps its own setting (`TRANSFORMERS_VERBOSITY`). `ground --verbose` and `caption --verbose`, after the
command, are another option: they print the model's raw answer on stdout.

What every subcommand shares lives here: the argument types ([`positive_int`], [`non_negative_int`],
[`finite_float`]), its exit statuses ([`EXIT_STATUSES`]), the refusal of an output that is one of its inputs
([`refuse_writing_over_inputs`]) and the way a
command reports an error ([`reports_errors`]). The subcommand modules are found by name, in
[`SUBCOMMAND_MODULES`], when the parser is built; they import those helpers from here.
"""

import argparse
import functools
import importlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from . import __version__

__all__ = [
    "COMMAND_EXIT_STATUSES",
    "EXIT_STATUSES",
    "NO_ANSWER",
    "OUTPUT_OPTIONS",
    "SUBCOMMAND_MODULES",
    "USAGE_ERRORS",
    "build_parser",
    "configure_logging",
    "finite_float",
    "main",
    "non_negative_int",
    "positive_int",
    "refuse_writing_over_inputs",
    "reports_errors",
]

# Each module exposes `add_subcommand(subparsers)`, which sets `run(args) -> exit status` as the parser's default
SUBCOMMAND_MODULES = [
    "vtimellm_hf.data.synthetic",
    "vtimellm_hf.data.extract",
    "vtimellm_hf.data.converters",
    "vtimellm_hf.conversion",
    "vtimellm_hf.hub",
    "vtimellm_hf.model_card",
    "vtimellm_hf.inference",
    "vtimellm_hf.evaluation",
    "vtimellm_hf.app",
]
# What a command reports as `COMMAND: error: MESSAGE` with exit status 2, unless it says otherwise: an input it cannot
# use (a missing or unreadable file, a malformed record, an option it refuses)
USAGE_ERRORS = (OSError, ValueError)
# Exit statuses. Every command: 0 done, 2 an argument or input it cannot use (`COMMAND: error: MESSAGE`); 1 is also
# Python's status for an error no command expects (a traceback: a bug to report). Some commands add their own
# outcomes, shown in their help (`vtimellm-hf COMMAND --help`); an outcome that is no error takes a status above 2.
EXIT_STATUSES = {0: "done", 2: "an argument or input it cannot use (COMMAND: error: MESSAGE on stderr)"}
NO_ANSWER = 3
COMMAND_EXIT_STATUSES = {
    "extract-features": {1: "some inputs failed (each is a line of OUTPUT_DIR/failures.jsonl)"},
    "convert-original": {1: "the folder was built but does not load without vtimellm_hf"},
    "push": {1: "the push did not happen (no token, offline, the Hub refused, or the folder does not load or must "
                "not be published)"},
    "ground": {NO_ANSWER: "the model's answer names no moment"},
    "caption": {NO_ANSWER: "the model's answer names no event"},
}
# The options (argparse destinations) whose file or folder a command writes; every other path it is given, it reads
OUTPUT_OPTIONS = ("out", "output", "plot", "consolidate")
# `logging` levels of the package by the count of -v (negative: -q), and the matching transformers verbosity
_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_PACKAGE_LOGGER = "vtimellm_hf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtimellm-hf", description="VTimeLLM on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    loudness = parser.add_mutually_exclusive_group()
    # `verbosity`, not `verbose`: `ground --verbose` (print the answer) keeps its own destination
    loudness.add_argument(
        "-v", "--verbose", dest="verbosity", action="count", default=0,
        help="show progress messages (-vv: debug messages too), of this package and of transformers; goes before "
        "COMMAND",
    )  # fmt: skip
    loudness.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
        help="show errors only; goes before COMMAND",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(subparsers)
    _document_exit_statuses(subparsers, [])
    return parser


def _document_exit_statuses(subparsers: argparse._SubParsersAction, path: list[str]) -> None:
    """Ends the help of every command with its exit statuses ([`EXIT_STATUSES`], [`COMMAND_EXIT_STATUSES`])."""
    for name, parser in subparsers.choices.items():
        nested = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        for action in nested:
            _document_exit_statuses(action, [*path, name])
        if nested:
            continue
        statuses = {**EXIT_STATUSES, **COMMAND_EXIT_STATUSES.get(path[0] if path else name, {})}
        text = "exit status: " + "; ".join(f"{status} {meaning}" for status, meaning in sorted(statuses.items()))
        parser.epilog = f"{parser.epilog}\n\n{text}" if parser.epilog else text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = _command_parser(parser, args)
    try:
        refuse_writing_over_inputs(args, _argument_names(command))
    except ValueError as error:
        print(f"{command.prog.removeprefix(parser.prog + ' ')}: error: {error}", file=sys.stderr)
        return 2
    with configure_logging(args.verbosity):
        return args.run(args)


def refuse_writing_over_inputs(args: argparse.Namespace, names: Mapping[str, str] | None = None) -> None:
    """
    Refuses, with a `ValueError` naming both arguments (`names`: how the user wrote each destination), a command
    whose output ([`OUTPUT_OPTIONS`], and the files a command adds by setting `written_files(args) -> paths` as a
    parser default) is one of the files or folders it reads (any other path it is given):
    `evaluate --out anet.json --annotations anet.json` would replace the references by the predictions. Hard links
    and symbolic links to one file are the same file.
    """
    names = names or {}
    given = {name: value for name, value in vars(args).items() if name not in ("run", "written_files")}
    outputs = [(names.get(name, name), given[name]) for name in OUTPUT_OPTIONS if isinstance(given.get(name), str)]
    if callable(getattr(args, "written_files", None)):
        outputs += [("a file it writes", str(path)) for path in args.written_files(args)]
    inputs = [(names.get(name, name), value) for name, values in given.items() if name not in OUTPUT_OPTIONS
              for value in (values if isinstance(values, list) else [values]) if isinstance(value, str)]  # fmt: skip
    for output_name, output in outputs:
        if not os.path.exists(output):
            continue
        for input_name, path in inputs:
            if os.path.exists(path) and os.path.samefile(output, path):
                raise ValueError(
                    f"{output_name} {output} is also its {input_name} ({path}): refusing to write over an input; "
                    "name another output."
                )


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command `args` ran (`evaluate grounding`'s, not `evaluate`'s)."""
    while True:
        nested = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        if not nested:
            return parser
        parser = nested[0].choices[getattr(args, nested[0].dest)]


def _argument_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """How the user writes each destination of a command: `--out`, or `OUTPUT` for a positional argument."""
    return {action.dest: action.option_strings[0] if action.option_strings else str(action.metavar or action.dest)
            for action in parser._actions}  # fmt: skip


@contextmanager
def configure_logging(verbosity: int = 0) -> Iterator[None]:
    """
    Within the block, the package's log messages go to stderr, as `LEVEL logger: message`, from the level of
    `verbosity` (0: warnings; 1: info, 2 or more: debug; -1: errors only), and transformers' verbosity follows
    (`transformers.utils.logging.set_verbosity`) where `verbosity` is not 0. The earlier settings come back at its
    end, so that a program (or a test) that calls [`main`] keeps its own.
    """
    level = _LEVELS[max(-1, min(verbosity, 2))]
    logger = logging.getLogger(_PACKAGE_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    earlier_level = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    transformers_logging = None
    if verbosity:
        # Imported only when asked for: `vtimellm-hf --help` need not load transformers
        from transformers.utils import logging as transformers_logging

        earlier_verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(earlier_level)
        if transformers_logging is not None:
            transformers_logging.set_verbosity(earlier_verbosity)


def reports_errors(
    name: str, statuses: Mapping[type[BaseException] | tuple[type[BaseException], ...], int] | None = None
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """
    Decorates a subcommand's `run(args) -> exit status`: an exception of a type of `statuses` (`{types: status}`,
    the first that matches; by default [`USAGE_ERRORS`] -> 2) ends the command with `NAME: error: MESSAGE` on stderr
    and that status, rather than a traceback. Any other exception is a bug, and keeps its traceback.
    """
    statuses = {USAGE_ERRORS: 2} if statuses is None else statuses
    # `except` takes a flat tuple of types
    caught = tuple(kind for types in statuses for kind in (types if isinstance(types, tuple) else (types,)))

    def decorate(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(run)
        def run_reporting_errors(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except caught as error:
                print(f"{name}: error: {error}", file=sys.stderr)
                return next(status for types, status in statuses.items() if isinstance(error, types))

        return run_reporting_errors

    return decorate


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a number that is neither infinite nor NaN."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
