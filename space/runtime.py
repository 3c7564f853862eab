"""Where the models run and how they are loaded: one MEMatte and one SAM per process, on ZeroGPU, CUDA or CPU.

* ZeroGPU (a Hugging Face Space with ``SPACES_ZERO_GPU`` set and the ``spaces`` package installed): the
  functions that touch the GPU are wrapped in ``spaces.GPU`` with a duration sized from the photo's pixel
  count, and return only CPU numpy arrays, because the GPU is attached to the process only during those calls.
* Plain CUDA when ``torch.cuda.is_available()``; the CPU otherwise. Neither needs ``spaces``.

Both models are module-level singletons created under a lock, so concurrent requests (gradio runs handlers in
threads) never load a model twice; :func:`load_models` loads them eagerly at startup so that a wrong model id
fails before the server starts, not at the first click.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from .settings import Settings

Function = TypeVar("Function", bound=Callable[..., Any])

# Seconds of GPU time asked of ZeroGPU. A matte costs a fixed part (moving the model, foreground estimation
# set-up) plus a part growing with the pixel count; measured ViT-S mattes take well under a second per
# megapixel on an H100-class slice, so these leave room for slower slices and the foreground estimation.
MATTE_BASE_SECONDS, MATTE_SECONDS_PER_MEGAPIXEL, MATTE_MAX_SECONDS = 20, 4.0, 120
SEGMENT_BASE_SECONDS, SEGMENT_SECONDS_PER_MEGAPIXEL, SEGMENT_MAX_SECONDS = 10, 0.5, 30


def zero_gpu_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether the Space runs on ZeroGPU hardware (the platform sets ``SPACES_ZERO_GPU``)."""
    value = (os.environ if environ is None else environ).get("SPACES_ZERO_GPU", "")
    return value.strip().lower() in ("1", "true", "yes")


def _import_spaces() -> Any | None:
    """The ``spaces`` package on ZeroGPU, else None. Imported before any CUDA work, as ZeroGPU requires."""
    if not zero_gpu_requested() or importlib.util.find_spec("spaces") is None:
        return None
    return importlib.import_module("spaces")


_spaces = _import_spaces()


def on_zero_gpu() -> bool:
    return _spaces is not None


def gpu_task(duration: Callable[..., int]) -> Callable[[Function], Function]:
    """``spaces.GPU(duration=duration)`` on ZeroGPU; elsewhere the function is returned unchanged.

    ``duration`` receives the same arguments as the decorated function and returns seconds.
    """

    def decorate(function: Function) -> Function:
        if _spaces is None:
            return function
        return _spaces.GPU(duration=duration)(function)

    return decorate


def _scaled_seconds(pixels: int, base: float, per_megapixel: float, most: float) -> int:
    return int(min(most, base + per_megapixel * pixels / 1e6))


def matte_seconds(image: np.ndarray, *args: Any, **kwargs: Any) -> int:
    """GPU seconds to ask for one matte of ``image`` (the decorated function's first argument)."""
    pixels = int(image.shape[0]) * int(image.shape[1])
    return _scaled_seconds(pixels, MATTE_BASE_SECONDS, MATTE_SECONDS_PER_MEGAPIXEL, MATTE_MAX_SECONDS)


def segment_seconds(image: np.ndarray, *args: Any, **kwargs: Any) -> int:
    """GPU seconds to ask for one SAM click on ``image`` (the image encoder runs on a 1024 px copy)."""
    pixels = int(image.shape[0]) * int(image.shape[1])
    return _scaled_seconds(pixels, SEGMENT_BASE_SECONDS, SEGMENT_SECONDS_PER_MEGAPIXEL, SEGMENT_MAX_SECONDS)


def choose_device(requested: str | None = None) -> str:
    """The device the models live on: as asked, else CUDA on ZeroGPU or when present, else the CPU."""
    if requested:
        return requested
    if on_zero_gpu():
        return "cuda"  # ZeroGPU attaches a GPU inside spaces.GPU calls; models are placed on "cuda" up front
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------------------------
# model singletons


class StartupError(RuntimeError):
    """A model could not be loaded; the message is one line telling the user what to do."""


_lock = threading.Lock()
_settings: Settings | None = None
_predictor: Any | None = None
_segmenter: Any | None = None


def configure(settings: Settings) -> None:
    """Remember the settings the singletons are built from (models already loaded are dropped)."""
    global _settings, _predictor, _segmenter
    with _lock:
        _settings, _predictor, _segmenter = settings, None, None


def settings() -> Settings:
    if _settings is None:
        raise RuntimeError("runtime.configure(settings) must be called before the models are used")
    return _settings


def predictor() -> Any:
    """The process's ``MEMattePredictor``, loaded on first use."""
    global _predictor
    if _predictor is None:
        with _lock:
            if _predictor is None:
                _predictor = _load_predictor(settings())
    return _predictor


def segmenter() -> Any:
    """The process's ``ClickSegmenter``, loaded on first use."""
    global _segmenter
    if _segmenter is None:
        with _lock:
            if _segmenter is None:
                _segmenter = _load_segmenter(settings())
    return _segmenter


def load_models() -> None:
    """Load both models now; raise :class:`StartupError` with one readable line when one cannot be loaded."""
    predictor()
    segmenter()


def _load_predictor(config: Settings) -> Any:
    from mematte_hf.predictor import MEMattePredictor

    try:
        with _quiet_loading():
            return MEMattePredictor.from_pretrained(
                config.model,
                device=choose_device(config.device),
                max_global_tokens="auto",
                memory_budget=config.memory_budget,
                max_pixels=config.max_pixels,
            )
    except Exception as error:  # noqa: BLE001 - any failure here ends startup with its message
        raise StartupError(_cannot_load("MEMatte", config.model, error, "--model", "MEMATTE_MODEL")) from error


def _load_segmenter(config: Settings) -> Any:
    from mematte_hf.segmentation import ClickSegmenter

    try:
        with _quiet_loading():
            return ClickSegmenter.from_pretrained(config.sam_model, device=choose_device(config.device))
    except Exception as error:  # noqa: BLE001
        raise StartupError(_cannot_load("SAM", config.sam_model, error, "--sam-model", "MEMATTE_SAM_MODEL")) from error


def _cannot_load(what: str, model_id: str, error: Exception, option: str, variable: str) -> str:
    where = "" if os.path.exists(model_id) or model_id.startswith((".", "/", "~")) else " from the Hugging Face Hub"
    return (
        f"could not load the {what} model {model_id!r}{where}: {_reason(error, model_id)} -- pass {option} PATH to "
        f"a local folder (or a Hub id this machine can reach) or set {variable}"
    )


def _reason(error: Exception, model_id: str) -> str:
    """The error's message on one line, without a leading "could not load 'ID' ..." that would repeat ours."""
    reason = " ".join(str(error).split()) or type(error).__name__
    repeated = re.match(r"could not load (the model )?'[^']*'( from the Hugging Face Hub)?[\s:]*", reason)
    if repeated and model_id in repeated.group(0):
        reason = reason[repeated.end() :]
        if reason.startswith("(") and ")" in reason:  # "(why); what to do" -> "why; what to do"
            inside, _, rest = reason[1:].partition(")")
            reason = inside + rest
    return reason.replace(".;", ";") or type(error).__name__


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' info logs and progress bars while loading, so a failure prints only its line."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging

    verbosity, hub_verbosity = logging.get_verbosity(), hub_logging.get_verbosity()
    logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # its connection retries would print a warning per attempt
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)
        logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------------------
# the GPU work


@gpu_task(segment_seconds)
def segment(
    image: np.ndarray,
    points: Sequence[tuple[float, float]],
    labels: Sequence[int],
    box: tuple[float, float, float, float] | None,
    band_width: int | None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """SAM on the clicks: (mask bool HxW, trimap uint8 HxW, predicted IoU) at the photo's full resolution."""
    model = segmenter()
    try:
        # A single click is ambiguous (SAM's authors advise 3 candidates); more prompts pin the object down.
        multimask = len(points) + (2 if box is not None else 0) <= 1
        prediction = model.predict_mask(points or None, labels or None, box, multimask=multimask, image=image)
    finally:
        if on_zero_gpu():
            model.reset_image()  # cached embeddings are CUDA tensors, invalid once the GPU is detached
    from mematte_hf.trimap import mask_to_trimap

    return prediction.mask, mask_to_trimap(prediction.mask, band_width), prediction.score


@gpu_task(matte_seconds)
def matte(image: np.ndarray, trimap: np.ndarray, max_global_tokens: int | str | None) -> Any:
    """MEMatte at full resolution; the foreground colours are estimated here too, on the same device."""
    result = predictor().predict(image, trimap, max_global_tokens=max_global_tokens)
    result.foreground()  # cached on the result: later cutouts and composites need no device
    return result
