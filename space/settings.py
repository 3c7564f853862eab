"""What the Space is configured with: model ids, limits, server address, from the command line or environment.

Every option has an environment equivalent so that a Hugging Face Space (which runs ``python app.py`` with no
arguments) is configured from its *Variables* settings. The command line wins over the environment, which
wins over the defaults.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Without --model or MEMATTE_MODEL: transformers' ViTMatte ViT-S through MEMatte's engine (it exists on the Hub);
# set MEMATTE_MODEL to a converted MEMatte checkpoint (the real-world one for people's photos) for routing.
from mematte_hf.defaults import DEFAULT_MODEL

#: SAM ViT-B: the smallest original SAM; clicks only run its light decoder, the encoder once per photo.
DEFAULT_SAM_MODEL = "facebook/sam-vit-base"
#: 24 megapixels: above a 4K frame (8.3 MP) and the 12-20 MP of phone cameras, and a matte of that size fits
#: a ZeroGPU slice with the automatic cap. Larger uploads are refused with a message saying so.
DEFAULT_MAX_PIXELS = 24_000_000
#: Upload limit enforced by gradio before any decoding: a 24 MP PNG is about 40-70 MB, a JPEG far less.
DEFAULT_MAX_FILE_SIZE = "80mb"
#: How long a visitor's files (photo, trimap, downloads) stay on the server after their last action, at most.
DEFAULT_KEEP_SECONDS = 600
#: Sessions held at once; the least recently active one is dropped (its files deleted) to make room.
DEFAULT_MAX_SESSIONS = 20


@dataclass(frozen=True)
class Settings:
    """Everything the app reads at startup."""

    model: str = DEFAULT_MODEL
    sam_model: str = DEFAULT_SAM_MODEL
    text_model: str | None = None
    text_threshold: float | None = None
    tracker_model: str | None = None
    video_max_frames: int = 300
    video_max_pixels: int = 3840 * 2160
    host: str | None = None
    port: int | None = None
    device: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_size: str = DEFAULT_MAX_FILE_SIZE
    memory_budget: str | None = None
    concurrency: int = 1
    keep_seconds: int = DEFAULT_KEEP_SECONDS
    max_sessions: int = DEFAULT_MAX_SESSIONS
    share: bool = False
    mcp: bool = False


# option name -> environment variable
ENVIRONMENT = {
    "model": "MEMATTE_MODEL",
    "sam_model": "MEMATTE_SAM_MODEL",
    "text_model": "MEMATTE_TEXT_MODEL",
    "text_threshold": "MEMATTE_TEXT_THRESHOLD",
    "tracker_model": "MEMATTE_TRACKER_MODEL",
    "video_max_frames": "MEMATTE_VIDEO_MAX_FRAMES",
    "video_max_pixels": "MEMATTE_VIDEO_MAX_PIXELS",
    "host": "GRADIO_SERVER_NAME",
    "port": "GRADIO_SERVER_PORT",
    "device": "MEMATTE_DEVICE",
    "max_pixels": "MEMATTE_MAX_PIXELS",
    "max_file_size": "MEMATTE_MAX_FILE_SIZE",
    "memory_budget": "MEMATTE_MEMORY_BUDGET",
    "concurrency": "MEMATTE_CONCURRENCY",
    "keep_seconds": "MEMATTE_KEEP_SECONDS",
    "max_sessions": "MEMATTE_MAX_SESSIONS",
}
_WHOLE_NUMBERS = (
    "port",
    "max_pixels",
    "concurrency",
    "keep_seconds",
    "max_sessions",
    "video_max_frames",
    "video_max_pixels",
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python app.py``; defaults are None so that the environment can fill them."""
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="MEMatte demo: clicks -> SAM mask -> trimap -> full-resolution alpha matte.",
    )
    add = parser.add_argument
    add("--model", help=f"MEMatte or ViTMatte Hub id or local folder (env MEMATTE_MODEL; default {DEFAULT_MODEL})")
    add("--sam-model", help=f"SAM Hub id or local folder (env MEMATTE_SAM_MODEL; default {DEFAULT_SAM_MODEL})")
    add("--text-model", help="Grounding DINO, OWLv2 or SAM 3 id or folder for text prompts (env MEMATTE_TEXT_MODEL)")
    add("--text-threshold", type=float, help="score a text match needs (env MEMATTE_TEXT_THRESHOLD; model default)")
    add("--tracker-model", help="SAM 2 / EdgeTAM video id or folder for the Video tab (env MEMATTE_TRACKER_MODEL)")
    add("--video-max-frames", type=int, help="longest clip in frames for the Video tab (env MEMATTE_VIDEO_MAX_FRAMES)")
    add("--video-max-pixels", type=int, help="largest video frame in pixels (env MEMATTE_VIDEO_MAX_PIXELS)")
    add("--host", help="address to listen on (env GRADIO_SERVER_NAME; default 127.0.0.1, 0.0.0.0 on a Space)")
    add("--port", type=int, help="port (env GRADIO_SERVER_PORT; default 7860 or the next free one)")
    add("--device", help="cpu, cuda or cuda:N (env MEMATTE_DEVICE; default CUDA when available)")
    add("--max-pixels", type=int, help=f"largest photo in pixels (env MEMATTE_MAX_PIXELS; {DEFAULT_MAX_PIXELS})")
    add("--max-file-size", help=f"largest upload, e.g. 80mb (env MEMATTE_MAX_FILE_SIZE; {DEFAULT_MAX_FILE_SIZE})")
    add("--memory-budget", help="memory the automatic cap may plan for, e.g. 6GB (env MEMATTE_MEMORY_BUDGET)")
    add("--concurrency", type=int, help="mattes computed at once (env MEMATTE_CONCURRENCY; default 1)")
    add(
        "--keep-seconds",
        type=int,
        help=f"how long a visitor's files are kept after their last action (env "
        f"MEMATTE_KEEP_SECONDS; {DEFAULT_KEEP_SECONDS})",
    )
    add("--max-sessions", type=int, help=f"sessions held at once (env MEMATTE_MAX_SESSIONS; {DEFAULT_MAX_SESSIONS})")
    add("--share", action="store_true", help="also open a public gradio.live link")
    add("--mcp", action="store_true", help="also serve the /cutout endpoint as an MCP tool (gradio's MCP server)")
    return parser


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the command line, then the environment, then the defaults."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {"share": bool(args.share), "mcp": bool(args.mcp)}
    for name, variable in ENVIRONMENT.items():
        value = getattr(args, name)
        if value is None and environ.get(variable, "").strip():
            value = _from_environment(name, variable, environ[variable].strip())
        if value is not None:
            values[name] = value
    settings = Settings(**values)
    _check(settings)
    return settings


def _from_environment(name: str, variable: str, text: str) -> object:
    if name == "text_threshold":
        try:
            return float(text)
        except ValueError:
            raise SystemExit(f"app.py: error: {variable}={text!r} is not a number") from None
    if name not in _WHOLE_NUMBERS:
        return text
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"app.py: error: {variable}={text!r} is not a whole number") from None


def _check(settings: Settings) -> None:
    for name in ("max_pixels", "concurrency", "keep_seconds", "max_sessions"):
        if getattr(settings, name) < 1:
            raise SystemExit(f"app.py: error: --{name.replace('_', '-')} must be at least 1")
    threshold = settings.text_threshold
    if threshold is not None and not 0 <= threshold <= 1:
        raise SystemExit("app.py: error: --text-threshold must be between 0 and 1")
