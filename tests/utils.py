"""Tiny MEMatte models with non-trivial random weights, for fast tests."""

from __future__ import annotations

import torch
from torch import nn

from mematte_hf import MEMatteConfig, MEMatteForImageMatting
from mematte_hf.calibration import set_routed_fraction


def tiny_config(**overrides) -> MEMatteConfig:
    """A 4-block MEMatte (2 window blocks, 2 routed global blocks) that runs in milliseconds."""
    fields = {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "window_block_indices": [0, 2],
        "residual_block_indices": [1, 3],
        "convstream_hidden_sizes": [8, 16, 24],
        "fusion_hidden_sizes": [32, 16, 16, 8],
    }
    fields.update(overrides)
    return MEMatteConfig(**fields)


@torch.no_grad()
def randomize_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and batch-norm statistic a non-trivial value (default initialisation zeroes some
    layers and makes the decoder output a constant, which would hide differences)."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        if name.endswith("weight") and parameter.ndim == 1:  # norms: around one
            parameter.copy_(1.0 + 0.1 * noise)
        else:
            fan_in = parameter[0].numel() if parameter.ndim > 1 else parameter.numel()
            parameter.copy_(noise / max(fan_in, 1) ** 0.5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model


def tiny_model(seed: int = 0, routed_fraction: float | None = 0.4, **overrides) -> MEMatteForImageMatting:
    """A tiny model with random weights whose routers send about `routed_fraction` of the tokens of a random
    input to global attention (random routers would send almost none or almost all)."""
    model = randomize_weights(MEMatteForImageMatting(tiny_config(**overrides)), seed).eval()
    if routed_fraction is not None:
        set_routed_fraction(model, random_inputs(2, 128, 128, seed=seed + 100), routed_fraction)
    return model


def save_tiny_checkpoint(folder, seed: int = 0, **overrides) -> MEMatteForImageMatting:
    """Save a tiny random MEMatte with the image processor MEMatte checkpoints ship with; return the model."""
    from mematte_hf.convert import build_image_processor

    model = tiny_model(seed=seed, **overrides)
    model.save_pretrained(folder)
    build_image_processor().save_pretrained(folder)
    return model


def random_inputs(batch_size: int = 1, height: int = 96, width: int = 128, seed: int = 0) -> torch.Tensor:
    """Normalised RGB plus a trimap channel in {0, 0.5, 1}, as the processor prepares them."""
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch_size, 3, height, width, generator=generator)
    trimap = torch.randint(0, 3, (batch_size, 1, height, width), generator=generator).float() / 2
    return torch.cat([rgb, trimap], dim=1)
