"""Video matting: prompt a key frame, get a full-resolution alpha (and cutout, composite) video, memory flat.

```python
from mematte_hf.predictor import MEMattePredictor
from mematte_hf.tracking import FramePrompt, Sam2VideoTracker
from mematte_hf.video import VideoMatter

matter = VideoMatter(MEMattePredictor.from_pretrained("hustvl/vitmatte-small-composition-1k"),
                     Sam2VideoTracker.from_pretrained("facebook/sam2.1-hiera-tiny"))
report = matter.matte("clip.mp4", "out/", [FramePrompt(0, points=[(640, 360)], labels=[1])],
                      save=("alpha", "rgba", "composite"))
report.outputs  # {"alpha": out/alpha.mkv, "rgba": out/rgba.mov, "composite": out/composite.mp4}
```

Two passes over the clip, each streaming one batch of frames at a time:

1. Matting: decode a batch, track the object's mask frame by frame, turn each mask into a trimap with a band
   scaled to the resolution, matte the batch with MEMatte (batch size from the memory plan), optionally steady
   the alpha inside the band, and write each alpha as a 16-bit PNG into a work folder in the output folder.
   After each batch the tracker's (pruned) memory and the next frame index are saved there, so an interrupted
   run resumes from the last batch written and gives the same result as an uninterrupted one.
2. Encoding: decode the clip again alongside the alpha PNGs and encode the requested outputs, each frame at
   its source time, with the source's audio (re-encoded to AAC where a container cannot carry it), each into a
   temporary file renamed into place when complete.

Every check that can run before the work runs before it (prompts, range, outputs, background, inputs that an
output would overwrite, outputs another run made). Each output is keyed on everything that changes it
(:mod:`mematte_hf.output_keys`): a rerun reuses outputs with the same key, and ``existing`` says what to do with
the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .colours import parse_colour
from .errors import InputError
from .image_io import alpha_to_uint16
from .output_keys import (
    OutputManifest,
    file_digest,
    job_key,
    predictor_settings,
    refuse_inputs_as_outputs,
    refuse_other_runs_outputs,
    text_model_settings,
)
from .tracking import FramePrompt, MaskTracker, resolve_text_prompt
from .trimap import FOREGROUND, UNKNOWN, default_band_width, mask_to_trimap
from .video_io import (
    OUTPUT_KINDS,
    VIDEO_FORMATS,
    PngSequenceWriter,
    VideoInfo,
    VideoWriter,
    audio_plan,
    composite_suffix,
    probe_video,
    read_frames,
    read_png,
    write_png,
)

__all__ = [
    "OUTPUT_KINDS",
    "STAGES",
    "VideoMatter",
    "VideoReport",
    "check_prompts",
    "check_range",
    "plan_batch_size",
    "steady_alpha",
]

#: The stages timed in :attr:`VideoReport.seconds`.
STAGES = ("decode", "tracking", "trimaps", "matting", "filter", "foreground", "encode")
MAX_BATCH_SIZE = 8
# Frames decoded, tracked and matted between two saves of the resumable state: the unit a rerun may redo.
CHUNK_FRAMES = 8
WORK_FOLDER = ".mematte-work"
_STATE_FILE = "state.pt"
_JOB_FILE = "job.json"
# The keys of the finished outputs in an output folder (beside them, so that it outlives the work folder).
MANIFEST = ".mematte-video.json"
# What a batch holds per pixel beside the forward: the RGB frame (3), mask (1), trimap (1), float alpha (4) and
# the predictor's copies of the frame and trimap (4).
_HELD_BYTES_PER_PIXEL = 13


@dataclass
class VideoReport:
    """What a run did: frames, where the outputs are, and the seconds spent in each stage."""

    frames: int
    width: int
    height: int
    frame_rate: Fraction
    resumed_from: int | None = None
    batch_size: int = 1
    frames_without_unknown: int = 0
    outputs: dict[str, Path] = field(default_factory=dict)
    #: Outputs this run reused (made earlier by the same job) or kept (``existing="skip"``), not remade.
    reused: list[str] = field(default_factory=list)
    #: What the user should know about the run: a truncated source, re-encoded audio, a padded composite, ...
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def frames_per_second(self, stage: str | None = None) -> float:
        """Throughput end to end (``stage=None``) or of one stage alone."""
        seconds = sum(self.seconds.values()) if stage is None else self.seconds.get(stage, 0.0)
        return self.frames / seconds if seconds > 0 else float("inf")


class VideoMatter:
    """Mattes a video with a MEMatte predictor and a mask tracker.

    Args:
        predictor: a :class:`~mematte_hf.predictor.MEMattePredictor`.
        tracker: a :class:`~mematte_hf.tracking.MaskTracker`: a ``Sam2VideoTracker``, or a
            ``MaskProviderTracker`` wrapping a function that supplies masks.
        band_width: unknown band in pixels on each side of the mask edge; ``None`` scales it to the resolution
            (:func:`~mematte_hf.trimap.default_band_width`).
        temporal_smoothing: 0 (off) to <1: how strongly each frame's alpha inside the unknown band is pulled
            towards the previous frame's where the two differ little (flicker, not motion); see :func:`steady_alpha`.
        max_batch_size: at most this many frames per MEMatte forward; the memory plan may allow fewer
            (:func:`plan_batch_size`).
        text_model: for prompts with ``text``: what :func:`mematte_hf.text_prompts.load_text_model` returns.
    """

    def __init__(
        self,
        predictor: Any,
        tracker: MaskTracker,
        band_width: int | None = None,
        temporal_smoothing: float = 0.0,
        max_batch_size: int = MAX_BATCH_SIZE,
        text_model: Any | None = None,
    ) -> None:
        if not 0.0 <= temporal_smoothing < 1.0:
            raise InputError(f"temporal_smoothing must be in [0, 1), got {temporal_smoothing!r}")
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be at least 1, got {max_batch_size!r}")
        self.predictor = predictor
        self.tracker = tracker
        self.band_width = band_width
        self.temporal_smoothing = temporal_smoothing
        self.max_batch_size = max_batch_size
        self.text_model = text_model

    def matte(
        self,
        source: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        prompts: Iterable[FramePrompt],
        save: Iterable[str] = ("alpha",),
        start: int = 0,
        end: int | None = None,
        background: str | tuple[int, int, int] = "#00ff00",
        progress_bar: Callable[..., Any] | None = None,
        keep_work: bool = False,
        existing: str = "refuse",
        notify: Callable[[str], None] | None = None,
    ) -> VideoReport:
        """Matte frames ``start <= index < end`` of ``source`` into ``output_dir``; resume a stopped run.

        Args:
            prompts: the key frames' prompts, in the upright picture players show; the first on frame ``start``.
            save: kinds among :data:`OUTPUT_KINDS`.
            background: the composite's background: a colour, an image file, or a video file (looped).
            progress_bar: e.g. ``tqdm.tqdm``: called as ``progress_bar(desc=, total=, initial=, unit="frame")``.
            keep_work: keep the work folder (alpha PNGs and tracker state) after the outputs are written.
            existing: outputs in ``output_dir`` that another job made (other inputs, prompts or settings):
                ``"refuse"`` (an error before any work), ``"overwrite"`` or ``"skip"`` (keep them). Outputs of
                this same job are reused in every case.
            notify: called with each note (also kept in :attr:`VideoReport.notes`) as soon as it is known.
        """
        info = probe_video(source)
        save = _check_outputs(save)
        end = info.frame_count if end is None else end
        check_range(info, start, end)
        prompts = check_prompts(list(prompts), info, start, end)
        output_dir = _check_output_folder(Path(output_dir))
        paths = output_paths(info, output_dir, save)
        refuse_inputs_as_outputs(list(paths.values()), [info.path, *_background_files(background)])
        _check_background(background)
        report = VideoReport(frames=end - start, width=info.width, height=info.height, frame_rate=info.frame_rate)
        say = _notifier(report, notify)
        for note in source_notes(info, save, start, end):
            say(note)
        description = self._job_description(info, prompts, start, end)
        key = job_key(description)
        to_make = self._outputs_to_make(output_dir, info, paths, key, existing, report)
        report.outputs = dict(paths)
        if not to_make:
            return report
        work = output_dir / WORK_FOLDER
        report.batch_size = plan_batch_size(self.predictor, info.height, info.width, self.max_batch_size)
        state = self._resume_state(work, key, description, start, end)
        if state["next_frame"] > start:
            report.resumed_from = state["next_frame"]
        report.frames_without_unknown = state["frames_without_unknown"]
        if state["next_frame"] < state["end"]:
            self.tracker.load_state_dict(state["tracker"])
            state = self._matting_pass(info, work, prompts, state, report, progress_bar, say)
        report.frames = state["end"] - start
        manifest = OutputManifest(output_dir, MANIFEST)
        # Each output is recorded as soon as it is complete: a run killed between two outputs resumes with the
        # finished ones reused, not refused as another run's.
        self._encoding_pass(info, output_dir, work, to_make, start, state["end"], background, report, progress_bar,
                            lambda path: manifest.record([path], key))  # fmt: skip
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
        return report

    def _outputs_to_make(self, output_dir, info, paths, key, existing, report) -> list[str]:
        """The requested kinds to (re)make; refuses, removes or keeps other jobs' outputs as ``existing`` says."""
        manifest = OutputManifest(output_dir, MANIFEST)
        ours = [kind for kind, path in paths.items() if manifest.made_by(path, key)]
        # Every output name in the folder, requested or not: an older composite from another prompt next to a
        # new alpha would mislead.
        every = output_paths(info, output_dir, OUTPUT_KINDS)
        others = [path for path in every.values() if path.exists() and not manifest.made_by(path, key)]
        refuse_other_runs_outputs(others, existing)
        kept = [kind for kind, path in paths.items() if path in others] if existing == "skip" else []
        if existing == "overwrite":
            for kind, path in every.items():
                if kind not in paths and path.name in manifest.keys and path in others:
                    _remove(path)  # ours, made by another job: it would no longer match the new outputs
        report.reused = ours + kept
        return [kind for kind in paths if kind not in report.reused]

    # ------------------------------------------------------------------------------------------------------
    # pass 1: tracking, trimaps, matting

    def _matting_pass(self, info, work, prompts, state, report, progress_bar, say) -> dict[str, Any]:
        band = self.band_width if self.band_width is not None else default_band_width(info.height, info.width)
        by_frame = {prompt.frame: prompt for prompt in prompts}
        previous = None
        if self.temporal_smoothing and state["next_frame"] > state["start"]:
            previous = _alpha_from_png(work / "alpha" / f"{state['next_frame'] - 1:06d}.png")
        bar = _bar(progress_bar, "matting", state["end"] - state["start"], state["next_frame"] - state["start"])
        frames = read_frames(info.path, state["next_frame"], state["end"])
        try:
            for batch in _timed_batches(frames, max(CHUNK_FRAMES, report.batch_size), report.seconds):
                trimaps = []
                for index, frame in batch:
                    prompt = by_frame.get(index)
                    if prompt is not None and prompt.text:
                        prompt = resolve_text_prompt(prompt, frame, self._text_model(), report=say)
                    with _timer(report.seconds, "tracking"):
                        mask = self.tracker.track(index, frame, prompt)
                    with _timer(report.seconds, "trimaps"):
                        trimaps.append(mask_to_trimap(mask, band))
                with _timer(report.seconds, "matting"):
                    alphas = self._matte_chunk([frame for _, frame in batch], trimaps, report)
                for (index, _), trimap, alpha in zip(batch, trimaps, alphas, strict=True):
                    with _timer(report.seconds, "filter"):
                        if self.temporal_smoothing and previous is not None:
                            alpha = steady_alpha(alpha, previous, trimap, self.temporal_smoothing)
                        alpha16 = alpha_to_uint16(alpha)
                        previous = alpha16.astype(np.float32) / 65535  # what a resumed run reads back
                    with _timer(report.seconds, "encode"):
                        write_png(work / "alpha" / f"{index:06d}.png", alpha16)
                state["next_frame"] = batch[-1][0] + 1
                state["frames_without_unknown"] = report.frames_without_unknown
                state["tracker"] = self.tracker.state_dict()
                _save_state(work, state)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        if state["next_frame"] < state["end"]:  # the container promised more frames than it decoded
            say(f"{info.path.name}: only frames {state['start']} to {state['next_frame'] - 1} could be decoded "
                f"(of {state['start']} to {state['end'] - 1}); the outputs end there")  # fmt: skip
            state["end"] = state["next_frame"]
            _save_state(work, state)
        return state

    def _matte_chunk(self, frames: list[np.ndarray], trimaps: list[np.ndarray], report: VideoReport) -> list:
        """Alphas for a chunk: MEMatte, in batches of ``report.batch_size``, on the frames whose trimap has an
        unknown band; the trimap itself on the others (nothing to refine: the object is absent or fills the
        frame)."""
        alphas: list[np.ndarray | None] = [None] * len(frames)
        to_matte = []
        for position, trimap in enumerate(trimaps):
            if (trimap == UNKNOWN).any():
                to_matte.append(position)
            else:
                alphas[position] = (trimap == FOREGROUND).astype(np.float32)
                report.frames_without_unknown += 1
        for first in range(0, len(to_matte), report.batch_size):
            batch = to_matte[first : first + report.batch_size]
            results = self.predictor.predict_batch([frames[i] for i in batch], [trimaps[i] for i in batch])
            for position, result in zip(batch, results, strict=True):
                alphas[position] = result.alpha
        return alphas

    def _text_model(self) -> Any:
        if self.text_model is None:
            raise InputError("a text prompt needs a text model: pass text_model= (see mematte_hf.text_prompts)")
        return self.text_model

    # ------------------------------------------------------------------------------------------------------
    # pass 2: encoding

    def _encoding_pass(self, info, output_dir, work, save, start, end, background, report, progress_bar, done):
        writers = _open_writers(info, output_dir, save, start, end)
        backgrounds = _backgrounds(background, start) if "composite" in save else None
        needs_foreground = any(kind in save for kind in ("rgba", "rgba_png", "composite"))
        bar = _bar(progress_bar, "encoding", end - start, 0)
        try:
            frames = read_frames(info.path, start, end)
            for index, frame in _timed(frames, report.seconds, "decode"):
                with _timer(report.seconds, "encode"):
                    alpha16 = read_png(work / "alpha" / f"{index:06d}.png")
                foreground = None
                if needs_foreground:
                    with _timer(report.seconds, "foreground"):
                        foreground = _foreground(frame, alpha16, self.predictor)
                with _timer(report.seconds, "encode"):
                    time = info.time_of(index) - info.time_of(start)  # each frame at its source time
                    _write_outputs(writers, frame, alpha16, foreground, backgrounds, time)
                if bar is not None:
                    bar.update(1)
            with _timer(report.seconds, "encode"):
                outputs = {}
                for kind, writer in writers.items():
                    outputs[kind] = writer.close()
                    done(outputs[kind])
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
        return outputs

    # ------------------------------------------------------------------------------------------------------
    # resuming

    def _resume_state(self, work: Path, key: str, description: dict[str, Any], start: int, end: int) -> dict[str, Any]:
        """The saved state when the work folder belongs to this same job (same key), else a fresh start."""
        job = {"key": key, "description": description}
        job_file, state_file = work / _JOB_FILE, work / _STATE_FILE
        if job_file.is_file() and state_file.is_file():
            try:
                same_job = json.loads(job_file.read_text()).get("key") == key
            except (OSError, ValueError, AttributeError):
                same_job = False
            if same_job:
                state = torch.load(state_file, map_location="cpu", weights_only=True)
                if _frames_present(work, start, state["next_frame"]):
                    return state
        shutil.rmtree(work, ignore_errors=True)
        (work / "alpha").mkdir(parents=True)
        _atomic_write_text(job_file, json.dumps(job, indent=1, default=str))
        return {"start": start, "end": end, "next_frame": start, "frames_without_unknown": 0, "tracker": {}}

    def _job_description(self, info: VideoInfo, prompts, start: int, end: int) -> dict[str, Any]:
        """Everything the alpha frames depend on: a saved run with another description is started over."""
        return {
            "source": file_digest(info.path),
            "range": [start, end],
            "prompts": [_prompt_key(prompt) for prompt in prompts],
            "band_width": self.band_width,
            "temporal_smoothing": self.temporal_smoothing,
            "predictor": predictor_settings(self.predictor),
            "tracker": _tracker_key(self.tracker),
            "text_model": text_model_settings(self.text_model) if any(prompt.text for prompt in prompts) else None,
        }


def plan_batch_size(predictor: Any, height: int, width: int, max_batch_size: int = MAX_BATCH_SIZE) -> int:
    """How many frames one MEMatte forward may take, from the memory plan (:mod:`mematte_hf.memory`).

    With a fixed cap (an int, or the checkpoint's), the largest batch whose estimated peak, plus the frames,
    masks and alphas the batch holds, fits the budget: the predictor's ``memory_budget``, else the automatic
    budget of its device. With ``max_global_tokens="auto"`` quality comes first: the largest batch whose plan
    still routes every token the model wants (no cap below the token count), else one frame at a time.
    """
    from .memory import automatic_budget, estimate_peak_bytes, uses_fused_attention

    sizes = range(max_batch_size, 1, -1)
    if predictor.max_global_tokens == "auto":
        for batch_size in sizes:
            try:
                plan = predictor.plan(height, width, batch_size=batch_size)
            except InputError:
                continue
            if plan.max_global_tokens >= plan.tokens:
                return batch_size
        return 1
    config = predictor.config
    cap = predictor.max_global_tokens if predictor.max_global_tokens is not None else config.max_global_tokens
    tile = predictor.decoder_tile_size if predictor.decoder_tile_size is not None else config.decoder_tile_size
    element_size = torch.finfo(predictor.dtype).bits // 8
    fused = uses_fused_attention(predictor.device)
    padded = predictor.processor.padded_size(height, width)
    budget = predictor.memory_budget if predictor.memory_budget is not None else automatic_budget(predictor.device)
    held_per_frame = _HELD_BYTES_PER_PIXEL * height * width
    for batch_size in sizes:
        forward = estimate_peak_bytes(config, height, width, cap, tile, element_size, fused, batch_size, padded=padded)
        if forward + batch_size * held_per_frame <= budget:
            return batch_size
    return 1


def steady_alpha(
    alpha: np.ndarray, previous: np.ndarray, trimap: np.ndarray, strength: float, motion_threshold: float = 0.1
) -> np.ndarray:
    """Pull ``alpha`` towards the previous frame's alpha inside the trimap's unknown band only.

    Where the two differ by less than ``motion_threshold`` the change is flicker and the result is
    ``(1 - strength) * alpha + strength * previous``; where they differ more the edge moved and alpha is kept,
    so moving edges do not leave ghosts. Outside the band (known foreground and background) alpha is untouched.
    """
    band = trimap == UNKNOWN
    steady = np.abs(alpha - previous) < motion_threshold
    blend = band & steady
    result = alpha.copy()
    result[blend] = (1.0 - strength) * alpha[blend] + strength * previous[blend]
    return result


# ----------------------------------------------------------------------------------------------------------
# checks


def _check_outputs(save: Iterable[str]) -> list[str]:
    kinds = list(dict.fromkeys(save))
    unknown = [kind for kind in kinds if kind not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise InputError(f"outputs must be among {', '.join(OUTPUT_KINDS)}; got {', '.join(kinds) or 'nothing'}")
    return kinds


def check_range(info: VideoInfo, start: int, end: int) -> None:
    if not 0 <= start < info.frame_count:
        raise InputError(
            f"--start {start} is outside the clip, which has frames 0 to {info.frame_count - 1}{_truncation(info)}"
        )
    if not start < end <= info.frame_count:
        raise InputError(
            f"--end {end} must be after --start {start} and at most the clip's {info.frame_count} frames "
            f"(the end frame itself is not included){_truncation(info)}"
        )


def _truncation(info: VideoInfo) -> str:
    """The words that explain a short frame count: the file is truncated."""
    if not info.truncated:
        return ""
    return (
        f" (the file is truncated: only {info.frame_count} of the {info.declared_frames} frames its container "
        "declares can be decoded)"
    )


def check_prompts(prompts: list[FramePrompt], info: VideoInfo, start: int, end: int) -> list[FramePrompt]:
    """Prompts merged per frame and sorted; each inside the frame range and the picture."""
    if not prompts:
        raise InputError("give at least one prompt (a point, a box or a text) on the first frame to matte")
    merged: dict[int, FramePrompt] = {}
    for prompt in prompts:
        if not start <= prompt.frame < end:
            last = info.frame_count - 1
            where = "past the last frame" if prompt.frame > last else "outside the frames being matted"
            raise InputError(
                f"a prompt is on frame {prompt.frame}, {where} (matting frames {start} to {end - 1} of 0 to {last}); "
                f"put it on a frame in that range{_truncation(info)}"
            )
        for x, y in prompt.points + ([] if prompt.box is None else [prompt.box[:2], prompt.box[2:]]):
            if not (0 <= x <= info.width and 0 <= y <= info.height):
                raise InputError(
                    f"the prompt at ({x:g}, {y:g}) on frame {prompt.frame} is outside the {info.width} x "
                    f"{info.height} frame; give x in 0..{info.width} and y in 0..{info.height}"
                )
        if prompt.box is not None and not (prompt.box[0] < prompt.box[2] and prompt.box[1] < prompt.box[3]):
            raise InputError(f"the box {prompt.box} on frame {prompt.frame} must be X0,Y0,X1,Y1 with X0<X1, Y0<Y1")
        if len(prompt.points) != len(prompt.labels):
            raise InputError(f"frame {prompt.frame}: {len(prompt.points)} points but {len(prompt.labels)} labels")
        merged[prompt.frame] = merged[prompt.frame].merge(prompt) if prompt.frame in merged else prompt
    ordered = [merged[frame] for frame in sorted(merged)]
    if ordered[0].frame != start:
        raise InputError(
            f"the first prompt is on frame {ordered[0].frame} but matting starts at frame {start}: the tracker "
            f"needs the object marked where it starts; prompt frame {start} or pass --start {ordered[0].frame}"
        )
    return ordered


# ----------------------------------------------------------------------------------------------------------
# helpers


def output_paths(info: VideoInfo, output_dir: Path, save: Iterable[str]) -> dict[str, Path]:
    """Where each output kind goes: ``alpha.mkv``, ``rgba.mov``, ``composite.mp4``, ``alpha_png/``, ..."""
    paths = {}
    for kind in save:
        if kind.endswith("_png"):
            paths[kind] = output_dir / kind
        else:
            suffix = composite_suffix(info.audio_codec) if kind == "composite" else VIDEO_FORMATS[kind][0]
            paths[kind] = output_dir / f"{kind}{suffix}"
    return paths


def source_notes(info: VideoInfo, save: Iterable[str], start: int, end: int) -> list[str]:
    """What the user should know before the work: how the source's quirks shape the outputs."""
    notes = []
    if info.truncated:
        notes.append(_truncation(info).strip(" ()").capitalize() + f"; matting frames {start} to {end - 1}")
    if info.has_alpha:
        notes.append(
            f"{info.path.name} has an alpha channel of its own, which is not used: the matte comes from the prompts"
        )
    for kind in save:
        if kind in ("rgba", "composite"):
            suffix = composite_suffix(info.audio_codec) if kind == "composite" else VIDEO_FORMATS[kind][0]
            if audio_plan(info, suffix) == "aac":
                notes.append(f"the source's {info.audio_codec} audio is re-encoded to AAC for {kind}{suffix}")
    if "composite" in save and (info.width % 2 or info.height % 2):
        notes.append(
            f"composite.mp4 is {info.width + info.width % 2} x {info.height + info.height % 2} (the {info.width} x "
            f"{info.height} picture with its edge repeated): H.264 4:2:0, which every player opens, needs even sides"
        )
    return notes


def _notifier(report: VideoReport, notify: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(note: str) -> None:
        report.notes.append(note)
        if notify is not None:
            notify(note)

    return say


def _check_output_folder(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the output folder {folder} is a file; give a folder (it is created if missing)")
    return folder


def _background_files(background: Any) -> list[Path]:
    if isinstance(background, str) and Path(background).is_file():
        return [Path(background)]
    return []


def _check_background(background: Any) -> None:
    """A colour, or an image or video file: checked before any work (not after the matting pass)."""
    if isinstance(background, (tuple, list)) or _background_files(background):
        return
    if isinstance(background, str):
        parse_colour(background, what="the background")
        return
    raise InputError(f"the background must be a colour, an image or a video file, got {type(background).__name__}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _open_writers(info: VideoInfo, output_dir: Path, save: list[str], start: int, end: int) -> dict[str, Any]:
    output_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Any] = {}
    audio = info if info.audio_codec else None
    start_time, end_time = info.time_of(start), info.time_of(end)  # on the source's own timeline
    for kind, path in output_paths(info, output_dir, save).items():
        if kind.endswith("_png"):
            writers[kind] = PngSequenceWriter(path)
            continue
        with_audio = audio if kind != "alpha" else None  # a matte is a mask: its file carries no sound
        writers[kind] = VideoWriter(path, kind, info.width, info.height, info.frame_rate, with_audio, start_time,
                                    end_time)  # fmt: skip
    return writers


def _write_outputs(writers, frame, alpha16, foreground, backgrounds, time: float) -> None:
    from .foreground import composite, rgba_cutout

    alpha = alpha16.astype(np.float32) / 65535
    for kind, writer in writers.items():
        if kind == "alpha_png":
            writer.write(alpha16)
        elif kind == "alpha":
            writer.write(alpha16, time)
        elif kind == "rgba_png":
            writer.write(rgba_cutout(foreground, alpha))
        elif kind == "rgba":
            writer.write(rgba_cutout(foreground, alpha), time)
        else:
            writer.write(composite(foreground, alpha, next(backgrounds)), time)


def _foreground(frame: np.ndarray, alpha16: np.ndarray, predictor: Any) -> np.ndarray:
    """Foreground colours without the old background's tint at soft edges (where alpha is fractional)."""
    from .foreground import estimate_foreground

    alpha = alpha16.astype(np.float32) / 65535
    fractional = (alpha16 > 0) & (alpha16 < 65535)
    if not fractional.any():
        return frame.astype(np.float32) / 255  # nothing to separate: the colours are the frame's own
    return estimate_foreground(frame, alpha, device=predictor.device)


def _backgrounds(background, start: int) -> Iterator[Any]:
    """The composite's background for each frame: a colour or image forever, or a video's frames, looped."""
    if isinstance(background, str) and Path(background).is_file() and _is_video(Path(background)):
        path = Path(background)
        while True:
            produced = False
            for _, frame in read_frames(path):
                produced = True
                yield frame
            if not produced:
                raise InputError(f"the background video {path} has no frames")
    while True:
        yield background


def _is_video(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return False
    except (UnidentifiedImageError, OSError):
        return True


def _timed_batches(frames: Iterator, size: int, seconds: dict[str, float]) -> Iterator[list]:
    batch = []
    for item in _timed(frames, seconds, "decode"):
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _timed(items: Iterator, seconds: dict[str, float], stage: str) -> Iterator:
    """Yield from ``items``, adding the time spent producing each item to ``seconds[stage]``."""
    while True:
        began = time.perf_counter()
        item = next(items, None)
        seconds[stage] += time.perf_counter() - began
        if item is None:
            return
        yield item


class _timer:
    def __init__(self, seconds: dict[str, float], stage: str) -> None:
        self.seconds, self.stage = seconds, stage

    def __enter__(self) -> None:
        self.began = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self.stage] += time.perf_counter() - self.began


def _bar(progress_bar, description: str, total: int, initial: int):
    if progress_bar is None:
        return None
    return progress_bar(desc=description, total=total, initial=initial, unit="frame")


def _alpha_from_png(path: Path) -> np.ndarray:
    return read_png(path).astype(np.float32) / 65535


def _frames_present(work: Path, start: int, next_frame: int) -> bool:
    return all((work / "alpha" / f"{index:06d}.png").is_file() for index in range(start, next_frame))


def _save_state(work: Path, state: dict[str, Any]) -> None:
    partial = work / f".{_STATE_FILE}.partial"
    torch.save(state, partial)
    os.replace(partial, work / _STATE_FILE)


def _atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _prompt_key(prompt: FramePrompt) -> str:
    key = prompt.describe()
    if prompt.mask is not None:
        key += " " + hashlib.sha1(np.ascontiguousarray(prompt.mask, dtype=bool).tobytes()).hexdigest()
    return key


def _tracker_key(tracker: Any) -> str:
    model = getattr(tracker, "model", None)
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "")) if model is not None else ""
    return f"{type(tracker).__name__}:{name}"
