"""Matte a video: prompt the object on a key frame; its mask is tracked through the clip and matted with MEMatte.

Outputs go into --output: alpha.mkv (16-bit lossless FFV1), rgba.mov (PNG codec, with alpha), composite.mp4
(H.264, over --background), or PNG sequences (alpha_png/, rgba_png/), at the source's frame rate with its audio.
An interrupted run resumes from the last batch of frames written when run again with the same arguments.

Prompts take an optional @FRAME (default: the first frame matted); prompts on later frames re-key the tracker
from that frame on:

  mematte video clip.mp4 --output out --point 640,360 --bg-point 100,80 --save alpha,composite
  mematte video clip.mp4 --output out --box 400,200,900,700 --point 700,420@120
"""

from __future__ import annotations

import argparse
import re

from ..defaults import MODEL_HELP

HELP = "matte a video from a prompt on one frame (alpha, RGBA cutout, composite videos)"
DEFAULT_TEXT_MODEL = "IDEA-Research/grounding-dino-tiny"
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_FRAME = r"(?:@\s*(\d+)\s*)?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..tracking import DEFAULT_TRACKER
    from ..video import OUTPUT_KINDS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("input", help="the video file")
    parser.add_argument("--output", required=True, help="folder for the results (and the resumable work folder)")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y[@FRAME]", help="a point on the object")
    parser.add_argument(
        "--bg-point", action="append", default=[], metavar="X,Y[@FRAME]", help="a point that is not the object"
    )
    parser.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[@FRAME]", help="a box around it")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT[@FRAME]", help='e.g. "the dog"')
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument(
        "--tracker-model", default=DEFAULT_TRACKER, help=f"SAM 2 / EdgeTAM folder or Hub id (default {DEFAULT_TRACKER})"
    )
    parser.add_argument(
        "--text-model", default=DEFAULT_TEXT_MODEL, help=f"detector for --text (default {DEFAULT_TEXT_MODEL})"
    )
    parser.add_argument(
        "--save", default="alpha", help=f"comma-separated outputs among {', '.join(OUTPUT_KINDS)} (default alpha)"
    )
    parser.add_argument("--background", default="#00ff00", help="composite background: a colour, an image or a video")
    parser.add_argument("--start", type=int, default=0, help="first frame to matte (default 0)")
    parser.add_argument("--end", type=int, default=None, help="frame to stop before (default: the end of the clip)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--max-global-tokens", default=None, help="cap k on globally routed tokens: a number or 'auto'")
    parser.add_argument("--memory-budget", default=None, help="memory for MEMatte's batches, e.g. 8GB")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="at most this many frames per forward (default 8; the memory plan may allow fewer)",
    )
    parser.add_argument("--band-width", type=int, default=None, help="trimap band in pixels (default: 1%% of the side)")
    parser.add_argument(
        "--smooth", type=float, default=0.0, help="temporal smoothing of alpha in the band, 0 (off) to 0.9"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (per-frame alpha PNGs)")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..video import VideoMatter

    prompts = parse_prompts(args)
    save = [kind.strip() for kind in args.save.split(",") if kind.strip()]
    matter = VideoMatter(
        load_predictor(args),
        load_tracker(args),
        band_width=args.band_width,
        temporal_smoothing=args.smooth,
        max_batch_size=args.batch_size,
        text_model=load_text_model(args) if args.text else None,
    )
    report = matter.matte(
        args.input,
        args.output,
        prompts,
        save=save,
        start=args.start,
        end=args.end,
        background=args.background,
        progress_bar=tqdm,
        keep_work=args.keep_work,
    )
    resumed = f", resumed at frame {report.resumed_from}" if report.resumed_from is not None else ""
    print(
        f"{report.frames} frames of {report.width} x {report.height} at {float(report.frame_rate):g} fps, "
        f"{report.batch_size} per batch{resumed}; {report.frames_without_unknown} frame(s) had no edge to refine"
    )
    for kind, path in report.outputs.items():
        print(f"{kind}: {path}")
    return 0


def parse_prompts(args: argparse.Namespace):
    """The prompts of the command line, checked against the video before any model loads."""
    from ..errors import InputError
    from ..tracking import FramePrompt
    from ..video_io import probe_video

    info = probe_video(args.input)
    default_frame = args.start
    prompts = []
    for text, label in [(text, 1) for text in args.point] + [(text, 0) for text in args.bg_point]:
        (x, y), frame = _numbers(text, 2, "--point" if label else "--bg-point", "X,Y[@FRAME]", default_frame)
        prompts.append(FramePrompt(frame, points=[(x, y)], labels=[label]))
    for text in args.box:
        box, frame = _numbers(text, 4, "--box", "X0,Y0,X1,Y1[@FRAME]", default_frame)
        prompts.append(FramePrompt(frame, box=tuple(box)))
    for text in args.text:
        match = re.fullmatch(r"(.*?)\s*@\s*(\d+)\s*", text)
        phrase, frame = (match.group(1), int(match.group(2))) if match else (text, default_frame)
        if not phrase.strip():
            raise InputError('--text is empty: say what to cut out, e.g. --text "the dog"')
        prompts.append(FramePrompt(frame, text=phrase.strip()))
    if not prompts:
        raise InputError('give the object on the first frame: --point X,Y, --box X0,Y0,X1,Y1 or --text "..."')
    from ..video import check_prompts, check_range

    end = info.frame_count if args.end is None else args.end
    check_range(info, args.start, end)  # one clear line before minutes of model loading
    check_prompts(prompts, info, args.start, end)
    return prompts


def _numbers(text: str, count: int, option: str, form: str, default_frame: int):
    from ..errors import InputError

    match = re.fullmatch(",".join([_NUMBER] * count) + _FRAME, text)
    if not match:
        raise InputError(f"{option} {text!r} is not {form}; e.g. {option} {','.join(['100'] * count)}@0")
    values = [float(value) for value in match.groups()[:count]]
    frame = int(match.group(count + 1)) if match.group(count + 1) is not None else default_frame
    return values, frame


def load_predictor(args: argparse.Namespace):
    from ..defaults import load_chosen_predictor
    from .predict import parse_cap

    options = {"device": args.device, "dtype": args.dtype, "max_global_tokens": parse_cap(args.max_global_tokens)}
    if args.memory_budget:
        options["memory_budget"] = args.memory_budget
    return load_chosen_predictor(args.model, **options)


def load_tracker(args: argparse.Namespace):
    from ..tracking import Sam2VideoTracker

    return Sam2VideoTracker.from_pretrained(args.tracker_model, device=args.device, dtype=args.dtype)


def load_text_model(args: argparse.Namespace):
    from ..text_prompts import load_text_model as load

    return load(args.text_model, device=args.device)
