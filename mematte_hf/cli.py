"""The `mematte` command: one sub-command per module in `mematte_hf.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and imports
torch and other heavy libraries inside `run`, so that `mematte --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import MEMatteError

COMMANDS = ("convert", "predict", "evaluate", "train", "push", "video")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mematte", description="MEMatte image matting for Hugging Face.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mematte_hf.commands.{name}")
        command_parser = subparsers.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.run(args) or 0)
    except MEMatteError as error:
        # Errors we raise on purpose already say what to do: print one line, no traceback.
        print(f"mematte {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """transformers' per-load progress bars and backend notices drown the command's own output."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
