"""Set how many tokens the routers send to global attention, for benchmarks and tests with random weights.

Trained MEMatte routers send about a quarter of the tokens of a typical photo to global attention. Random
routers send almost none or almost all, which would make a benchmark of random weights meaningless. This
knob shifts each router's final bias so that a chosen fraction of the tokens of a given input goes to
global attention, one router after the other (each router sees the output of the blocks before it).
"""

from __future__ import annotations

import torch

from .modeling_mematte import (
    TO_GLOBAL,
    TO_LTRM,
    MEMatteForImageMatting,
    MEMatteRoutedLayer,
    resolve_forward_settings,
)


@torch.no_grad()
def set_routed_fraction(model: MEMatteForImageMatting, pixel_values: torch.Tensor, fraction: float) -> list[float]:
    """Shift the routers' output biases so that about `fraction` of the tokens of `pixel_values` are routed
    to global attention by every router (without a cap). Returns the fraction each router then routes."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    routed_layers = [layer for layer in model.backbone.encoder.layer if isinstance(layer, MEMatteRoutedLayer)]
    uncapped = resolve_forward_settings(model.config, model.training, max_global_tokens=0)
    for index, layer in enumerate(routed_layers):
        log_probs = model.backbone(pixel_values, uncapped).router_log_probs[index]
        margin = (log_probs[..., TO_GLOBAL] - log_probs[..., TO_LTRM]).flatten().float()
        threshold = torch.quantile(margin, 1.0 - fraction)
        bias = layer.router.out_proj[-1].bias
        # log_softmax margins move one for one with the difference of the two output biases.
        bias[TO_GLOBAL] -= threshold / 2
        bias[TO_LTRM] += threshold / 2
    masks = model.backbone(pixel_values, uncapped).routing_masks
    return [float(mask.float().mean()) for mask in masks]
