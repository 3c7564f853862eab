"""Per-call settings are forward arguments defaulting to the config; nothing writes to the config; the lean
inference path is chosen by autograd, so eval mode with gradients works."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from mematte_hf.modeling_mematte import ExecutionPlan
from mematte_hf.predictor import MEMattePredictor
from tests.utils import random_inputs, save_tiny_checkpoint, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=51)


def _run(model, pixel_values, **settings):
    with torch.inference_mode():
        return model(pixel_values, **settings)


@pytest.mark.parametrize(
    "settings",
    [{"max_global_tokens": 3}, {"decoder_tile_size": 64}, {"routing_mode": "global"}, {"routing_mode": "light"}],
    ids=str,
)
def test_forward_argument_equals_the_config_setting_and_leaves_the_config_alone(model, settings):
    pixel_values = random_inputs(2, 96, 128, seed=51)
    before = model.config.to_dict()
    by_argument = _run(model, pixel_values, **settings)
    assert model.config.to_dict() == before
    configured = copy.deepcopy(model)
    for name, value in settings.items():
        setattr(configured.config, name, value)
    by_config = _run(configured, pixel_values)
    torch.testing.assert_close(by_argument.alphas, by_config.alphas, atol=1e-6, rtol=0)
    for mask, expected in zip(by_argument.routing_masks, by_config.routing_masks, strict=True):
        assert torch.equal(mask, expected)
    default = _run(model, pixel_values)
    changed = (by_argument.alphas - default.alphas).abs().max() > 1e-6 or any(
        not torch.equal(a, b) for a, b in zip(by_argument.routing_masks, default.routing_masks, strict=True)
    )
    assert changed, f"{settings} changed nothing"


def test_unknown_and_invalid_arguments_raise_clear_errors(model):
    pixel_values = random_inputs(1, 64, 64)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_tokens'"):
        model(pixel_values, max_tokens=3)
    with pytest.raises(ValueError, match="routing_mode"):
        model(pixel_values, routing_mode="fast")
    with pytest.raises(ValueError, match="max_global_tokens"):
        model(pixel_values, max_global_tokens=-1)
    with pytest.raises(ValueError, match="decoder_tile_size"):
        model(pixel_values, decoder_tile_size=100)


def test_two_threads_with_different_caps_get_what_each_gets_alone(tmp_path):
    save_tiny_checkpoint(tmp_path, seed=52)
    predictor = MEMattePredictor.from_pretrained(tmp_path, device="cpu")
    rng = np.random.default_rng(52)
    image = rng.integers(0, 256, (160, 192, 3), dtype=np.uint8)
    trimap = np.full((160, 192), 128, np.uint8)
    alone = {cap: predictor.predict(image, trimap, max_global_tokens=cap) for cap in (2, 0)}
    assert np.abs(alone[2].alpha - alone[0].alpha).max() > 1e-4  # the caps really differ
    results: dict[int, list] = {2: [], 0: []}

    def worker(cap: int) -> None:
        for _ in range(4):
            results[cap].append(predictor.predict(image, trimap, max_global_tokens=cap))

    threads = [threading.Thread(target=worker, args=(cap,)) for cap in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for cap, outputs in results.items():
        assert len(outputs) == 4
        for result in outputs:
            np.testing.assert_array_equal(result.alpha, alone[cap].alpha)
            assert result.max_global_tokens == cap
    assert predictor.config.max_global_tokens == 18500


def _alpha_loss(model, pixel_values, target, execution=None):
    alphas = model(pixel_values, decoder_tile_size=64, execution=execution).alphas
    return (alphas - target).square().mean(), alphas


def test_eval_mode_gradients_through_the_differentiable_path():
    model = tiny_model(seed=53).double().eval()
    banded = ExecutionPlan(band_tokens=6 * 14, tile_batch=1)  # the lean path really runs in bands
    pixel_values = random_inputs(1, 448, 96, seed=53).double()  # 28 x 6 tokens: two 14-row bands
    target = torch.rand(1, 1, 448, 96, generator=torch.Generator().manual_seed(53), dtype=torch.float64)
    with torch.no_grad():
        lean = model(pixel_values, decoder_tile_size=64, execution=banded)
    loss, alphas = _alpha_loss(model, pixel_values, target)
    torch.testing.assert_close(alphas, lean.alphas, atol=1e-9, rtol=0)  # same output with gradients on
    loss.backward()
    groups = {"router": ".router.", "ltrm": ".ltrm.", "decoder": "decoder.", "attention": ".attention."}
    for group, marker in groups.items():
        grads = [p.grad for name, p in model.named_parameters() if marker in name]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), group
        assert sum(g.abs().sum() for g in grads) > 0, group
    # The autograd gradients equal central differences of the lean, banded inference path, for parameters whose
    # output reaches no later router (a router's straight-through gradient is an estimate, not a derivative).
    for name in ("backbone.encoder.layer.3.ltrm.fc2.weight", "decoder.fusion_blocks.0.conv.conv.weight"):
        parameter = dict(model.named_parameters())[name]
        index = (0,) * parameter.ndim
        step = 1e-6
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                parameter[index] += sign * step
                losses.append(_alpha_loss(model, pixel_values, target, banded)[0])
                parameter[index] -= sign * step
        numeric = (losses[0] - losses[1]) / (2 * step)
        torch.testing.assert_close(parameter.grad[index], numeric, atol=1e-7, rtol=1e-4)
