"""MEMatte against transformers' ViTMatte with the same weights: peak memory and latency by resolution.

Both models carry the same random ViT-S weights (MEMatte is built with `MEMatteForImageMatting.from_vitmatte`,
so only its routers and LTRMs are its own); random weights are fine for memory and time, not for quality.
Random routers would route almost no token or almost all, so the routers' output biases are shifted until
about `--routed-fraction` (default 0.25, the trained average) of the tokens go to global attention on a 1024 px
version of the input (`mematte_hf.calibration.set_routed_fraction`, the documented knob); the fraction each
router actually routed is reported at every size.

Every measurement runs in a fresh subprocess. On CPU, peak memory is the process's peak resident set during
the forward (VmHWM after resetting it through /proc/self/clear_refs) minus its resident set just before; on
CUDA it is `torch.cuda.max_memory_allocated` minus the memory allocated before the forward. Latency is the
median of `--repeats` forwards after one warm-up.

    pip install -e ".[bench]"   # matplotlib, for the plot
    python benchmarks/memory_latency.py --sizes 512 1024 1536 2048 4096 8192 --output benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VIT_S = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6}


def synthetic_inputs(size: int):
    """A normalised image with a soft-edged disc and a trimap with an unknown band around its edge."""
    import torch

    coords = torch.linspace(-1, 1, size)
    radius = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)
    generator = torch.Generator().manual_seed(size)
    rgb = torch.randn(1, 3, size, size, generator=generator) * 0.5 + (radius < 0.6).float() - 0.5
    trimap = torch.where(radius < 0.55, 1.0, torch.where(radius > 0.65, 0.0, 128 / 255))
    return torch.cat([rgb, trimap[None, None]], dim=1)


def build_models(kind: str, routed_fraction: float, tile_size: int, max_global_tokens: int | None):
    import torch
    from transformers import VitMatteForImageMatting

    from mematte_hf import MEMatteConfig, MEMatteForImageMatting
    from mematte_hf.calibration import set_routed_fraction

    torch.manual_seed(0)
    vitmatte = VitMatteForImageMatting(MEMatteConfig(**VIT_S).to_vitmatte_config()).eval()
    if kind == "vitmatte":
        return vitmatte, None
    torch.manual_seed(1)
    overrides = {"decoder_tile_size": tile_size}
    if max_global_tokens is not None:  # otherwise the config default (18500, as upstream)
        overrides["max_global_tokens"] = max_global_tokens
    model = MEMatteForImageMatting.from_vitmatte(vitmatte, **overrides).eval()
    fractions = set_routed_fraction(model, synthetic_inputs(1024), routed_fraction)
    return model, fractions


def worker(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    model, calibrated = build_models(args.kind, args.routed_fraction, args.tile_size, args.max_global_tokens)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = model.to(device=device, dtype=dtype)
    pixel_values = synthetic_inputs(args.size).to(device=device, dtype=dtype)
    from mematte_hf.memory import measure_peak_memory

    result = {"kind": args.kind, "size": args.size, "calibrated_fractions": calibrated}
    with torch.inference_mode():
        with measure_peak_memory(device) as peak:
            start = time.perf_counter()
            output = model(pixel_values)
            if device.type == "cuda":
                torch.cuda.synchronize()
            first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(pixel_values)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    result["peak_bytes"] = peak.bytes
    result["first_seconds"] = first
    result["median_seconds"] = statistics.median(times) if times else first
    if args.kind == "mematte":
        result["routed_fraction"] = [float(mask.float().mean()) for mask in output.routing_masks]
        result["tokens"] = int(output.routing_masks[0][0].numel())
    return result


def repeats_for(args: argparse.Namespace, size: int) -> int:
    """Timed runs after the first: all of them up to --repeat-limit, one up to 4096 px, none above."""
    if size <= args.repeat_limit:
        return args.repeats
    return 1 if size <= 4096 else 0


def vitmatte_estimated_bytes(size: int) -> int:
    """transformers' ViTMatte keeps about three heads x N x N float32 attention matrices alive at once in a
    global block (scores, scores plus relative positions, softmax)."""
    tokens = (size // 16) ** 2
    return 3 * VIT_S["num_attention_heads"] * tokens * tokens * 4


def run_in_subprocess(args: argparse.Namespace, kind: str, size: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--kind",
        kind,
        "--size",
        str(size),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--repeats",
        str(repeats_for(args, size)),
        "--routed-fraction",
        str(args.routed_fraction),
        "--tile-size",
        str(args.tile_size),
        "--threads",
        str(args.threads),
    ]
    if args.max_global_tokens is not None:
        command += ["--max-global-tokens", str(args.max_global_tokens)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["killed"]
        return {"kind": kind, "size": size, "error": f"exit {completed.returncode}: {tail[0]}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 1536, 2048, 4096])
    parser.add_argument("--vitmatte-max-size", type=int, default=2048, help="largest size ViTMatte is run at")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--repeat-limit", type=int, default=2048, help="above this, one timed run up to 4096 px, none beyond"
    )
    parser.add_argument("--routed-fraction", type=float, default=0.25)
    parser.add_argument("--tile-size", type=int, default=512, help="MEMatte decoder tile (0 = whole image)")
    parser.add_argument("--max-global-tokens", type=int, default=None, help="MEMatte cap k (default 18500)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=["mematte", "vitmatte"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import torch

    from mematte_hf.memory import available_memory

    rows = []
    for size in args.sizes:
        row = {"size": size, "mematte": run_in_subprocess(args, "mematte", size)}
        estimate = vitmatte_estimated_bytes(size)
        if size <= args.vitmatte_max_size and estimate < 0.8 * available_memory(torch.device(args.device)):
            row["vitmatte"] = run_in_subprocess(args, "vitmatte", size)
        else:
            row["vitmatte_skipped"] = f"estimated {estimate / 2**30:.1f} GiB of attention matrices: does not fit"
        rows.append(row)
        print(format_row(row), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    report = {"device": args.device, "dtype": args.dtype, "settings": vars(args) | {"output": str(args.output)}}
    report["rows"] = rows
    (args.output / f"memory_latency_{args.device}.json").write_text(json.dumps(report, indent=2))
    plot(rows, args.output / f"memory_latency_{args.device}.png", args.device)


def format_row(row: dict) -> str:
    mematte, vitmatte = row["mematte"], row.get("vitmatte")
    if "error" in mematte:
        return f"{row['size']:>5} px  MEMatte failed: {mematte['error']}"
    text = (
        f"{row['size']:>5} px  MEMatte {mematte['peak_bytes'] / 2**20:8.1f} MiB {mematte['median_seconds']:7.2f} s"
        f"  routed {', '.join(f'{f:.2f}' for f in mematte['routed_fraction'])}"
    )
    if vitmatte and "error" not in vitmatte:
        memory_ratio = mematte["peak_bytes"] / vitmatte["peak_bytes"]
        time_ratio = mematte["median_seconds"] / vitmatte["median_seconds"]
        text += (
            f" | ViTMatte {vitmatte['peak_bytes'] / 2**20:8.1f} MiB {vitmatte['median_seconds']:7.2f} s"
            f" | memory x{memory_ratio:.3f} latency x{time_ratio:.3f}"
        )
    elif vitmatte:
        text += f" | ViTMatte failed: {vitmatte['error']}"
    else:
        text += f" | ViTMatte not run: {row['vitmatte_skipped']}"
    return text


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (memory_axis, time_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    for kind, label in (("mematte", "MEMatte"), ("vitmatte", "ViTMatte")):
        points = [(row["size"], row[kind]) for row in rows if kind in row and "error" not in row[kind]]
        if not points:
            continue
        sizes = [size for size, _ in points]
        memory_axis.plot(sizes, [r["peak_bytes"] / 2**30 for _, r in points], "o-", label=label)
        time_axis.plot(sizes, [r["median_seconds"] for _, r in points], "o-", label=label)
    memory_axis.set(xlabel="image side (px)", ylabel="peak memory above baseline (GiB)", title=f"Memory ({device})")
    time_axis.set(xlabel="image side (px)", ylabel="median latency (s)", title=f"Latency ({device})")
    for axis in (memory_axis, time_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
