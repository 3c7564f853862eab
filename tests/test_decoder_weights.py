"""The lean inference decoder folds the decoder's current weights, however they were changed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mematte_hf import MEMatteForImageMatting
from tests.utils import random_inputs, randomize_weights, tiny_model


def decoder_inputs(model: MEMatteForImageMatting) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone-sized features and the input of a 96 x 128 image, in the decoder's dtype."""
    dtype = model.decoder.matting_head.matting_convs[0].weight.dtype
    generator = torch.Generator().manual_seed(70)
    features = torch.randn(1, model.config.hidden_size, 6, 8, generator=generator)
    return features.to(dtype), random_inputs(1, 96, 128, seed=70).to(dtype)


def lean_and_reference(model: MEMatteForImageMatting) -> tuple[torch.Tensor, torch.Tensor]:
    """The lean inference decoder's alphas and those of transformers' decoder module (eval mode)."""
    features, pixel_values = decoder_inputs(model)
    with torch.inference_mode():
        return model.decode(features, pixel_values, decoder_tile_size=0), model.decoder(features, pixel_values)


def write_through_data(model: MEMatteForImageMatting) -> None:
    model.decoder.fusion_blocks[0].conv.conv.weight.data.mul_(3)  # EMA updates and weight surgery write like this


def load_other_weights(model: MEMatteForImageMatting) -> None:
    other = randomize_weights(MEMatteForImageMatting(model.config), seed=72)
    model.load_state_dict(other.state_dict())


def optimizer_step(model: MEMatteForImageMatting) -> None:
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=0.05)
    model.train()  # the batch norms' running statistics move too
    features, pixel_values = decoder_inputs(model)
    model.decoder(features, pixel_values).mean().backward()
    optimizer.step()
    model.eval()


def cast_to_float64(model: MEMatteForImageMatting) -> None:
    model.to(torch.float64)


@pytest.mark.parametrize("change", [write_through_data, load_other_weights, optimizer_step, cast_to_float64])
def test_lean_decoder_follows_every_weight_change(change: Callable[[MEMatteForImageMatting], None]):
    model = tiny_model(seed=71)
    lean_before, reference_before = lean_and_reference(model)
    torch.testing.assert_close(lean_before, reference_before, atol=1e-5, rtol=0)
    change(model)
    lean, reference = lean_and_reference(model)
    if change is not cast_to_float64:  # the change moved the output: a stale fold would show
        assert (reference - reference_before).abs().max() > 1e-3
    torch.testing.assert_close(lean, reference, atol=1e-5, rtol=0)
