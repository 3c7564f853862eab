"""Score alpha mattes with the Composition-1K metrics (SAD, MSE, Grad, Conn), optionally running a model.

Score predictions you already have (files are paired by name stem):

    mematte evaluate --predictions preds/ --alphas gt/ --trimaps trimaps/ --json scores.json

Or run a MEMatte model on a test set (Composition-1K, AIM-500 or images/ trimaps/ alphas/ layout), save
its predictions as 8-bit PNGs and score them the same way:

    mematte evaluate --model ORG/MODEL --data Composition-1k-testset/ --json scores.json

The JSON holds {"per_image": {name: scores}, "mean": scores, "num_images": N}, in the units the published
tables use (SAD, Grad and Conn divided by 1000, MSE multiplied by 1000).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, MEMatteError

HELP = "score alpha mattes with SAD, MSE, Grad and Conn, optionally running a model on a test set first"

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ScoreJob:
    """The three files of one image to score."""

    name: str
    prediction: Path
    alpha: Path
    trimap: Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples in the description
    score = parser.add_argument_group("score existing predictions")
    score.add_argument("--predictions", type=Path, metavar="DIR", help="folder of predicted alpha PNGs")
    score.add_argument("--alphas", type=Path, metavar="DIR", help="folder of ground-truth alphas")
    score.add_argument("--trimaps", type=Path, metavar="DIR", help="folder of trimaps (0 / 128 / 255)")
    model = parser.add_argument_group("run a model first")
    model.add_argument(
        "--model", metavar="ID_OR_PATH", help="MEMatte or transformers ViTMatte Hub id or local checkpoint folder"
    )
    model.add_argument(
        "--data", type=Path, metavar="DIR", help="test set (Composition-1K, AIM-500 or images/trimaps/alphas)"
    )
    model.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="where to save predictions (default: predictions/ by the JSON)",
    )
    model.add_argument("--device", choices=("cpu", "cuda"), help="device to run on (default: chosen by the predictor)")
    model.add_argument("--dtype", choices=DTYPES, help="model precision (default: chosen by the predictor)")
    parser.add_argument("--json", type=Path, required=True, metavar="OUT", help="write the scores here")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="scoring processes (default: all CPU cores)"
    )


def run(args: argparse.Namespace) -> int:
    workers = _check_workers(args.workers)
    if _is_model_mode(args):
        jobs = _predict_test_set(args)
    else:
        jobs = _pairs_to_jobs(args.predictions, args.alphas, args.trimaps)
    per_image = score_jobs(jobs, workers)
    report = _build_report(per_image)
    _write_json(args.json, report)
    print(_format_means(report["mean"], report["num_images"]))
    return 0


# --------------------------------------------------------------------------------------------------------
# Arguments


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    return workers


def _is_model_mode(args: argparse.Namespace) -> bool:
    """Which of the two modes the options ask for; InputError if they mix or lack options."""
    score_options = {"--predictions": args.predictions, "--alphas": args.alphas, "--trimaps": args.trimaps}
    model_options = {"--model": args.model, "--data": args.data}
    model_only = {"--output": args.output, "--device": args.device, "--dtype": args.dtype}
    given_score = [name for name, value in score_options.items() if value is not None]
    given_model = [name for name, value in {**model_options, **model_only}.items() if value is not None]
    if given_score and given_model:
        raise InputError(
            f"{', '.join(given_score)} and {', '.join(given_model)} cannot be combined: either score "
            "existing predictions (--predictions, --alphas, --trimaps) or run a model (--model, --data)"
        )
    if given_model:
        missing = [name for name, value in model_options.items() if value is None]
        if missing:
            raise InputError(f"running a model needs {' and '.join(missing)} as well")
        return True
    missing = [name for name, value in score_options.items() if value is None]
    if missing:
        raise InputError(
            f"missing {', '.join(missing)}: give --predictions, --alphas and --trimaps to score existing "
            "predictions, or --model and --data to run a model first"
        )
    return False


def _pairs_to_jobs(predictions: Path, alphas: Path, trimaps: Path) -> list[ScoreJob]:
    from ..eval_data import pair_by_stem

    pairs = pair_by_stem({"prediction": predictions, "ground-truth alpha": alphas, "trimap": trimaps})
    return [
        ScoreJob(name, paths["prediction"], paths["ground-truth alpha"], paths["trimap"])
        for name, paths in pairs.items()
    ]


# --------------------------------------------------------------------------------------------------------
# Running a model


def _predict_test_set(args: argparse.Namespace) -> list[ScoreJob]:
    """Run the model on every sample of `args.data`, save 8-bit PNG predictions, return the jobs to score."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from ..eval_data import find_evaluation_samples

    samples = find_evaluation_samples(args.data)
    output = args.output if args.output is not None else args.json.parent / "predictions"
    output.mkdir(parents=True, exist_ok=True)
    predictor = _load_predictor(args.model, args.device, args.dtype)
    jobs = []
    for sample in tqdm(samples, desc="predicting", unit="image"):
        alpha = predictor.predict(sample.image_path, sample.trimap_path).alpha
        path = output / f"{sample.name}.png"
        Image.fromarray(np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)).save(path)
        jobs.append(ScoreJob(sample.name, path, sample.alpha_path, sample.trimap_path))
    return jobs


def _load_predictor(model: str, device: str | None, dtype: str | None) -> Any:
    import torch

    from ..predictor import MEMattePredictor

    torch_dtype = getattr(torch, dtype) if dtype is not None else None
    predictor = MEMattePredictor.from_pretrained(model, device=device, dtype=torch_dtype)
    print(predictor.describe())  # a ViTMatte checkpoint's scores are ViTMatte's: say which weights ran
    return predictor


# --------------------------------------------------------------------------------------------------------
# Scoring


def read_gray_png(path: Path, role: str) -> Any:
    """Read an 8-bit single-channel image as a uint8 (H, W) array (grey RGB is reduced to one channel)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise InputError(
                    f"{path} is a {image.mode} image; the benchmark scores 8-bit {role}s: save it as 8-bit"
                )
            return np.asarray(image.convert("L") if image.mode != "L" else image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"cannot read the {role} {path}: {error}") from error


def score_job(job: ScoreJob) -> tuple[str, dict[str, float]]:
    """Score one image (runs in a worker process, so it reads its own files)."""
    from ..metrics import score_image

    try:
        prediction = read_gray_png(job.prediction, "prediction")
        alpha = read_gray_png(job.alpha, "ground-truth alpha")
        trimap = read_gray_png(job.trimap, "trimap")
        return job.name, score_image(prediction, alpha, trimap)
    except MEMatteError as error:
        raise InputError(f"{job.name}: {error}") from None


def score_jobs(jobs: list[ScoreJob], workers: int) -> dict[str, dict[str, float]]:
    """Score every job with a progress bar, in `workers` processes; returns {name: scores} sorted by name."""
    import multiprocessing

    from tqdm import tqdm

    workers = min(workers, len(jobs))
    with tqdm(total=len(jobs), desc="scoring", unit="image", file=sys.stderr) as progress:
        if workers <= 1:
            results = []
            for job in jobs:
                results.append(score_job(job))
                progress.update()
        else:
            # fork shares the already imported modules; a spawned worker would import torch and transformers
            # again (through `mematte_hf`) before scoring anything. The workers use only numpy and scipy.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            with context.Pool(workers) as pool:
                results = []
                for result in pool.imap_unordered(score_job, jobs, chunksize=_chunksize(len(jobs), workers)):
                    results.append(result)
                    progress.update()
    return dict(sorted(results))


def _chunksize(count: int, workers: int) -> int:
    # Small chunks keep the progress bar smooth and the workers evenly loaded; images take ~0.1-0.5 s each.
    return max(1, min(8, count // (workers * 8)))


# --------------------------------------------------------------------------------------------------------
# Report


def _build_report(per_image: dict[str, dict[str, float]]) -> dict[str, Any]:
    from ..metrics import MetricsAccumulator

    accumulator = MetricsAccumulator()
    for name, scores in per_image.items():
        accumulator.add(name, scores)
    return {"per_image": accumulator.per_image, "mean": accumulator.mean(), "num_images": len(accumulator)}


def _write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _format_means(mean: dict[str, float], count: int) -> str:
    return (
        f"SAD {mean['sad']:.2f} | MSE {mean['mse']:.2f} | Grad {mean['grad']:.2f} | Conn {mean['conn']:.2f}"
        f" | {count} images"
    )
