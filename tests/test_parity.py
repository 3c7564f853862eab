"""The upstream parity fixtures: `mematte convert`, then `AutoImageProcessor` + `AutoModelForImageMatting`
reproduce upstream's outputs (alpha, features, every routing decision, the token grid), also through
`trust_remote_code=True` where `mematte_hf` cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageMatting

from tests.fixtures import CASES, FIXTURES, convert_case, load_case, requires_fixtures, router_count

pytestmark = requires_fixtures


@pytest.fixture(scope="module")
def converted_folders(tmp_path_factory):
    return {case: convert_case(case, tmp_path_factory.mktemp(case)) for case in CASES}


@pytest.fixture(scope="module", params=CASES)
def converted_case(request, converted_folders):
    folder = converted_folders[request.param]
    meta, expected, image, trimap = load_case(request.param)
    model = AutoModelForImageMatting.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    inputs = processor(images=image, trimaps=trimap, return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs)
    return meta, expected, output


def test_alpha_matches_upstream(converted_case):
    meta, expected, output = converted_case
    height, width = meta["image_size_hw"]
    alpha = output.alphas[0, 0, :height, :width].numpy()
    assert np.abs(alpha - expected["alpha_raw"]).max() < 1e-4


def test_token_grid_and_backbone_features_match_upstream(converted_case):
    _, expected, output = converted_case
    features = output.backbone_features[0].numpy()
    assert features.shape == expected["backbone_features"].shape  # the padded size decides the grid
    assert np.abs(features - expected["backbone_features"]).max() < 1e-4


def test_every_routing_decision_matches_upstream(converted_case):
    meta, expected, output = converted_case
    assert len(output.routing_masks) == router_count(expected)
    for index, mask in enumerate(output.routing_masks):
        upstream = expected[f"router{index}_to_global"].astype(bool)
        np.testing.assert_array_equal(mask[0].numpy(), upstream)
        np.testing.assert_allclose(
            output.router_log_probs[index][0].numpy(), expected[f"router{index}_log_probs"], atol=1e-4
        )


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["mematte_hf"] = None  # any `import mematte_hf` now fails: the folder's own code must suffice
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageMatting
    for folder, case_dir, output in zip(*[iter(sys.argv[1:])] * 3):
        model = AutoModelForImageMatting.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        assert "mematte_hf" not in type(model).__module__ + type(processor).__module__
        image = Image.open(case_dir + "/image.png").convert("RGB")
        trimap = Image.open(case_dir + "/trimap.png").convert("L")
        with torch.no_grad():
            out = model(**processor(images=image, trimaps=trimap, return_tensors="pt"))
        arrays = {"alphas": out.alphas[0, 0].numpy()}
        arrays.update({f"mask{i}": mask[0].numpy() for i, mask in enumerate(out.routing_masks)})
        np.savez(output, **arrays)
        print(type(model).__name__, type(processor).__name__)
    """
)


def test_converted_folders_with_trust_remote_code_match_upstream(converted_folders, tmp_path):
    environment = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    arguments = [str(item) for case in CASES for item in (converted_folders[case], FIXTURES / case, tmp_path / case)]
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,  # not the repository: the package must not be importable from the working directory
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["MEMatteForImageMatting", "MEMatteImageProcessor"] * len(CASES)
    for case in CASES:
        meta, expected, _, _ = load_case(case)
        arrays = np.load(tmp_path / f"{case}.npz")
        height, width = meta["image_size_hw"]
        assert np.abs(arrays["alphas"][:height, :width] - expected["alpha_raw"]).max() < 1e-4, case
        assert router_count(expected) == sum(name.startswith("mask") for name in arrays.files)
        for index in range(router_count(expected)):
            upstream = expected[f"router{index}_to_global"].astype(bool)
            np.testing.assert_array_equal(arrays[f"mask{index}"], upstream, err_msg=case)
