"""Clicks on a photo -> object mask -> trimap, with SAM, SAM-HQ or SAM 2.

:class:`ClickSegmenter` follows segment-anything's ``SamPredictor``: :meth:`~ClickSegmenter.set_image` runs the
heavy image encoder once, then every :meth:`~ClickSegmenter.predict_mask` call (one per click) only runs the
light prompt encoder and mask decoder on the cached embedding. Embeddings are cached by a hash of the pixels,
so setting the same image again (a later click in the same Gradio session) costs a hash, not an encoder pass.

Backends:

* ``transformers`` (default): ``SamModel``, ``SamHQModel`` or ``Sam2Model``, picked from the checkpoint's
  ``config.model_type`` (``sam``, ``sam_hq``, ``sam2``).
* ``segment_anything``: Meta's ``segment_anything.SamPredictor`` on an original ``.pth`` checkpoint. Optional:
  that package needs torchvision, which this project does not depend on.

Coordinates are always in the original image's pixels: ``x`` is the column, ``y`` the row.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import is_torchvision_available, logging

from .devices import resolve_device
from .errors import CheckpointError, HubError, InputError
from .trimap import mask_to_trimap

__all__ = ["BACKENDS", "MODEL_TYPES", "ClickSegmenter", "ImageEmbedding", "MaskPrediction", "MissingBackendError"]

logger = logging.get_logger(__name__)

#: Values of ``ClickSegmenter.from_pretrained(backend=...)``.
BACKENDS = ("auto", "transformers", "segment_anything")
#: ``config.model_type`` of the transformers checkpoints the ``transformers`` backend runs, with their class.
MODEL_TYPES = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model"}

Points = Sequence[Sequence[float]] | np.ndarray
Box = Sequence[float] | np.ndarray

_META_SUFFIXES = (".pth", ".pt")
_META_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")
_INSTALL_META = (
    "install segment-anything and torchvision to use this backend "
    "(pip install segment-anything torchvision), or use a Hugging Face SAM checkpoint such as "
    "facebook/sam-vit-base with backend='transformers'"
)


class MissingBackendError(InputError, ImportError):
    """The chosen backend needs a package that is not installed (catchable as InputError or ImportError)."""


@dataclass(eq=False)
class MaskPrediction:
    """The mask for one set of prompts, at the resolution of the image given to ``set_image``.

    Attributes:
        mask: (H, W) bool, the candidate with the highest predicted IoU.
        score: its predicted IoU.
        masks: (N, H, W) bool, every candidate the model returned (3 with ``multimask=True``, else 1).
        scores: (N,) float32, their predicted IoUs.
        index: position of ``mask`` in ``masks``.
    """

    mask: np.ndarray
    score: float
    masks: np.ndarray
    scores: np.ndarray
    index: int


@dataclass
class _Prompt:
    """Validated prompts in original-image pixels: points (N, 2) x/y, labels (N,), box (4,) x0 y0 x1 y1."""

    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None


@dataclass
class ImageEmbedding:
    """What the image encoder produced for one image, plus what decoding needs to map sizes.

    It can be moved between devices and pickled, so that the encoder runs once per photo on a GPU and the
    clicks decode from a CPU copy (what the Space does on ZeroGPU, where the GPU is attached only for a call).
    """

    original_size: tuple[int, int]  # (H, W) of the image given to set_image
    features: Any  # what the model's forward takes as ``image_embeddings``
    extra: dict[str, Any] = field(default_factory=dict)  # other forward inputs (SAM-HQ's ViT features)
    resized_size: tuple[int, int] | None = None  # (H, W) the image was resized to before padding

    def to(self, device: str | torch.device) -> ImageEmbedding:
        """A copy with every tensor on ``device`` (the same object when they are all there already)."""
        features, extra = _move(self.features, device), _move(self.extra, device)
        return ImageEmbedding(self.original_size, features, extra, self.resized_size)

    @property
    def nbytes(self) -> int:
        """Bytes held by its tensors."""
        return sum(tensor.numel() * tensor.element_size() for tensor in _tensors(self.features, self.extra))


def _move(value: Any, device: str | torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _move(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_move(item, device) for item in value)
    return value


def _tensors(*values: Any) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            yield from _tensors(*value.values())
        elif isinstance(value, (list, tuple)):
            yield from _tensors(*value)


class ClickSegmenter:
    """Segment an object from clicks (and/or a box) and turn the mask into a trimap for matting.

    Build it with :meth:`from_pretrained`, or directly from a loaded model::

        segmenter = ClickSegmenter.from_pretrained("facebook/sam-vit-base")
        segmenter.set_image(image)  # (H, W, 3) uint8 RGB; runs the image encoder once
        mask, trimap = segmenter.predict_trimap(points=[(420, 310)], labels=[1])

    Args:
        model: a transformers ``SamModel`` / ``SamHQModel`` / ``Sam2Model``, or a ``segment_anything`` ``Sam``.
        processor: the model's processor (``SamProcessor``, ``SamHQProcessor``, ``Sam2Processor``). ``None``
            builds the standard one from the model config, without downloading anything.
        device: where to run; ``None`` keeps the model where it is.
        dtype: ``torch.float16`` / ``"bfloat16"`` / ...; ``None`` keeps the model's dtype.
        cache_size: how many image embeddings to keep (least recently set is dropped first).
    """

    def __init__(
        self,
        model: Any,
        processor: Any | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        cache_size: int = 4,
    ) -> None:
        if cache_size < 1:
            raise InputError(f"cache_size must be at least 1, got {cache_size}")
        self._backend = _make_backend(model, processor, device, _as_dtype(dtype))
        self._cache: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._cache_size = cache_size
        self._current: ImageEmbedding | None = None
        # set_image + predict from concurrent requests (Gradio threads) must not interleave.
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        backend: str = "auto",
        sam_model_type: str | None = None,
        **hub_kwargs: Any,
    ) -> ClickSegmenter:
        """Load a segmenter from a Hub id or a local folder (or a Meta ``.pth`` file).

        Args:
            model_id_or_path: Hub model id (``facebook/sam-vit-base``, ``syscv-community/sam-hq-vit-base``,
                ``facebook/sam2.1-hiera-tiny``), a folder written by ``save_pretrained``, or for the
                ``segment_anything`` backend a Meta checkpoint file such as ``sam_vit_h_4b8939.pth``.
            device: ``None`` picks CUDA when available, else CPU.
            dtype: ``None`` keeps the checkpoint's dtype.
            backend: ``"transformers"``, ``"segment_anything"``, or ``"auto"`` (a ``.pth`` / ``.pt`` file goes
                to segment_anything, anything else to transformers).
            sam_model_type: segment_anything only: ``vit_h``, ``vit_l`` or ``vit_b``; ``None`` reads it from
                the file name.
            hub_kwargs: passed to every transformers ``from_pretrained`` (``revision``, ``token``,
                ``cache_dir``, ``local_files_only``, ...).
        """
        path = os.fspath(model_id_or_path)
        device = resolve_device(device)  # a clear error for a device this machine lacks, before loading
        if _resolve_backend(backend, path) == "segment_anything":
            model = _load_segment_anything(path, sam_model_type)
            return cls(model, device=device, dtype=dtype)
        model, processor = _load_transformers(path, _as_dtype(dtype), hub_kwargs)
        return cls(model, processor, device=device, dtype=dtype)

    @property
    def model_type(self) -> str:
        """``sam``, ``sam_hq``, ``sam2`` or ``segment_anything``."""
        return self._backend.model_type

    @property
    def model(self) -> Any:
        return self._backend.model

    @property
    def processor(self) -> Any | None:
        """The processor preparing images and upscaling masks (``None`` for segment_anything)."""
        return getattr(self._backend, "processor", None)

    @property
    def is_image_set(self) -> bool:
        return self._current is not None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) of the current image, or ``None`` before :meth:`set_image`."""
        return None if self._current is None else self._current.original_size

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Run the image encoder on an (H, W, 3) uint8 RGB image and return its embedding (no caching).

        Keep it (``embedding.to("cpu")`` to free the GPU) and pass it to :meth:`predict_mask` with each click:
        the encoder, by far the heaviest part of SAM, then runs once per photo.
        """
        image = _check_image(image)
        with self._lock:
            return self._backend.embed(image)

    def set_image(self, image: np.ndarray) -> None:
        """Compute (or fetch from the cache) the embedding of an (H, W, 3) uint8 RGB image."""
        image = _check_image(image)
        key = _fingerprint(image)
        with self._lock:
            embedding = self._cache.get(key)
            if embedding is None:
                embedding = self._backend.embed(image)
                self._cache[key] = embedding
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            self._current = embedding

    def reset_image(self) -> None:
        """Forget the current image and every cached embedding."""
        with self._lock:
            self._current = None
            self._cache.clear()

    def predict_mask(
        self,
        points: Points | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Box | None = None,
        multimask: bool = True,
        image: np.ndarray | None = None,
        embedding: ImageEmbedding | None = None,
    ) -> MaskPrediction:
        """Predict the object mask for clicks and/or a box on the current image.

        Args:
            points: ``[(x, y), ...]`` clicks in original-image pixels (x = column, y = row).
            labels: one per point: 1 = on the object, 0 = not on it (background). ``None``: all 1.
            box: ``(x0, y0, x1, y1)`` around the object, in original-image pixels.
            multimask: ask for 3 candidates and keep the one with the best predicted IoU (what SAM's authors
                advise for a single, ambiguous click); ``False`` asks for a single mask, which they advise
                once several points or a box make the prompt unambiguous.
            image: if given, :meth:`set_image` it first (free when cached); the two steps then run under one
                lock, so concurrent requests sharing a segmenter cannot swap images in between.
            embedding: decode from this embedding (from :meth:`embed`, on any device) instead of the current
                image; the current image and the cache are left as they are.
        """
        if image is not None and embedding is not None:
            raise InputError("give either an image or its embedding, not both")
        with self._lock:
            if embedding is not None:
                embedding = embedding.to(self._backend.device)
            else:
                if image is not None:
                    self.set_image(image)
                embedding = self._require_image()
            prompt = _check_prompt(points, labels, box, embedding.original_size)
            masks, scores = self._backend.decode(embedding, prompt, bool(multimask))
        index = int(np.argmax(scores))
        return MaskPrediction(masks[index], float(scores[index]), masks, scores, index)

    def predict_trimap(
        self,
        points: Points | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Box | None = None,
        band_width: int | None = None,
        multimask: bool = True,
        image: np.ndarray | None = None,
        embedding: ImageEmbedding | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_mask`, then :func:`~mematte_hf.trimap.mask_to_trimap` on the best mask.

        Returns:
            ``(mask, trimap)``: (H, W) bool and (H, W) uint8 with values {0, 128, 255}. An empty or full mask
            gives a trimap without unknown region; check before matting.
        """
        prediction = self.predict_mask(points, labels, box, multimask, image, embedding)
        return prediction.mask, mask_to_trimap(prediction.mask, band_width)

    def _require_image(self) -> ImageEmbedding:
        if self._current is None:
            raise InputError("no image set: call set_image(image) before predicting a mask")
        return self._current


# ----------------------------------------------------------------------------------------------------------
# transformers backends


class _SamBackend:
    """transformers ``SamModel``: embeddings from ``get_image_embeddings``, passed back as ``image_embeddings``."""

    model_type = "sam"

    def __init__(self, model: Any, processor: Any | None, device: Any, dtype: torch.dtype | None) -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        self.processor = processor if processor is not None else self._default_processor(model.config)

    @property
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.model.parameters())
        return parameter.device, parameter.dtype

    @property
    def device(self) -> torch.device:
        return self._device_dtype[0]

    @staticmethod
    def _default_processor(config: Any) -> Any:
        from transformers import SamProcessor

        return SamProcessor(_sam_image_processor(config.vision_config.image_size))

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> ImageEmbedding:
        inputs = self.processor(images=image, return_tensors="pt")
        device, dtype = self._device_dtype
        embedding = ImageEmbedding(image.shape[:2], features=None, resized_size=self._resized_size(inputs))
        self._encode(inputs["pixel_values"].to(device=device, dtype=dtype), embedding)
        return embedding

    def _resized_size(self, inputs: dict[str, Any]) -> tuple[int, int]:
        """(H, W) of the image inside the model input, before padding: what prompts are scaled to."""
        height, width = inputs["reshaped_input_sizes"][0]
        return int(height), int(width)

    def _encode(self, pixel_values: torch.Tensor, embedding: ImageEmbedding) -> None:
        embedding.features = self.model.get_image_embeddings(pixel_values)

    @torch.inference_mode()
    def decode(self, embedding: ImageEmbedding, prompt: _Prompt, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.model(
            image_embeddings=embedding.features,
            **embedding.extra,
            **self._prompt_tensors(embedding, prompt),
            multimask_output=multimask,
        )
        # Upscale where the model runs (fast on GPU); only the boolean masks travel back.
        masks = self._upscale(outputs.pred_masks.float(), embedding)[0][0]
        return masks.cpu().numpy(), outputs.iou_scores[0, 0].float().cpu().numpy()

    def _prompt_tensors(self, embedding: ImageEmbedding, prompt: _Prompt) -> dict[str, torch.Tensor]:
        """Prompts in the coordinates of the resized model input, nested (image, object, point, xy)."""
        device = self._device_dtype[0]
        height, width = embedding.original_size
        resized_height, resized_width = embedding.resized_size
        # The same scaling SamProcessor / Sam2Processor apply to prompts; done here so that a click does not
        # run the image through the processor again.
        scale = np.array([resized_width / width, resized_height / height])
        tensors = {}
        if prompt.points is not None:
            points = torch.as_tensor(prompt.points * scale, dtype=torch.float32, device=device)
            tensors["input_points"] = points[None, None]
            tensors["input_labels"] = torch.as_tensor(prompt.labels, device=device)[None, None]
        if prompt.box is not None:
            box = prompt.box * np.tile(scale, 2)
            tensors["input_boxes"] = torch.as_tensor(box, dtype=torch.float32, device=device)[None, None]
        return tensors

    def _upscale(self, low_res: torch.Tensor, embedding: ImageEmbedding) -> list[torch.Tensor]:
        return self.processor.post_process_masks(
            low_res, [embedding.original_size], [embedding.resized_size], binarize=True
        )


class _SamHQBackend(_SamBackend):
    """SAM-HQ: like SAM, and its decoder also needs the ViT features of the first global-attention block."""

    model_type = "sam_hq"

    @staticmethod
    def _default_processor(config: Any) -> Any:
        from transformers import SamHQProcessor

        return SamHQProcessor(_sam_image_processor(config.vision_config.image_size))

    def _encode(self, pixel_values: torch.Tensor, embedding: ImageEmbedding) -> None:
        features, intermediate = self.model.get_image_embeddings(pixel_values)
        # The decoder reads only the first of these (one per global block, each as large as the image
        # features several times over), so caching the rest would only cost memory.
        embedding.features = features
        embedding.extra["intermediate_embeddings"] = list(intermediate[:1])


class _Sam2Backend(_SamBackend):
    """SAM 2: ``get_image_embeddings`` returns the multi-scale feature list its forward takes back."""

    model_type = "sam2"

    @staticmethod
    def _default_processor(config: Any) -> Any:
        side = config.prompt_encoder_config.image_size
        return _sam2_processor({"size": {"height": side, "width": side}})

    def _resized_size(self, inputs: dict[str, Any]) -> tuple[int, int]:
        # SAM 2 squashes the image to a fixed square (no padding); its processor scales prompts by that side.
        side = int(self.processor.target_size)
        return side, side

    def _upscale(self, low_res: torch.Tensor, embedding: ImageEmbedding) -> list[torch.Tensor]:
        return self.processor.post_process_masks(low_res, [embedding.original_size], binarize=True)


class _Sam2FallbackProcessor:
    """The parts of ``Sam2Processor`` a click needs, for when torchvision (which its image processor imports)
    is missing: resize to the square input, rescale and normalise; upscale masks back to the image size.

    The resize is bilinear with antialiasing, like torchvision's; torchvision resizes the uint8 image, this
    resizes floats, so pixel values can differ by a rounding step.
    """

    def __init__(
        self,
        size: dict[str, int],
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        rescale_factor: float = 1 / 255,
    ) -> None:
        self.size = (int(size["height"]), int(size["width"]))
        self.target_size = self.size[0]
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.rescale_factor = rescale_factor

    def __call__(self, images: np.ndarray, return_tensors: str = "pt") -> dict[str, Any]:
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(2, 0, 1)[None].float()
        pixels = F.interpolate(pixels, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        pixels = (pixels * self.rescale_factor - self.mean) / self.std
        return {"pixel_values": pixels, "original_sizes": torch.tensor([images.shape[:2]])}

    def post_process_masks(
        self, masks: torch.Tensor, original_sizes: Sequence[Sequence[int]], binarize: bool = True
    ) -> list[torch.Tensor]:
        upscaled = []
        for low_res, size in zip(masks, original_sizes, strict=True):
            logits = F.interpolate(low_res, tuple(size), mode="bilinear", align_corners=False)
            upscaled.append(logits > 0 if binarize else logits)
        return upscaled


_BACKEND_CLASSES = {"sam": _SamBackend, "sam_hq": _SamHQBackend, "sam2": _Sam2Backend}


def _sam_image_processor(image_size: int) -> Any:
    """SAM's standard image processor for a model with this input size (1024 for every released SAM)."""
    from transformers import SamImageProcessorPil

    kwargs = {
        "size": {"longest_edge": image_size},
        "pad_size": {"height": image_size, "width": image_size},
        "mask_size": {"longest_edge": image_size // 4},
        "mask_pad_size": {"height": image_size // 4, "width": image_size // 4},
    }
    if is_torchvision_available():
        from transformers import SamImageProcessor

        return SamImageProcessor(**kwargs)
    return SamImageProcessorPil(**kwargs)


def _sam2_processor(image_processor_dict: dict[str, Any]) -> Any:
    """``Sam2Processor`` with these image-processor settings, or the fallback without torchvision."""
    settings = {
        key: image_processor_dict[key]
        for key in ("size", "image_mean", "image_std", "rescale_factor")
        if key in image_processor_dict
    }
    if is_torchvision_available():
        from transformers import Sam2ImageProcessor, Sam2Processor

        return Sam2Processor(Sam2ImageProcessor(**settings))
    return _Sam2FallbackProcessor(**settings)


def _load_transformers(path: str, dtype: torch.dtype | None, hub_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    import transformers
    from transformers import AutoConfig

    with _hub_errors(path):
        config = AutoConfig.from_pretrained(path, **hub_kwargs)
        model_type = config.model_type
        if model_type not in MODEL_TYPES:
            raise CheckpointError(
                f"{path} is a {model_type!r} checkpoint, not a segmentation model this app can click on: "
                f"use a SAM, SAM-HQ or SAM 2 checkpoint (model_type {', '.join(MODEL_TYPES)})"
            )
        model_class = getattr(transformers, MODEL_TYPES[model_type])
        dtype_kwargs = {} if dtype is None else {"dtype": dtype}
        model = model_class.from_pretrained(path, **dtype_kwargs, **hub_kwargs)
        return model, _load_processor(path, model_type, hub_kwargs)


def _load_processor(path: str, model_type: str, hub_kwargs: dict[str, Any]) -> Any | None:
    """The checkpoint's processor; ``None`` (standard one from the config) when it ships none."""
    from transformers import AutoProcessor
    from transformers.image_processing_base import ImageProcessingMixin

    if model_type == "sam2" and not is_torchvision_available():
        # AutoProcessor would fail on Sam2ImageProcessor's torchvision import; keep the saved settings.
        try:
            settings, _ = ImageProcessingMixin.get_image_processor_dict(path, **hub_kwargs)
        except OSError:
            return None
        return _sam2_processor(settings)
    try:
        return AutoProcessor.from_pretrained(path, **hub_kwargs)
    except (OSError, ValueError) as error:
        logger.warning(f"{path} has no usable processor ({error}); using the standard {model_type} one")
        return None


@contextlib.contextmanager
def _hub_errors(path: str) -> Iterator[None]:
    """Turn "could not reach / find it on the Hub" into a HubError the app can show."""
    try:
        yield
    except OSError as error:
        if os.path.isdir(path):
            raise
        raise HubError(
            f"could not load {path!r}: it is not a local folder and the Hugging Face Hub did not provide it "
            f"({error}). Check the model id and the connection, or give a local folder."
        ) from error


# ----------------------------------------------------------------------------------------------------------
# segment_anything backend


class _SegmentAnythingBackend:
    """Meta's ``SamPredictor``. Its predictor holds one image; a cached embedding is put back before a click."""

    model_type = "segment_anything"

    def __init__(self, model: Any, device: Any, dtype: torch.dtype | None) -> None:
        sam = _import_segment_anything()
        self.model = model.to(device=device, dtype=dtype).eval()
        self.predictor = sam.SamPredictor(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        self.predictor.set_image(image, image_format="RGB")
        state = {name: getattr(self.predictor, name) for name in ("features", "original_size", "input_size")}
        return ImageEmbedding(original_size=image.shape[:2], features=state)

    def decode(self, embedding: ImageEmbedding, prompt: _Prompt, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        for name, value in embedding.features.items():
            setattr(self.predictor, name, value)
        self.predictor.is_image_set = True
        masks, scores, _ = self.predictor.predict(
            point_coords=prompt.points,
            point_labels=prompt.labels,
            box=prompt.box,
            multimask_output=multimask,
        )
        return masks.astype(bool), scores.astype(np.float32)


def _import_segment_anything() -> Any:
    try:
        import segment_anything
    except ImportError as error:
        raise MissingBackendError(
            f"the segment_anything backend needs Meta's segment-anything package, which is not installed "
            f"({error}): {_INSTALL_META}"
        ) from error
    return segment_anything


def _load_segment_anything(path: str, sam_model_type: str | None) -> Any:
    sam = _import_segment_anything()
    if not os.path.isfile(path):
        raise InputError(f"segment_anything checkpoint {path!r} is not a file: give the path of a SAM .pth file")
    if sam_model_type is None:
        found = [name for name in _META_MODEL_TYPES if name in os.path.basename(path)]
        if len(found) != 1:
            raise InputError(
                f"cannot tell the SAM size from the file name {os.path.basename(path)!r}: "
                f"pass sam_model_type= one of {', '.join(_META_MODEL_TYPES)}"
            )
        sam_model_type = found[0]
    if sam_model_type not in _META_MODEL_TYPES:
        raise InputError(f"sam_model_type must be one of {', '.join(_META_MODEL_TYPES)}, got {sam_model_type!r}")
    return sam.sam_model_registry[sam_model_type](checkpoint=path)


# ----------------------------------------------------------------------------------------------------------
# helpers


def _make_backend(model: Any, processor: Any | None, device: Any, dtype: torch.dtype | None) -> Any:
    if type(model).__module__.startswith("segment_anything"):
        return _SegmentAnythingBackend(model, device, dtype)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _BACKEND_CLASSES:
        raise InputError(
            f"ClickSegmenter needs a SAM, SAM-HQ or SAM 2 model, got {type(model).__name__}"
            + (f" (model_type {model_type!r})" if model_type else "")
        )
    return _BACKEND_CLASSES[model_type](model, processor, device, dtype)


def _resolve_backend(backend: str, path: str) -> str:
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        is_meta_file = os.path.isfile(path) and path.lower().endswith(_META_SUFFIXES)
        return "segment_anything" if is_meta_file else "transformers"
    return backend


def _as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise InputError(f"dtype must be a torch dtype such as 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    return resolved


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        described = (
            f"shape {image.shape} and dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        )
        raise InputError(f"the image must be an RGB array of shape (height, width, 3) and dtype uint8, got {described}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"the image is empty (shape {image.shape})")
    return image


def _fingerprint(image: np.ndarray) -> str:
    """A hash of the pixels: the cache must not return a stale embedding for an image edited in place."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _check_prompt(
    points: Points | None, labels: Sequence[int] | np.ndarray | None, box: Box | None, size: tuple[int, int]
) -> _Prompt:
    points = _check_points(points, size)
    labels = _check_labels(labels, points)
    box = _check_box(box, size)
    if points is None and box is None:
        raise InputError("no points or box given: click on the object first")
    return _Prompt(points, labels, box)


def _check_points(points: Points | None, size: tuple[int, int]) -> np.ndarray | None:
    if points is None or len(points) == 0:
        return None
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"points must be a list of (x, y) pairs of numbers, got {points!r}") from error
    if array.ndim != 2 or array.shape[1] != 2:
        raise InputError(f"points must be a list of (x, y) pairs, got an array of shape {array.shape}")
    height, width = size
    for x, y in array:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(
                f"point ({x:g}, {y:g}) is outside the {width}x{height} image: "
                f"x must be in [0, {width}) and y in [0, {height})"
            )
    return array


def _check_labels(labels: Sequence[int] | np.ndarray | None, points: np.ndarray | None) -> np.ndarray | None:
    if points is None:
        if labels is not None and len(labels) > 0:
            raise InputError(f"got {len(labels)} labels but no points: give one label per point")
        return None
    if labels is None:
        return np.ones(len(points), dtype=np.int64)
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) != len(points):
        raise InputError(
            f"got {array.size} labels for {len(points)} points: give one label per point "
            "(1 = on the object, 0 = background)"
        )
    if not np.isin(array, (0, 1)).all():
        raise InputError(f"labels must be 1 (on the object) or 0 (background), got {array.tolist()}")
    return array.astype(np.int64)


def _check_box(box: Box | None, size: tuple[int, int]) -> np.ndarray | None:
    if box is None:
        return None
    try:
        array = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise InputError(f"box must be four numbers (x0, y0, x1, y1), got {box!r}") from error
    if array.shape != (4,):
        raise InputError(f"box must be four numbers (x0, y0, x1, y1), got {array.size}")
    x0, y0, x1, y1 = array
    height, width = size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise InputError(
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not a box inside the {width}x{height} image: "
            f"need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
        )
    return array
