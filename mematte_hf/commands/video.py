"""Matte a video: prompt the object on a key frame; its mask is tracked through the clip and matted with MEMatte.

Outputs go into --output: alpha.mkv (16-bit lossless FFV1), rgba.mov (PNG codec, with alpha), composite.mp4
(H.264 4:2:0, over --background), or PNG sequences (alpha_png/, rgba_png/): upright (a phone clip's rotation is
applied), each frame at its source time, with the source's audio (re-encoded to AAC where the container cannot
carry it). An interrupted run resumes from the last batch of frames written when run again with the same
arguments; outputs another run made (other prompts or settings) stop the run before any work unless -y
(overwrite) or -n (keep them) says otherwise. No output may replace an input.

Prompts are in the picture as players show it, and take an optional @FRAME (default: the first frame matted);
prompts on later frames re-key the tracker from that frame on:

  mematte video clip.mp4 --output out --point 640,360 --bg-point 100,80 --save alpha,composite
  mematte video clip.mp4 --output out --box 400,200,900,700 --point 700,420@120
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..defaults import MODEL_HELP
from ..video_io import DEFAULT_TRACKER, OUTPUT_KINDS
from .options import (
    HelpFormatter,
    add_existing_output_arguments,
    add_runtime_arguments,
    add_text_arguments,
    check_background,
    check_device,
    check_output_folder,
    number_in,
    parse_outputs,
    require_text_model,
)

HELP = "matte a video from a prompt on one frame (alpha, RGBA cutout, composite videos)"
PROMPT_OPTIONS = ("--point", "--bg-point", "--box")
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_FRAME = r"(?:@\s*(\d+)\s*)?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument("input", help="the video file")
    parser.add_argument("--output", required=True, help="folder for the results (and the resumable work folder)")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y[@FRAME]", help="a point on the object")
    parser.add_argument(
        "--bg-point", action="append", default=[], metavar="X,Y[@FRAME]", help="a point that is not the object"
    )
    parser.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[@FRAME]", help="a box around it")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT[@FRAME]", help='e.g. "the dog"')
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--tracker-model", default=DEFAULT_TRACKER, help="SAM 2 / EdgeTAM folder or Hub id")
    add_text_arguments(parser, "a Grounding DINO / OWLv2 or SAM 3 folder or Hub id")
    parser.add_argument("--save", default="alpha", help=f"comma-separated outputs among {', '.join(OUTPUT_KINDS)}")
    parser.add_argument(
        "--background", default="#00ff00", help="composite background: a colour, an image or a video file"
    )
    parser.add_argument("--start", type=number_in(int, 0), default=0, help="first frame to matte")
    parser.add_argument("--end", type=number_in(int, 1), default=None, help="frame to stop before (default: the end)")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=number_in(int, 1),
        default=8,
        help="at most this many frames per forward (the memory plan may allow fewer)",
    )
    parser.add_argument(
        "--band-width", type=number_in(int, 1), default=None, help="trimap band in pixels (default: 1%% of the side)"
    )
    parser.add_argument(
        "--smooth",
        type=number_in(float, 0, 1, below_high=True),
        default=0.0,
        help="temporal smoothing of alpha in the band: 0 (off) up to, not including, 1",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (per-frame alpha PNGs)")
    add_existing_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    save = parse_outputs(args.save, OUTPUT_KINDS)
    require_text_model(args)
    check_output_folder(Path(args.output))
    check_background(args.background)
    prompts = parse_prompts(args)
    check_device(args.device)
    from tqdm.auto import tqdm

    from ..video import VideoMatter

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
        existing=args.existing,
        notify=lambda note: tqdm.write(f"note: {note}", file=sys.stderr),  # above any progress bar
    )
    resumed = f", resumed at frame {report.resumed_from}" if report.resumed_from is not None else ""
    print(
        f"{report.frames} frames of {report.width} x {report.height} at {float(report.frame_rate):g} fps, "
        f"{report.batch_size} per batch{resumed}; {report.frames_without_unknown} frame(s) had no edge to refine"
    )
    for kind, path in report.outputs.items():
        reused = " (already there, kept)" if kind in report.reused else ""
        print(f"{kind}: {path}{reused}")
    return 0


def parse_prompts(args: argparse.Namespace):
    """The prompts of the command line, checked against the video before any model loads."""
    from ..video_io import probe_video

    info = probe_video(args.input)  # first: a missing or unreadable file is one line, before torch loads

    from ..errors import InputError
    from ..tracking import FramePrompt

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
    from ..output_keys import refuse_inputs_as_outputs
    from ..video import check_prompts, check_range, output_paths

    end = info.frame_count if args.end is None else args.end
    check_range(info, args.start, end)  # one clear line before minutes of model loading
    check_prompts(prompts, info, args.start, end)
    outputs = output_paths(info, Path(args.output), parse_outputs(args.save, OUTPUT_KINDS))
    backgrounds = [Path(args.background)] if Path(args.background).is_file() else []
    refuse_inputs_as_outputs(list(outputs.values()), [info.path, *backgrounds])
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
    if args.decoder_tile_size is not None:
        options["decoder_tile_size"] = args.decoder_tile_size
    return load_chosen_predictor(args.model, **options)


def load_tracker(args: argparse.Namespace):
    from ..tracking import Sam2VideoTracker

    return Sam2VideoTracker.from_pretrained(args.tracker_model, device=args.device, dtype=args.dtype)


def load_text_model(args: argparse.Namespace):
    from ..text_prompts import load_text_model as load

    return load(args.text_model, device=args.device, threshold=args.text_threshold)
