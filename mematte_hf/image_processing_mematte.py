"""Image processor for MEMatte: transformers' ViTMatte preprocessing with the upstream normalisation and padding.

Upstream MEMatte normalises RGB with the ImageNet mean and standard deviation (transformers' bare
`VitMatteImageProcessor()` uses 0.5 / 0.5), appends the trimap scaled to [0, 1], and pads inside its model with
its own rule: when the height OR the width is not a multiple of 32, BOTH grow by `32 - side % 32`, so a side that
already is a multiple gains 32 pixels (640 x 1000 -> 672 x 1024); when both are multiples nothing is padded.
transformers' ViTMatte processor pads only the side that needs it, which changes every token's global attention
and hundreds of routing decisions. This processor reproduces the upstream rule (`padding_rule="upstream"`, the
default) and crops outputs back with `post_process_alphas`.

This file imports only numpy, torch and transformers because `save_pretrained` copies it next to the weights, so
that `trust_remote_code=True` loads the processor where `mematte_hf` is not installed. It builds on the Pillow
backend of transformers' ViTMatte processor, so it needs no torchvision.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ChannelDimension, get_image_size
from transformers.models.vitmatte.image_processing_pil_vitmatte import (
    VitMatteImageProcessorKwargs,
    VitMatteImageProcessorPil,
)

PADDING_RULES = ("upstream", "minimal")


class MEMatteImageProcessorKwargs(VitMatteImageProcessorKwargs, total=False):
    r"""
    padding_rule (`str`, *optional*, defaults to `self.padding_rule`):
        `"upstream"`: when either side is not a multiple of `size_divisor`, both sides grow by
        `size_divisor - side % size_divisor` (a side that already is a multiple gains a full `size_divisor`), as
        the upstream MEMatte model pads; `"minimal"`: each side is padded to the next multiple, as transformers'
        ViTMatte processor does.
    """

    padding_rule: str


def padded_size(height: int, width: int, size_divisor: int = 32, padding_rule: str = "upstream") -> tuple[int, int]:
    """The size an image of height x width is padded to.

    >>> padded_size(640, 1000)   # 640 is a multiple of 32, 1000 is not: both grow
    (672, 1024)
    >>> padded_size(640, 1024)   # both multiples: nothing is padded
    (640, 1024)
    >>> padded_size(640, 1000, padding_rule="minimal")
    (640, 1024)
    """
    if padding_rule not in PADDING_RULES:
        raise ValueError(f"padding_rule must be one of {PADDING_RULES}, got {padding_rule!r}")
    height_rest, width_rest = height % size_divisor, width % size_divisor
    if padding_rule == "minimal":
        return height + (-height % size_divisor), width + (-width % size_divisor)
    if height_rest == 0 and width_rest == 0:
        return height, width
    return height + size_divisor - height_rest, width + size_divisor - width_rest


class MEMatteImageProcessor(VitMatteImageProcessorPil):
    r"""
    Prepares an image and its trimap for [`MEMatteForImageMatting`] exactly as the upstream MEMatte code does.

    Args:
        do_rescale (`bool`, defaults to `True`): scale 8-bit values to [0, 1] (image and trimap).
        rescale_factor (`float`, defaults to `1 / 255`).
        do_normalize (`bool`, defaults to `True`): normalise the RGB channels (never the trimap).
        image_mean / image_std (`list[float]`, default the ImageNet mean (0.485, 0.456, 0.406) and std
            (0.229, 0.224, 0.225)): upstream's `pixel_mean` / `pixel_std`.
        do_pad (`bool`, defaults to `True`): zero-pad at the bottom and right.
        size_divisor (`int`, defaults to 32).
        padding_rule (`str`, defaults to `"upstream"`): see [`padded_size`].

    Returns `pixel_values` of shape `(batch_size, 4, padded_height, padded_width)`: normalised RGB and the trimap.
    `post_process_alphas` crops the model's alphas back to each image's size.
    """

    image_mean = list(IMAGENET_DEFAULT_MEAN)
    image_std = list(IMAGENET_DEFAULT_STD)
    padding_rule = "upstream"
    valid_kwargs = MEMatteImageProcessorKwargs
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs) -> None:
        # Folders written by transformers' ViTMatte processor carry its class name; it says nothing about padding.
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        if self.padding_rule not in PADDING_RULES:
            raise ValueError(f"padding_rule must be one of {PADDING_RULES}, got {self.padding_rule!r}")

    def pad_image(self, image: np.ndarray, size_divisor: int = 32, padding_rule: str | None = None) -> np.ndarray:
        """Zero-pad a channels-first image at the bottom and right by `padding_rule` (default: the processor's)."""
        height, width = get_image_size(image, channel_dim=ChannelDimension.FIRST)
        target_height, target_width = padded_size(height, width, size_divisor, padding_rule or self.padding_rule)
        if (target_height, target_width) == (height, width):
            return image
        return np.pad(image, ((0, 0), (0, target_height - height), (0, target_width - width)))

    def _preprocess(
        self, images, trimaps, do_pad, size_divisor, return_tensors=None, padding_rule: str | None = None, **kwargs
    ) -> BatchFeature:
        # The parent pads through `self.pad_image(image, size_divisor)`, which cannot see a per-call rule: it
        # prepares unpadded arrays, they are padded here by the call's rule, and the batch is built once, in the
        # `return_tensors` type asked for.
        features = super()._preprocess(
            images, trimaps, do_pad=False, size_divisor=size_divisor, return_tensors=None, **kwargs
        )
        pixel_values = features["pixel_values"]
        if do_pad:
            rule = padding_rule or self.padding_rule
            pixel_values = [self.pad_image(image, size_divisor, rule) for image in pixel_values]
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size `pixel_values` has for a height x width image."""
        if not self.do_pad:
            return height, width
        return padded_size(height, width, self.size_divisor, self.padding_rule)

    @staticmethod
    def post_process_alphas(alphas: torch.Tensor, target_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Crop the model's padded alphas `(batch_size, 1, padded_height, padded_width)` back to each image's
        `(height, width)`; returns one `(height, width)` tensor per image."""
        if len(target_sizes) != alphas.shape[0]:
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {alphas.shape[0]} alphas")
        return [alpha[0, :height, :width] for alpha, (height, width) in zip(alphas, target_sizes, strict=True)]


__all__ = ["MEMatteImageProcessor", "padded_size", "PADDING_RULES"]
