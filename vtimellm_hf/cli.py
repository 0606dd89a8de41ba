"""The `vtimellm-hf` command line: one subcommand per task, each registered by the module that implements it."""

import argparse
import importlib
import sys

from . import __version__

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtimellm-hf", description="VTimeLLM on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
