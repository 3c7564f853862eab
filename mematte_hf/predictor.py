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

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, HubError, InputError
from .image_io import DEFAULT_MAX_PIXELS, has_unknown_region, load_image, load_trimap
from .memory import (
    MemoryPlan,
    automatic_budget,
    measure_peak_memory,
    parse_bytes,
    plan_memory,
    uses_fused_attention,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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

    @property
    def routed_fraction(self) -> list[float]:
        """Per router, the fraction of the image's tokens sent to global attention."""
        return [float(mask.mean()) for mask in self.routing_masks]

    @cached_property
    def _foreground(self) -> np.ndarray:
        from .foreground import estimate_foreground

        return estimate_foreground(self.image, self.alpha, device=torch.device(self.device))

    def foreground(self) -> np.ndarray:
        """(H, W, 3) float32 foreground colours in [0, 1], estimated once (so edges lose the old background)."""
        return self._foreground

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
        processor: the checkpoint's `VitMatteImageProcessor` (default: the one MEMatte checkpoints ship with).
        device / dtype: where and in which precision to run (default: CUDA if available, float32).
        max_global_tokens: the cap k: an int, `None` for the checkpoint's setting, or `"auto"` to pick it
            (and the decoder tile) from `memory_budget`, or from the free memory of the device.
        memory_budget: bytes or a string like `"2GB"`, used with `max_global_tokens="auto"`.
        decoder_tile_size: overrides the checkpoint's decoder tile (0 decodes the whole image at once).
        max_pixels: images and trimaps above this many pixels are refused before decoding.
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
    ) -> None:
        from .convert import build_image_processor

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.processor = processor if processor is not None else build_image_processor()
        valid_cap = isinstance(max_global_tokens, int) and max_global_tokens >= 0
        if max_global_tokens not in (None, "auto") and not valid_cap:
            raise InputError(
                f"max_global_tokens must be a positive integer, 0, None or 'auto', got {max_global_tokens!r}"
            )
        self.max_global_tokens = max_global_tokens
        self.memory_budget = parse_bytes(memory_budget) if memory_budget is not None else None
        self.decoder_tile_size = decoder_tile_size
        self.max_pixels = max_pixels
        # The model's cap and tile live on its config: one forward at a time keeps concurrent callers apart.
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, model_id_or_path: str | Path, **kwargs) -> MEMattePredictor:
        """Load a MEMatte folder or Hub id (model and image processor) and wrap it."""
        from transformers import AutoImageProcessor, AutoModelForImageMatting

        # Importing this package registered "mematte" with the Auto classes.
        model_id_or_path = str(model_id_or_path)
        try:
            model = AutoModelForImageMatting.from_pretrained(model_id_or_path)
        except OSError as error:
            raise _loading_error(model_id_or_path, error) from None
        if type(model).__name__ != "MEMatteForImageMatting":
            raise CheckpointError(f"{model_id_or_path} holds a {type(model).__name__}, not a MEMatte model")
        try:
            processor = AutoImageProcessor.from_pretrained(model_id_or_path)
        except OSError:
            processor = None  # a folder without preprocessor_config.json: use the MEMatte default
        return cls(model, processor, **kwargs)

    @property
    def config(self):
        return self.model.config

    def plan(self, height: int, width: int) -> MemoryPlan:
        """The cap and decoder tile that `max_global_tokens="auto"` uses for a height x width image."""
        budget = self.memory_budget if self.memory_budget is not None else automatic_budget(self.device)
        element_size = torch.finfo(self.dtype).bits // 8
        return plan_memory(self.config, height, width, budget, element_size, uses_fused_attention(self.device))

    def predict(
        self,
        image,
        trimap,
        max_global_tokens: int | str | None = None,
        decoder_tile_size: int | None = None,
    ) -> MattingResult:
        """Matte `image` with `trimap` (any grey levels: < 85 background, >= 170 foreground, between unknown).

        Returns the alpha at the image's full resolution with the known regions forced (0 where the trimap is
        background, 1 where it is foreground), as the upstream inference does.
        """
        rgb = load_image(image, max_pixels=self.max_pixels)
        trimap_array = load_trimap(trimap, expected_size=rgb.shape[:2], max_pixels=self.max_pixels)
        if not has_unknown_region(trimap_array):
            return MattingResult(
                alpha=trimap_array.astype(np.float32) / 255.0,
                image=rgb,
                trimap=trimap_array,
                model_ran=False,
                message="the trimap has no unknown (grey) region, so the matte is the trimap itself; "
                "mark the uncertain edges grey to let the model refine them",
                device=str(self.device),
            )
        cap, tile, plan = self._settings(rgb.shape[0], rgb.shape[1], max_global_tokens, decoder_tile_size)
        pixel_values = self.processor(images=rgb, trimaps=trimap_array, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        with self._lock:
            output, seconds, peak = self._forward(pixel_values, cap, tile)
        return self._result(rgb, trimap_array, output, seconds, peak, plan, cap, tile)

    def _settings(self, height: int, width: int, max_global_tokens, decoder_tile_size):
        cap = max_global_tokens if max_global_tokens is not None else self.max_global_tokens
        tile = decoder_tile_size if decoder_tile_size is not None else self.decoder_tile_size
        plan = None
        if cap == "auto":
            plan = self.plan(height, width)
            cap = plan.max_global_tokens
            tile = plan.decoder_tile_size if tile is None else tile
        if cap is None:
            cap = self.config.max_global_tokens
        if tile is None:
            tile = self.config.decoder_tile_size
        return cap, tile, plan

    def _forward(self, pixel_values: torch.Tensor, cap: int | None, tile: int | None):
        config = self.config
        saved = config.max_global_tokens, config.decoder_tile_size
        config.max_global_tokens, config.decoder_tile_size = cap, tile
        try:
            with measure_peak_memory(self.device) as peak, torch.inference_mode():
                start = time.perf_counter()
                output = self.model(pixel_values)
                alphas = output.alphas.float().cpu()
                seconds = time.perf_counter() - start
        finally:
            config.max_global_tokens, config.decoder_tile_size = saved
        masks = [mask[0].cpu().numpy() for mask in output.routing_masks]
        return (alphas, masks), seconds, peak.bytes

    def _result(self, rgb, trimap_array, output, seconds, peak, plan, cap, tile) -> MattingResult:
        alphas, masks = output
        height, width = trimap_array.shape
        alpha = alphas[0, 0, :height, :width].numpy()
        alpha = np.where(trimap_array == 0, 0.0, np.where(trimap_array == 255, 1.0, alpha)).astype(np.float32)
        patch = self.config.patch_size
        grid = (-(-height // patch), -(-width // patch))
        return MattingResult(
            alpha=alpha,
            image=rgb,
            trimap=trimap_array,
            routing_masks=[mask[: grid[0], : grid[1]] for mask in masks],
            seconds=seconds,
            peak_memory_bytes=peak,
            plan=plan,
            max_global_tokens=cap,
            decoder_tile_size=tile,
            device=str(self.device),
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA device is available; use --device cpu")
    return device


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


def _loading_error(model_id_or_path: str, error: OSError) -> Exception:
    if Path(model_id_or_path).exists():
        return CheckpointError(f"{model_id_or_path} is not a MEMatte folder (no config.json or weights): {error}")
    looks_local = model_id_or_path.startswith((".", "/", "~")) or model_id_or_path.count("/") > 1
    if looks_local:
        return InputError(f"model folder {model_id_or_path} does not exist; pass a folder or a Hub id")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return HubError(
        f"could not load the model {model_id_or_path!r} from the Hugging Face Hub ({first}); check the id and the "
        "network, or pass a local folder made by `mematte convert`"
    )
