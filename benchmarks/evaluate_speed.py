"""How long `mematte evaluate` takes on Composition-1K-sized images (synthetic, written by this script).

Composition-1K test images are up to about 2000 x 2000 pixels; this script writes `--count` triplets of
prediction / ground truth / trimap PNGs of `--size` (default 1920 x 1080) with a soft-edged object and an
unknown band covering about 15 % of the image, then times the real command end to end.

    python benchmarks/evaluate_speed.py --count 1000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_triplets(root: Path, count: int, width: int, height: int) -> None:
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    for index in range(count):
        rng = np.random.default_rng(index)
        centre_y, centre_x = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
        angle = np.arctan2(yy - centre_y, xx - centre_x)
        radius = min(height, width) * (0.3 + 0.03 * np.sin(7 * angle + index))
        distance = np.hypot(yy - centre_y, xx - centre_x) - radius
        gt = np.clip(0.5 - distance / 40, 0, 1)
        prediction = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
        trimap = np.where(distance < -60, 255, np.where(distance > 60, 0, 128)).astype(np.uint8)
        for folder, array in (("pred", prediction), ("alpha", gt)):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(np.round(array * 255).astype(np.uint8)).save(root / folder / f"{index:04d}.png")
        (root / "trimap").mkdir(exist_ok=True)
        Image.fromarray(trimap).save(root / "trimap" / f"{index:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, nargs=2, default=[1920, 1080], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    from mematte_hf.cli import main as mematte

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        write_triplets(root, args.count, *args.size)
        written = time.perf_counter() - start
        arguments = ["evaluate", "--predictions", str(root / "pred"), "--alphas", str(root / "alpha")]
        arguments += ["--trimaps", str(root / "trimap"), "--json", str(root / "scores.json")]
        if args.workers:
            arguments += ["--workers", str(args.workers)]
        start = time.perf_counter()
        code = mematte(arguments)
        elapsed = time.perf_counter() - start
        scores = json.loads((root / "scores.json").read_text())
    print(
        f"{args.count} images of {args.size[0]} x {args.size[1]}: evaluate took {elapsed:.1f} s "
        f"({elapsed / args.count:.3f} s per image; writing the inputs took {written:.1f} s); exit {code}; "
        f"mean {json.dumps(scores['mean'])}"
    )


if __name__ == "__main__":
    main()
