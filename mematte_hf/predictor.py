"""The user-facing predictor: an image and a trimap in (paths, PIL images or arrays), a full-resolution alpha out.

```python
from mematte_hf.predictor import MEMattePredictor
predictor = MEMattePredictor.from_pretrained("path/or/hub-id", max_global_tokens="auto")
result = predictor.predict("photo.jpg", "trimap.png")
result.alpha            # (H, W) float32 in [0, 1], known regions forced as upstream does
result.rgba()           # (H, W, 4) uint8 cutout with estimated foreground colours
print(result.plan)      # the cap and decoder tile the memory budget allowed
```
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .devices import resolve_device
from .errors import InputError
from .image_io import DEFAULT_MAX_PIXELS, has_unknown_region, load_image, load_trimap
from .memory import (
    MemoryPlan,
    automatic_budget,
    measure_peak_memory,
    parse_bytes,
    plan_execution,
    plan_memory,
    uses_fused_attention,
)
from .weights import LoadedWeights, load_matting_model, weights_of

__all__ = ["MEMattePredictor", "MattingResult", "PreparedMatte", "resolve_device", "resolve_dtype"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class PreparedMatte:
    """An image and its trimap made ready for the model on the CPU (`MEMattePredictor.prepare`): decoded, checked,
    normalised and padded. `pixel_values` is None when the trimap has no unknown region (nothing to run)."""

    rgb: np.ndarray
    trimap: np.ndarray
    pixel_values: torch.Tensor | None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return self.trimap.shape[0], self.trimap.shape[1]


@dataclass
class MattingResult:
    """One matte at the input's full resolution, with what the model did to get it."""

    alpha: np.ndarray
    image: np.ndarray
    trimap: np.ndarray
    routing_masks: list[np.ndarray] = field(default_factory=list)
    model_ran: bool = True
    message: str = ""
    seconds: float = 0.0
    peak_memory_bytes: int | None = None
    plan: MemoryPlan | None = None
    max_global_tokens: int | None = None
    decoder_tile_size: int | None = None
    device: str = "cpu"
    #: (H, W, 3) float32 foreground colours: filled by `run(..., with_foreground=True)` or the first `foreground()`.
    foreground_colors: np.ndarray | None = field(default=None, repr=False)

    @property
    def routed_fraction(self) -> list[float]:
        """Per router, the fraction of the image's tokens sent to global attention."""
        return [float(mask.mean()) for mask in self.routing_masks]

    def foreground(self) -> np.ndarray:
        """(H, W, 3) float32 foreground colours in [0, 1], estimated once (so edges lose the old background)."""
        if self.foreground_colors is None:
            from .foreground import estimate_foreground

            self.foreground_colors = estimate_foreground(self.image, self.alpha, device=torch.device(self.device))
        return self.foreground_colors

    def rgba(self) -> np.ndarray:
        """(H, W, 4) uint8 cutout: estimated foreground colours with the alpha as the fourth channel."""
        from .foreground import rgba_cutout

        return rgba_cutout(self.foreground(), self.alpha)

    def composite(self, background: tuple[int, int, int] | str | np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8: the foreground over a colour (tuple or '#rrggbb') or an image."""
        from .foreground import composite

        return composite(self.foreground(), self.alpha, background)


class MEMattePredictor:
    """Holds a MEMatte model and its image processor; `predict` mattes one image at full resolution.

    Args:
        model: a `MEMatteForImageMatting`.
        processor: the checkpoint's `MEMatteImageProcessor` (default: the one MEMatte checkpoints ship with).
        device / dtype: where and in which precision to run (default: CUDA if available, float32). In float16 and
            bfloat16 the routers stay in float32 (see the README's precision table).
        max_global_tokens: the cap k: an int, `None` for the checkpoint's setting, or `"auto"` to pick it
            (and the decoder tile) from `memory_budget`, or from the free memory of the device.
        memory_budget: bytes or a string like `"2GB"`, used with `max_global_tokens="auto"`.
        decoder_tile_size: overrides the checkpoint's decoder tile (0 decodes the whole image at once).
        max_pixels: images and trimaps above this many pixels are refused before decoding.
        weights: which weights these are (`mematte_hf.weights.LoadedWeights`; default: read off the model), shown
            by `describe()`. A transformers ViTMatte checkpoint runs with routing off (every token global) and
            its decoder over the whole image, as ViTMatte computes it, unless `decoder_tile_size` asks for tiles.
        compile: `True` (or `torch.compile` options as a dict) compiles the fixed-shape blocks
            (`MEMatteForImageMatting.compile_blocks`): the same alphas in fewer kernels, after a compilation at the
            first image of each size. Not for ZeroGPU, which allows only ahead-of-time compilation.

    Settings reach the model as forward arguments, so one predictor serves concurrent callers with different
    settings. Device work (the memory plan, the forward and the foreground estimation it plans for) runs one call
    at a time, so that a plan made from the free memory is not invalidated by another call's forward.
    """

    def __init__(
        self,
        model,
        processor=None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_global_tokens: int | str | None = None,
        memory_budget: int | str | None = None,
        decoder_tile_size: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        compile: bool | dict = False,
        weights: LoadedWeights | None = None,
    ) -> None:
        from .convert import build_image_processor

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = place_model(model, self.device, self.dtype).eval()
        self.weights = weights or weights_of(model)
        if compile:  # opt-in: fewer, fused kernels after a compilation at the first image of each size
            self.model.compile_blocks(**(compile if isinstance(compile, dict) else {}))
        self.processor = as_mematte_processor(processor) if processor is not None else build_image_processor()
        check_cap(max_global_tokens)
        self.max_global_tokens = max_global_tokens
        self.memory_budget = parse_bytes(memory_budget) if memory_budget is not None else None
        self.decoder_tile_size = decoder_tile_size
        self.max_pixels = max_pixels
        self._device_lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, model_id_or_path: str | Path, **kwargs) -> MEMattePredictor:
        """Load a MEMatte folder or Hub id, or a transformers ViTMatte one (`model_type: vitmatte`, run by this
        engine with every token global), with its image processor, and wrap it."""
        model, processor, weights = load_matting_model(model_id_or_path)
        return cls(model, processor, weights=weights, **kwargs)

    def describe(self) -> str:
        """Which weights run and whether routing is on, in one line."""
        return self.weights.describe()

    @property
    def config(self):
        return self.model.config

    def plan(self, height: int, width: int, batch_size: int = 1, with_foreground: bool = False) -> MemoryPlan:
        """The cap and decoder tile that `max_global_tokens="auto"` uses for `batch_size` height x width images."""
        budget = self.memory_budget if self.memory_budget is not None else automatic_budget(self.device)
        element_size = torch.finfo(self.dtype).bits // 8
        return plan_memory(
            self.config,
            height,
            width,
            budget,
            element_size,
            uses_fused_attention(self.device),
            batch_size=batch_size,
            with_foreground=with_foreground,
            padded=self.processor.padded_size(height, width),
        )

    def prepare(self, image, trimap) -> PreparedMatte:
        """The CPU part of a matte: decode and check `image` and `trimap` (any grey levels: < 85 background,
        >= 170 foreground, between unknown), then normalise and pad them with the image processor."""
        rgb = load_image(image, max_pixels=self.max_pixels)
        trimap_array = load_trimap(trimap, expected_size=rgb.shape[:2], max_pixels=self.max_pixels)
        if not has_unknown_region(trimap_array):
            return PreparedMatte(rgb, trimap_array, None)
        pixel_values = self.processor(images=rgb, trimaps=trimap_array, return_tensors="pt")["pixel_values"]
        return PreparedMatte(rgb, trimap_array, pixel_values)

    def predict(
        self,
        image,
        trimap,
        max_global_tokens: int | str | None = None,
        decoder_tile_size: int | None = None,
        with_foreground: bool = False,
    ) -> MattingResult:
        """Matte `image` with `trimap` (any grey levels: < 85 background, >= 170 foreground, between unknown).

        Returns the alpha at the image's full resolution with the known regions forced (0 where the trimap is
        background, 1 where it is foreground), as the upstream inference does.
        """
        return self.run(self.prepare(image, trimap), max_global_tokens, decoder_tile_size, with_foreground)

    def predict_batch(
        self,
        images,
        trimaps,
        max_global_tokens: int | str | None = None,
        decoder_tile_size: int | None = None,
        with_foreground: bool = False,
    ) -> list[MattingResult]:
        """Matte images of one size in one batched forward (each gives what it gives alone)."""
        if len(images) != len(trimaps):
            raise InputError(f"got {len(images)} images but {len(trimaps)} trimaps")
        prepared = [self.prepare(image, trimap) for image, trimap in zip(images, trimaps, strict=True)]
        return self.run_batch(prepared, max_global_tokens, decoder_tile_size, with_foreground)

    def run(
        self,
        prepared: PreparedMatte,
        max_global_tokens: int | str | None = None,
        decoder_tile_size: int | None = None,
        with_foreground: bool = False,
    ) -> MattingResult:
        """The device part of a matte: the forward (and the foreground colours when asked) for a prepared input."""
        return self.run_batch([prepared], max_global_tokens, decoder_tile_size, with_foreground)[0]

    def run_batch(
        self,
        prepared: list[PreparedMatte],
        max_global_tokens: int | str | None = None,
        decoder_tile_size: int | None = None,
        with_foreground: bool = False,
    ) -> list[MattingResult]:
        """`run` for several prepared inputs of one size, in one batched forward."""
        check_cap(max_global_tokens)
        results: list[MattingResult | None] = [
            None if item.pixel_values is not None else self._trimap_result(item) for item in prepared
        ]
        to_run = [index for index, item in enumerate(prepared) if item.pixel_values is not None]
        if to_run:
            sizes = {prepared[index].size for index in to_run}
            if len(sizes) > 1:
                raise InputError(f"a batch must hold images of one size, got {sorted(sizes)}; run them one by one")
            height, width = sizes.pop()
            with self._device_lock:
                cap, tile, plan = self._settings(
                    height, width, len(to_run), with_foreground, max_global_tokens, decoder_tile_size
                )
                pixel_values = torch.cat([prepared[index].pixel_values for index in to_run])
                alphas, masks, seconds, peak = self._forward(pixel_values, cap, tile)
                for position, index in enumerate(to_run):
                    result = self._result(prepared[index], alphas[position], [m[position] for m in masks])
                    result.seconds, result.peak_memory_bytes, result.plan = seconds, peak, plan
                    result.max_global_tokens, result.decoder_tile_size = cap, tile
                    if with_foreground:
                        result.foreground()
                    results[index] = result
        return results

    def _trimap_result(self, prepared: PreparedMatte) -> MattingResult:
        return MattingResult(
            alpha=prepared.trimap.astype(np.float32) / 255.0,
            image=prepared.rgb,
            trimap=prepared.trimap,
            model_ran=False,
            message="the trimap has no unknown (grey) region, so the matte is the trimap itself; "
            "mark the uncertain edges grey to let the model refine them",
            device=str(self.device),
        )

    def _settings(self, height, width, batch_size, with_foreground, max_global_tokens, decoder_tile_size):
        """The cap and tile of one call: its arguments, else the predictor's, else the checkpoint's (None)."""
        cap = max_global_tokens if max_global_tokens is not None else self.max_global_tokens
        tile = decoder_tile_size if decoder_tile_size is not None else self.decoder_tile_size
        plan = None
        if cap == "auto":
            plan = self.plan(height, width, batch_size, with_foreground)
            cap = plan.max_global_tokens
            # A ViTMatte decodes the whole image: MEMatte's tiles would change its alphas.
            tile = plan.decoder_tile_size if tile is None and self.weights.routing else tile
        cap = self.config.max_global_tokens if cap is None else cap
        tile = self.config.decoder_tile_size if tile is None else tile
        return cap, tile, plan

    def execution(self, tile: int | None, batch_size: int = 1):
        """The execution plan of a forward: the CPU's own, or on a GPU one sized from the memory budget."""
        if self.device.type == "cpu":
            return plan_execution(self.config, self.device, 0, tile)
        budget = self.memory_budget if self.memory_budget is not None else automatic_budget(self.device)
        element_size = torch.finfo(self.dtype).bits // 8
        return plan_execution(self.config, self.device, budget, tile, element_size, batch_size)

    def _forward(self, pixel_values: torch.Tensor, cap: int | None, tile: int | None):
        execution = self.execution(tile, pixel_values.shape[0])
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        with measure_peak_memory(self.device) as peak, torch.inference_mode():
            start = time.perf_counter()
            output = self.model(pixel_values, max_global_tokens=cap, decoder_tile_size=tile, execution=execution)
            alphas = output.alphas.float().cpu()
            seconds = time.perf_counter() - start
        masks = [mask.cpu().numpy() for mask in output.routing_masks]
        return alphas, masks, seconds, peak.bytes

    def _result(self, prepared: PreparedMatte, alphas: torch.Tensor, masks: list[np.ndarray]) -> MattingResult:
        """Crop one image's padded alphas (1, Hp, Wp) and routing masks back to its size; force the known
        regions as upstream does."""
        height, width = prepared.size
        alpha = self.processor.post_process_alphas(alphas[None], [(height, width)])[0].numpy()
        trimap = prepared.trimap
        alpha = np.where(trimap == 0, 0.0, np.where(trimap == 255, 1.0, alpha)).astype(np.float32)
        patch = self.config.patch_size
        grid = (-(-height // patch), -(-width // patch))
        return MattingResult(
            alpha=alpha,
            image=prepared.rgb,
            trimap=trimap,
            routing_masks=[mask[: grid[0], : grid[1]] for mask in masks],
            device=str(self.device),
        )


def as_mematte_processor(processor):
    """A `MEMatteImageProcessor` with `processor`'s settings (a transformers `VitMatteImageProcessor` keeps its
    normalisation and gets upstream's padding: the model was trained with it)."""
    from .image_processing_mematte import MEMatteImageProcessor

    if isinstance(processor, MEMatteImageProcessor):
        return processor
    return MEMatteImageProcessor.from_dict(processor.to_dict())


def place_model(model, device: torch.device, dtype: torch.dtype):
    """Move `model` to `device` in `dtype`, except the modules it keeps in float32 (`_keep_in_fp32_modules_strict`:
    the routers), whose tensors go to float32 straight from their current values.

    Casting the whole model to half precision and the routers back would round their weights (by up to 4.7e-4 in
    bfloat16) and flip routing decisions; converting each tensor once to its own target gives the tensors that
    `from_pretrained(..., dtype=dtype)` loads, value for value.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float32 or not keep:
        return model.to(device=device, dtype=dtype)
    kept = {
        id(tensor)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in keep
        for tensor in itertools.chain(module.parameters(), module.buffers())
    }

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor.to(device)
        return tensor.to(device, torch.float32 if id(tensor) in kept else dtype)

    # `Module._apply` is what `Module.to` runs: every parameter and buffer converted once, in place in the module.
    return model._apply(convert)


def check_cap(max_global_tokens) -> None:
    if max_global_tokens in (None, "auto"):
        return
    if not isinstance(max_global_tokens, int) or isinstance(max_global_tokens, bool) or max_global_tokens < 0:
        raise InputError(f"max_global_tokens must be a positive integer, 0, None or 'auto', got {max_global_tokens!r}")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]
