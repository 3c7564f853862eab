"""The gradio interface: upload, say what to cut out or click on it, paint corrections, matte, look, download.

Each browser tab has a :class:`~space.session.Session`, found by gradio's ``session_hash`` in the app's
:class:`~space.session.Sessions` and ended (its files deleted) when the tab closes. Errors meant for the visitor
(:class:`~mematte_hf.errors.InputError`) become pop-ups with their message and one line in the log; anything
unexpected is logged with its traceback and reported in one line, and the server goes on serving.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from mematte_hf.colours import parse_colour
from mematte_hf.errors import InputError, MEMatteError
from mematte_hf.image_io import load_image
from mematte_hf.memory import format_bytes
from mematte_hf.trimap import default_band_width, mask_to_trimap

from . import render, runtime
from .make_examples import example_paths
from .session import (
    BACKGROUND_POINT,
    BOX_CORNER,
    BRUSH_COLOURS,
    CAP_AUTO,
    CAP_FIXED,
    CAP_NONE,
    DOWNLOAD_PREFIX,
    FOREGROUND_POINT,
    Session,
    Sessions,
    apply_corrections,
    global_token_cap,
    idle_time,
    unique_name,
    write_downloads,
)
from .settings import Settings
from .store import store
from .video_tab import VideoHost, build_video_tab

logger = logging.getLogger(__name__)

TITLE = "MEMatte: cut out anything, at full resolution"
INTRO = """
Upload a photo, say what to cut out (or click on it), then **Cut out**. The result has soft edges (hair, fur,
glass) and is computed at the photo's full resolution; the pictures here are small previews, the downloads are
full size. Your photo or clip, its previews and your results are kept on this server only for this tab: they
are deleted when you close it, or after {idle} without activity.
"""


def _intro(keep_seconds: int) -> str:
    return INTRO.format(idle=idle_time(keep_seconds))


CLICK_CHOICES = [("Add to the object", FOREGROUND_POINT), ("Remove from it", BACKGROUND_POINT),
                 ("Box corner (2 clicks)", BOX_CORNER)]  # fmt: skip
CAP_CHOICES = [("auto (fits the memory budget)", CAP_AUTO), ("fixed k", CAP_FIXED), ("no cap", CAP_NONE)]
BRUSH_HELP = (
    "Fix the outline if needed: **white** = keep, **black** = remove, **grey** = let the model decide "
    "(hair, soft edges). New clicks redraw this and drop the painting."
)
CSS = """
#status { min-height: 2.5em; }
#routing .caption-label { font-size: 0.85em; }
"""
# After a new photo (an example is picked below the photo) or a new outline: the photo fully on screen.
SCROLL_TO_PHOTO = "() => document.getElementById('photo')?.scrollIntoView({behavior: 'smooth', block: 'nearest'})"
SCROLL_TO_RESULTS = "() => document.getElementById('results')?.scrollIntoView({behavior: 'smooth', block: 'start'})"

#: The app's sessions; set by build_demo.
SESSIONS: Sessions | None = None
#: Mattes computed at once (--concurrency). Only the GPU call holds a slot: preparing the input and writing the
#: PNGs happen outside it, so one visitor's PNG writing never holds another visitor's matte.
MATTE_SLOTS = threading.BoundedSemaphore(1)


def _cache_root() -> str:
    """gradio's cache folder: gradio serves files from it without copying them."""
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def sessions() -> Sessions:
    if SESSIONS is None:
        raise RuntimeError("build_demo() creates the sessions")
    return SESSIONS


def readable_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """InputError -> a pop-up with its message and one log line; anything else -> its traceback in the log."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except MEMatteError as error:
            logger.info("refused %s: %s", handler.__name__, error)
            raise gr.Error(_sentence(str(error)), print_exception=False) from None
        except Exception as error:  # noqa: BLE001 - the server must keep serving; the trace goes to the log
            logger.exception("%s failed", handler.__name__)
            raise gr.Error(f"Something went wrong: {type(error).__name__}: {error}", print_exception=False) from None

    return wrapper


def _sentence(message: str) -> str:
    """Library messages start in lower case (they are also read inside longer lines); a pop-up starts a sentence."""
    return message[:1].upper() + message[1:]


def _session(request: gr.Request | None) -> Session:
    return sessions().get(getattr(request, "session_hash", None))


@contextlib.contextmanager
def _working_on(session: Session) -> Iterator[Session]:
    """Hold the session's lock for a step; the step's end counts as the session's last action. A session ended
    while the step waited for the lock (tab closed, expired, evicted) is refused: nothing is written into it."""
    with session.lock:
        session.check_open()
        try:
            yield session
        finally:
            session.last_active = time.monotonic()


# ----------------------------------------------------------------------------------------------------------
# reading and checking what the visitor sends


def upload_path(value: Any) -> str | None:
    """The file path of an image input, preprocessed (a str) or not (gradio's FileData, or its dict)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("path")
    return getattr(value, "path", None)


def read_photo(path: str | None, max_pixels: int) -> np.ndarray:
    """Decode an upload at full resolution, refusing photos above the pixel limit before decoding them."""
    if not path:
        raise InputError("no photo received: upload an image file")
    try:
        with Image.open(path) as header:
            width, height = header.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        width = height = 0  # load_image reports what is wrong with the file
    if width * height > max_pixels:
        raise InputError(
            f"the photo is {width} x {height} = {width * height / 1e6:.1f} megapixels; this demo takes photos of "
            f"up to {max_pixels / 1e6:.1f} megapixels. Downscale it and upload it again."
        )
    try:
        return load_image(path, max_pixels=max_pixels)
    except InputError as error:  # name the file as the visitor knows it, not by its place on the server
        raise InputError(str(error).replace(str(path), Path(path).name)) from None


def _delete_upload(path: str | None) -> None:
    """Remove an uploaded file from gradio's cache once read: the photo now lives in the session only."""
    from gradio.utils import is_in_or_equal

    if path and is_in_or_equal(path, _cache_root()):
        Path(path).unlink(missing_ok=True)


def editor_layers(editor: dict[str, Any] | None, session: Session) -> list[np.ndarray]:
    """The brush layers of the editor's value, as RGBA arrays. The page sends the editor's layers, its background
    and its composite as uploads (files in gradio's cache): they are deleted once read, except the outline
    picture that the session drew itself and the page still shows."""
    if not editor:
        return []
    layers, uploads = [], [upload_path(editor.get("background")), upload_path(editor.get("composite"))]
    try:
        for layer in editor.get("layers") or []:
            if isinstance(layer, np.ndarray):  # already decoded (a Python caller)
                layers.append(layer)
                continue
            path = upload_path(layer)
            uploads.append(path)
            if path:
                with Image.open(path) as image:
                    layers.append(np.asarray(image.convert("RGBA")))
    except (OSError, ValueError) as error:
        raise InputError(f"the brush layer could not be read ({type(error).__name__}): paint again") from None
    finally:
        for path in uploads:
            if path and not (session.folder is not None and Path(path).is_relative_to(session.folder)):
                _delete_upload(path)
    return layers


def band_width(value: float | None, size: tuple[int, int]) -> int:
    """The unknown band in pixels: 0 (or empty) means automatic, 1 % of the photo's longer side."""
    if value is None or value == 0:
        return default_band_width(*size)
    if value != value or value < 0 or value > 1000:
        raise InputError(f"edge width must be 0 (automatic) or 1 to 1000 pixels, got {value:g}")
    return int(round(value))


def cap_setting(mode: str, k: float | None) -> int | str:
    try:
        return global_token_cap(mode, k)
    except InputError as error:
        raise InputError(f"global-token cap: {error}") from None


def _colour(text: str | None) -> tuple[int, int, int]:
    return parse_colour(text or "#ffffff", what="background colour")


# ----------------------------------------------------------------------------------------------------------
# handlers


def _picture(
    session: Session, name: str, array: np.ndarray | None, kind: str = "webp", folder: Path | None = None
) -> str | None:
    """Write a preview into ``folder`` (the session's by default) and return its path (gradio serves it from
    there)."""
    if array is None:
        return None
    folder = folder or session.folder or session.new_folder(_cache_root())
    path = folder / f"{name}-{time.monotonic_ns()}.{kind}"
    Image.fromarray(array).save(path, lossless=True) if kind == "webp" else Image.fromarray(array).save(path)
    return str(path)


def _video_picture(session: Session, name: str, array: np.ndarray) -> str | None:
    """A picture of the Video tab, in its own folder of the session (a new photo does not delete it)."""
    return _picture(session, name, array, folder=session.video_folder(_cache_root()))


def _editor_value(session: Session) -> dict[str, Any] | None:
    view = _picture(session, "trimap", session.trimap_view(), "png")
    return None if view is None else {"background": view, "layers": [], "composite": None}


def _no_results() -> tuple:
    """slider, alpha, composite, routing, stats, 3 downloads."""
    empty = gr.update(value=None, interactive=False)
    return None, None, None, None, "", empty, empty, empty


@readable_errors
def on_upload(photo: Any, request: gr.Request) -> tuple:
    """A new photo: keep it, show its preview, reset prompts and results. A file that is not a usable photo
    leaves the previous photo and its results as they were, and puts that photo back on screen. The upload is
    deleted from gradio's cache once read."""
    return _load_photo(photo, request, delete_upload=True)


@readable_errors
def on_example(path: str, request: gr.Request) -> tuple:
    """An example: loaded like an upload, but gradio's cached copy is kept (every visitor clicks the same one)."""
    return _load_photo(path, request, delete_upload=False)


def _load_photo(photo: Any, request: gr.Request, delete_upload: bool) -> tuple:
    session = _session(request)
    path = upload_path(photo)
    with _working_on(session):
        try:
            image = read_photo(path, runtime.settings().max_pixels)
        except InputError as error:
            logger.info("refused upload: %s", error)
            if delete_upload:
                _delete_upload(path)
            gr.Warning(_sentence(str(error)))
            previous = _picture(session, "photo", session.prompt_view())
            keep = [gr.skip()] * (2 + len(_no_results()))
            return previous, *keep, f"**Not loaded:** {_sentence(str(error))}"
        if delete_upload:
            _delete_upload(path)
        session.delete_folder()
        session.set_photo(store(), image, Path(path).name)
        height, width = session.size
        status = f"Photo {width} x {height} px loaded. Say what to cut out and press **Find**, or click on the object."
        return _picture(session, "photo", session.prompt_view()), None, "", *_no_results(), status


@readable_errors
def on_find(text: str, band: float | None, request: gr.Request) -> tuple:
    """A text prompt: the text model finds the object, SAM masks it; clicks can refine it afterwards."""
    session = _session(request)
    with _working_on(session):
        _find(session, text, band)
        return _after_prompt(session)


def _find(session: Session, text: str, band: float | None) -> None:
    """The text prompt's mask and trimap for the session's photo (what the page and /cutout both do)."""
    key = session.require_photo()
    if runtime.settings().text_model is None:
        raise InputError("text prompts are off on this server (started without --text-model): click instead")
    from mematte_hf.text_prompts import Detections, masks_from_boxes, split_phrases

    phrases = split_phrases(text)
    found = runtime.find_objects(key, text)
    if isinstance(found, Detections):
        mask = np.zeros(session.size, dtype=bool)
        if len(found):
            mask = masks_from_boxes(runtime.click_segmenter(), found, _embedding(session)).mask
        boxes = found.boxes
    else:
        packed, detections = found
        mask, boxes = packed.unpack(), detections.boxes
    if not mask.any():
        said = ", ".join(repr(phrase) for phrase in phrases)
        raise InputError(f"nothing in the photo matches {said}: describe it differently, or click on it")
    session.clear_prompts()
    session.text, session.text_boxes, session.text_mask = text, boxes, mask
    _set_mask(session, mask, None, band)


def _embedding(session: Session) -> Any:
    """The photo's SAM embedding: computed in one GPU call the first time, kept with the session after."""
    if session.embedding is None:
        session.embedding = runtime.cpu_copy(runtime.embed_photo(session.require_photo()))
    return session.embedding


def _set_mask(session: Session, mask: np.ndarray, score: float | None, band: float | None) -> None:
    session.band_width = band_width(band, session.size)
    session.mask, session.score = mask, score
    session.trimap = mask_to_trimap(mask, session.band_width)


@readable_errors
def on_select(kind: str, band: float | None, event: gr.SelectData, request: gr.Request) -> tuple:
    """A click on the preview: its coordinates are preview pixels, mapped back to the photo."""
    session = _session(request)
    if not isinstance(event.index, (list, tuple)) or len(event.index) != 2:
        raise InputError("click inside the photo")
    with _working_on(session):
        session.add_preview_click(float(event.index[0]), float(event.index[1]), kind)
        return _after_clicks(session, band)


@readable_errors
def on_add_click(x: float | None, y: float | None, kind: str, band: float | None, request: gr.Request) -> tuple:
    """A click given by its photo coordinates (the API's way to click, and an accessible alternative)."""
    session = _session(request)
    if x is None or y is None:
        raise InputError("give both x and y, in pixels of the full-size photo")
    with _working_on(session):
        session.add_click(float(x), float(y), kind)
        return _after_clicks(session, band)


@readable_errors
def on_undo(band: float | None, request: gr.Request) -> tuple:
    session = _session(request)
    with _working_on(session):
        session.require_photo()
        session.undo()
        return _after_clicks(session, band)


@readable_errors
def on_clear_clicks(band: float | None, request: gr.Request) -> tuple:
    session = _session(request)
    with _working_on(session):
        session.require_photo()
        session.clear_prompts()
        return _picture(session, "photo", session.prompt_view()), None, "Cleared. Say what to cut out, or click."


def _after_clicks(session: Session, band: float | None) -> tuple:
    """SAM on the current clicks (refining the text prompt's best match, if any) from the kept embedding."""
    if not session.has_prompt:
        if session.text_mask is not None:
            _set_mask(session, session.text_mask, None, band)
            return _after_prompt(session)
        session.mask = session.trimap = session.score = None
        hint = "Now click the opposite corner of the box." if session.pending_corner else "Click on the object."
        return _picture(session, "photo", session.prompt_view()), None, hint
    box = session.box
    others = None
    if box is None and session.text_boxes is not None and len(session.text_boxes):
        box = tuple(session.text_boxes[0])  # the clicks refine the best text match; the others stay as found
        others = session.text_mask
    # A single click is ambiguous (SAM's authors advise 3 candidates); more prompts pin the object down.
    multimask = len(session.points) + (2 if box is not None else 0) <= 1
    prediction = runtime.click_segmenter().predict_mask(
        session.points or None, session.labels or None, box, multimask=multimask, embedding=_embedding(session)
    )
    mask = prediction.mask if others is None else _merge(prediction.mask, others, box)
    _set_mask(session, mask, prediction.score, band)
    return _after_prompt(session)


def _merge(refined: np.ndarray, text_mask: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """The text mask with the refined mask in place of what it had inside the best match's box."""
    x0, y0, x1, y1 = (int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3])))
    merged = text_mask.copy()
    merged[y0:y1, x0:x1] = False
    return merged | refined


def _after_prompt(session: Session) -> tuple:
    return _picture(session, "photo", session.prompt_view()), _editor_value(session), _mask_status(session)


def _mask_status(session: Session) -> str:
    background, unknown, foreground = render.known_fraction(session.trimap)
    if unknown == 0:
        return (
            f"The outline covers {'nothing' if foreground == 0 else 'the whole photo'}: click on the object (or "
            "on what is not the object), or paint grey where the edge is."
        )
    source = f'"{session.text}"' if session.text else "your clicks"
    if session.text and session.has_prompt:
        source += " and your clicks"
    text = f"Outline from {source}. Check it on the right, fix it if needed, then press **Cut out**."
    if session.pending_corner:
        text += " Click the opposite corner to finish the box."
    return text


@readable_errors
def on_band_width(band: float | None, request: gr.Request) -> tuple:
    """A new edge width redraws the trimap from the same mask (no model run)."""
    session = _session(request)
    with _working_on(session):
        session.require_photo()
        if session.mask is None:
            return None, f"Edge width set to {band_width(band, session.size)} px."
        _set_mask(session, session.mask, session.score, band)
        return _editor_value(session), _mask_status(session)


@readable_errors
def on_run(
    editor: dict[str, Any] | None,
    band: float | None,
    cap_mode: str,
    cap_k: float | None,
    colour: str | None,
    request: gr.Request,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio's documented way to get a progress bar
) -> tuple:
    """The matte at full resolution, its previews, the routing overlays, the numbers and the downloads."""
    session = _session(request)
    layers = editor_layers(editor, session)  # first: the editor's uploads go whatever is refused next
    backdrop = _colour(colour)  # checked before any model work
    cap = cap_setting(cap_mode, cap_k)
    with _working_on(session):
        photo_key = session.require_photo()
        if session.mask is not None and band_width(band, session.size) != session.band_width:
            _set_mask(session, session.mask, session.score, band)  # a width typed in fires no release event
        trimap, changed = apply_corrections(session.require_trimap(), layers)
        trimap_key = store().put(session.id, unique_name("trimap"), trimap)  # this run's own: runs may overlap
        session_id, name, scale, preview = session.id, session.name, session.scale, session.preview
        session.begin_work()  # from here until the run ends, the session is neither evicted nor swept
    try:
        progress(0.1, desc="Computing the matte at full resolution")
        started = time.perf_counter()
        result = _matte(session_id, photo_key, trimap_key, trimap, cap)  # no session lock held meanwhile
        seconds = time.perf_counter() - started
    finally:
        session.finish_work(store())
    progress(0.8, desc="Writing the downloads")
    rgba = result.rgba()  # PNG writing and previews: CPU work, outside the GPU call and any shared lock
    alpha = result.alpha_float
    with _working_on(session):
        if session.photo_key != photo_key:
            raise InputError("a new photo was loaded while this one was being matted: press Cut out again")
        folder = session.new_results_folder(_cache_root())
        files = write_downloads(folder, name, alpha, rgba)
        small_rgba = render.downscale(rgba, scale)
        session.cutout_preview = (small_rgba[..., :3].copy(), small_rgba[..., 3].copy())
        before = _picture(session, "before", preview, folder=folder)
        after = _picture(session, "after", render.cutout_picture(rgba, scale), folder=folder)
        alpha_view = _picture(session, "alpha", render.alpha_picture(alpha, scale), "png", folder=folder)
        composite = _picture(session, "composite", _composite_view(session, backdrop), folder=folder)
        gallery = _routing_gallery(session, result)
    if not result.model_ran:
        gr.Warning(_sentence(result.message))
    status = _run_status(result, alpha.shape, seconds)
    downloads = [gr.update(value=str(file), interactive=True) for file in files]
    return (before, after), alpha_view, composite, gallery, _stats(result, trimap, changed), *downloads, status


def _matte(session_id: str, photo_key: str, trimap_key: str, trimap: np.ndarray, cap: int | str) -> Any:
    """Prepare on the CPU, matte in the GPU call, and drop the stored inputs of this matte afterwards."""
    pixel_values_key = runtime.prepare_matte(session_id, photo_key, trimap)
    try:
        with MATTE_SLOTS:
            return runtime.matte(photo_key, trimap_key, pixel_values_key, cap)
    finally:
        for key in (trimap_key, pixel_values_key):
            if key is not None:
                store().remove(key)


def _run_status(result: Any, shape: tuple[int, int], seconds: float) -> str:
    height, width = shape
    if not result.model_ran:
        return f"No matte computed: {result.message}."
    return f"Cut out {width} x {height} px in {seconds:.1f} s. Download the full-size files below."


def _routing_gallery(session: Session, result: Any) -> list[tuple[str, str]] | None:
    if not result.routing_masks:
        return None
    pictures = render.routing_pictures(session.preview, session.scale, result.routing_masks)
    routing = runtime.predictor().weights.routing
    return [
        (
            _picture(session, f"router{index}", picture, folder=session.results),
            render.routing_caption(index, fraction, routing),
        )
        for index, (picture, fraction) in enumerate(zip(pictures, result.routed_fraction, strict=True))
    ]


def _stats(result: Any, trimap: np.ndarray, changed: int) -> str:
    """The measured numbers, as a small Markdown table."""
    height, width = trimap.shape
    background, unknown, foreground = render.known_fraction(trimap)
    rows = [
        ("photo", f"{width} x {height} px ({width * height / 1e6:.2f} MP), matted at full resolution"),
        ("trimap", f"{unknown:.1%} unknown, {foreground:.1%} foreground, {background:.1%} background"
                   + (f"; brush corrections changed {changed:,} px" if changed else "")),
    ]  # fmt: skip
    if result.model_ran:
        peak = result.peak_memory_bytes
        fractions = result.routed_fraction
        mean = sum(fractions) / len(fractions) if fractions else 0.0
        rows += [
            ("weights", runtime.predictor().describe().removeprefix("weights: ")),
            ("device", str(result.device)),
            ("time", f"{result.seconds:.2f} s (model forward)"),
            ("peak memory", format_bytes(peak) if peak is not None else "not measured on this device"),
            ("cap k", _cap_text(result)),
            ("decoder tile", f"{result.decoder_tile_size} px" if result.decoder_tile_size else "whole image"),
            ("routed to global attention", ", ".join(f"{f:.1%}" for f in fractions) + f" (mean {mean:.1%})"),
        ]
    lines = ["| measured | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _cap_text(result: Any) -> str:
    cap = result.max_global_tokens
    text = "no cap" if not cap else f"{cap:,} global tokens per router"
    plan = result.plan
    if plan is not None:
        text += f" (auto: estimated peak {format_bytes(plan.estimated_bytes)} of a {format_bytes(plan.budget_bytes)}"
        text += " budget)"
    return text


@readable_errors
def on_composite(colour: str | None, background: Any, request: gr.Request) -> str | None:
    """Redraw the composite preview over a new colour or picture (no model run).

    A background picture is read once, when it arrives, and kept with the session at preview size (its upload is
    deleted); later colour changes, which send the picture's old path again, reuse the kept one. No picture on
    screen (cleared) drops it.
    """
    session = _session(request)
    backdrop = _colour(colour)
    picture = upload_path(background)
    with _working_on(session):
        if picture is None:
            session.backdrop = None
        elif Path(picture).exists():
            try:
                session.backdrop = _preview_backdrop(session, read_photo(picture, runtime.settings().max_pixels))
            finally:
                _delete_upload(picture)
        if session.cutout_preview is None:
            return None
        return _picture(session, "composite", _composite_view(session, backdrop), folder=session.results)


def _preview_backdrop(session: Session, picture: np.ndarray) -> np.ndarray:
    """The picture scaled to just cover the preview (the composite centre-crops it): all that is drawn of it."""
    if session.preview is None:
        return picture
    height, width = session.preview.shape[:2]
    scale = max(height / picture.shape[0], width / picture.shape[1])
    if scale >= 1:
        return picture
    shape = (max(height, round(picture.shape[0] * scale)), max(width, round(picture.shape[1] * scale)))
    return render.resize(picture, shape)


def _composite_view(session: Session, colour: tuple[int, int, int]) -> np.ndarray | None:
    if session.cutout_preview is None:
        return None
    foreground, alpha = session.cutout_preview
    backdrop: Any = session.backdrop if session.backdrop is not None else colour
    return render.composite_picture(foreground, alpha.astype(np.float32) / 255.0, backdrop)


def on_activity(request: gr.Request) -> None:
    """An event that changes nothing on the server (a brush stroke in the editor) still counts as activity, so that
    a visitor who paints for a long time does not find the session expired."""
    sessions().touch(getattr(request, "session_hash", None))


def on_unload(request: gr.Request) -> None:
    """The tab closed: end its session now (its photo, trimap, previews and downloads are deleted)."""
    sessions().end(getattr(request, "session_hash", None))


# ----------------------------------------------------------------------------------------------------------
# the stateless endpoint: an image and prompts in, the alpha and the cutout out


@readable_errors
def cutout(image: Any, text: str = "", points: str = "", box: str = "") -> tuple[str, str]:
    """Cut an object out of a photo at full resolution, from a text prompt, points or a box.

    Args:
        image: the photo (PNG, JPEG, WebP, ...).
        text: what to cut out, e.g. "the dog" (needs a server started with a text model); may be empty.
        points: JSON list of clicks in photo pixels, [[x, y], ...] on the object or [[x, y, 0], ...] off it.
        box: "x0, y0, x1, y1" around the object, in photo pixels; may be empty.

    Returns:
        The 16-bit alpha matte PNG and the RGBA cutout PNG, both at the photo's full size.
    """
    path = upload_path(image)
    try:
        photo = read_photo(path, runtime.settings().max_pixels)
    finally:
        _delete_upload(path)  # read or refused, the upload is not kept beyond this call
    session = Session()  # a session of its own, for this call only
    try:
        session.set_photo(store(), photo, Path(path or "photo").name)
        clicks, corners = _parse_points(points, session.size), _parse_box(box)
        if (text or "").strip():
            _find(session, text, 0)  # the same steps as the page
        for x, y, kind in clicks:
            session.add_click(x, y, kind)
        for corner in corners:
            session.add_click(*corner, BOX_CORNER)
        if session.has_prompt:
            _after_clicks(session, 0)
        if session.trimap is None:
            raise InputError("give a text prompt, points or a box: nothing says what to cut out")
        trimap_key = store().put(session.id, unique_name("trimap"), session.trimap)
        result = _matte(session.id, session.photo_key, trimap_key, session.trimap, CAP_AUTO)
        folder = Path(_cache_root()) / f"{DOWNLOAD_PREFIX}{session.id}"
        folder.mkdir(parents=True, exist_ok=True)
        alpha16, rgba = write_downloads(folder, session.name, result.alpha_float, result.rgba(), eight_bit=False)
        return str(alpha16), str(rgba)
    finally:
        store().drop_session(session.id)
        session.delete_folder()  # the page's steps drew previews; only the two returned files are kept


def _parse_points(text: str, size: tuple[int, int]) -> list[tuple[float, float, str]]:
    if not (text or "").strip():
        return []
    try:
        values = json.loads(text)
        clicks = [(float(p[0]), float(p[1]), BACKGROUND_POINT if len(p) > 2 and not p[2] else FOREGROUND_POINT)
                  for p in values]  # fmt: skip
    except (ValueError, TypeError, IndexError, KeyError):
        raise InputError(f"points must be JSON like [[x, y], [x, y, 0]] (0 = not the object), got {text!r}") from None
    return clicks


def _parse_box(text: str) -> list[tuple[float, float]]:
    if not (text or "").strip():
        return []
    try:
        x0, y0, x1, y1 = (float(value) for value in text.replace(",", " ").split())
    except ValueError:
        raise InputError(f'box must be four numbers "x0, y0, x1, y1" in photo pixels, got {text!r}') from None
    return [(x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1))]


# ----------------------------------------------------------------------------------------------------------
# layout


@dataclass
class Page:
    """The components the events connect (layout-only components are not kept)."""

    photo: gr.Image
    text: gr.Textbox
    find: gr.Button
    kind: gr.Radio
    undo: gr.Button
    clear_clicks: gr.Button
    x: gr.Number
    y: gr.Number
    add: gr.Button
    editor: gr.ImageEditor
    run: gr.Button
    status: gr.Markdown
    slider: gr.ImageSlider
    alpha: gr.Image
    composite: gr.Image
    colour: gr.ColorPicker
    background: gr.Image
    band: gr.Number
    cap_mode: gr.Radio
    cap_k: gr.Number
    routing: gr.Gallery
    stats: gr.Markdown
    download_alpha: gr.DownloadButton
    download_alpha16: gr.DownloadButton
    download_rgba: gr.DownloadButton

    @property
    def results(self) -> list[gr.components.Component]:
        return [self.slider, self.alpha, self.composite, self.routing, self.stats, self.download_alpha,
                self.download_alpha16, self.download_rgba]  # fmt: skip

    @property
    def after_upload(self) -> list[gr.components.Component]:
        return [self.photo, self.editor, self.text, *self.results, self.status]


def build_demo(settings: Settings) -> gr.Blocks:
    """The Blocks app (models are loaded separately, by runtime.load_models); starts the session sweeper."""
    global SESSIONS, MATTE_SLOTS
    SESSIONS = Sessions(store(), settings.keep_seconds, settings.max_sessions, _cache_root)
    MATTE_SLOTS = threading.BoundedSemaphore(settings.concurrency)
    _start_sweeper(SESSIONS, settings.keep_seconds)
    keep = settings.keep_seconds
    with gr.Blocks(title=TITLE, delete_cache=(max(1, min(60, keep // 4)), keep)) as demo:
        gr.Markdown(f"# {TITLE}\n{_intro(settings.keep_seconds)}")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Photo", elem_id="photo-tab"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3) as left:
                        prompts = _prompt_column(settings)
                    with gr.Column(scale=2):
                        outline = _outline_column()
                page = Page(**prompts, **outline, **_results_area())
                with left:  # created last, in the photo's column, because clicking an example fills every output
                    gr.Examples(
                        examples=[[str(path)] for path in example_paths()],
                        inputs=[page.photo],
                        outputs=page.after_upload,
                        fn=on_example,
                        run_on_click=True,
                        cache_examples=False,
                        label="Examples (synthetic photos)",
                        elem_id="examples",
                        api_visibility="private",
                    )
            with gr.Tab("Video", elem_id="video-tab"):
                build_video_tab(settings, runtime, VideoHost(_session, _video_picture, lambda: _cache_root()))
        # After the tabs: /cutout's hidden components would otherwise split the tabs into two tab bars.
        _connect(page, settings)
        demo.unload(on_unload)
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=64)
    return demo


def _start_sweeper(registry: Sessions, keep_seconds: int) -> None:
    """End idle sessions and delete old downloads every few seconds, in a daemon thread."""
    interval = max(0.5, min(30.0, keep_seconds / 4))

    def sweep_forever() -> None:
        while True:
            time.sleep(interval)
            try:
                registry.sweep()
            except Exception:  # noqa: BLE001 - a failed sweep must not stop the next one
                logger.exception("session sweep failed")

    threading.Thread(target=sweep_forever, name="session-sweeper", daemon=True).start()


def _prompt_column(settings: Settings) -> dict[str, Any]:
    photo = gr.Image(
        label="1 · Your photo (click on the object to select it)",
        type="filepath",
        image_mode=None,
        sources=["upload", "clipboard"],
        format="webp",
        height=400,
        buttons=["fullscreen"],
        elem_id="photo",
    )
    with gr.Row(equal_height=True):
        text = gr.Textbox(
            label="2 · What to cut out",
            placeholder="e.g. the dog, the glass, hair" if settings.text_model else "text prompts are off here",
            interactive=settings.text_model is not None,
            scale=4,
            elem_id="text",
        )
        find = gr.Button("Find", scale=1, elem_id="find", interactive=settings.text_model is not None)
    kind = gr.Radio(CLICK_CHOICES, value=FOREGROUND_POINT, label="A click will", elem_id="click-kind")
    with gr.Row():
        undo = gr.Button("Undo last click", size="sm")
        clear_clicks = gr.Button("Start over", size="sm")
    with gr.Accordion("Click by coordinates (full-size photo pixels)", open=False):
        with gr.Row():
            x = gr.Number(label="x (column)", precision=0)
            y = gr.Number(label="y (row)", precision=0)
        add = gr.Button("Add click", size="sm")
    return {"photo": photo, "text": text, "find": find, "kind": kind, "undo": undo, "clear_clicks": clear_clicks,
            "x": x, "y": y, "add": add}  # fmt: skip


def _outline_column() -> dict[str, Any]:
    editor = gr.ImageEditor(
        label="3 · The outline: fix it with the brush if needed",
        type="numpy",
        image_mode="RGBA",
        sources=(),
        transforms=(),
        layers=False,
        brush=gr.Brush(colors=list(BRUSH_COLOURS.values()), color_mode="fixed"),
        format="png",
        height=360,
        buttons=["fullscreen"],
        elem_id="trimap",
    )
    gr.Markdown(BRUSH_HELP)
    run = gr.Button("4 · Cut out", variant="primary", elem_id="run")
    return {"editor": editor, "run": run}


def _results_area() -> dict[str, Any]:
    status = gr.Markdown("Upload a photo to start.", elem_id="status")
    with gr.Column(elem_id="results"):
        with gr.Row():
            slider = gr.ImageSlider(label="Before / after (drag)", type="filepath", interactive=False,
                                    elem_id="before-after", max_height=420)  # fmt: skip
            composite = gr.Image(label="On a new background", type="filepath", interactive=False,
                                 elem_id="composite", height=420)  # fmt: skip
        with gr.Row():
            download_rgba = gr.DownloadButton("Download the cutout (PNG)", interactive=False, elem_id="download-rgba",
                                              variant="primary")  # fmt: skip
            download_alpha = gr.DownloadButton("Download the matte (8-bit PNG)", interactive=False,
                                               elem_id="download-alpha")  # fmt: skip
            download_alpha16 = gr.DownloadButton("Download the matte (16-bit PNG)", interactive=False,
                                                 elem_id="download-alpha16")  # fmt: skip
        with gr.Row():
            colour = gr.ColorPicker(value="#2e8b57", label="Background colour")
            background = gr.Image(label="... or a background picture", type="filepath", image_mode=None,
                                  sources=["upload"], height=140)  # fmt: skip
    with gr.Accordion("Advanced: edge width, memory cap, what the model did", open=False, elem_id="advanced"):
        band = gr.Number(value=0, precision=0, label="Edge width in px (0 = automatic, 1 % of the photo's longer side)",
                         elem_id="band")  # fmt: skip
        with gr.Row():
            cap_mode = gr.Radio(CAP_CHOICES, value=CAP_AUTO, label="Global-token cap k", scale=3)
            cap_k = gr.Number(value=18500, precision=0, label="k (when fixed)", scale=1)
        alpha = gr.Image(label="Alpha matte (preview)", type="filepath", interactive=False, elem_id="alpha")
        routing = gr.Gallery(label="Tokens each router sent to global attention (orange)", columns=2, height="auto",
                             object_fit="contain", elem_id="routing")  # fmt: skip
        stats = gr.Markdown(elem_id="stats")
    return {"status": status, "slider": slider, "alpha": alpha, "composite": composite, "colour": colour,
            "background": background, "band": band, "cap_mode": cap_mode, "cap_k": cap_k, "routing": routing,
            "stats": stats, "download_alpha": download_alpha, "download_alpha16": download_alpha16,
            "download_rgba": download_rgba}  # fmt: skip


def _connect(page: Page, settings: Settings) -> None:
    """The events. Clicks share one concurrency group, mattes another with the configured limit.

    With ``--mcp`` only the stateless /cutout endpoint is documented (and so becomes the MCP tool); the page's
    step-by-step endpoints stay callable by gradio_client.
    """
    visible = "undocumented" if settings.mcp else "public"
    # A run's own CPU work (preparing, PNGs, previews) may overlap other runs; MATTE_SLOTS bounds the GPU calls.
    mattes = {"concurrency_id": "mattes", "concurrency_limit": settings.concurrency + 2}
    light = {"concurrency_id": "clicks", "concurrency_limit": max(2, settings.concurrency), "api_visibility": visible}
    after_prompt = [page.photo, page.editor, page.status]
    # preprocess=False: see upload_path (a file that is not an image gets read_photo's message)
    page.photo.upload(on_upload, [page.photo], page.after_upload, api_name="upload", preprocess=False, **light)
    page.photo.change(None, js=SCROLL_TO_PHOTO)
    page.photo.select(on_select, [page.kind, page.band], after_prompt, **{**light, "api_visibility": "private"})
    gr.on([page.find.click, page.text.submit], on_find, [page.text, page.band], after_prompt, api_name="find",
          **light)  # fmt: skip
    page.add.click(on_add_click, [page.x, page.y, page.kind, page.band], after_prompt, api_name="add_click", **light)
    page.undo.click(on_undo, [page.band], after_prompt, api_name="undo", **light)
    page.clear_clicks.click(on_clear_clicks, [page.band], after_prompt, api_name="clear_clicks", **light)
    # Brush strokes send nothing else to the server; this event carries no data, it only keeps the session alive.
    gr.on([page.editor.input, page.editor.change], on_activity, None, None, trigger_mode="always_last",
          show_progress="hidden", **{**light, "api_visibility": "private"})  # fmt: skip
    page.band.submit(on_band_width, [page.band], [page.editor, page.status], api_name="set_band_width", **light)
    page.run.click(
        on_run,
        [page.editor, page.band, page.cap_mode, page.cap_k, page.colour],
        [*page.results, page.status],
        api_name="run",
        preprocess=False,  # the editor's files are read, then deleted, by editor_layers
        **mattes,
        api_visibility=visible,
    ).then(None, js=SCROLL_TO_RESULTS)
    gr.on(
        [page.colour.change, page.background.upload, page.background.clear],
        on_composite,
        [page.colour, page.background],
        [page.composite],
        api_name="composite",
        preprocess=False,
        **light,
    )
    _stateless_endpoint(mattes)


def _stateless_endpoint(mattes: dict[str, Any]) -> None:
    """/cutout: hidden components give the endpoint its inputs and outputs; the page never shows them."""
    with gr.Row(visible=False):
        image = gr.Image(type="filepath", label="photo")
        text = gr.Textbox(label="text")
        points = gr.Textbox(label="points")
        box = gr.Textbox(label="box")
        alpha_file = gr.File(label="alpha (16-bit PNG)")
        rgba_file = gr.File(label="cutout (RGBA PNG)")
        trigger = gr.Button("cut out")
    trigger.click(cutout, [image, text, points, box], [alpha_file, rgba_file], api_name="cutout", preprocess=False,
                  **mattes)  # fmt: skip
