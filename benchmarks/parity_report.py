"""Print how far the converted upstream fixtures are from the upstream outputs (max abs differences).

    python benchmarks/parity_report.py [../shared/fixtures/original_mematte]

Each case is converted with `mematte convert` (heads and cap from meta.json, an untiled decoder where the
upstream run used none), then run through the saved image processor and model, as `tests/test_parity.py` does.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageMatting

from mematte_hf.convert import convert_checkpoint

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "original_mematte"


def report(case_dir: Path, work_dir: Path) -> str:
    meta = json.loads((case_dir / "meta.json").read_text())
    original = meta["original_config"]
    folder = convert_checkpoint(
        case_dir / "checkpoint.pth",
        work_dir / case_dir.name,
        num_heads=original["heads"],
        max_global_tokens=original["max_tokens"],
        decoder_tile_size=None if meta["patch_decoder"] else 0,
    )
    model = AutoModelForImageMatting.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    image = Image.open(case_dir / "image.png").convert("RGB")
    trimap = Image.open(case_dir / "trimap.png").convert("L")
    with torch.no_grad():
        output = model(**processor(images=image, trimaps=trimap, return_tensors="pt"))
    expected = np.load(case_dir / "expected.npz")
    height, width = meta["image_size_hw"]
    alpha = np.abs(output.alphas[0, 0, :height, :width].numpy() - expected["alpha_raw"]).max()
    features = np.abs(output.backbone_features[0].numpy() - expected["backbone_features"]).max()
    mismatches = [
        int((mask[0].numpy() != expected[f"router{index}_to_global"].astype(bool)).sum())
        for index, mask in enumerate(output.routing_masks)
    ]
    return (
        f"{case_dir.name}: alpha_raw {alpha:.2g}, backbone_features {features:.2g}, "
        f"routing decisions differing per router {mismatches}"
    )


def main() -> None:
    fixtures = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FIXTURES
    with tempfile.TemporaryDirectory() as work_dir:
        for case_dir in sorted(path for path in fixtures.iterdir() if path.is_dir()):
            print(report(case_dir, Path(work_dir)))


if __name__ == "__main__":
    main()
