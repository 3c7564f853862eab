"""Foreground estimation, the landed version against the working tree: time, dispatches, equality.

The landed `mematte_hf/foreground.py` (commit c43c317 by default) is read with `git show` (no change to the
working tree or the index) and imported as a module of its own next to today's. Both run on the same
synthetic 8-bit photo and float32 matte (a soft disc with a noisy edge, as a matting model gives them), in
the same process, their runs interleaved, after one warm-up each. Reported per size: median wall time of
`estimate_foreground` (numpy in, numpy out: host conversions and transfers included) and of `rgba_cutout`
(what `MattingResult.rgba()` adds), operator dispatches of one estimate (`dispatch_count.py`: aten compute
calls, and CUDA kernel launches on a GPU), and the largest difference between the two foregrounds.

    python benchmarks/foreground_speed.py --device cpu --sizes 1024x1024 3840x2160
    python benchmarks/foreground_speed.py --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch_count import count_dispatches  # noqa: E402
from measure import timed  # noqa: E402

from mematte_hf import foreground as current  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]


def landed_module(commit: str) -> ModuleType:
    """`mematte_hf/foreground.py` at `commit`, imported as `mematte_hf._landed_foreground`."""
    source = subprocess.run(
        ["git", "show", f"{commit}:mematte_hf/foreground.py"], cwd=REPOSITORY, check=True, capture_output=True
    ).stdout
    name = "mematte_hf._landed_foreground"  # inside the package, so its relative imports resolve
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "landed_foreground.py"
        path.write_bytes(source)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def synthetic_photo(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) float32 alpha: a soft disc, noisy at its edge, over texture."""
    rng = np.random.default_rng(height * width)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = np.hypot(rows - height / 2, columns - width / 2) / (min(height, width) / 2)
    ramp = np.clip((0.7 - radius) / 0.1, 0, 1)
    alpha = np.where((ramp > 0) & (ramp < 1), np.clip(ramp + 0.2 * rng.standard_normal(ramp.shape), 0, 1), ramp)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image, alpha.astype(np.float32)


def measure(size: tuple[int, int], modules: dict[str, ModuleType], device: torch.device, repeats: int) -> dict:
    height, width = size
    image, alpha = synthetic_photo(height, width)
    foregrounds = {name: module.estimate_foreground(image, alpha, device=device) for name, module in modules.items()}
    estimate_times: dict[str, list[float]] = {name: [] for name in modules}
    cutout_times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats):  # interleaved, so that a busy moment of the machine hits both
        for name, module in modules.items():
            estimate = lambda m=module: m.estimate_foreground(image, alpha, device=device)  # noqa: E731
            estimate_times[name].append(timed(estimate, device))
            cutout_times[name].append(timed(lambda m=module, n=name: m.rgba_cutout(foregrounds[n], alpha), device))
    row: dict = {"size": f"{width}x{height}"}
    for name, module in modules.items():
        counts = count_dispatches(lambda m=module: m.estimate_foreground(image, alpha, device=device), device)
        row[name] = {
            "estimate_seconds": statistics.median(estimate_times[name]),
            "rgba_cutout_seconds": statistics.median(cutout_times[name]),
            "dispatches": counts.as_dict(),
        }
    landed, today = foregrounds["landed"], foregrounds["current"]
    row["max_abs_difference"] = float(np.abs(landed - today).max())
    return row


def format_row(row: dict, device: torch.device) -> str:
    landed, today = row["landed"], row["current"]
    unit = "kernel launches" if device.type == "cuda" else "aten compute calls"
    key = "kernel_launches" if device.type == "cuda" else "aten_compute"
    return (
        f"{row['size']:>9}  estimate: landed {landed['estimate_seconds'] * 1e3:8.1f} ms, now "
        f"{today['estimate_seconds'] * 1e3:8.1f} ms (x{today['estimate_seconds'] / landed['estimate_seconds']:.2f})"
        f" | rgba_cutout: landed {landed['rgba_cutout_seconds'] * 1e3:7.1f} ms, now "
        f"{today['rgba_cutout_seconds'] * 1e3:7.1f} ms"
        f" | {unit}: landed {landed['dispatches'][key]}, now {today['dispatches'][key]}"
        f" (all aten calls {landed['dispatches']['aten_total']} -> {today['dispatches']['aten_total']})"
        f" | max |difference| {row['max_abs_difference']:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", default=["1024x1024", "3840x2160"], help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--landed", default="c43c317", help="commit of the landed version")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available here")
    modules = {"landed": landed_module(args.landed), "current": current}
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, landed = {args.landed}")
    rows = []
    for text in args.sizes:
        width, height = (int(part) for part in text.lower().split("x"))
        rows.append(measure((height, width), modules, device, args.repeats))
        print(format_row(rows[-1], device), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        report = {"device": str(device), "landed": args.landed, "repeats": args.repeats}
        report |= {"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
