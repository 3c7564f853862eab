"""The `mematte` command: one sub-command per module in `mematte_hf.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and imports
torch and other heavy libraries inside `run`, so that `mematte --help`, `--version` and argument errors are
instant (tests/test_cli_startup.py keeps it so).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import MEMatteError

COMMANDS = ("convert", "predict", "evaluate", "train", "push", "video")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mematte", description="MEMatte image matting for Hugging Face.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mematte_hf.commands.{name}")
        command_parser = subparsers.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .commands.options import negative_values_as_values
    from .commands.video import PROMPT_OPTIONS

    argv = negative_values_as_values(list(sys.argv[1:] if argv is None else argv), PROMPT_OPTIONS)
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
    """transformers' per-load progress bars and backend notices drown the command's own output. Said through
    the environment, so that transformers (and torch) are imported only when a command needs them."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (e.g. main() called from Python): tell it directly
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
