"""Where the models run and how they are loaded: one MEMatte, one SAM and an optional text model per process.

The GPU work is in the functions decorated with ``spaces.GPU`` at the end of this module. On a ZeroGPU Space
(``SPACES_ZERO_GPU`` set by the platform) that decorator runs each call in a forked worker that holds the GPU
and pickles the call's arguments and result; anywhere else it returns the function unchanged, and the models
run on CUDA when present, else on the CPU. So the GPU functions are written for ZeroGPU's terms:

* they take store keys (:mod:`~space.store`), not photos, and return only CPU arrays, compactly: the matte's
  alpha as 16-bit integers and its foreground colours as 8-bit, with the routing masks (about 5 bytes per
  pixel in all, where the whole float result was 20);
* CPU work (decoding, checks, trimaps, PNG writing) happens outside them, so the GPU time asked for is the
  model's; SAM's image encoder runs once per photo, and its embedding comes back to the visitor's session,
  from which every click decodes on the CPU;
* the GPU seconds they ask for are computed from the photo's size and the throughput measured on an H200
  (``/work/shared/GPU-NOTES.md``: 0.67 s for the model and 0.59 s for the foreground colours of a 3840 x
  2160 matte), scaled for the slice asked for and with room for the worker's start.

Models are module-level singletons created under a lock, so concurrent requests (gradio runs handlers in
threads) never load a model twice; :func:`load_models` loads them at startup so that a wrong model id fails
before the server starts, not at the first click.
"""

from __future__ import annotations

# `spaces` first: on ZeroGPU it must be imported before anything initialises CUDA (torch is imported later).
import spaces  # isort: skip

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .settings import Settings
from .store import store

# GPU seconds on an H200 (GPU-NOTES.md, 3840 x 2160 = 8.29 MP: the model 0.67 s, the foreground colours 0.59 s;
# the SAM 2 tracker is assumed at 0.03 s a frame at its 1024 px input). ``spaces`` converts the seconds asked
# for to the slice it gives (on a half RTX Pro 6000 Blackwell, "large", it multiplies them by its
# ``duration_factor``, 1.5), so the app asks for H200 seconds, with one margin, and nothing more.
H200_MODEL_SECONDS_PER_MEGAPIXEL = 0.67 / 8.29
H200_FOREGROUND_SECONDS_PER_MEGAPIXEL = 0.59 / 8.29
H200_MATTE_SECONDS_PER_MEGAPIXEL = H200_MODEL_SECONDS_PER_MEGAPIXEL + H200_FOREGROUND_SECONDS_PER_MEGAPIXEL
H200_TRACKER_SECONDS_PER_FRAME = 0.03
MARGIN = 2.0  # the one margin: for a busy slice, and the first call's CUDA start
# Every call also pays for the worker's start and the model's move to the GPU; SAM's encoder and a detector
# take well under a second on one image at their fixed input size.
CALL_OVERHEAD_SECONDS = 8
SEGMENT_SECONDS = 10
#: The longest call the platform is asked for, in seconds after its ``duration_factor``: ZeroGPU refuses a call
#: whose charged duration is above the visitor's per-call maximum, so longer work (a video) is split.
PLATFORM_MAX_CHARGED_SECONDS = 120
#: The ``duration_factor`` of the installed ``spaces`` for a "large" slice (an "xlarge" one is not multiplied).
LARGE_DURATION_FACTOR = 1.5
GPU_SIZES = ("large", "xlarge")
#: The ZeroGPU slice asked for: "large" is half an RTX Pro 6000 Blackwell (48 GB), "xlarge" a whole one (96 GB).
#: An environment variable, not an option: ``spaces.GPU`` is applied when this module is imported.
GPU_SIZE = os.environ.get("MEMATTE_GPU_SIZE", "large").strip() or "large"
if GPU_SIZE not in GPU_SIZES:
    raise SystemExit(f"app.py: error: MEMATTE_GPU_SIZE={GPU_SIZE!r} is not one of {', '.join(GPU_SIZES)}")


def max_call_seconds(gpu_size: str = GPU_SIZE) -> int:
    """The most seconds one call may ask for, so that its charged duration stays within the platform's limit."""
    factor = LARGE_DURATION_FACTOR if gpu_size != "xlarge" else 1.0
    return int(PLATFORM_MAX_CHARGED_SECONDS / factor)


def call_seconds(h200_seconds: float, gpu_size: str = GPU_SIZE) -> int:
    """Seconds to ask ``spaces.GPU`` for work that takes ``h200_seconds`` on an H200: the call's start, the work
    with one margin, capped at what one call may ask for."""
    return int(min(max_call_seconds(gpu_size), np.ceil(CALL_OVERHEAD_SECONDS + MARGIN * h200_seconds)))


def zero_gpu_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether the Space runs on ZeroGPU hardware (the platform sets ``SPACES_ZERO_GPU``)."""
    value = (os.environ if environ is None else environ).get("SPACES_ZERO_GPU", "")
    return value.strip().lower() in ("1", "true", "yes")


def on_zero_gpu() -> bool:
    return zero_gpu_requested()


def matte_seconds_for(pixels: int, gpu_size: str = GPU_SIZE) -> int:
    """GPU seconds to ask for one matte of ``pixels`` with its foreground colours."""
    return call_seconds(H200_MATTE_SECONDS_PER_MEGAPIXEL * pixels / 1e6, gpu_size)


def matte_seconds(photo_key: str, *args: Any, **kwargs: Any) -> int:
    """The duration ``spaces.GPU`` asks for a :func:`matte` call (it receives the call's arguments)."""
    height, width = store().get(photo_key).shape[:2]
    return matte_seconds_for(height * width)


def segment_seconds(*args: Any, **kwargs: Any) -> int:
    return SEGMENT_SECONDS


def choose_device(requested: str | None = None) -> str:
    """The device the models live on: as asked (checked by the library), else CUDA on ZeroGPU, else the
    library's default (CUDA when present, else the CPU)."""
    if not requested and on_zero_gpu():
        return "cuda"  # ZeroGPU attaches a GPU inside spaces.GPU calls; models are placed on "cuda" up front
    from mematte_hf.devices import resolve_device

    return str(resolve_device(requested))


# ----------------------------------------------------------------------------------------------------------
# model singletons


class StartupError(RuntimeError):
    """A model could not be loaded; the message is one line telling the user what to do."""


_lock = threading.Lock()
_settings: Settings | None = None
_models: dict[str, Any] = {}  # name -> model, each loaded once per process


def configure(settings: Settings) -> None:
    """Remember the settings the singletons are built from (models already loaded are dropped)."""
    global _settings
    with _lock:
        _settings = settings
        _models.clear()


def _shared(name: str, load: Callable[[], Any]) -> Any:
    """The process's model `name`, made by `load()` on first use; concurrent first requests load it once."""
    model = _models.get(name)
    if model is None:
        with _lock:
            model = _models.get(name)
            if model is None:
                model = _models[name] = load()
    return model


def settings() -> Settings:
    if _settings is None:
        raise RuntimeError("runtime.configure(settings) must be called before the models are used")
    return _settings


def predictor() -> Any:
    """The process's ``MEMattePredictor``, loaded on first use."""
    return _shared("predictor", lambda: _load_predictor(settings()))


def segmenter() -> Any:
    """The process's ``ClickSegmenter``, loaded on first use."""
    return _shared("segmenter", lambda: _load_segmenter(settings()))


def click_segmenter() -> Any:
    """The ``ClickSegmenter`` that decodes clicks from a kept embedding, in the web server's process.

    Off ZeroGPU that is :func:`segmenter` itself. On ZeroGPU the GPU exists only inside ``spaces.GPU`` calls,
    so clicks decode with a CPU copy of SAM: its prompt encoder and mask decoder take milliseconds there, and
    a click then costs no GPU quota and no wait for a GPU.
    """
    if not on_zero_gpu():
        return segmenter()

    def load_on_cpu() -> Any:
        import torch

        # ZeroGPU forks its worker from this process: a child forked after OpenMP ran here with several
        # threads hangs in its first parallel CPU op (libgomp), so this process's CPU work stays on one
        # thread. SAM's decoder is small enough that a click still takes milliseconds.
        torch.set_num_threads(1)
        return _load_segmenter(settings(), device="cpu")

    return _shared("click_segmenter", load_on_cpu)


def text_model() -> Any | None:
    """The text-prompt model (a detector or SAM 3), or None when the app was started without one."""
    if settings().text_model is None:
        return None
    return _shared("text_model", lambda: _load_text_model(settings()))


def tracker_model() -> Any:
    """The process's SAM 2 / EdgeTAM video model (weights only: each clip gets a tracker of its own)."""
    return _shared("tracker", lambda: _load_tracker(settings()))


def video_tracker() -> Any:
    """A tracker with no memory of an earlier clip, sharing the process's weights."""
    from mematte_hf.tracking import Sam2VideoTracker

    return Sam2VideoTracker(tracker_model())


def load_models() -> None:
    """Load every configured model now, before the server starts (and before ZeroGPU forks its worker, which
    must not inherit a lock held by a load in progress); raise :class:`StartupError` with one readable line
    when one cannot be loaded."""
    predictor()
    segmenter()
    click_segmenter()
    text_model()
    tracker_model()


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


def _load_segmenter(config: Settings, device: str | None = None) -> Any:
    from mematte_hf.segmentation import ClickSegmenter

    try:
        with _quiet_loading():
            return ClickSegmenter.from_pretrained(config.sam_model, device=device or choose_device(config.device))
    except Exception as error:  # noqa: BLE001
        raise StartupError(_cannot_load("SAM", config.sam_model, error, "--sam-model", "MEMATTE_SAM_MODEL")) from error


def _load_tracker(config: Settings) -> Any:
    from mematte_hf.tracking import DEFAULT_TRACKER, Sam2VideoTracker

    name = config.tracker_model or DEFAULT_TRACKER
    try:
        with _quiet_loading():
            return Sam2VideoTracker.from_pretrained(name, device=choose_device(config.device)).model
    except Exception as error:  # noqa: BLE001
        raise StartupError(_cannot_load("tracker", name, error, "--tracker-model", "MEMATTE_TRACKER_MODEL")) from error


def _load_text_model(config: Settings) -> Any:
    from mematte_hf.text_prompts import load_text_model

    try:
        with _quiet_loading():
            return load_text_model(config.text_model, device=choose_device(config.device),
                                   threshold=config.text_threshold)  # fmt: skip
    except Exception as error:  # noqa: BLE001
        message = _cannot_load("text", config.text_model, error, "--text-model", "MEMATTE_TEXT_MODEL")
        raise StartupError(message) from error


def _cannot_load(what: str, model_id: str, error: Exception, option: str, variable: str) -> str:
    where = "" if os.path.exists(model_id) or model_id.startswith((".", "/", "~")) else " from the Hugging Face Hub"
    reason = _reason(error, model_id)
    if option in reason and variable in reason:  # the library's own message already says what to do
        return f"could not load the {what} model {model_id!r}{where}: {reason}"
    return (
        f"could not load the {what} model {model_id!r}{where}: {reason} -- pass {option} PATH to "
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
    # Restore the bars only if they were on: enabling them warns when HF_HUB_DISABLE_PROGRESS_BARS is set.
    bars_were_on = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # its connection retries would print a warning per attempt
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)
        if bars_were_on:
            logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------------------
# the GPU work: arguments are store keys and small values, results are compact CPU arrays


def visitor_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Raise the library's errors for visitors as ``gr.Error`` inside a GPU function: ``spaces`` passes a
    ``gr.Error`` through with its message, and turns any other exception into "ZeroGPU worker error" and the
    class name alone."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import gradio as gr

        from mematte_hf.errors import MEMatteError

        try:
            return function(*args, **kwargs)
        except MEMatteError as error:
            message = str(error)
            raise gr.Error(message[:1].upper() + message[1:], print_exception=False) from None
        except KeyError as error:  # a store key whose session ended meanwhile
            raise gr.Error(f"Your photo is no longer stored ({error.args[0] if error.args else error}): upload it "
                           "again", print_exception=False) from None  # fmt: skip

    return wrapper


def cpu_copy(value: Any) -> Any:
    """Tensors that came back from the worker, cloned into this process's memory: ``spaces`` sends them through
    shared memory (/dev/shm, 64 MB in a container), which a kept SAM embedding would otherwise hold."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.clone()
    if hasattr(value, "features") and hasattr(value, "extra"):  # an ImageEmbedding
        return type(value)(value.original_size, cpu_copy(value.features), cpu_copy(value.extra), value.resized_size)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(item) for item in value)
    return value


@spaces.GPU(duration=segment_seconds, size=GPU_SIZE)
@visitor_errors
def embed_photo(photo_key: str) -> Any:
    """SAM's image embedding of the stored photo, moved to the CPU: the session keeps it for every click."""
    image = np.asarray(store().get(photo_key))
    return segmenter().embed(image).to("cpu")


@spaces.GPU(duration=segment_seconds, size=GPU_SIZE)
@visitor_errors
def find_objects(photo_key: str, text: str) -> Any:
    """What the text model finds: a detector's boxes (tiny), or SAM 3's mask packed to one bit per pixel."""
    from mematte_hf.text_prompts import TextDetector

    model, image = text_model(), np.asarray(store().get(photo_key))
    if isinstance(model, TextDetector):
        return model.detect(image, text)
    found = model.segment(image, text)
    return PackedMask(np.packbits(found.mask), found.mask.shape), found.detections


@dataclass
class PackedMask:
    """A boolean mask at one bit per pixel, for the trip out of the GPU worker."""

    bits: np.ndarray
    shape: tuple[int, int]

    def unpack(self) -> np.ndarray:
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.bits, count=count).reshape(self.shape).astype(bool)


@dataclass
class LeanMatte:
    """What the matte call returns: 16-bit alpha, 8-bit foreground colours, routing masks and the figures."""

    alpha: np.ndarray  # (H, W) uint16, 65535 = opaque
    foreground: np.ndarray  # (H, W, 3) uint8
    routing_masks: list[np.ndarray] = field(default_factory=list)
    model_ran: bool = True
    message: str = ""
    seconds: float = 0.0
    peak_memory_bytes: int | None = None
    plan: Any | None = None
    max_global_tokens: int | None = None
    decoder_tile_size: int | None = None
    device: str = "cpu"

    @property
    def alpha_float(self) -> np.ndarray:
        return self.alpha.astype(np.float32) / 65535.0

    @property
    def routed_fraction(self) -> list[float]:
        return [float(mask.mean()) for mask in self.routing_masks]

    def rgba(self) -> np.ndarray:
        """(H, W, 4) uint8 cutout: the foreground colours with the alpha rounded to 8 bits."""
        alpha8 = np.rint(self.alpha.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        return np.dstack([self.foreground, alpha8])


def prepare_matte(session_id: str, photo_key: str, trimap: np.ndarray) -> str | None:
    """The CPU part of a matte, before the GPU call: the model's input (checked, normalised, padded) is stored
    for :func:`matte`, under a key that is returned; None when the trimap leaves nothing for the model."""
    prepared = predictor().prepare(np.asarray(store().get(photo_key)), trimap)
    if prepared.pixel_values is None:
        return None
    from .session import unique_name

    return store().put(session_id, unique_name("pixel_values"), prepared.pixel_values.numpy())


@spaces.GPU(duration=matte_seconds, size=GPU_SIZE)
@visitor_errors
def matte(
    photo_key: str, trimap_key: str, pixel_values_key: str | None, max_global_tokens: int | str | None
) -> LeanMatte:
    """MEMatte at full resolution with its foreground colours, from what :func:`prepare_matte` stored.

    Only the model's forward and the foreground estimation run here (on the GPU, under the predictor's lock,
    with the memory plan counting both); the result leaves as 16-bit alpha and 8-bit colours.
    """
    import torch

    from mematte_hf.image_io import alpha_to_uint16
    from mematte_hf.predictor import PreparedMatte

    rgb, trimap = np.asarray(store().get(photo_key)), np.asarray(store().get(trimap_key))
    pixel_values = None
    if pixel_values_key is not None:
        pixel_values = torch.from_numpy(np.array(store().get(pixel_values_key)))  # a writable copy for torch
    result = predictor().run(PreparedMatte(rgb, trimap, pixel_values), max_global_tokens, with_foreground=True)
    return LeanMatte(
        alpha=alpha_to_uint16(result.alpha),
        foreground=np.rint(result.foreground() * 255).astype(np.uint8),
        routing_masks=[np.asarray(mask, dtype=bool) for mask in result.routing_masks],
        model_ran=result.model_ran,
        message=result.message,
        seconds=result.seconds,
        peak_memory_bytes=result.peak_memory_bytes,
        plan=result.plan,
        max_global_tokens=result.max_global_tokens,
        decoder_tile_size=result.decoder_tile_size,
        device=str(result.device),
    )
