"""Flags that `predict` and `video` share: one spelling, one range check, one default stated in `--help`.

Torch-free: the parser is built from these on every invocation, `--help` and argument errors included.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

DTYPES = ("float32", "float16", "bfloat16")
# What to do with outputs that already exist (and were not made by this same job).
EXISTING_DEFAULT, EXISTING_OVERWRITE, EXISTING_SKIP = "refuse", "overwrite", "skip"
# A prompt value that starts with a minus ("-5,10") is a value, not an option (argparse would take it for one).
_NEGATIVE_VALUE = re.compile(r"-\d[\d.,@\s-]*")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's examples as written, and state each flag's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unstated = action.default is None or action.default is False or action.default == [] or not text
        if "default" in text or unstated or action.default == argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def number_in(kind: type, low: float | None = None, high: float | None = None, below_high: bool = False) -> Callable:
    """An argparse type: ``kind`` (int or float) within ``low <= value <= high`` (``< high`` with below_high).

    argparse names the flag in its error ("argument --smooth: ..."), so each range is checked under its own flag.
    """

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        too_low = low is not None and value < low
        too_high = high is not None and (value >= high if below_high else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is outside {_range_words(low, high, below_high)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid <type> value"
    return parse


def _range_words(low: float | None, high: float | None, below_high: bool) -> str:
    if high is None:
        return f"the allowed range: give at least {low:g}"
    if below_high:
        return f"the allowed range: give at least {low:g} and less than {high:g}"
    return f"the allowed range: give {low:g} to {high:g}"


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype, --max-global-tokens, --memory-budget, --decoder-tile-size."""
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="model precision")
    parser.add_argument(
        "--max-global-tokens", default=None, help="cap k on tokens routed to global attention: a number or 'auto'"
    )
    parser.add_argument("--memory-budget", default=None, help="memory for the forward with 'auto', e.g. 8GB")
    parser.add_argument(
        "--decoder-tile-size", type=number_in(int, 0), default=None, help="decoder tile in pixels, 0 = whole image"
    )


def add_text_arguments(parser: argparse.ArgumentParser, models: str) -> None:
    """--text-model (``models``: which checkpoints) and --text-threshold; --text itself differs by command."""
    parser.add_argument("--text-model", default=None, help=f"for --text, and required with it: {models}")
    parser.add_argument(
        "--text-threshold", type=number_in(float, 0, 1), default=None, help="score 0..1 a text match needs"
    )


def add_existing_output_arguments(parser: argparse.ArgumentParser) -> None:
    """-y / -n, as in ffmpeg: what to do with outputs in --output that another run (other inputs or settings)
    made. Outputs of this very job are always reused (an interrupted run resumes)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-y",
        "--overwrite",
        dest="existing",
        action="store_const",
        const=EXISTING_OVERWRITE,
        default=EXISTING_DEFAULT,
        help="redo and overwrite outputs that exist (default: reuse outputs made from the same inputs and "
        "settings, and stop with an error before any work if another run made them)",
    )
    group.add_argument(
        "-n",
        "--skip-existing",
        dest="existing",
        action="store_const",
        const=EXISTING_SKIP,
        help="keep every output that exists, whatever made it, and make only the missing ones",
    )


def parse_outputs(text: str, known: tuple[str, ...]) -> list[str]:
    """--save: a comma-separated list of known output kinds, each once."""
    from ..errors import InputError

    kinds = list(dict.fromkeys(kind.strip() for kind in text.split(",") if kind.strip()))
    unknown = [kind for kind in kinds if kind not in known]
    if unknown or not kinds:
        raise InputError(f"--save takes a comma-separated list of {', '.join(known)}; got {text!r}")
    return kinds


def require_text_model(args: argparse.Namespace) -> None:
    """The same rule in `predict` and `video`: --text needs --text-model (no silent default detector)."""
    from ..errors import InputError

    if args.text and not args.text_model:
        raise InputError("--text needs --text-model: a Grounding DINO, OWLv2 or SAM 3 folder or Hub id")


def check_output_folder(folder: Path) -> None:
    """--output must be a folder or not exist yet (checked before anything loads)."""
    from ..errors import InputError

    if folder.exists() and not folder.is_dir():
        raise InputError(f"--output {folder} is a file, not a folder; give a folder for the results")


def check_background(text: str) -> None:
    """--background: a colour or an existing file, one line now rather than after the matting."""
    from ..colours import parse_colour

    if not Path(text).is_file():
        parse_colour(text, what="--background")


def check_device(device: str | None) -> None:
    """Refuse a device this machine cannot use, with one line, before any model loads."""
    if device is None:
        return
    from ..devices import resolve_device

    resolve_device(device)


def negative_values_as_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``--point -5,10`` -> ``--point=-5,10``: a coordinate may be negative (a point just left of the frame
    is an error we explain; argparse would instead say the value is missing)."""
    fixed: list[str] = []
    for item in argv:
        if fixed and fixed[-1] in options and _NEGATIVE_VALUE.fullmatch(item):
            fixed[-1] = f"{fixed[-1]}={item}"
        else:
            fixed.append(item)
    return fixed
