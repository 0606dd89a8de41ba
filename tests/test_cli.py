"""What every `vtimellm-hf` command shares (`vtimellm_hf/cli.py`): log levels, error reports, argument types."""

import argparse
import logging
import sys
import types

import pytest
from transformers.utils import logging as transformers_logging

from vtimellm_hf import cli

PROBE = "vtimellm_hf.tests_probe"


@pytest.fixture
def probe(monkeypatch, capsys):
    """
    `probe(*argv) -> (status, stderr, transformers verbosity inside the command)` of `vtimellm-hf argv...` with a
    command `probe` that logs one message of each level from a logger of the package, as its modules do.
    """
    seen = {}

    def run(args):
        seen["transformers"] = transformers_logging.get_verbosity()
        logger = logging.getLogger("vtimellm_hf.some_module")
        logger.debug("a debug message")
        logger.info("an info message")
        logger.warning("a warning message")
        logger.error("an error message")
        return 0

    module = types.ModuleType(PROBE)
    module.add_subcommand = lambda subparsers: subparsers.add_parser("probe").set_defaults(run=run)
    monkeypatch.setitem(sys.modules, PROBE, module)
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, PROBE])

    def run_probe(*argv):
        capsys.readouterr()
        status = cli.main([*argv, "probe"])
        return status, capsys.readouterr().err, seen.pop("transformers")

    return run_probe


def test_verbose_and_quiet_set_the_log_level_of_the_package_and_of_transformers(probe):
    before = transformers_logging.get_verbosity()
    package_level = logging.getLogger("vtimellm_hf").level

    status, err, verbosity = probe()
    assert status == 0
    assert "WARNING vtimellm_hf.some_module: a warning message" in err and "an error message" in err
    assert "an info message" not in err and "a debug message" not in err
    assert verbosity == before  # left to transformers (TRANSFORMERS_VERBOSITY)

    for option in ("-v", "--verbose"):
        _, err, verbosity = probe(option)
        assert "INFO vtimellm_hf.some_module: an info message" in err and "a debug message" not in err
        assert verbosity == logging.INFO
    _, err, verbosity = probe("-vv")
    assert "DEBUG vtimellm_hf.some_module: a debug message" in err and verbosity == logging.DEBUG

    for option in ("-q", "--quiet"):
        _, err, verbosity = probe(option)
        assert "an error message" in err and "a warning message" not in err and "an info message" not in err
        assert verbosity == logging.ERROR

    # The settings of the program that called `main` come back
    assert transformers_logging.get_verbosity() == before
    assert logging.getLogger("vtimellm_hf").level == package_level
    assert not logging.getLogger("vtimellm_hf").handlers


def test_global_verbose_goes_before_the_command_and_the_answer_option_after_it(capsys):
    parser = cli.build_parser()
    ground = ["ground", "video.mp4", "a dog", "--model", "checkpoint"]
    args = parser.parse_args(["-v", *ground])
    assert (args.verbosity, args.verbose) == (1, False)
    args = parser.parse_args([*ground, "--verbose"])
    assert (args.verbosity, args.verbose) == (0, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["-v", "-q", *ground])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([*ground, "-v"])
    assert "unrecognized arguments: -v" in capsys.readouterr().err


def test_reports_errors_maps_the_documented_errors_to_exit_statuses(capsys):
    class Refused(RuntimeError):
        pass

    def failing(error):
        @cli.reports_errors("thing do", {Refused: 1, cli.USAGE_ERRORS: 2})
        def run(args):
            raise error

        return run

    assert failing(Refused("the Hub said no"))(None) == 1
    assert capsys.readouterr().err == "thing do: error: the Hub said no\n"
    assert failing(FileNotFoundError("no such file: x.json"))(None) == 2
    assert capsys.readouterr().err == "thing do: error: no such file: x.json\n"
    with pytest.raises(KeyError):  # not documented: a bug, with its traceback
        failing(KeyError("x"))(None)

    @cli.reports_errors("plain")
    def plain(args):
        raise ValueError(f"bad {args}")

    assert plain("input") == 2 and capsys.readouterr().err == "plain: error: bad input\n"
    assert cli.reports_errors("ok")(lambda args: 7)(None) == 7


def test_integer_argument_types():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--count", type=cli.positive_int)
    parser.add_argument("--workers", type=cli.non_negative_int)
    assert parser.parse_args(["--count", "3", "--workers", "0"]) == argparse.Namespace(count=3, workers=0)
    with pytest.raises(argparse.ArgumentError, match="expected a positive integer, got 0"):
        parser.parse_args(["--count", "0"])
    with pytest.raises(argparse.ArgumentError, match="expected 0 or a positive integer, got -1"):
        parser.parse_args(["--workers", "-1"])
    with pytest.raises(argparse.ArgumentError, match="invalid positive_int value: 'two'"):
        parser.parse_args(["--count", "two"])
