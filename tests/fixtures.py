"""The upstream parity fixtures in ../shared/fixtures/original_mematte/ and how a user converts them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mematte_hf.cli import main

FIXTURES = Path(
    os.environ.get("MEMATTE_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "original_mematte")
)
CASES = ["tiny_direct", "tiny_cap", "tiny_patch", "tiny_pad32"]

requires_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"upstream parity fixtures not found at {FIXTURES} (../shared beside the repo)"
)


def load_case(name: str) -> tuple[dict, dict, Image.Image, Image.Image]:
    """meta.json, expected.npz (as a dict), the image and the trimap of one fixture case."""
    case_dir = FIXTURES / name
    meta = json.loads((case_dir / "meta.json").read_text())
    expected = dict(np.load(case_dir / "expected.npz"))
    image = Image.open(case_dir / "image.png").convert("RGB")
    trimap = Image.open(case_dir / "trimap.png").convert("L")
    return meta, expected, image, trimap


def convert_case(name: str, output_dir: Path) -> Path:
    """`mematte convert` of one case with its upstream settings (heads, cap, tiled or whole decoder)."""
    meta, *_ = load_case(name)
    original = meta["original_config"]
    arguments = [
        "convert",
        str(FIXTURES / name / "checkpoint.pth"),
        str(output_dir),
        "--num-heads",
        str(original["heads"]),
        "--max-global-tokens",
        str(original["max_tokens"]),
    ]
    if not meta["patch_decoder"]:
        arguments += ["--decoder-tile-size", "0"]
    assert main(arguments) == 0
    return output_dir


def routing_margin(expected: dict, router: int) -> np.ndarray:
    """|logp[0] - logp[1]| of upstream's float32 router: how far each decision is from flipping."""
    log_probs = expected[f"router{router}_log_probs"]
    return np.abs(log_probs[..., 0] - log_probs[..., 1])


def router_count(expected: dict) -> int:
    return sum(name.endswith("_to_global") for name in expected)
