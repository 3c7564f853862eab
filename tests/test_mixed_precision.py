"""float16 and bfloat16 keep upstream's routing and stay close to float32, loaded with `dtype=` as a user would."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageMatting

from mematte_hf.predictor import MEMattePredictor, place_model
from tests.fixtures import convert_case, load_case, requires_fixtures, router_count, routing_margin
from tests.utils import random_inputs, save_tiny_checkpoint, tiny_model

# Half-precision convolutions on a CPU take minutes at tiny_patch's 700 x 900: that case runs on a GPU only.
HALF_CASES = ["tiny_direct", "tiny_cap", "tiny_pad32"]
# (mean, max) of |alpha - float32 alpha|, from the issue.
TOLERANCES = {torch.float16: (1e-3, 0.01), torch.bfloat16: (2.5e-3, 0.1)}
# A decision whose float32 margin |logp[0] - logp[1]| exceeds this must not flip in half precision.
CLEAR_MARGIN = 0.05


@pytest.fixture(scope="module", params=HALF_CASES)
def fixture_case(request, tmp_path_factory):
    folder = convert_case(request.param, tmp_path_factory.mktemp(request.param))
    meta, expected, image, trimap = load_case(request.param)
    inputs = AutoImageProcessor.from_pretrained(folder)(images=image, trimaps=trimap, return_tensors="pt")
    return folder, meta, expected, inputs["pixel_values"]


@requires_fixtures
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_keeps_routing_and_alpha(fixture_case, dtype):
    folder, meta, expected, pixel_values = fixture_case
    model = AutoModelForImageMatting.from_pretrained(folder, dtype=dtype).eval()
    router = next(module for name, module in model.named_modules() if name.endswith(".router"))
    assert router.in_proj.weight.dtype == torch.float32  # kept in float32 by `_keep_in_fp32_modules_strict`
    assert model.decoder.fusion_blocks[0].conv.conv.weight.dtype == dtype
    with torch.inference_mode():
        output = model(pixel_values.to(dtype))
    height, width = meta["image_size_hw"]
    difference = np.abs(output.alphas[0, 0, :height, :width].float().numpy() - expected["alpha_raw"])
    mean_limit, max_limit = TOLERANCES[dtype]
    assert difference.mean() <= mean_limit and difference.max() <= max_limit, (difference.mean(), difference.max())
    assert len(output.routing_masks) == router_count(expected)
    for index, mask in enumerate(output.routing_masks):
        upstream = expected[f"router{index}_to_global"].astype(bool)
        flipped = mask[0].numpy() != upstream
        clear = routing_margin(expected, index) > CLEAR_MARGIN
        assert not (flipped & clear).any(), f"router {index}: {int((flipped & clear).sum())} clear decisions flipped"
        assert output.router_log_probs[index].dtype == torch.float32


def test_bfloat16_patch_embedding_on_a_cpu_equals_float32():
    # oneDNN's bfloat16 convolution of this shape (4 channels, 16 x 16, stride 16) is wrong on AVX-512 CPUs with
    # torch 2.13: off by the output's own magnitude.
    model = tiny_model(seed=23)
    pixel_values = random_inputs(1, 96, 128, seed=23)
    with torch.inference_mode():
        reference = model.backbone.embeddings(pixel_values)
        half = place_model(model, torch.device("cpu"), torch.bfloat16)
        embedded = half.backbone.embeddings(pixel_values.bfloat16())
    torch.testing.assert_close(embedded.float(), reference, atol=0.05, rtol=0.02)


def test_float16_does_not_overflow_with_large_activations():
    model = tiny_model(seed=21)
    with torch.no_grad():  # activations of about 1.5e4: VitDetLayerNorm's (x - mean)^2 would overflow float16
        model.backbone.embeddings.projection.weight.mul_(5000)
        model.backbone.embeddings.projection.bias.mul_(5000)
    pixel_values = random_inputs(1, 96, 128, seed=21)
    with torch.inference_mode():
        reference = model(pixel_values, output_hidden_states=True)
    assert max(state.abs().max() for state in reference.hidden_states) > 1e4
    half = place_model(model, torch.device("cpu"), torch.float16)
    with torch.inference_mode():
        output = half(pixel_values.half())
    assert torch.isfinite(output.alphas).all()
    for half_mask, mask in zip(output.routing_masks, reference.routing_masks, strict=True):
        assert torch.equal(half_mask, mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_predictor_dtype_gives_the_weights_from_pretrained_loads(tmp_path, dtype):
    # The routers' weights too, value for value: casting them to half precision and back would round them.
    save_tiny_checkpoint(tmp_path, seed=22)
    loaded = AutoModelForImageMatting.from_pretrained(tmp_path, dtype=dtype).state_dict()
    predictor = MEMattePredictor(AutoModelForImageMatting.from_pretrained(tmp_path), device="cpu", dtype=dtype)
    placed = predictor.model.state_dict()
    assert placed.keys() == loaded.keys()
    assert any(".router." in name for name in placed)
    for name, tensor in placed.items():
        assert torch.equal(tensor.double(), loaded[name].double()), f"{name} differs from from_pretrained's"
        assert tensor.dtype == loaded[name].dtype, name
