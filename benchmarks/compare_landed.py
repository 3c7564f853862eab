"""The landed MEMatte against the working tree on the CPU: latency, peak memory and alphas, side by side.

The landed package (commit d3dd05f by default: main before issue 14) is unpacked with `git archive` into a
temporary folder (the working tree, the index and HEAD stay as they are). One set of random ViT-S weights, its
routers calibrated to route 25 % of a 1024 px input's tokens (`mematte_hf.calibration.set_routed_fraction`), is
saved once with `save_pretrained`; each version loads it with its own `MEMatteForImageMatting.from_pretrained` in a
fresh process (PYTHONPATH pointing at its source), copies the weights out of the file mapping, and runs the same input
with the config's defaults. Per process: the first forward is cold and gives the peak memory (peak resident set
above the resident set before it, the peak reset through /proc/self/clear_refs); the median of `--repeats` warm
forwards is the latency. The versions alternate over `--rounds` rounds (fresh processes each time) and the
medians over the rounds are compared.

    python benchmarks/compare_landed.py                  # 1024 px, 3 rounds
    python benchmarks/compare_landed.py --threads 1 --rounds 5

Targets (issues 9 and 14): latency <= 1.10x, peak <= 1.15x the landed version, alphas within 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
TARGETS = {"latency": 1.10, "peak": 1.15, "alpha": 1e-4}


def worker(args: argparse.Namespace) -> dict:
    """One version, in this fresh process: load the weights, measure the cold forward and the warm ones."""
    import numpy as np
    import torch
    from measure import peak_memory, timed

    import mematte_hf
    from mematte_hf import MEMatteForImageMatting

    loaded_from = Path(mematte_hf.__file__).resolve().parent.parent
    if loaded_from != args.source.resolve():
        raise SystemExit(f"imported mematte_hf from {loaded_from}, not from {args.source}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = MEMatteForImageMatting.from_pretrained(args.weights, output_loading_info=True)
    mismatched = {key: value for key, value in info.items() if value}
    if mismatched:
        raise SystemExit(f"the weights do not match this version's model: {mismatched}")
    model.eval()
    # from_pretrained leaves the weights memory-mapped from the safetensors file: without this copy, the first
    # forward would page them in and count ~100 MiB of weights as activation memory.
    for tensor in (*model.parameters(), *model.buffers()):
        tensor.data = tensor.data.clone()
    pixel_values = torch.load(args.input, weights_only=True)
    outputs = []

    def forward() -> None:
        outputs[:] = [model(pixel_values)]

    device = torch.device("cpu")
    with torch.inference_mode():
        with peak_memory(device) as peak:
            first = timed(forward, device)
        times = [timed(forward, device) for _ in range(args.repeats)]
    np.save(args.alphas, outputs[0].alphas.float().numpy())
    return {"peak_bytes": peak.bytes, "first_seconds": first, "median_seconds": statistics.median(times)}


def prepare(folder: Path, args: argparse.Namespace) -> tuple[Path, Path, list[float]]:
    """The landed source, the calibrated weights and the input, in `folder`."""
    import torch
    from measure import random_vitmatte, synthetic_inputs

    from mematte_hf import MEMatteForImageMatting
    from mematte_hf.calibration import set_routed_fraction

    landed = folder / "landed_src"
    landed.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.landed, "mematte_hf"], cwd=REPOSITORY, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(landed)], input=archive, check=True)
    torch.manual_seed(1)
    model = MEMatteForImageMatting.from_vitmatte(random_vitmatte()).eval()
    fractions = set_routed_fraction(model, synthetic_inputs(1024), args.routed_fraction)
    model.save_pretrained(folder / "weights")
    torch.save(synthetic_inputs(args.size), folder / "input.pt")
    return landed, folder / "weights", fractions


def run_version(source: Path, folder: Path, name: str, round_index: int, args: argparse.Namespace) -> dict:
    alphas = folder / f"alphas_{name}_{round_index}.npy"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--source", str(source)]
    command += ["--weights", str(folder / "weights"), "--input", str(folder / "input.pt"), "--alphas", str(alphas)]
    command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    environment = dict(os.environ, PYTHONPATH=str(source))
    if args.mmap_threshold:
        # glibc raises its mmap threshold after large frees, so which tensors are returned to the system depends on
        # the allocation history: peak RSS then varies by about +-40 MiB between identical runs. A fixed threshold
        # keeps every large tensor in its own mapping, and the peak repeats to 0.1 MiB.
        environment["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=folder)
    if completed.returncode != 0:
        raise SystemExit(f"{name} failed: {completed.stderr.strip().splitlines()[-1:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1]) | {"alphas": str(alphas)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--landed", default="d3dd05f", help="commit of the landed version")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per version, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="warm forwards timed per process")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    parser.add_argument("--routed-fraction", type=float, default=0.25)
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=65536,
        help="glibc MALLOC_MMAP_THRESHOLD_ for both versions (0: the allocator's default, noisier peaks)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--source", "--weights", "--input", "--alphas"):
        parser.add_argument(hidden, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # the calibration's forwards, here
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        landed, _, fractions = prepare(folder, args)
        print(f"{args.size} px, CPU, landed = {args.landed}; routers calibrated to {fractions} on 1024 px")
        runs: dict[str, list[dict]] = {"landed": [], "current": []}
        for round_index in range(args.rounds):
            order = ("landed", "current") if round_index % 2 == 0 else ("current", "landed")
            for version in order:
                source = landed if version == "landed" else REPOSITORY
                runs[version].append(run_version(source, folder, version, round_index, args))
                run = runs[version][-1]
                print(
                    f"  round {round_index + 1} {version:>7}: peak {run['peak_bytes'] / 2**20:7.1f} MiB, "
                    f"median {run['median_seconds'] * 1e3:8.1f} ms (cold {run['first_seconds'] * 1e3:.0f} ms)",
                    flush=True,
                )
        alphas = {version: [np.load(run["alphas"]) for run in runs[version]] for version in runs}
        summary = {
            version: {
                "median_seconds": statistics.median(run["median_seconds"] for run in runs[version]),
                "peak_bytes": statistics.median(run["peak_bytes"] for run in runs[version]),
            }
            for version in runs
        }
    difference = max(float(np.abs(alphas["current"][0] - landed_alpha).max()) for landed_alpha in alphas["landed"])
    ratios = {
        "latency": summary["current"]["median_seconds"] / summary["landed"]["median_seconds"],
        "peak": summary["current"]["peak_bytes"] / summary["landed"]["peak_bytes"],
    }
    for version in runs:
        print(
            f"{version:>7}: median latency {summary[version]['median_seconds'] * 1e3:8.1f} ms, "
            f"median cold peak {summary[version]['peak_bytes'] / 2**20:7.1f} MiB"
        )
    verdict = {name: ratios[name] <= TARGETS[name] for name in ratios} | {"alpha": difference <= TARGETS["alpha"]}
    print(
        f"latency x{ratios['latency']:.3f} (target <= {TARGETS['latency']}), "
        f"peak x{ratios['peak']:.3f} (target <= {TARGETS['peak']}), "
        f"max |alpha difference| {difference:.2e} (target <= {TARGETS['alpha']:.0e}): "
        + ", ".join(f"{name} {'met' if met else 'MISSED'}" for name, met in verdict.items())
    )
    if args.output:
        report = {"settings": {key: str(value) for key, value in vars(args).items()}, "runs": runs}
        report |= {"summary": summary, "ratios": ratios, "max_abs_alpha_difference": difference, "met": verdict}
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
