"""The Space's Video tab: upload a short clip, click the object on the first frame, preview the tracked mask on
a few frames, matte the clip, download the alpha, cutout and composite videos.

Self-contained: :func:`build_video_tab` creates the tab's components and events inside the caller's
``gr.Blocks`` (call it under ``with gr.Tab("Video"):``). What it needs from the app comes in as arguments:

* ``settings``: the app's settings; read with defaults, so these fields are optional: ``video_max_frames``,
  ``video_max_pixels`` (clip limits), ``tracker_model`` (a SAM 2 / EdgeTAM checkpoint), ``device``.
* ``runtime``: an object (the ``space.runtime`` module) with ``predictor()`` returning the app's
  ``MEMattePredictor``; optionally ``video_tracker()`` returning a ``MaskTracker`` (else one is loaded from
  ``settings.tracker_model``), and ``GPU_SIZE`` / ``SLICE_SLOWDOWN`` for sizing ZeroGPU calls.

On ZeroGPU the matting runs in one ``spaces.GPU`` call whose duration is sized from frames x pixels
(:func:`video_seconds_for`); clip decoding, clicks and the preview's CPU work stay outside it.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

#: Clip limits (frames, pixels per frame) when the settings give none: 10 s at 30 fps, and 4K UHD.
DEFAULT_MAX_FRAMES = 300
DEFAULT_MAX_PIXELS = 3840 * 2160
#: Frames tracked for the preview, and how many of them are shown.
PREVIEW_FRAMES, PREVIEW_SHOWN = 24, 4
# GPU seconds per megapixel-frame on an H200 (GPU-NOTES.md: MEMatte ViT-S 0.67 s and foreground colours 0.59 s
# for a 3840 x 2160 frame), plus the tracker's per-frame cost (SAM 2 Hiera-tiny at 1024 px, assumed 0.03 s).
H200_SECONDS_PER_MEGAPIXEL_FRAME = 1.26 / 8.29
H200_TRACKER_SECONDS_PER_FRAME = 0.03
VIDEO_CALL_OVERHEAD_SECONDS, VIDEO_MAX_SECONDS = 15, 600
_SLOWDOWN_DEFAULT = 3.0

_tracker_lock = threading.Lock()
_trackers: dict[str, Any] = {}


@dataclass
class VideoSession:
    """One visitor's clip and prompts (kept in a ``gr.State``)."""

    path: str | None = None
    width: int = 0
    height: int = 0
    frames: int = 0
    frame_rate: float = 0.0
    first_frame: np.ndarray | None = None
    points: list[tuple[float, float, int]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def prompt(self):
        from mematte_hf.tracking import FramePrompt

        if not self.points and self.box is None:
            raise gr.Error("Click the object on the first frame (or type a point or a box) first.")
        return FramePrompt(
            0, points=[(x, y) for x, y, _ in self.points], labels=[label for *_, label in self.points], box=self.box
        )


def video_seconds_for(frames: int, pixels: int, slowdown: float = _SLOWDOWN_DEFAULT) -> int:
    """GPU seconds to ask for matting ``frames`` frames of ``pixels`` each, with a 2x margin."""
    per_frame = H200_SECONDS_PER_MEGAPIXEL_FRAME * pixels / 1e6 + H200_TRACKER_SECONDS_PER_FRAME
    seconds = VIDEO_CALL_OVERHEAD_SECONDS + 2 * slowdown * per_frame * frames
    return int(min(VIDEO_MAX_SECONDS, np.ceil(seconds)))


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
    from mematte_hf.video_io import probe_video, read_frames

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
    first = next(read_frames(info.path, 0, 1))[1]
    session = VideoSession(path, info.width, info.height, info.frame_count, float(info.frame_rate), first)
    status = f"{info.frame_count} frames of {info.width} x {info.height} at {float(info.frame_rate):g} fps. "
    return session, first, status + "Click the object on the first frame."


def add_click(session: VideoSession, kind: str, event: gr.SelectData) -> tuple[VideoSession, np.ndarray, str]:
    """A click on the first frame adds a point (object or background, per ``kind``)."""
    if session.first_frame is None:
        raise gr.Error("Upload a clip first.")
    x, y = event.index
    session.points.append((float(x), float(y), 1 if kind == "object" else 0))
    return session, draw_prompts(session), _prompt_text(session)


def set_typed_prompts(session: VideoSession, points: str, box: str) -> tuple[VideoSession, np.ndarray | None, str]:
    """Points typed as ``x,y`` (``x,y,bg`` for background) separated by ``;``, and a box ``x0,y0,x1,y1``."""
    if session.first_frame is None:
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
    return session, session.first_frame, "Prompts cleared. Click the object on the first frame."


def preview(session: VideoSession, runtime: Any, settings: Any) -> list[tuple[np.ndarray, str]]:
    """Track the first frames and show the mask over a few of them."""
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
    tracker = _fresh_tracker(runtime, settings)
    count = min(PREVIEW_FRAMES, session.frames)
    shown = set(np.linspace(0, count - 1, min(PREVIEW_SHOWN, count)).round().astype(int).tolist())
    gallery = []
    for index, frame in read_frames(session.path, 0, count):
        mask = tracker.track(index, frame, prompt if index == 0 else None)
        if index in shown:
            gallery.append((overlay(frame, mask), f"frame {index}"))
    return gallery


def matte(
    session: VideoSession, smoothing: float, background: str, runtime: Any, settings: Any
) -> tuple[str, str, str, str, str]:
    """Matte the whole clip; returns (composite preview, alpha, rgba, composite downloads, status)."""
    if session.path is None:
        raise gr.Error("Upload a clip first.")
    prompt = session.prompt()
    output = tempfile.mkdtemp(prefix="mematte-video-")
    report = _matte_on_device(session.path, output, prompt, float(smoothing or 0.0), background or "#00ff00",
                              runtime, settings)  # fmt: skip
    outputs = report.outputs
    status = (
        f"Matted {report.frames} frames in {sum(report.seconds.values()):.1f} s "
        f"({report.frames_per_second():.2f} frames/s); {report.frames_without_unknown} frame(s) had no edge."
    )
    return str(outputs["composite"]), str(outputs["alpha"]), str(outputs["rgba"]), str(outputs["composite"]), status


def _matte_on_device(path, output, prompt, smoothing, background, runtime, settings):
    from mematte_hf.errors import InputError
    from mematte_hf.video import VideoMatter

    matter = VideoMatter(runtime.predictor(), _fresh_tracker(runtime, settings), temporal_smoothing=smoothing)
    try:
        return matter.matte(path, output, [prompt], save=("alpha", "rgba", "composite"), background=background)
    except InputError as error:
        raise gr.Error(str(error)) from None


def overlay(frame: np.ndarray, mask: np.ndarray, colour=(255, 64, 160), opacity: float = 0.5) -> np.ndarray:
    """The frame with the mask tinted over it."""
    tinted = frame.astype(np.float32)
    tinted[mask] = (1 - opacity) * tinted[mask] + opacity * np.array(colour, dtype=np.float32)
    return tinted.round().astype(np.uint8)


def draw_prompts(session: VideoSession) -> np.ndarray:
    """The first frame with the clicked points (green object, red background) and the box drawn on it."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(session.first_frame)
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


def _fresh_tracker(runtime: Any, settings: Any):
    """A tracker with no memory of an earlier clip: the app's, or one loaded from ``settings.tracker_model``."""
    if hasattr(runtime, "video_tracker"):
        return runtime.video_tracker()
    from mematte_hf.tracking import DEFAULT_TRACKER, Sam2VideoTracker

    name = getattr(settings, "tracker_model", None) or DEFAULT_TRACKER
    with _tracker_lock:
        if name not in _trackers:
            _trackers[name] = Sam2VideoTracker.from_pretrained(name, device=getattr(settings, "device", None)).model
        model = _trackers[name]
    return Sam2VideoTracker(model)  # shares the weights; a new session per clip


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


def build_video_tab(settings: Any, runtime: Any) -> VideoTab:
    """Create the Video tab inside the current ``gr.Blocks`` (call under ``with gr.Tab("Video"):``)."""
    max_frames, max_pixels = limits(settings)
    gpu = _gpu_decorator(runtime)
    matte_call = gpu(lambda session, smoothing, background: matte(session, smoothing, background, runtime, settings))

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
            status = gr.Markdown("Upload a short video clip.")
        with gr.Column(scale=2):
            show_preview = gr.Button("Preview the mask")
            preview_gallery = gr.Gallery(label="Tracked mask", columns=2, height="auto")
            smoothing = gr.Slider(0.0, 0.9, value=0.0, step=0.1, label="Temporal smoothing of the edge")
            background = gr.ColorPicker(value="#00ff00", label="Composite background")
            run = gr.Button("Matte the video", variant="primary")
            result = gr.Video(label="Composite", interactive=False)
            alpha = gr.File(label="Alpha (16-bit FFV1, .mkv)")
            rgba = gr.File(label="Cutout with alpha (PNG in .mov)")
            composite = gr.File(label="Composite (H.264, .mp4)")

    # The tab's events hold a visitor's state between calls: they are the page's, not an API (the photo API is
    # `/cutout`), so they stay out of the API listing and the MCP tools and never take the photo tab's names.
    private = {"api_visibility": "private"}
    upload.change(lambda path: load_clip(path, settings), [upload], [state, first_frame, status], **private)
    first_frame.select(add_click, [state, kind], [state, first_frame, status], **private)
    apply_typed.click(set_typed_prompts, [state, points, box], [state, first_frame, status], **private)
    clear.click(clear_prompts, [state], [state, first_frame, status], **private)
    show_preview.click(lambda session: preview(session, runtime, settings), [state], [preview_gallery], **private)
    run.click(matte_call, [state, smoothing, background], [result, alpha, rgba, composite, status], **private)
    return VideoTab(upload, first_frame, kind, points, box, status, preview_gallery, smoothing, background, result,
                    alpha, rgba, composite, state)  # fmt: skip


def _gpu_decorator(runtime: Any):
    """``spaces.GPU`` sized from the clip's frames x pixels on ZeroGPU; no decorator elsewhere."""
    on_zero_gpu = getattr(runtime, "on_zero_gpu", None)
    if not (callable(on_zero_gpu) and on_zero_gpu()):
        return lambda function: function
    import spaces

    slowdown = getattr(runtime, "SLICE_SLOWDOWN", {}).get(getattr(runtime, "GPU_SIZE", ""), _SLOWDOWN_DEFAULT)

    def duration(session: VideoSession, *args: Any, **kwargs: Any) -> int:
        return video_seconds_for(session.frames, session.width * session.height, slowdown)

    return spaces.GPU(duration=duration)
