"""Matte one image or a folder of images at full resolution, from trimaps or from a text prompt.

Folder mode pairs images and trimaps by file name (stem), reuses outputs that this same job made (same inputs,
prompt, model and settings: an interrupted run resumes), refuses outputs another run made unless told
-y/--overwrite or -n/--skip-existing, writes every file atomically, and reports a failed image without stopping
the batch.
With ``--text "the dog" --text-model ID`` no trimap is needed: a detector (Grounding DINO, OWLv2) and SAM, or
SAM 3, make the mask and the trimap of each image; an image where nothing matches is reported, not matted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..defaults import MODEL_HELP
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

HELP = "matte an image or a folder of images (alpha, foreground, RGBA cutout, composite)"
OUTPUT_KINDS = ("alpha", "foreground", "rgba", "composite")
DEFAULT_SAM_MODEL = "facebook/sam-vit-base"
# The keys of the outputs in --output (see mematte_hf.output_keys).
MANIFEST = ".mematte-predict.json"


@dataclass(frozen=True)
class Job:
    name: str
    image: Path
    trimap: Path | None  # None: the trimap comes from the text prompt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument("image", type=Path, help="an image file or a folder of images")
    parser.add_argument("--trimap", type=Path, help="the trimap file, or a folder of trimaps (or use --text)")
    parser.add_argument("--text", help='what to cut out, e.g. "the dog": makes each trimap (needs --text-model)')
    add_text_arguments(parser, "a Grounding DINO / OWLv2 (with --sam-model) or SAM 3 folder or Hub id")
    parser.add_argument("--sam-model", default=DEFAULT_SAM_MODEL, help="SAM for the boxes of a --text detector")
    parser.add_argument("--output", type=Path, required=True, help="folder for the results")
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    add_runtime_arguments(parser)
    parser.add_argument("--save", default="alpha", help=f"comma-separated outputs among {', '.join(OUTPUT_KINDS)}")
    parser.add_argument("--alpha-bits", type=int, choices=[8, 16], default=8, help="bit depth of alpha PNGs")
    parser.add_argument("--background", default="#ffffff", help="composite background: a colour or an image file")
    parser.add_argument(
        "--max-pixels", type=number_in(int, 1), default=None, help="refuse images above this many pixels"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the fixed-shape blocks: same alphas, fewer kernels after a first-image compilation (GPU)",
    )
    add_existing_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..output_keys import OutputManifest

    outputs = parse_outputs(args.save, OUTPUT_KINDS)
    cap = parse_cap(args.max_global_tokens)
    use_text = check_prompt_arguments(args)
    check_output_folder(args.output)
    check_background(args.background)
    check_device(args.device)
    jobs = text_jobs(args) if use_text else pair_jobs(args.image, args.trimap)
    refuse_shared_output_names(jobs)
    refuse_overwriting_inputs(jobs, args.output, outputs, args.background)
    manifest = OutputManifest(args.output, MANIFEST)
    keys = {job.name: job_key(job, args) for job in jobs}
    pending, reused = plan_jobs(jobs, keys, manifest, args.output, outputs, args.existing)
    if not pending:
        print(f"nothing to do: all {len(jobs)} image(s) already have their outputs in {args.output}")
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    predictor = None  # loaded at the first image that reads correctly, so bad input fails fast
    text_segmenter = load_text_segmenter(args) if args.text else None  # a model that cannot load: one line, now
    failures = []
    for job in (bar := progress(pending, single=len(jobs) == 1)):
        try:
            image, trimap = read_inputs(job, args, text_segmenter, say=lambda line: _say(bar, line))
            predictor = predictor or load_predictor(args, cap)
            process(job.name, image, trimap, predictor, args, outputs, say=lambda line: _say(bar, line))
            manifest.record([output_path(args.output, job.name, kind) for kind in outputs], keys[job.name])
        except InputError as error:
            if len(jobs) == 1:
                raise
            failures.append(f"{job.name}: {error}")
            _say(bar, f"failed: {job.name}: {error}")
    done = len(pending) - len(failures)
    print(f"{done} done, {reused} skipped (already done), {len(failures)} failed; results in {args.output}")
    return 1 if failures else 0


def _say(bar, line: str) -> None:
    """A line on stderr above the progress bar (printed plainly, a bar would draw over it)."""
    if hasattr(bar, "write"):
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def plan_jobs(jobs: list[Job], keys: dict[str, str], manifest, folder: Path, outputs: list[str], existing: str):
    """(jobs to run, how many are already done): outputs this same job made are reused; others are refused,
    redone or kept as ``existing`` says."""
    from ..output_keys import refuse_other_runs_outputs

    others, pending, reused = [], [], 0
    for job in jobs:
        paths = [output_path(folder, job.name, kind) for kind in outputs]
        mine = [path for path in paths if manifest.made_by(path, keys[job.name])]
        theirs = [path for path in paths if path.exists() and path not in mine]
        others += theirs
        kept = theirs if existing == "skip" else []
        if len(mine) + len(kept) == len(paths):
            reused += 1
        else:
            pending.append(job)
    refuse_other_runs_outputs(others, existing)
    return pending, reused


def job_key(job: Job, args: argparse.Namespace) -> str:
    """Everything an image's outputs depend on: the inputs' content, the prompt, the model and its settings."""
    from ..defaults import choose_model
    from ..output_keys import file_digest
    from ..output_keys import job_key as key

    background = args.background
    if Path(background).is_file():
        background = file_digest(background)
    return key({
        "image": file_digest(job.image),
        "trimap": file_digest(job.trimap) if job.trimap is not None else None,
        "text": [args.text, args.text_model, args.sam_model, args.text_threshold] if job.trimap is None else None,
        "model": _model_key(choose_model(args.model).model),
        "settings": [args.dtype, _device_kind(args.device), args.max_global_tokens, args.memory_budget,
                     args.decoder_tile_size, args.alpha_bits, background],
    })  # fmt: skip


def _model_key(model: str) -> str | list:
    """A local folder by its files' names, sizes and dates (retrained weights are another model); a Hub id as is."""
    folder = Path(model)
    if not folder.is_dir():
        return model
    return [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in sorted(folder.iterdir())]


def _device_kind(device: str | None) -> str:
    from ..devices import resolve_device

    return resolve_device(device).type


def refuse_shared_output_names(jobs: list[Job]) -> None:
    """Two images with one stem (animal.jpg, animal.png) would write one animal_alpha.png: refuse, not lose one."""
    from ..errors import InputError

    seen: dict[str, Path] = {}
    for job in jobs:
        if job.name in seen:
            raise InputError(
                f"{seen[job.name].name} and {job.image.name} would both write {job.name}_*.png; rename one of them"
            )
        seen[job.name] = job.image


def check_prompt_arguments(args: argparse.Namespace) -> bool:
    """Whether the trimaps come from --text; refuses --trimap and --text together or neither."""
    from ..errors import InputError

    if args.text is not None and args.trimap is not None:
        raise InputError("give either --trimap or --text, not both")
    if args.text is None and args.trimap is None:
        raise InputError('give --trimap FILE_OR_FOLDER, or --text "what to cut out" with --text-model')
    if args.text is not None and not args.text.strip():
        raise InputError('--text is empty: say what to cut out, e.g. --text "the dog"')
    require_text_model(args)
    return args.text is not None


def text_jobs(args: argparse.Namespace) -> list[Job]:
    """One job per image (a file, or every image of a folder); the trimaps will come from the text."""
    from ..errors import InputError
    from ..image_io import list_images

    if not args.image.exists():
        raise InputError(f"{args.image} does not exist")
    images = [args.image] if args.image.is_file() else list_images(args.image)
    if not images:
        raise InputError(f"{args.image} contains no images")
    return [Job(path.stem, path, None) for path in images]


def load_text_segmenter(args: argparse.Namespace):
    """The text model (and SAM for a detector); a model that cannot be loaded stops the run with one line."""
    from ..errors import InputError
    from ..text_prompts import TextSegmenter

    try:
        return TextSegmenter.from_pretrained(args.text_model, args.sam_model, device=args.device)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - gated, offline, missing package: one line saying which model
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"could not load the text model {args.text_model!r} (or SAM {args.sam_model!r}): "
                         f"{reason}") from None  # fmt: skip


def parse_cap(text: str | None) -> int | str | None:
    from ..errors import InputError

    if text is None or text == "auto":
        return text
    if not text.isdigit():
        raise InputError(f"--max-global-tokens takes a number or 'auto', got {text!r}")
    return int(text)


def pair_jobs(image: Path, trimap: Path) -> list[Job]:
    """One job for a file, or one per image of a folder whose trimap folder has a file of the same stem."""
    from ..errors import InputError
    from ..image_io import list_images

    if not image.exists():
        raise InputError(f"{image} does not exist")
    if not trimap.exists():
        raise InputError(f"trimap {trimap} does not exist")
    if image.is_file():
        if trimap.is_dir():
            raise InputError(f"{image} is a file, so --trimap must be a file too, not the folder {trimap}")
        return [Job(image.stem, image, trimap)]
    if not trimap.is_dir():
        raise InputError(f"{image} is a folder, so --trimap must be a folder of trimaps named like the images")
    trimaps = {path.stem: path for path in list_images(trimap)}
    images = list_images(image)
    if not images:
        raise InputError(f"{image} contains no images")
    missing = [path.name for path in images if path.stem not in trimaps]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"no trimap in {trimap} for {len(missing)} image(s): {shown} (trimaps pair by file name)")
    return [Job(path.stem, path, trimaps[path.stem]) for path in images]


def output_path(folder: Path, name: str, kind: str) -> Path:
    return folder / f"{name}_{kind}.png"


def refuse_overwriting_inputs(jobs: list[Job], folder: Path, outputs: list[str], background: str = "") -> None:
    from ..output_keys import refuse_inputs_as_outputs

    inputs = [path for job in jobs for path in (job.image, job.trimap) if path is not None]
    if background and Path(background).is_file():
        inputs.append(Path(background))
    refuse_inputs_as_outputs([output_path(folder, job.name, kind) for job in jobs for kind in outputs], inputs)


def load_predictor(args: argparse.Namespace, cap):
    from ..defaults import load_chosen_predictor

    options = {"device": args.device, "dtype": args.dtype, "max_global_tokens": cap}
    if args.memory_budget:
        options["memory_budget"] = args.memory_budget
    if args.decoder_tile_size is not None:
        options["decoder_tile_size"] = args.decoder_tile_size
    if args.max_pixels:
        options["max_pixels"] = args.max_pixels
    return load_chosen_predictor(args.model, compile=args.compile, **options)


def progress(jobs: list[Job], single: bool):
    if single:
        return jobs
    from tqdm.auto import tqdm

    return tqdm(jobs, desc="matting", unit="image")


def read_inputs(job: Job, args: argparse.Namespace, text_segmenter=None, say=print):
    """Decode and check the image and its trimap (size, pixel limit), or make the trimap from the text."""
    from ..image_io import DEFAULT_MAX_PIXELS, load_image, load_trimap
    from ..text_prompts import NothingFoundError
    from ..trimap import mask_to_trimap

    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    image = load_image(job.image, max_pixels=max_pixels)
    if job.trimap is None:  # nothing matching is an InputError: reported per image
        try:
            found = text_segmenter.predict_mask(image, args.text, threshold=args.text_threshold)
        except NothingFoundError:
            raise NothingFoundError(
                f"nothing in {job.image.name} matches --text {args.text!r}: describe it differently, lower "
                "--text-threshold, or give a --trimap"
            ) from None
        detections = found.detections
        if len(detections):
            best = int(detections.scores.argmax())
            box = ",".join(f"{float(value):.0f}" for value in detections.boxes[best])
            say(f"{job.name}: --text chose {len(detections)} box(es), the best {box} (score "
                f"{float(detections.scores[best]):.2f})")  # fmt: skip
        return image, mask_to_trimap(found.mask)
    return image, load_trimap(job.trimap, expected_size=image.shape[:2], max_pixels=max_pixels)


def process(name: str, image, trimap, predictor, args: argparse.Namespace, outputs: list[str], say=print) -> None:
    from ..image_io import save_alpha_png, save_rgb_image, save_rgba_png

    result = predictor.predict(image, trimap)
    if not result.model_ran:
        say(f"{name}: {result.message}")
    elif result.plan is not None:
        say(f"{name}: {result.plan}")
    for kind in outputs:
        path = output_path(args.output, name, kind)
        if kind == "alpha":
            save_alpha_png(path, result.alpha, bits=args.alpha_bits)
        elif kind == "foreground":
            save_rgb_image(path, (result.foreground() * 255).round().astype("uint8"))
        elif kind == "rgba":
            save_rgba_png(path, result.rgba())
        else:
            save_rgb_image(path, result.composite(background(args.background, predictor)))


def background(text: str, predictor):
    """A colour ('#rrggbb', a name, rgb(...)) or an image file (checked before the work by check_background)."""
    from ..colours import parse_colour
    from ..image_io import load_image

    if Path(text).is_file():
        return load_image(text, max_pixels=predictor.max_pixels)
    return parse_colour(text, what="--background")
