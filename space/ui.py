"""The gradio interface: upload, click, see mask and trimap, paint corrections, matte, look and download.

Every handler takes the visitor's :class:`~space.session.Session` from a ``gr.State`` and returns it. Errors
meant for the visitor (:class:`~mematte_hf.errors.InputError`) become ``gr.Error`` pop-ups with their message;
anything unexpected is logged and reported in one line, and the server goes on serving the next request.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from mematte_hf.errors import InputError, MEMatteError
from mematte_hf.image_io import load_image
from mematte_hf.memory import format_bytes
from mematte_hf.trimap import default_band_width

from . import render, runtime
from .make_examples import example_paths
from .session import (
    BACKGROUND_POINT,
    BOX_CORNER,
    BRUSH_COLOURS,
    CAP_AUTO,
    CAP_FIXED,
    CAP_NONE,
    FOREGROUND_POINT,
    Session,
    apply_corrections,
    forget,
    global_token_cap,
    parse_colour,
    write_downloads,
)
from .settings import Settings

logger = logging.getLogger(__name__)

TITLE = "MEMatte: click, refine, matte"
INTRO = """
**Memory-efficient image matting** ([MEMatte](https://arxiv.org/abs/2412.10702), AAAI 2025): ViTMatte with a
router in front of every global-attention block. Upload a photo, click on the object (SAM turns the clicks
into a mask and a trimap), paint corrections if needed, then compute the alpha matte **at the photo's full
resolution**. The pictures here are downscaled previews; the downloads are full size.
"""
CLICK_CHOICES = [("Foreground point", FOREGROUND_POINT), ("Background point", BACKGROUND_POINT),
                 ("Box corner (2 clicks)", BOX_CORNER)]  # fmt: skip
CAP_CHOICES = [("auto (fits the memory budget)", CAP_AUTO), ("fixed k", CAP_FIXED), ("no cap", CAP_NONE)]
BRUSH_HELP = (
    "Brushes: **white** = foreground, **grey** = unknown (let the model decide), **black** = background. "
    "New clicks redraw the trimap and drop the corrections."
)
CSS = """
#status { min-height: 2.5em; }
#routing .caption-label { font-size: 0.85em; }
"""


def readable_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Report InputError as a gr.Error with its message, and any other failure as one line."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except MEMatteError as error:
            raise gr.Error(_sentence(str(error))) from None
        except Exception as error:  # noqa: BLE001 - the server must keep serving; the trace goes to the log
            logger.exception("request failed")
            raise gr.Error(f"Something went wrong: {type(error).__name__}: {error}") from None

    return wrapper


def _sentence(message: str) -> str:
    """Library messages start in lower case (they are also read inside longer lines); a pop-up starts a sentence."""
    return message[:1].upper() + message[1:]


def _session(state: Session | None) -> Session:
    return state if isinstance(state, Session) else Session()


def _editor_value(session: Session) -> dict[str, Any] | None:
    view = session.trimap_view()
    return None if view is None else {"background": view, "layers": [], "composite": None}


# ----------------------------------------------------------------------------------------------------------
# handlers: each returns the session first, then the values of the event's other outputs


def upload_path(value: Any) -> str | None:
    """The file path of an image input, preprocessed (a str) or not (gradio's FileData, or its dict).

    Uploads are handled with ``preprocess=False``: gradio's own preprocessing opens the file with Pillow and
    would answer a file that is not an image with a bare error, where :func:`read_photo` explains.
    """
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


@readable_errors
def on_upload(photo: Any, state: Session | None) -> tuple:
    """A new photo: keep it at full resolution, show its preview, reset clicks, trimap and results."""
    forget(state if isinstance(state, Session) else None)
    path = upload_path(photo)
    image = read_photo(path, runtime.settings().max_pixels)
    session = Session()
    session.set_image(image, Path(path).name)
    height, width = image.shape[:2]
    band = default_band_width(height, width)
    session.band_width = band
    status = (
        f"Photo {width} x {height} px loaded. Click on the object (foreground points), optionally on what is "
        "not the object (background points) or on two corners of a box around it."
    )
    slider = gr.Slider(value=band, maximum=max(40, 4 * band))
    return (session, session.prompt_view(), None, slider, status, *_empty_results())


def on_example(path: str) -> tuple:
    return on_upload(path, None)


@readable_errors
def on_clear(state: Session | None) -> tuple:
    forget(state if isinstance(state, Session) else None)
    return (Session(), None, None, gr.Slider(), "Upload a photo to start.", *_empty_results())


def _empty_results() -> tuple:
    """alpha, cutout, composite, routing gallery, stats, downloads."""
    return None, None, None, None, "", None


@readable_errors
def on_select(state: Session | None, kind: str, band_width: float, event: gr.SelectData) -> tuple:
    """A click on the preview: its coordinates are preview pixels, mapped back to the photo."""
    session = _session(state)
    if not isinstance(event.index, (list, tuple)) or len(event.index) != 2:
        raise InputError("click inside the photo")
    session.add_preview_click(float(event.index[0]), float(event.index[1]), kind)
    return _after_clicks(session, band_width)


@readable_errors
def on_add_click(state: Session | None, x: float | None, y: float | None, kind: str, band_width: float) -> tuple:
    """A click given by its photo coordinates (the API's way to click, and an accessible alternative)."""
    session = _session(state)
    if x is None or y is None:
        raise InputError("give both x and y, in pixels of the full-size photo")
    session.add_click(float(x), float(y), kind)
    return _after_clicks(session, band_width)


@readable_errors
def on_undo(state: Session | None, band_width: float) -> tuple:
    session = _session(state)
    session.require_image()
    session.undo()
    return _after_clicks(session, band_width)


@readable_errors
def on_clear_clicks(state: Session | None, band_width: float) -> tuple:
    session = _session(state)
    session.require_image()
    session.clear_clicks()
    return session, session.prompt_view(), None, "Clicks cleared. Click on the object."


def _after_clicks(session: Session, band_width: float) -> tuple:
    """Run SAM on the current clicks and show the mask and the trimap: (state, photo, editor, status)."""
    session.band_width = _band(band_width)
    if not session.has_prompt:
        session.mask = session.trimap = session.score = None
        hint = "Now click the opposite corner of the box." if session.pending_corner else "Click on the object."
        return session, session.prompt_view(), None, hint
    image = session.require_image()
    mask, trimap, score = runtime.segment(image, session.points, session.labels, session.box, session.band_width)
    session.mask, session.trimap, session.score = mask, trimap, score
    return session, session.prompt_view(), _editor_value(session), _mask_status(session)


def _mask_status(session: Session) -> str:
    background, unknown, foreground = render.known_fraction(session.trimap)
    clicks = len(session.points) + (1 if session.box is not None else 0)
    prompt = f"{clicks} prompt{'s' if clicks != 1 else ''}"
    if unknown == 0:
        return (
            f"The mask from {prompt} covers {'nothing' if foreground == 0 else 'the whole photo'}: add a "
            "foreground or background click, or paint grey where the edge is."
        )
    text = (
        f"Mask from {prompt} (SAM's predicted IoU {session.score:.2f}). Trimap: {foreground:.1%} foreground, "
        f"{unknown:.1%} unknown (band {session.band_width} px), {background:.1%} background."
    )
    if session.pending_corner:
        text += " Click the opposite corner to finish the box."
    return text + " Paint corrections on the trimap, or compute the matte."


def _band(value: float | None) -> int:
    if value is None or value != value or value < 1:
        raise InputError("the unknown band must be at least 1 pixel wide")
    return int(round(value))


@readable_errors
def on_band_width(state: Session | None, band_width: float) -> tuple:
    """A new band width redraws the trimap from the same mask (no SAM run)."""
    session = _session(state)
    if not _refresh_band(session, band_width) and session.mask is None:
        return session, None, f"Unknown band set to {session.band_width} px."
    return session, _editor_value(session), _mask_status(session)


def _refresh_band(session: Session, band_width: float) -> bool:
    """Use this band width; redraw the trimap from the mask if it changed. Returns whether it was redrawn.

    The run takes the slider's value too: a width typed into the slider's box fires no release event.
    """
    from mematte_hf.trimap import mask_to_trimap

    band = _band(band_width)
    changed = band != session.band_width
    session.band_width = band
    if changed and session.mask is not None:
        session.trimap = mask_to_trimap(session.mask, band)
        return True
    return False


@readable_errors
def on_run(
    state: Session | None,
    editor: dict[str, Any] | None,
    band_width: float,
    cap_mode: str,
    cap_k: float | None,
    colour: str | None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio's documented way to get a progress bar
) -> tuple:
    """The matte at full resolution, its previews, the routing overlays, the numbers and the downloads."""
    session = _session(state)
    settings = runtime.settings()
    image = session.require_image()
    _refresh_band(session, band_width)
    trimap, changed = apply_corrections(session.require_trimap(), (editor or {}).get("layers") or [])
    cap = global_token_cap(cap_mode, cap_k)
    progress(0.1, desc="Computing the matte at full resolution")
    started = time.perf_counter()
    result = runtime.matte(image, trimap, cap)
    progress(0.8, desc="Writing the downloads")
    rgba = result.rgba()
    forget(session)  # this session's previous downloads: the new files replace them
    folder, files = write_downloads(_cache_root(), session.name, result.alpha, rgba, settings.keep_seconds)
    session.download_dirs.append(folder)
    scale = session.scale
    foreground = render.downscale(np.rint(result.foreground() * 255).astype(np.uint8), scale)
    session.cutout_preview = (foreground, render.downscale(np.rint(result.alpha * 255).astype(np.uint8), scale))
    status = _run_status(result, time.perf_counter() - started)
    if not result.model_ran:
        gr.Warning(result.message)
    return (
        session,
        render.alpha_picture(result.alpha, scale),
        render.cutout_picture(rgba, scale),
        _composite(session, colour, None),  # over a picture: the event's next step, on_composite
        _routing_gallery(session, result),
        _stats(result, trimap, changed),
        [str(file) for file in files],
        status,
    )


def _cache_root() -> str:
    """gradio's cache folder: gradio serves files from it and `delete_cache` clears it."""
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def _run_status(result: Any, seconds: float) -> str:
    height, width = result.alpha.shape
    if not result.model_ran:
        return f"No matte computed: {result.message}."
    return f"Matte of {width} x {height} px computed in {seconds:.1f} s. Download the full-resolution files below."


def _routing_gallery(session: Session, result: Any) -> list[tuple[np.ndarray, str]] | None:
    if not result.routing_masks:
        return None
    pictures = render.routing_pictures(session.preview, session.scale, result.routing_masks)
    fractions = result.routed_fraction
    return [
        (picture, f"router {index + 1}: {fraction:.1%} global")
        for index, (picture, fraction) in enumerate(zip(pictures, fractions, strict=True))
    ]


def _stats(result: Any, trimap: np.ndarray, changed: int) -> str:
    """The measured numbers, as a small Markdown table."""
    height, width = result.alpha.shape
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
def on_composite(state: Session | None, colour: str | None, background: Any) -> np.ndarray | None:
    """Redraw the composite preview over a new colour or picture (no model run)."""
    return _composite(_session(state), colour, upload_path(background))


def _composite(session: Session, colour: str | None, background: str | None) -> np.ndarray | None:
    if session.cutout_preview is None:
        return None
    foreground, alpha = session.cutout_preview
    if background:
        backdrop: Any = read_photo(background, runtime.settings().max_pixels)
    else:
        backdrop = parse_colour(colour or "#ffffff")
    return render.composite_picture(foreground, alpha, backdrop)


# ----------------------------------------------------------------------------------------------------------
# layout


@dataclass
class Page:
    """The components the events connect (layout-only components are not kept)."""

    state: gr.State
    photo: gr.Image
    kind: gr.Radio
    undo: gr.Button
    clear_clicks: gr.Button
    x: gr.Number
    y: gr.Number
    add: gr.Button
    editor: gr.ImageEditor
    band: gr.Slider
    cap_mode: gr.Radio
    cap_k: gr.Number
    run: gr.Button
    status: gr.Markdown
    alpha: gr.Image
    cutout: gr.Image
    composite: gr.Image
    colour: gr.ColorPicker
    background: gr.Image
    routing: gr.Gallery
    stats: gr.Markdown
    files: gr.File

    @property
    def results(self) -> list[gr.components.Component]:
        return [self.alpha, self.cutout, self.composite, self.routing, self.stats, self.files]

    @property
    def after_upload(self) -> list[gr.components.Component]:
        return [self.state, self.photo, self.editor, self.band, self.status, *self.results]


def build_demo(settings: Settings) -> gr.Blocks:
    """The Blocks app (models are loaded separately, by runtime.load_models)."""
    keep = settings.keep_seconds
    with gr.Blocks(title=TITLE, delete_cache=(min(600, keep), keep)) as demo:
        state = gr.State(None, time_to_live=keep, delete_callback=forget)
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3) as left:
                clicks = _photo_column()
            with gr.Column(scale=2):
                trimap = _trimap_column()
        page = Page(state=state, **clicks, **trimap, **_results_area())
        with left:  # created last, in the photo's column, because clicking an example fills every output
            gr.Examples(
                examples=[[str(path)] for path in example_paths()],
                inputs=[page.photo],
                outputs=page.after_upload,
                fn=on_example,
                run_on_click=True,
                cache_examples=False,
                label="Examples (synthetic photos drawn by space/make_examples.py)",
                elem_id="examples",
                api_visibility="private",
            )
        _connect(page, settings)
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=64)
    return demo


def _photo_column() -> dict[str, Any]:
    photo = gr.Image(
        label="1 · Photo: upload, then click on the object",
        type="filepath",
        image_mode=None,
        sources=["upload", "clipboard"],
        format="webp",
        height=520,
        buttons=["fullscreen"],
        elem_id="photo",
    )
    kind = gr.Radio(CLICK_CHOICES, value=FOREGROUND_POINT, label="Click type", elem_id="click-kind")
    with gr.Row():
        undo = gr.Button("Undo last click", size="sm")
        clear_clicks = gr.Button("Clear clicks", size="sm")
    with gr.Accordion("Click by coordinates (full-size photo pixels)", open=False):
        with gr.Row():
            x = gr.Number(label="x (column)", precision=0, minimum=0)
            y = gr.Number(label="y (row)", precision=0, minimum=0)
        add = gr.Button("Add click", size="sm")
    return {"photo": photo, "kind": kind, "undo": undo, "clear_clicks": clear_clicks, "x": x, "y": y, "add": add}


def _trimap_column() -> dict[str, Any]:
    editor = gr.ImageEditor(
        label="2 · Trimap: paint corrections",
        type="numpy",
        image_mode="RGBA",
        sources=(),
        transforms=(),
        layers=False,
        brush=gr.Brush(colors=list(BRUSH_COLOURS.values()), color_mode="fixed"),
        format="png",
        height=420,
        buttons=["fullscreen"],
        elem_id="trimap",
    )
    gr.Markdown(BRUSH_HELP)
    band = gr.Slider(1, 100, value=10, step=1, label="Unknown band width (px on each side of the edge)")
    with gr.Row():
        cap_mode = gr.Radio(CAP_CHOICES, value=CAP_AUTO, label="Global-token cap k", scale=3)
        cap_k = gr.Number(value=18500, precision=0, minimum=1, label="k (when fixed)", scale=1)
    run = gr.Button("3 · Compute the matte", variant="primary", elem_id="run")
    return {"editor": editor, "band": band, "cap_mode": cap_mode, "cap_k": cap_k, "run": run}


def _results_area() -> dict[str, Any]:
    status = gr.Markdown("Upload a photo to start.", label="status", elem_id="status")
    with gr.Row():
        previews = {
            name: gr.Image(label=label, format=kind, interactive=False, elem_id=name, buttons=["fullscreen"])
            for name, label, kind in (
                ("alpha", "Alpha matte (preview)", "png"),
                ("cutout", "Cutout (preview)", "png"),
                ("composite", "Composite (preview)", "webp"),
            )
        }
    with gr.Row():
        colour = gr.ColorPicker(value="#2e8b57", label="Composite over this colour")
        background = gr.Image(
            label="... or over this picture", type="filepath", image_mode=None, sources=["upload"], height=160
        )
    with gr.Row(equal_height=False):
        routing = gr.Gallery(
            label="Tokens each router sent to global attention (orange)",
            columns=2,
            height="auto",
            object_fit="contain",
            elem_id="routing",
        )
        with gr.Column():
            stats = gr.Markdown(label="measurements", elem_id="stats")
            files = gr.File(label="Downloads (full resolution PNG)", file_count="multiple", elem_id="downloads")
    return {"status": status, **previews, "colour": colour, "background": background, "routing": routing,
            "stats": stats, "files": files}  # fmt: skip


def _connect(page: Page, settings: Settings) -> None:
    """The events. Clicks share one concurrency group, mattes another with the configured limit."""
    light = {"concurrency_id": "clicks", "concurrency_limit": max(2, settings.concurrency)}
    after_click = [page.state, page.photo, page.editor, page.status]
    # preprocess=False: see upload_path (a file that is not an image gets read_photo's message)
    page.photo.upload(on_upload, [page.photo, page.state], page.after_upload, api_name="upload", preprocess=False,
                      **light)  # fmt: skip
    page.photo.clear(on_clear, [page.state], page.after_upload, api_visibility="private")
    page.photo.select(on_select, [page.state, page.kind, page.band], after_click, api_visibility="private", **light)
    click_inputs = [page.state, page.x, page.y, page.kind, page.band]
    page.add.click(on_add_click, click_inputs, after_click, api_name="add_click", **light)
    page.undo.click(on_undo, [page.state, page.band], after_click, api_name="undo", **light)
    page.clear_clicks.click(on_clear_clicks, [page.state, page.band], after_click, api_name="clear_clicks", **light)
    band_outputs = [page.state, page.editor, page.status]
    page.band.release(on_band_width, [page.state, page.band], band_outputs, api_name="set_band_width", **light)
    composite_inputs = [page.state, page.colour, page.background]
    page.run.click(
        on_run,
        [page.state, page.editor, page.band, page.cap_mode, page.cap_k, page.colour],
        [page.state, *page.results, page.status],
        api_name="run",
        concurrency_id="matte",
        concurrency_limit=settings.concurrency,
    ).success(on_composite, composite_inputs, [page.composite], preprocess=False, api_visibility="private", **light)
    gr.on(
        [page.colour.change, page.background.upload, page.background.clear],
        on_composite,
        composite_inputs,
        [page.composite],
        api_name="composite",
        preprocess=False,
        **light,
    )
