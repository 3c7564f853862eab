"""Print how far the converted upstream fixtures are from the upstream outputs, per device and precision.

    python benchmarks/parity_report.py                                   # float32 on the CPU, every case
    python benchmarks/parity_report.py --dtypes float16 bfloat16 --cases tiny_direct tiny_cap tiny_pad32
    python benchmarks/parity_report.py --device cuda --dtypes float32 float16 bfloat16
    python benchmarks/parity_report.py --dtypes float16 bfloat16 --executions cpu gpu --cases tiny_direct

Each case is converted with `mematte convert` (heads and cap from meta.json, an untiled decoder where the
upstream run used none), then run through the saved image processor and the model loaded with
`from_pretrained(..., dtype=...)`, as a user would (and as `tests/test_parity.py` does). Reported: alpha_raw max and
mean |difference|, backbone features max |difference|, routing decisions that differ per router, and how many of
those upstream decided by a margin |logp[0] - logp[1]| above 0.05 ("clear"). `--executions` runs each execution
plan (default: the device's), which must agree in every precision.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageMatting

from mematte_hf.convert import convert_checkpoint

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "original_mematte"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CLEAR_MARGIN = 0.05


def convert(case_dir: Path, work_dir: Path) -> Path:
    meta = json.loads((case_dir / "meta.json").read_text())
    original = meta["original_config"]
    return convert_checkpoint(
        case_dir / "checkpoint.pth",
        work_dir / case_dir.name,
        num_heads=original["heads"],
        max_global_tokens=original["max_tokens"],
        decoder_tile_size=None if meta["patch_decoder"] else 0,
    )


def report(case_dir: Path, folder: Path, dtype: torch.dtype, device: torch.device, execution: str | None = None) -> str:
    meta = json.loads((case_dir / "meta.json").read_text())
    model = AutoModelForImageMatting.from_pretrained(folder, dtype=dtype).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    image = Image.open(case_dir / "image.png").convert("RGB")
    trimap = Image.open(case_dir / "trimap.png").convert("L")
    pixel_values = processor(images=image, trimaps=trimap, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        output = model(pixel_values.to(device=device, dtype=dtype), execution=execution)
    expected = np.load(case_dir / "expected.npz")
    height, width = meta["image_size_hw"]
    alpha = np.abs(output.alphas[0, 0, :height, :width].float().cpu().numpy() - expected["alpha_raw"])
    features = np.abs(output.backbone_features[0].float().cpu().numpy() - expected["backbone_features"]).max()
    flipped, clear = [], []
    for index, mask in enumerate(output.routing_masks):
        differs = mask[0].cpu().numpy() != expected[f"router{index}_to_global"].astype(bool)
        log_probs = expected[f"router{index}_log_probs"]
        flipped.append(int(differs.sum()))
        clear.append(int((differs & (np.abs(log_probs[..., 0] - log_probs[..., 1]) > CLEAR_MARGIN)).sum()))
    return (
        f"{case_dir.name} {device.type} {str(dtype).removeprefix('torch.')} plan {execution or device.type}: "
        f"alpha_raw max {alpha.max():.2g} "
        f"mean {alpha.mean():.2g}, backbone_features {features:.2g}, routing decisions differing per router "
        f"{flipped} (clear: {clear}), token grid {tuple(output.routing_masks[0].shape[1:])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixtures", nargs="?", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32"])
    parser.add_argument("--cases", nargs="+", help="case folder names (default: every case)")
    parser.add_argument("--executions", nargs="+", choices=["cpu", "gpu"], default=[None], help="execution plans")
    args = parser.parse_args()
    case_dirs = sorted(path for path in args.fixtures.iterdir() if path.is_dir())
    if args.cases:
        case_dirs = [path for path in case_dirs if path.name in args.cases]
    with tempfile.TemporaryDirectory() as work_dir:
        for case_dir in case_dirs:
            folder = convert(case_dir, Path(work_dir))
            for name in args.dtypes:
                for execution in args.executions:
                    print(report(case_dir, folder, DTYPES[name], torch.device(args.device), execution), flush=True)


if __name__ == "__main__":
    main()
