"""The upstream parity fixtures: `mematte convert`, then processor + model reproduce upstream's outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageMatting

from mematte_hf.cli import main

FIXTURES = Path(
    os.environ.get(
        "MEMATTE_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "original_mematte"
    )
)
CASES = ["tiny_direct", "tiny_cap", "tiny_patch"]

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"upstream parity fixtures not found at {FIXTURES} (../shared beside the repo)"
)


@pytest.fixture(scope="module", params=CASES)
def converted_case(request, tmp_path_factory):
    case_dir = FIXTURES / request.param
    meta = json.loads((case_dir / "meta.json").read_text())
    original = meta["original_config"]
    output_dir = tmp_path_factory.mktemp(request.param)
    arguments = [
        "convert",
        str(case_dir / "checkpoint.pth"),
        str(output_dir),
        "--num-heads",
        str(original["heads"]),
        "--max-global-tokens",
        str(original["max_tokens"]),
    ]
    if not meta["patch_decoder"]:
        arguments += ["--decoder-tile-size", "0"]
    assert main(arguments) == 0
    model = AutoModelForImageMatting.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    image = Image.open(case_dir / "image.png").convert("RGB")
    trimap = Image.open(case_dir / "trimap.png").convert("L")
    inputs = processor(images=image, trimaps=trimap, return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs)
    return meta, np.load(case_dir / "expected.npz"), output


def test_alpha_matches_upstream(converted_case):
    meta, expected, output = converted_case
    height, width = meta["image_size_hw"]
    alpha = output.alphas[0, 0, :height, :width].numpy()
    assert np.abs(alpha - expected["alpha_raw"]).max() < 1e-4


def test_backbone_features_match_upstream(converted_case):
    _, expected, output = converted_case
    features = output.backbone_features[0].numpy()
    assert features.shape == expected["backbone_features"].shape
    assert np.abs(features - expected["backbone_features"]).max() < 1e-4


def test_every_routing_decision_matches_upstream(converted_case):
    meta, expected, output = converted_case
    assert len(output.routing_masks) == len(meta["routed_to_global_fraction"])
    for index, mask in enumerate(output.routing_masks):
        upstream = expected[f"router{index}_to_global"].astype(bool)
        np.testing.assert_array_equal(mask[0].numpy(), upstream)
        np.testing.assert_allclose(
            output.router_log_probs[index][0].numpy(), expected[f"router{index}_log_probs"], atol=1e-4
        )
