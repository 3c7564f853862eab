"""MEMatte against transformers' ViTMatte on one device: peak memory, latency, routed fractions, dispatches.

Measured side by side in one run, at each size (default 1024, 2048, 4096 and 8192 px):

* MEMatte with its defaults (adaptive routing, cap k = 18500, decoder tile 512) in float32, bfloat16 and float16;
* MEMatte with `routing_mode="global"` (every token to global attention) and `"light"` (every token to the
  LTRM), in `--mode-dtype` (default bfloat16 on CUDA, float32 on the CPU);
* transformers' `VitMatteForImageMatting` with the same backbone weights, in float32 and the half types run,
  where its attention matrices fit in memory.

The models carry random ViT-S weights: fine for memory, time and dispatch counts, not for quality. MEMatte is
built with `MEMatteForImageMatting.from_vitmatte` from the very ViTMatte it is compared with, so only its routers
and LTRMs are its own. Random routers route almost nothing or almost everything, so their output biases are
shifted until 25 % of the tokens of a 1024 px input go to global attention by each router
(`mematte_hf.calibration.set_routed_fraction`); the fraction each router routes is reported at every size.

Same history for every model: the calibration runs once, in a process of its own, on the CPU, and its weights
are loaded from disk; every measurement then runs in a fresh process that builds its model, moves it to the
device and measures its first forward (cold, for the peak), then `--repeats` more (warm, for the latency:
the median), then one more under torch.profiler for the dispatch count. Peak memory is above what was in use
just before the first forward: `torch.cuda.max_memory_allocated` minus `memory_allocated` (after `empty_cache`
and a peak reset) on CUDA; on the CPU the peak resident set during the forward (VmHWM, reset through
/proc/self/clear_refs) minus the resident set before it. Dispatches per forward (`dispatch_count.py`): CUDA
kernel launches on a GPU, aten compute calls (views and other metadata-only calls excluded) on the CPU.

    python benchmarks/inference_benchmark.py --device cuda                       # everything, on a GPU
    python benchmarks/inference_benchmark.py --device cpu --sizes 1024 2048      # CPU, no half precision
    python benchmarks/inference_benchmark.py --device cpu --sizes 4096 --cases mematte-fp32 \\
        --forward-arg some_argument=value                                    # extra MEMatte forward arguments

Writes `inference_benchmark_<device>.json` and `.png` to `--output` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
HALF_TYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class Case:
    """One model configuration measured at every size."""

    model: str  # "mematte" or "vitmatte"
    dtype: str  # "float32", "bfloat16" or "float16"
    routing_mode: str | None = None  # MEMatte only; None = the config's (adaptive)

    @property
    def name(self) -> str:
        mode = f"-{self.routing_mode}" if self.routing_mode else ""
        return f"{self.model}{mode}-{DTYPE_SHORT[self.dtype]}"

    @property
    def label(self) -> str:
        model = "MEMatte" if self.model == "mematte" else "ViTMatte"
        mode = f" {self.routing_mode}" if self.routing_mode else ""
        return f"{model}{mode} {DTYPE_SHORT[self.dtype]}"


def all_cases(dtypes: list[str], mode_dtype: str) -> list[Case]:
    cases = [Case("mematte", dtype) for dtype in dtypes]
    cases += [Case("mematte", mode_dtype, "global"), Case("mematte", mode_dtype, "light")]
    return cases + [Case("vitmatte", dtype) for dtype in dtypes]


# --------------------------------------------------------------------------------------------------
# Worker processes


def calibrate(args: argparse.Namespace) -> None:
    """Calibrate the routers of the MEMatte built from the random ViTMatte and save its weights; print the
    fractions routed and the memory available on the device."""
    import torch
    from measure import random_vitmatte, synthetic_inputs

    from mematte_hf.calibration import set_routed_fraction

    model = build_mematte(random_vitmatte(), args)
    fractions = set_routed_fraction(model, synthetic_inputs(args.calibration_size), args.routed_fraction)
    torch.save(model.state_dict(), args.weights)
    # Asked here, so that the driver process never holds a CUDA context of its own.
    print(json.dumps({"calibrated_fractions": fractions, "available_bytes": available_bytes(args.device)}))


def build_mematte(vitmatte, args: argparse.Namespace):
    import torch

    from mematte_hf import MEMatteForImageMatting

    torch.manual_seed(1)  # the routers' and LTRMs' initial weights
    overrides = {"decoder_tile_size": args.tile_size, "max_global_tokens": args.max_global_tokens}
    return MEMatteForImageMatting.from_vitmatte(vitmatte, **overrides).eval()


def measure_case(args: argparse.Namespace) -> dict:
    """One case at one size, in this fresh process."""
    import torch
    from dispatch_count import count_dispatches
    from measure import peak_memory, random_vitmatte, synthetic_inputs, timed

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = random_vitmatte()
    forward_kwargs = {}
    if args.model == "mematte":
        model = build_mematte(model, args)
        model.load_state_dict(torch.load(args.weights, weights_only=True))
        forward_kwargs = mematte_forward_kwargs(model, args)
    model = model.to(device=device, dtype=dtype)
    pixel_values = synthetic_inputs(args.size).to(device=device, dtype=dtype)
    outputs = []

    def forward() -> None:
        outputs[:] = [model(pixel_values, **forward_kwargs)]

    result = {"forward_kwargs": {key: str(value) for key, value in forward_kwargs.items()}}
    with torch.inference_mode():
        with peak_memory(device) as peak:
            result["first_seconds"] = timed(forward, device)
        result["peak_bytes"] = peak.bytes
        times = [timed(forward, device) for _ in range(args.repeats)]
        result["median_seconds"] = statistics.median(times) if times else result["first_seconds"]
        result["latency_from"] = f"median of {len(times)} warm forwards" if times else "the cold forward"
        if args.model == "mematte":
            masks = outputs[0].routing_masks
            result["routed_fraction"] = [float(mask.float().mean()) for mask in masks]
        if args.count_dispatches:
            result["dispatches"] = count_dispatches(forward, device).as_dict()
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    return result


def mematte_forward_kwargs(model, args: argparse.Namespace) -> dict:
    """routing_mode and the --forward-arg settings, checked against the forward's signature."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    kwargs = dict(parse_forward_arg(text) for text in args.forward_arg)
    if args.routing_mode:
        kwargs["routing_mode"] = args.routing_mode
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise SystemExit(f"MEMatteForImageMatting.forward takes no argument {', '.join(unknown)}")
    return kwargs


def parse_forward_arg(text: str) -> tuple[str, object]:
    """'name=value' -> (name, value), the value read as JSON where it is JSON (numbers, true, null), else text."""
    name, separator, value = text.partition("=")
    if not separator:
        raise SystemExit(f"--forward-arg {text!r}: write it as name=value")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


# --------------------------------------------------------------------------------------------------
# The driver


def skip_reason(case: Case, size: int, args: argparse.Namespace, available: int | None) -> str | None:
    if args.device == "cpu" and case.dtype in HALF_TYPES and not args.half_on_cpu:
        return "half precision is extremely slow on this CPU's convolutions (--half-on-cpu runs it)"
    if case.model == "vitmatte":
        needed = vitmatte_attention_bytes(size, case.dtype)
        if available is not None and needed > 0.8 * available:
            return (
                f"does not fit: its global attention keeps ~{needed / 2**30:,.0f} GiB of attention matrices "
                f"alive, above 80 % of the {available / 2**30:.0f} GiB available"
            )
    return None


def vitmatte_attention_bytes(size: int, dtype: str) -> int:
    """transformers' ViTMatte (eager attention) keeps about three heads x N x N score matrices alive at once in a
    global block (scores, scores plus relative positions, softmax)."""
    from measure import VIT_S

    tokens = (size // 16) ** 2
    return 3 * VIT_S["num_attention_heads"] * tokens * tokens * (4 if dtype == "float32" else 2)


def available_bytes(device: str) -> int:
    """Free memory on the device: CUDA's free memory, or the system's available memory (`mematte_hf.memory`)."""
    import torch

    from mematte_hf.memory import available_memory

    return available_memory(torch.device(device))


def worker_command(args: argparse.Namespace, *extra: str) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--weights", str(args.weights)]
    command += ["--tile-size", str(args.tile_size), "--max-global-tokens", str(args.max_global_tokens)]
    command += ["--threads", str(args.threads), "--routed-fraction", str(args.routed_fraction)]
    command += ["--calibration-size", str(args.calibration_size)]
    for text in args.forward_arg:
        command += ["--forward-arg", text]
    return command + list(extra)


def run_worker(command: list[str], timeout: float | None) -> dict:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout:.0f} s (--timeout)"}
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or [f"killed (signal {-completed.returncode})"]
        return {"error": f"exit {completed.returncode}: {lines[-1]}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_case(args: argparse.Namespace, case: Case, size: int) -> dict:
    repeats = args.repeats if size <= args.repeat_limit else args.large_repeats
    extra = ["--worker", "--model", case.model, "--dtype", case.dtype, "--size", str(size)]
    extra += ["--repeats", str(repeats)]
    if case.routing_mode:
        extra += ["--routing-mode", case.routing_mode]
    if size <= args.dispatch_max_size:
        extra.append("--count-dispatches")
    return run_worker(worker_command(args, *extra), args.timeout)


def main() -> None:
    args = parse_args()
    if args.calibrate:
        calibrate(args)
        return
    if args.worker:
        print(json.dumps(measure_case(args)))
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available here")
    dtypes = args.dtypes or (["float32", "bfloat16", "float16"] if args.device == "cuda" else ["float32"])
    mode_dtype = args.mode_dtype or ("bfloat16" if args.device == "cuda" else "float32")
    cases = [case for case in all_cases(dtypes, mode_dtype) if not args.cases or case.name in args.cases]
    if not cases:
        raise SystemExit(f"no case left; names: {[case.name for case in all_cases(dtypes, mode_dtype)]}")
    with tempfile.TemporaryDirectory() as folder:
        args.weights = Path(folder) / "mematte_calibrated.pt"
        calibration = run_worker(worker_command(args, "--calibrate"), None)
        if "error" in calibration:
            raise SystemExit(f"calibration failed: {calibration['error']}")
        print(f"routers calibrated on a {args.calibration_size} px input: {calibration['calibrated_fractions']}")
        rows = []
        for size in args.sizes:
            for case in cases:
                row = {"size": size, "case": case.name, "label": case.label, "model": case.model}
                row |= {"dtype": case.dtype, "routing_mode": case.routing_mode or "adaptive"}
                if case.model == "vitmatte":
                    row["routing_mode"] = None
                reason = skip_reason(case, size, args, calibration["available_bytes"])
                row |= {"skipped": reason} if reason else run_case(args, case, size)
                rows.append(row)
                print(format_row(row), flush=True)
    report = {
        "device": args.device,
        "gpu": next((row["gpu"] for row in rows if "gpu" in row), None),
        "torch": torch.__version__,
        "calibrated_fractions": calibration["calibrated_fractions"],
        "settings": {key: str(value) for key, value in vars(args).items() if key not in ("worker", "calibrate")},
        "rows": rows,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"inference_benchmark_{args.device}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(rows, stem.with_suffix(".png"), args.device)
    print(f"\nwrote {stem}.json and {stem}.png\n")
    print(markdown_table(rows, args.device))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPE_SHORT), help="default: all on CUDA, fp32 on CPU")
    parser.add_argument("--half-on-cpu", action="store_true", help="run bfloat16 / float16 on the CPU too")
    parser.add_argument("--mode-dtype", choices=list(DTYPE_SHORT), help="dtype of the global / light runs")
    parser.add_argument("--cases", nargs="+", help="only these cases, e.g. mematte-fp32 vitmatte-fp32")
    parser.add_argument("--repeats", type=int, default=3, help="warm forwards timed per measurement")
    parser.add_argument("--repeat-limit", type=int, default=2048, help="above this size, --large-repeats")
    parser.add_argument("--large-repeats", type=int, default=1)
    parser.add_argument("--dispatch-max-size", type=int, default=4096, help="count dispatches up to this size")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per measurement")
    parser.add_argument("--routed-fraction", type=float, default=0.25)
    parser.add_argument("--calibration-size", type=int, default=1024)
    parser.add_argument("--tile-size", type=int, default=512, help="MEMatte decoder tile (config default)")
    parser.add_argument("--max-global-tokens", type=int, default=18500, help="MEMatte cap k (config default)")
    parser.add_argument("--forward-arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    parser.add_argument("--output", type=Path, default=HERE / "results")
    for hidden in ("--worker", "--calibrate", "--count-dispatches"):
        parser.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--model", "--dtype", "--routing-mode", "--weights"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


# --------------------------------------------------------------------------------------------------
# Reporting


def format_row(row: dict) -> str:
    head = f"{row['size']:>5} px  {row['label']:<22}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    if "error" in row:
        return f"{head} failed: {row['error']}"
    return f"{head} {memory_text(row):>10}  {row['median_seconds'] * 1e3:10.1f} ms  {dispatch_text(row):>8}  " + (
        f"routed {routed_text(row)}" if "routed_fraction" in row else ""
    )


def memory_text(row: dict) -> str:
    peak = row.get("peak_bytes")
    if peak is None:
        return "n/a"
    return f"{peak / 2**30:.2f} GiB" if peak >= 2**30 else f"{peak / 2**20:.0f} MiB"


def dispatch_text(row: dict) -> str:
    count = dispatch_number(row)
    return "-" if count is None else f"{count:,}"


def dispatch_number(row: dict) -> int | None:
    """Kernel launches where they were counted (CUDA), else aten compute calls; None when not counted."""
    counts = row.get("dispatches")
    if not counts:
        return None
    return counts["kernel_launches"] if counts["kernel_launches"] is not None else counts["aten_compute"]


def routed_text(row: dict) -> str:
    return ", ".join(f"{fraction:.2f}" for fraction in row["routed_fraction"])


def markdown_table(rows: list[dict], device: str) -> str:
    unit = "kernel launches" if device == "cuda" else "aten compute calls"
    lines = [
        f"| px | model | peak memory | median latency | {unit} per forward | routed per router |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row or "error" in row:
            lines.append(f"| {row['size']} | {row['label']} | {row.get('skipped') or row['error']} | | | |")
            continue
        routed = routed_text(row) if "routed_fraction" in row else ""
        latency = f"{row['median_seconds'] * 1e3:,.1f} ms"
        lines.append(
            f"| {row['size']} | {row['label']} | {memory_text(row)} | {latency} | {dispatch_text(row)} | {routed} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    measured = [row for row in rows if "peak_bytes" in row]
    figure, axes = pyplot.subplots(1, 3, figsize=(15, 4.5))
    panels = (
        ("peak memory above baseline (GiB)", lambda row: (row["peak_bytes"] or 0) / 2**30),
        ("median latency (s)", lambda row: row["median_seconds"]),
        ("dispatches per forward", dispatch_number),
    )
    for axis, (title, value) in zip(axes, panels, strict=True):
        for label in dict.fromkeys(row["label"] for row in measured):
            points = [(row["size"], value(row)) for row in measured if row["label"] == label]
            points = [(size, number) for size, number in points if number]
            if points:
                axis.plot(*zip(*points, strict=True), "o-", label=label)
        axis.set(xlabel="image side (px)", title=f"{title}, {device}", xscale="log", yscale="log")
        sizes = sorted({row["size"] for row in measured})
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
