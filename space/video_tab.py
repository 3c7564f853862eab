"""The Space's Video tab: upload a short clip, click the object on its first frame, preview the tracked mask on
a few frames, matte the clip, download the alpha, cutout and composite videos.

:func:`build_video_tab` creates the tab's components and events inside the caller's ``gr.Blocks`` (call it
under ``with gr.Tab("Video"):``). What it needs from the app comes in as arguments:

* ``settings``: the app's settings; read with defaults, so these fields are optional: ``video_max_frames``,
  ``video_max_pixels`` (clip limits).
* ``runtime``: the ``space.runtime`` module (or, in tests, an object with ``predictor()`` and
  ``video_tracker()``): the models, loaded at start-up.
* ``host``: the app's sessions (:class:`VideoHost`): the clip, the previews and the results are kept in the
  visitor's session (its folder in gradio's cache), and deleted with it.

The tracker and MEMatte run in ``spaces.GPU`` functions (:func:`preview_masks`, :func:`matte_part`): ZeroGPU
runs them in its worker, where the GPU is. A clip is matted in several calls, each within the platform's
per-call limit (``runtime.max_call_seconds``): each call mattes at most :func:`frames_per_call` frames and
saves where it stopped (``VideoMatter`` resumes from there), and a last call encodes the videos.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

from . import runtime as app_runtime  # first: it imports `spaces` before torch
from .runtime import (
    CALL_OVERHEAD_SECONDS,
    GPU_SIZE,
    H200_FOREGROUND_SECONDS_PER_MEGAPIXEL,
    H200_MODEL_SECONDS_PER_MEGAPIXEL,
    H200_TRACKER_SECONDS_PER_FRAME,
    MARGIN,
    call_seconds,
    max_call_seconds,
    visitor_errors,
)

#: Clip limits (frames, pixels per frame) when the settings give none: 10 s at 30 fps, and 4K UHD.
DEFAULT_MAX_FRAMES = 300
DEFAULT_MAX_PIXELS = 3840 * 2160
#: Frames tracked for the preview, and how many of them are shown.
PREVIEW_FRAMES, PREVIEW_SHOWN = 24, 4
OUTPUT_KINDS = ("alpha", "rgba", "composite")


@dataclass
class VideoSession:
    """One visitor's clip and prompts (kept in a ``gr.State``).

    It holds no pixels: gradio keeps a closed tab's ``gr.State`` for an hour (``STATE_TTL_WHEN_CLOSED``), so a
    4K first frame held here would stay in the server's memory that long after the clip itself was deleted. The
    first frame is decoded again from the clip when a click needs it.
    """

    path: str | None = None
    width: int = 0
    height: int = 0
    frames: int = 0
    frame_rate: float = 0.0
    points: list[tuple[float, float, int]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def first_frame(self) -> np.ndarray:
        """(H, W, 3) uint8: the clip's first frame, upright; a visitor's message when there is no clip (any more)."""
        from mematte_hf.errors import InputError
        from mematte_hf.video_io import first_frame

        if self.path is None:
            raise gr.Error("Upload a clip first.")
        if not os.path.exists(self.path):  # the tab's session ended (closed, idle, evicted): its clip went with it
            raise gr.Error("This clip is no longer on the server (its session ended): upload it again.")
        try:
            return first_frame(self.path)
        except InputError as error:
            raise gr.Error(str(error)) from None

    def prompt(self):
        from mematte_hf.tracking import FramePrompt

        if not self.points and self.box is None:
            raise gr.Error("Click the object on the first frame (or type a point or a box) first.")
        return FramePrompt(
            0, points=[(x, y) for x, y, _ in self.points], labels=[label for *_, label in self.points], box=self.box
        )


@dataclass
class VideoHost:
    """What the tab needs from the app: the visitor's session for a request, and a way to show a picture."""

    session_of: Callable[[Any], Any]  # gr.Request -> space.session.Session
    picture: Callable[[Any, str, np.ndarray], str]  # (session, name, array) -> a file in the session's folder
    cache_root: Callable[[], str]


# ----------------------------------------------------------------------------------------------------------
# GPU time


def frame_seconds(pixels: int) -> float:
    """H200 seconds to track and matte one frame of ``pixels``."""
    return H200_MODEL_SECONDS_PER_MEGAPIXEL * pixels / 1e6 + H200_TRACKER_SECONDS_PER_FRAME


def frames_per_call(pixels: int, gpu_size: str = GPU_SIZE) -> int:
    """Frames one matting call takes on, so that it stays within the per-call limit."""
    budget = (max_call_seconds(gpu_size) - CALL_OVERHEAD_SECONDS) / MARGIN
    return max(1, int(budget // frame_seconds(pixels)))


def encodable_frames(pixels: int, gpu_size: str = GPU_SIZE) -> int:
    """The most frames the last call (foreground colours of every frame, then encoding) takes within the limit."""
    budget = (max_call_seconds(gpu_size) - CALL_OVERHEAD_SECONDS) / MARGIN
    return max(1, int(budget // (H200_FOREGROUND_SECONDS_PER_MEGAPIXEL * pixels / 1e6)))


def video_seconds_for(frames: int, pixels: int, encode: bool = False, gpu_size: str = GPU_SIZE) -> int:
    """Seconds to ask for a call that mattes ``frames`` frames (or, ``encode``, writes the videos of that many)."""
    per_frame = H200_FOREGROUND_SECONDS_PER_MEGAPIXEL * pixels / 1e6 if encode else frame_seconds(pixels)
    return call_seconds(per_frame * frames, gpu_size)


def limits(settings: Any) -> tuple[int, int]:
    return (
        int(getattr(settings, "video_max_frames", None) or DEFAULT_MAX_FRAMES),
        int(getattr(settings, "video_max_pixels", None) or DEFAULT_MAX_PIXELS),
    )


# ----------------------------------------------------------------------------------------------------------
# event handlers (plain functions of their inputs, so they can be called and tested without a browser)


def load_clip(path: str | None, settings: Any) -> tuple[VideoSession, np.ndarray | None, str]:
    """Check the upload against the limits; show its first frame."""
    from mematte_hf.errors import InputError
    from mematte_hf.video_io import probe_video

    if not path:
        return VideoSession(), None, "Upload a short video clip."
    max_frames, max_pixels = limits(settings)
    try:
        info = probe_video(path)
    except InputError as error:
        raise gr.Error(str(error)) from None
    if info.frame_count > max_frames:
        raise gr.Error(
            f"The clip has {info.frame_count} frames; this Space mattes at most {max_frames} "
            f"({max_frames / float(info.frame_rate):.0f} s at its frame rate). Trim it, or use `mematte video`."
        )
    if info.width * info.height > max_pixels:
        raise gr.Error(
            f"The clip is {info.width} x {info.height}; this Space takes at most {max_pixels / 1e6:.1f} megapixels "
            "per frame. Scale it down, or use `mematte video`."
        )
    longest = min(max_frames, encodable_frames(info.width * info.height))
    if info.frame_count > longest:
        raise gr.Error(
            f"The clip has {info.frame_count} frames; at {info.width} x {info.height} this Space mattes at most "
            f"{longest} (the GPU time one call may take). Trim it or scale it down, or use `mematte video`."
        )
    session = VideoSession(path, info.width, info.height, info.frame_count, float(info.frame_rate))
    first = session.first_frame()
    status = f"{info.frame_count} frames of {info.width} x {info.height} at {float(info.frame_rate):g} fps. "
    return session, first, status + "Click the object on the first frame."


def add_click(session: VideoSession, kind: str, event: gr.SelectData) -> tuple[VideoSession, np.ndarray, str]:
    """A click on the first frame adds a point (object or background, per ``kind``)."""
    if session.path is None:
        raise gr.Error("Upload a clip first.")
    x, y = event.index
    session.points.append((float(x), float(y), 1 if kind == "object" else 0))
    return session, draw_prompts(session), _prompt_text(session)


def set_typed_prompts(session: VideoSession, points: str, box: str) -> tuple[VideoSession, np.ndarray | None, str]:
    """Points typed as ``x,y`` (``x,y,bg`` for background) separated by ``;``, and a box ``x0,y0,x1,y1``."""
    if session.path is None:
        raise gr.Error("Upload a clip first.")
    parsed = []
    for item in filter(None, (part.strip() for part in (points or "").split(";"))):
        fields = [value.strip() for value in item.split(",")]
        try:
            x, y = float(fields[0]), float(fields[1])
        except (IndexError, ValueError):
            raise gr.Error(f"Cannot read the point {item!r}: write x,y or x,y,bg.") from None
        parsed.append((x, y, 0 if fields[2:] == ["bg"] else 1))
    session.points = parsed
    session.box = None
    if box and box.strip():
        try:
            x0, y0, x1, y1 = (float(value) for value in box.split(","))
        except ValueError:
            raise gr.Error(f"Cannot read the box {box!r}: write x0,y0,x1,y1.") from None
        session.box = (x0, y0, x1, y1)
    return session, draw_prompts(session), _prompt_text(session)


def clear_prompts(session: VideoSession) -> tuple[VideoSession, np.ndarray | None, str]:
    session.points, session.box = [], None
    first = session.first_frame() if session.path else None
    return session, first, "Prompts cleared. Click the object on the first frame."


def preview(session: VideoSession, runtime: Any, settings: Any) -> list[tuple[np.ndarray, str]]:
    """Track the first frames (in a GPU call) and show the mask over a few of them."""
    from mematte_hf.errors import InputError
    from mematte_hf.video import check_prompts
    from mematte_hf.video_io import probe_video, read_frames

    if session.path is None:
        raise gr.Error("Upload a clip first.")
    prompt = session.prompt()
    info = probe_video(session.path)
    try:
        check_prompts([prompt], info, 0, info.frame_count)
    except InputError as error:
        raise gr.Error(str(error)) from None
    count = min(PREVIEW_FRAMES, session.frames)
    shown = sorted(set(np.linspace(0, count - 1, min(PREVIEW_SHOWN, count)).round().astype(int).tolist()))
    masks = preview_masks(session.path, prompt, count, shown, _models_argument(runtime))
    frames = {index: frame for index, frame in read_frames(session.path, 0, count) if index in masks}
    return [(overlay(frames[index], mask.unpack()), f"frame {index}") for index, mask in sorted(masks.items())]


def matte(
    session: VideoSession,
    smoothing: float,
    background: str,
    runtime: Any,
    settings: Any,
    output: str | None = None,
    frames_per_gpu_call: int | None = None,
) -> tuple[str, str, str, str, str]:
    """Matte the whole clip into ``output`` (a new temporary folder by default) in as many GPU calls as the
    per-call limit needs (``frames_per_gpu_call`` frames each; by default :func:`frames_per_call`), then one that
    writes the videos; returns (composite preview, alpha, rgba, composite downloads, status)."""
    if session.path is None:
        raise gr.Error("Upload a clip first.")
    prompt = session.prompt()
    from mematte_hf.colours import parse_colour

    parse_colour(background or "#00ff00", what="composite background")  # checked before any GPU call
    output = output or tempfile.mkdtemp(prefix="mematte-video-")
    pixels = session.width * session.height
    per_call = frames_per_gpu_call or frames_per_call(pixels)
    models, report, done, calls = _models_argument(runtime), None, 0, 0
    while report is None:
        frames = min(per_call, session.frames - done)
        before = done
        report, done = matte_part(session.path, output, prompt, float(smoothing or 0.0), background or "#00ff00",
                                  frames, pixels, models)  # fmt: skip
        calls += 1
        if report is None and done <= before:
            raise gr.Error("The clip stopped decoding part-way: re-encode it (e.g. to H.264 MP4) and upload it again.")
    outputs = report.outputs
    status = (
        f"Matted {report.frames} frames in {sum(report.seconds.values()):.1f} s "
        f"({report.frames_per_second():.2f} frames/s, {calls} GPU call(s)); {report.frames_without_unknown} "
        "frame(s) had no edge."
    )
    return str(outputs["composite"]), str(outputs["alpha"]), str(outputs["rgba"]), str(outputs["composite"]), status


# ----------------------------------------------------------------------------------------------------------
# the GPU functions: arguments are paths, prompts and numbers (ZeroGPU pickles them); the models are the
# process's, loaded at start-up (tests pass their own as ``models``)


def _models_argument(runtime: Any) -> Any | None:
    """None for the app's runtime module (a module cannot be pickled; the worker has its own), else ``runtime``."""
    return None if runtime is app_runtime else runtime


def _preview_seconds(path: str, prompt: Any, count: int, *args: Any, **kwargs: Any) -> int:
    return call_seconds(count * H200_TRACKER_SECONDS_PER_FRAME)


@app_runtime.spaces.GPU(duration=_preview_seconds, size=GPU_SIZE)
@visitor_errors
def preview_masks(path: str, prompt: Any, count: int, shown: list[int], models: Any | None = None) -> dict:
    """The tracked masks of the ``shown`` frames among the first ``count``, one bit per pixel."""
    from mematte_hf.video_io import read_frames

    tracker = (models or app_runtime).video_tracker()
    masks = {}
    for index, frame in read_frames(path, 0, count):
        mask = tracker.track(index, frame, prompt if index == 0 else None)
        if index in shown:
            masks[index] = app_runtime.PackedMask(np.packbits(mask), mask.shape)
    return masks


class _CallBudget:
    """A progress bar for ``VideoMatter.matte`` that stops the matting pass after ``frames`` frames, and when it
    is complete, so that this call ends there; the work folder records where (the next call resumes)."""

    class Reached(Exception):
        pass

    def __init__(self, frames: int) -> None:
        self.frames, self.done = frames, 0

    def __call__(self, desc: str, total: int, initial: int, unit: str) -> Any:
        budget = self

        class Bar:
            def update(self, count: int) -> None:
                budget.done += count
                if desc == "matting" and (budget.done >= budget.frames or initial + budget.done >= total):
                    raise _CallBudget.Reached  # raised after the matter saved its state for these frames

            def close(self) -> None:
                pass

        return Bar()


def _matte_part_seconds(path: str, output: str, prompt: Any, smoothing: float, background: str, frames: int,
                        pixels: int, *args: Any, **kwargs: Any) -> int:  # fmt: skip
    return video_seconds_for(frames, pixels, encode=frames == 0)


@app_runtime.spaces.GPU(duration=_matte_part_seconds, size=GPU_SIZE)
@visitor_errors
def matte_part(
    path: str, output: str, prompt: Any, smoothing: float, background: str, frames: int, pixels: int,
    models: Any | None = None,
) -> tuple[Any | None, int]:  # fmt: skip
    """Matte the next ``frames`` frames of the clip into ``output`` (resuming where the last call stopped), or,
    when ``frames`` is 0 (all are matted), write the videos. Returns (the report when finished, else None; the
    frames matted so far)."""
    from mematte_hf.video import VideoMatter

    models = models or app_runtime
    matter = VideoMatter(models.predictor(), models.video_tracker(), temporal_smoothing=smoothing)
    budget = _CallBudget(frames)
    try:
        report = matter.matte(path, output, [prompt], save=OUTPUT_KINDS, background=background, progress_bar=budget)
    except _CallBudget.Reached:
        return None, _frames_matted(output)
    return report, report.frames


def _frames_matted(output: str) -> int:
    from pathlib import Path

    from mematte_hf.video import WORK_FOLDER

    return len(list((Path(output) / WORK_FOLDER / "alpha").glob("*.png")))


def overlay(frame: np.ndarray, mask: np.ndarray, colour=(255, 64, 160), opacity: float = 0.5) -> np.ndarray:
    """The frame with the mask tinted over it."""
    tinted = frame.astype(np.float32)
    tinted[mask] = (1 - opacity) * tinted[mask] + opacity * np.array(colour, dtype=np.float32)
    return tinted.round().astype(np.uint8)


def draw_prompts(session: VideoSession) -> np.ndarray:
    """The first frame with the clicked points (green object, red background) and the box drawn on it."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(session.first_frame())
    draw = ImageDraw.Draw(picture)
    radius = max(4, round(0.008 * max(session.width, session.height)))
    for x, y, label in session.points:
        colour = (40, 220, 90) if label else (230, 50, 50)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255))
    if session.box is not None:
        draw.rectangle(session.box, outline=(255, 210, 0), width=max(2, radius // 2))
    return np.asarray(picture)


def _prompt_text(session: VideoSession) -> str:
    objects = sum(1 for *_, label in session.points if label)
    text = f"{objects} object point(s), {len(session.points) - objects} background point(s)"
    return text + (f", box {tuple(round(v) for v in session.box)}" if session.box else "") + "."


# ----------------------------------------------------------------------------------------------------------
# layout


@dataclass
class VideoTab:
    """The tab's components, for an app that wants to connect more events to them."""

    upload: gr.Video
    first_frame: gr.Image
    kind: gr.Radio
    points: gr.Textbox
    box: gr.Textbox
    status: gr.Markdown
    preview: gr.Gallery
    smoothing: gr.Slider
    background: gr.ColorPicker
    result: gr.Video
    alpha: gr.File
    rgba: gr.File
    composite: gr.File
    state: gr.State


def build_video_tab(settings: Any, runtime: Any, host: VideoHost | None = None) -> VideoTab:
    """Create the Video tab inside the current ``gr.Blocks`` (call under ``with gr.Tab("Video"):``); with a
    ``host``, every file the tab makes or receives lives in the visitor's session."""
    max_frames, max_pixels = limits(settings)
    handlers = _Handlers(settings, runtime, host)
    gr.Markdown(
        f"Upload a clip (at most {max_frames} frames of {max_pixels / 1e6:.1f} megapixels), click the object on its "
        "first frame, preview the mask on a few frames, then matte the whole clip at full resolution."
    )
    state = gr.State(VideoSession())
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            upload = gr.Video(label="Clip", sources=["upload"], elem_id="video-upload")
            first_frame = gr.Image(label="First frame: click the object", interactive=False, elem_id="video-frame")
            kind = gr.Radio(["object", "background"], value="object", label="A click marks")
            with gr.Row():
                points = gr.Textbox(label="Points (x,y or x,y,bg; separated by ;)", scale=2)
                box = gr.Textbox(label="Box x0,y0,x1,y1", scale=1)
            with gr.Row():
                apply_typed = gr.Button("Use typed prompts")
                clear = gr.Button("Clear prompts")
            status = gr.Markdown("Upload a short video clip.", elem_id="video-status")
        with gr.Column(scale=2):
            show_preview = gr.Button("Preview the mask", elem_id="video-preview")
            preview_gallery = gr.Gallery(label="Tracked mask", columns=2, height="auto")
            smoothing = gr.Slider(0.0, 0.9, value=0.0, step=0.1, label="Temporal smoothing of the edge")
            background = gr.ColorPicker(value="#00ff00", label="Composite background")
            run = gr.Button("Matte the video", variant="primary", elem_id="video-run")
            result = gr.Video(label="Composite", interactive=False)
            alpha = gr.File(label="Alpha (16-bit FFV1, .mkv)")
            rgba = gr.File(label="Cutout with alpha (PNG in .mov)")
            composite = gr.File(label="Composite (H.264, .mp4)")

    # The tab's events hold a visitor's state between calls: they are the page's, not an API (the photo API is
    # `/cutout`), so they stay out of the API listing and the MCP tools and never take the photo tab's names.
    private = {"api_visibility": "private"}
    shown = [state, first_frame, status]
    upload.change(handlers.on_clip, [upload], shown, **private)
    first_frame.select(handlers.on_click, [state, kind], shown, **private)
    apply_typed.click(handlers.on_typed, [state, points, box], shown, **private)
    clear.click(handlers.on_clear, [state], shown, **private)
    show_preview.click(handlers.on_preview, [state], [preview_gallery], **private)
    run.click(handlers.on_matte, [state, smoothing, background], [result, alpha, rgba, composite, status], **private)
    return VideoTab(upload, first_frame, kind, points, box, status, preview_gallery, smoothing, background, result,
                    alpha, rgba, composite, state)  # fmt: skip


class _Handlers:
    """The tab's events: the plain functions above, with the visitor's session keeping the files."""

    def __init__(self, settings: Any, runtime: Any, host: VideoHost | None) -> None:
        self.settings, self.runtime, self.host = settings, runtime, host

    def on_clip(self, path: str | None, request: gr.Request) -> tuple:
        session = self._session(request)
        if session is not None and path:
            with _open(session):  # the session's own name for the clip: kept while the tab may matte it
                path = str(session.adopt_upload(path, self.host.cache_root()))
        state, first, status = load_clip(path, self.settings)
        return state, self._picture(session, "frame", first), status

    def on_click(self, state: VideoSession, kind: str, event: gr.SelectData, request: gr.Request) -> tuple:
        return self._shown(request, add_click(state, kind, event))

    def on_typed(self, state: VideoSession, points: str, box: str, request: gr.Request) -> tuple:
        return self._shown(request, set_typed_prompts(state, points, box))

    def on_clear(self, state: VideoSession, request: gr.Request) -> tuple:
        return self._shown(request, clear_prompts(state))

    def on_preview(self, state: VideoSession, request: gr.Request) -> list:
        session = self._session(request)
        with _in_flight(session):
            gallery = preview(state, self.runtime, self.settings)
        return [(self._picture(session, "preview", picture), caption) for picture, caption in gallery]

    def on_matte(self, state: VideoSession, smoothing: float, background: str, request: gr.Request) -> tuple:
        session = self._session(request)
        if session is None:
            return matte(state, smoothing, background, self.runtime, self.settings)
        with _open(session):
            folder = session.new_video_folder(self.host.cache_root())
        with _in_flight(session):
            outputs = matte(state, smoothing, background, self.runtime, self.settings, output=str(folder))
        with _open(session):  # the tab closed meanwhile: the files went with it
            return outputs

    def _session(self, request: gr.Request | None) -> Any | None:
        return None if self.host is None else self.host.session_of(request)

    def _shown(self, request: gr.Request, outputs: tuple) -> tuple:
        state, frame, status = outputs
        return state, self._picture(self._session(request), "frame", frame), status

    def _picture(self, session: Any | None, name: str, array: np.ndarray | None) -> Any:
        """A picture for the page: a file in the visitor's session (not an array gradio would cache itself)."""
        if session is None or array is None:
            return array
        with _open(session):
            return self.host.picture(session, name, array)


@contextlib.contextmanager
def _in_flight(session: Any | None) -> Iterator[None]:
    """Count the block as the session's work in flight: the session (its clip, its folders) is neither swept
    nor evicted meanwhile, and a tab closed meanwhile loses its files when the work ends."""
    if session is None:
        yield
        return
    with _open(session):
        session.begin_work()
    try:
        yield
    finally:
        session.finish_work(app_runtime.store())


@contextlib.contextmanager
def _open(session: Any) -> Iterator[None]:
    """Hold the session's lock; a session that has ended is refused with the visitor's message."""
    from mematte_hf.errors import InputError

    with session.lock:
        try:
            session.check_open()
        except InputError as error:
            raise gr.Error(str(error)[:1].upper() + str(error)[1:]) from None
        yield
