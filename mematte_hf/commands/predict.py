"""Matte one image or a folder of images at full resolution, from trimaps or from a text prompt.

Folder mode pairs images and trimaps by file name (stem), skips images whose outputs already exist (so an
interrupted run resumes), writes every file atomically, and reports a failed image without stopping the batch.
With ``--text "the dog" --text-model ID`` no trimap is needed: a detector (Grounding DINO, OWLv2) and SAM, or
SAM 3, make the mask and the trimap of each image; an image where nothing matches is reported, not matted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..defaults import MODEL_HELP

HELP = "matte an image or a folder of images (alpha, foreground, RGBA cutout, composite)"
OUTPUT_KINDS = ("alpha", "foreground", "rgba", "composite")
DEFAULT_SAM_MODEL = "facebook/sam-vit-base"


@dataclass(frozen=True)
class Job:
    name: str
    image: Path
    trimap: Path | None  # None: the trimap comes from the text prompt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="an image file or a folder of images")
    parser.add_argument("--trimap", type=Path, help="the trimap file, or a folder of trimaps (or use --text)")
    parser.add_argument("--text", help='what to cut out, e.g. "the dog": makes each trimap (needs --text-model)')
    parser.add_argument(
        "--text-model", help="Grounding DINO / OWLv2 (with --sam-model) or SAM 3 folder or Hub id, for --text"
    )
    parser.add_argument("--sam-model", default=DEFAULT_SAM_MODEL, help=f"SAM for --text boxes ({DEFAULT_SAM_MODEL})")
    parser.add_argument("--text-threshold", type=float, default=None, help="score a text match needs")
    parser.add_argument("--output", type=Path, required=True, help="folder for the results")
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument(
        "--max-global-tokens", default=None, help="cap k on tokens routed to global attention: a number or 'auto'"
    )
    parser.add_argument("--memory-budget", default=None, help="with --max-global-tokens auto: e.g. 4GB")
    parser.add_argument("--decoder-tile-size", type=int, default=None, help="decoder tile in pixels, 0 = whole image")
    parser.add_argument(
        "--save", default="alpha", help=f"comma-separated outputs among {', '.join(OUTPUT_KINDS)} (default alpha)"
    )
    parser.add_argument("--alpha-bits", type=int, choices=[8, 16], default=8, help="bit depth of alpha PNGs")
    parser.add_argument("--background", default="#ffffff", help="composite background: a colour or an image file")
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse images above this many pixels")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the fixed-shape blocks: same alphas, fewer kernels after a first-image compilation (GPU)",
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    outputs = parse_outputs(args.save)
    cap = parse_cap(args.max_global_tokens)
    jobs = text_jobs(args) if check_prompt_arguments(args) else pair_jobs(args.image, args.trimap)
    args.output.mkdir(parents=True, exist_ok=True)
    refuse_overwriting_inputs(jobs, args.output, outputs)
    pending = [job for job in jobs if not all(output_path(args.output, job.name, kind).exists() for kind in outputs)]
    skipped = len(jobs) - len(pending)
    if not pending:
        print(f"nothing to do: all {len(jobs)} image(s) already have their outputs in {args.output}")
        return 0
    predictor = None  # loaded at the first image that reads correctly, so bad input fails fast
    text_segmenter = load_text_segmenter(args) if args.text else None  # a model that cannot load: one line, now
    failures = []
    for job in progress(pending, single=len(jobs) == 1):
        try:
            image, trimap = read_inputs(job, args, text_segmenter)
            predictor = predictor or load_predictor(args, cap)
            process(job.name, image, trimap, predictor, args, outputs)
        except InputError as error:
            if len(jobs) == 1:
                raise
            failures.append(f"{job.name}: {error}")
            print(f"failed: {job.name}: {error}", file=sys.stderr)
    done = len(pending) - len(failures)
    print(f"{done} done, {skipped} skipped (already done), {len(failures)} failed; results in {args.output}")
    return 1 if failures else 0


def check_prompt_arguments(args: argparse.Namespace) -> bool:
    """Whether the trimaps come from --text; refuses --trimap and --text together or neither."""
    from ..errors import InputError

    if args.text is not None and args.trimap is not None:
        raise InputError("give either --trimap or --text, not both")
    if args.text is None and args.trimap is None:
        raise InputError('give --trimap FILE_OR_FOLDER, or --text "what to cut out" with --text-model')
    if args.text is not None and not args.text.strip():
        raise InputError('--text is empty: say what to cut out, e.g. --text "the dog"')
    if args.text is not None and not args.text_model:
        raise InputError("--text needs --text-model: a Grounding DINO, OWLv2 or SAM 3 folder or Hub id")
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


def parse_outputs(text: str) -> list[str]:
    from ..errors import InputError

    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise InputError(f"--save takes a comma-separated list of {', '.join(OUTPUT_KINDS)}; got {text!r}")
    return kinds


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


def refuse_overwriting_inputs(jobs: list[Job], folder: Path, outputs: list[str]) -> None:
    from ..errors import InputError

    inputs = {path.resolve() for job in jobs for path in (job.image, job.trimap) if path is not None}
    for job in jobs:
        for kind in outputs:
            if output_path(folder, job.name, kind).resolve() in inputs:
                raise InputError(
                    f"writing {output_path(folder, job.name, kind)} would overwrite an input; choose another --output"
                )


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


def read_inputs(job: Job, args: argparse.Namespace, text_segmenter=None):
    """Decode and check the image and its trimap (size, pixel limit), or make the trimap from the text."""
    from ..image_io import DEFAULT_MAX_PIXELS, load_image, load_trimap
    from ..trimap import mask_to_trimap

    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    image = load_image(job.image, max_pixels=max_pixels)
    if job.trimap is None:  # raises NothingFoundError (an InputError) when nothing matches: reported per image
        found = text_segmenter.predict_mask(image, args.text, threshold=args.text_threshold)
        return image, mask_to_trimap(found.mask)
    return image, load_trimap(job.trimap, expected_size=image.shape[:2], max_pixels=max_pixels)


def process(name: str, image, trimap, predictor, args: argparse.Namespace, outputs: list[str]) -> None:
    from ..image_io import save_alpha_png, save_rgb_image, save_rgba_png

    result = predictor.predict(image, trimap)
    if not result.model_ran:
        print(f"{name}: {result.message}", file=sys.stderr)
    elif result.plan is not None:
        print(f"{name}: {result.plan}", file=sys.stderr)
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
    """A colour ('#rrggbb' or a name Pillow knows) or an image file."""
    from PIL import ImageColor

    from ..image_io import load_image

    if Path(text).is_file():
        return load_image(text, max_pixels=predictor.max_pixels)
    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        from ..errors import InputError

        raise InputError(f"--background {text!r} is neither an image file nor a colour like #00ff00") from None
