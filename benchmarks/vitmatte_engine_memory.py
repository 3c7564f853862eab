"""A ViTMatte checkpoint run by transformers and by MEMatte's engine: peak memory and time of one forward.

Both carry the same random ViT-S weights with the hustvl checkpoints' shapes (global relative positions sized for
512 px); random weights are fine for memory and time, not for quality. "transformers" is
`VitMatteForImageMatting`; "engine" is `MEMatteForImageMatting.from_vitmatte(..., run_as_vitmatte=True)`, what
`MEMattePredictor.from_pretrained("hustvl/vitmatte-small-composition-1k")` runs: every token global with ViTMatte's
relative positions, the lean inference path, the decoder over the whole image. Their alphas agree within 1e-4
(`tests/test_vitmatte_engine.py`).

Each measurement is a fresh subprocess and its first (cold) forward, float32 under `torch.inference_mode()`: peak
memory is the peak resident set during the forward minus the resident set just before it
(`benchmarks/measure.py`), time is that forward's wall time.

    python benchmarks/vitmatte_engine_memory.py --transformers-sizes 1024 1536 --engine-sizes 1024 1536 2048 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("transformers", "engine")


def worker(kind: str, size: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measure import peak_memory, random_vitmatte, synthetic_inputs

    from mematte_hf import MEMatteForImageMatting

    if threads:
        torch.set_num_threads(threads)
    model = random_vitmatte(seed=0)
    if kind == "engine":
        model = MEMatteForImageMatting.from_vitmatte(model, run_as_vitmatte=True).eval()
    pixel_values = synthetic_inputs(size)
    with peak_memory(torch.device("cpu")) as peak, torch.inference_mode():
        start = time.perf_counter()
        model(pixel_values)
        seconds = time.perf_counter() - start
    return {"kind": kind, "size": size, "peak_bytes": peak.bytes, "seconds": seconds}


def run_in_subprocess(kind: str, size: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--worker", kind, str(size), "--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        reason = (completed.stderr.strip().splitlines() or [f"exit {completed.returncode}"])[-1]
        return {"kind": kind, "size": size, "error": reason}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    by_key = {(row["kind"], row["size"]): row for row in rows}
    lines = [
        "| size | transformers ViTMatte peak | time | MEMatte engine peak | time | memory ratio |",
        "|---|---|---|---|---|---|",
    ]
    for size in sorted({row["size"] for row in rows}):
        cells = [f"{size} px"]
        for kind in KINDS:
            row = by_key.get((kind, size))
            if row is None:
                cells += ["not run", ""]
            elif "error" in row:
                cells += [f"failed: {row['error']}", ""]
            else:
                cells += [f"{row['peak_bytes'] / 2**20:.1f} MiB", f"{row['seconds']:.1f} s"]
        pair = [by_key.get((kind, size)) for kind in KINDS]
        if all(row and "peak_bytes" in row for row in pair):
            cells.append(f"{pair[1]['peak_bytes'] / pair[0]['peak_bytes']:.3f}")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transformers-sizes", type=int, nargs="*", default=[1024, 1536])
    parser.add_argument("--engine-sizes", type=int, nargs="*", default=[1024, 1536, 2048, 4096])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/vitmatte_engine_memory_cpu.json"))
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.threads)))
        return
    plan = [("transformers", size) for size in args.transformers_sizes] + [
        ("engine", size) for size in args.engine_sizes
    ]
    rows = []
    for kind, size in plan:
        rows.append(run_in_subprocess(kind, size, args.threads))
        print(json.dumps(rows[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
