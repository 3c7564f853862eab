"""Execution plans change how the work is laid out, never the alphas; the GPU plan keeps dispatches few."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageMatting

from mematte_hf.image_processing_mematte import padded_size
from mematte_hf.modeling_mematte import CPU_EXECUTION, GPU_EXECUTION, ExecutionPlan, resolve_execution, row_bands
from mematte_hf.predictor import place_model
from tests.fixtures import convert_case, load_case, requires_fixtures
from tests.test_mixed_precision import CLEAR_MARGIN, TOLERANCES
from tests.utils import random_inputs, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dispatch_count import count_dispatches  # noqa: E402

# What one 4096 px forward may dispatch with the GPU plan (the target for CUDA kernel launches, held on the
# CPU as aten compute calls: views and other metadata-only calls not counted).
DISPATCH_LIMIT_4096 = 1500


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=61)


def test_plans_by_device_and_by_name():
    assert resolve_execution(None, torch.device("cpu")) == CPU_EXECUTION
    assert resolve_execution(None, torch.device("cuda")) == GPU_EXECUTION
    assert resolve_execution("gpu", torch.device("cpu")) == GPU_EXECUTION
    with pytest.raises(ValueError, match="execution"):
        resolve_execution("tpu", torch.device("cpu"))
    with pytest.raises(ValueError, match="tile_batch"):
        ExecutionPlan(band_tokens=None, tile_batch=0)


@pytest.mark.parametrize(
    "plan",
    [GPU_EXECUTION, ExecutionPlan(band_tokens=None, tile_batch=3), ExecutionPlan(band_tokens=300, tile_batch=2)],
    ids=["gpu", "whole-grid-batches-of-3", "bands-batches-of-2"],
)
def test_every_plan_gives_the_cpu_plan_alphas(model, plan):
    # 352 x 480 in 64 px tiles: 6 x 8 tiles of four shapes (corners, edges, inner), a batch of two images.
    pixel_values = random_inputs(2, 352, 480, seed=61)
    with torch.inference_mode():
        expected = model(pixel_values, decoder_tile_size=64, execution=CPU_EXECUTION)
        actual = model(pixel_values, decoder_tile_size=64, execution=plan)
    torch.testing.assert_close(actual.alphas, expected.alphas, atol=1e-5, rtol=0)
    for mask, expected_mask in zip(actual.routing_masks, expected.routing_masks, strict=True):
        assert torch.equal(mask, expected_mask)


@pytest.mark.parametrize("pixels, window_bands", [(3840, 1), (4000, 1), (4096, 2)])
def test_gpu_plan_bands_are_what_its_comment_says(pixels, window_bands):
    # GPU_EXECUTION's comment: one band for the whole grid up to 4000 px; at 4096 px the MLPs in one band and the
    # window blocks in two (their bands hold whole 14-token windows: 252 rows, then 4).
    grid = padded_size(pixels, pixels)[0] // 16
    assert len(row_bands(grid, grid, 1, GPU_EXECUTION.band_tokens)) == 1
    assert [band.stop - band.start for band in row_bands(grid, grid, 14, GPU_EXECUTION.band_tokens)] == (
        [grid] if window_bands == 1 else [252, grid - 252]
    )


@pytest.mark.slow
def test_gpu_plan_dispatches_at_most_1500_compute_calls_at_4096_px():
    # A ViT-S layout (12 blocks, 4 routed) with narrow channels: the count depends on the layout and the tiles,
    # not on the width, and the narrow model runs a 4096 px forward on this CPU in seconds.
    model = tiny_model(
        seed=62,
        num_hidden_layers=12,
        window_block_indices=[0, 1, 3, 4, 6, 7, 9, 10],
        residual_block_indices=[2, 5, 8, 11],
    )
    pixel_values = random_inputs(1, 4096, 4096, seed=62)
    with torch.inference_mode():
        gpu = count_dispatches(lambda: model(pixel_values, execution="gpu"), "cpu")
    assert gpu.aten_compute <= DISPATCH_LIMIT_4096, gpu.top(12)


def test_compiled_blocks_give_the_eager_alphas():
    model = tiny_model(seed=63)
    pixel_values = random_inputs(1, 128, 160, seed=63)
    with torch.inference_mode():
        eager = model(pixel_values, decoder_tile_size=0, execution="gpu")
    torch._dynamo.reset()
    model.compile_blocks(backend="aot_eager")  # traced and partitioned as for inductor, without a C++ build here
    with torch.inference_mode():
        compiled = model(pixel_values, decoder_tile_size=0, execution="gpu")
    torch.testing.assert_close(compiled.alphas, eager.alphas, atol=1e-5, rtol=0)
    for mask, eager_mask in zip(compiled.routing_masks, eager.routing_masks, strict=True):
        assert torch.equal(mask, eager_mask)


def assert_plans_agree(cpu, gpu, reference, dtype: torch.dtype) -> None:
    """The CPU and GPU plans' outputs within the half-precision tolerances of each other, and no decision whose
    float32 margin exceeds `CLEAR_MARGIN` taken differently."""
    difference = (cpu.alphas.float() - gpu.alphas.float()).abs()
    mean_limit, max_limit = TOLERANCES[dtype]
    assert difference.mean() <= mean_limit and difference.max() <= max_limit, (difference.mean(), difference.max())
    for index, log_probs in enumerate(reference.router_log_probs):
        clear = (log_probs[..., 0] - log_probs[..., 1]).abs() > CLEAR_MARGIN
        flipped = cpu.routing_masks[index] != gpu.routing_masks[index]
        assert not (flipped & clear).any(), f"router {index}: {int((flipped & clear).sum())} clear decisions differ"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_plans_agree_in_half_precision_on_a_tiny_model(dtype):
    pixel_values = random_inputs(1, 160, 192, seed=65)
    with torch.inference_mode():
        reference = tiny_model(seed=65)(pixel_values, decoder_tile_size=0)
    model = place_model(tiny_model(seed=65), torch.device("cpu"), dtype)
    with torch.inference_mode():
        cpu, gpu = (model(pixel_values.to(dtype), decoder_tile_size=0, execution=plan) for plan in ("cpu", "gpu"))
    assert_plans_agree(cpu, gpu, reference, dtype)


# tiny_direct's half-precision run is in tests/test_mixed_precision.py; these two keep this file quick.
@pytest.fixture(scope="module", params=["tiny_cap", "tiny_pad32"])
def converted_case(request, tmp_path_factory):
    folder = convert_case(request.param, tmp_path_factory.mktemp(request.param))
    _, _, image, trimap = load_case(request.param)
    inputs = AutoImageProcessor.from_pretrained(folder)(images=image, trimaps=trimap, return_tensors="pt")
    return folder, inputs["pixel_values"]


@requires_fixtures
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_plans_agree_in_half_precision(converted_case, dtype):
    folder, pixel_values = converted_case
    reference_model = AutoModelForImageMatting.from_pretrained(folder).eval()
    model = AutoModelForImageMatting.from_pretrained(folder, dtype=dtype).eval()
    with torch.inference_mode():
        reference = reference_model(pixel_values)
        cpu, gpu = (model(pixel_values.to(dtype), execution=plan) for plan in ("cpu", "gpu"))
    assert_plans_agree(cpu, gpu, reference, dtype)
