"""Propagate an object mask through a video from prompts on key frames, one frame at a time.

A tracker is anything with the :class:`MaskTracker` methods. Two come with the package:

* :class:`Sam2VideoTracker`: transformers' ``Sam2VideoModel`` (or ``EdgeTamVideoModel``) run in streaming mode:
  each frame goes into the inference session as it is decoded, and after each frame the session is pruned to
  what the model can still read (the memory frames and object pointers of the last few frames, plus the
  prompted frames), so its memory does not grow with the clip's length.
* :class:`MaskProviderTracker`: the documented hook for supplying masks from elsewhere (a function of the frame
  index, the frame and its prompt), e.g. known masks in tests or masks from another segmentation tool.

Re-keying: prompts on a later frame make that frame a new conditioning frame; its mask comes from the new
prompts and the frames after it are tracked from it (and from the earlier key frames).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .devices import resolve_device
from .errors import CheckpointError, InputError
from .video_io import DEFAULT_TRACKER

__all__ = [
    "DEFAULT_TRACKER",
    "TRACKER_TYPES",
    "FramePrompt",
    "MaskProviderTracker",
    "MaskTracker",
    "Sam2VideoTracker",
    "resolve_text_prompt",
]

#: ``config.model_type`` -> transformers (model, inference session) class names. Image checkpoints of the same
#: family load into the video model (same weights).
TRACKER_TYPES = {
    "sam2_video": ("Sam2VideoModel", "Sam2VideoInferenceSession"),
    "sam2": ("Sam2VideoModel", "Sam2VideoInferenceSession"),
    "edgetam_video": ("EdgeTamVideoModel", "EdgeTamVideoInferenceSession"),
    "edgetam": ("EdgeTamVideoModel", "EdgeTamVideoInferenceSession"),
}
_OBJECT_ID = 1
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(eq=False)
class FramePrompt:
    """What the user marked on one key frame, in source-video pixels (x = column, y = row).

    ``labels`` are 1 for foreground points and 0 for background points. ``text`` is resolved into a ``box`` or
    a ``mask`` on the key frame by :func:`resolve_text_prompt` before tracking.
    """

    frame: int
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    text: str | None = None

    def merge(self, other: FramePrompt) -> FramePrompt:
        """Both prompts' points; the other's box, mask or text where it has one."""
        return FramePrompt(
            self.frame,
            self.points + other.points,
            self.labels + other.labels,
            other.box if other.box is not None else self.box,
            other.mask if other.mask is not None else self.mask,
            other.text or self.text,
        )

    def describe(self) -> str:
        pairs = zip(self.points, self.labels, strict=True)
        parts = [f"point ({x:g}, {y:g}) {'fg' if label else 'bg'}" for (x, y), label in pairs]
        parts += [f"box {tuple(round(v, 1) for v in self.box)}"] if self.box is not None else []
        parts += [f"text {self.text!r}"] if self.text else []
        parts += ["mask"] if self.mask is not None else []
        return f"frame {self.frame}: " + ", ".join(parts)


class MaskTracker(Protocol):
    """One object's mask for each frame, frames given in order; state saved and restored for resuming."""

    def track(self, frame_index: int, frame: np.ndarray, prompt: FramePrompt | None) -> np.ndarray:
        """(H, W) bool mask of the object on ``frame`` ((H, W, 3) uint8); ``prompt`` when it is a key frame."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class MaskProviderTracker:
    """Masks from ``mask_provider(frame_index, frame, prompt) -> (H, W) bool``: the hook that replaces the tracker.

    ``prompt`` is the frame's :class:`FramePrompt` on key frames and ``None`` elsewhere. The provider holds no
    state the pipeline saves, so on resume it is simply called again from the next frame.
    """

    def __init__(self, mask_provider: Callable[[int, np.ndarray, FramePrompt | None], np.ndarray]) -> None:
        self.mask_provider = mask_provider

    def track(self, frame_index: int, frame: np.ndarray, prompt: FramePrompt | None) -> np.ndarray:
        mask = np.asarray(self.mask_provider(frame_index, frame, prompt))
        if mask.shape != frame.shape[:2]:
            raise InputError(
                f"the mask provider returned a {mask.shape} mask for a {frame.shape[1]} x {frame.shape[0]} frame"
            )
        return mask.astype(bool, copy=False)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Sam2VideoTracker:
    """SAM 2 / EdgeTAM video tracking, streamed: one decoded frame in, its mask out, memory bounded.

    Args:
        model: a transformers ``Sam2VideoModel`` or ``EdgeTamVideoModel``.
        device / dtype: where and in which precision to run (default: the model's).
    """

    def __init__(self, model: Any, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        import transformers

        self.model = model.to(device=device, dtype=dtype).eval() if device or dtype else model.eval()
        parameter = next(self.model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        session_name = TRACKER_TYPES.get(model.config.model_type, TRACKER_TYPES["sam2_video"])[1]
        self._session_class = getattr(transformers, session_name)
        self.image_size = int(model.config.image_size)
        # What the next frame reads from past frames: the mask memories of the previous num_maskmem - 1 frames and
        # the object pointers of the previous max_object_pointers_in_encoder - 1 (streaming mode), plus every
        # conditioning frame. Older tracked frames are dropped.
        self.frames_kept = max(int(self.model.num_maskmem), int(model.config.max_object_pointers_in_encoder)) - 1
        self._mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)
        self.session = None

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **hub_kwargs: Any,
    ) -> Sam2VideoTracker:
        """Load a SAM 2 or EdgeTAM checkpoint (video or image; same weights) from a folder or the Hub."""
        import transformers
        from transformers import AutoConfig

        from .segmentation import _hub_errors

        path = os.fspath(model_id_or_path)
        target = resolve_device(device)  # a bad device fails here, before the download and the load
        with _hub_errors(path):
            model_type = AutoConfig.from_pretrained(path, **hub_kwargs).model_type
            if model_type not in TRACKER_TYPES:
                raise CheckpointError(
                    f"{path} is a {model_type!r} checkpoint, not a video tracker: use a SAM 2 or EdgeTAM checkpoint "
                    f"such as {DEFAULT_TRACKER}"
                )
            model = getattr(transformers, TRACKER_TYPES[model_type][0]).from_pretrained(path, **hub_kwargs)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        return cls(model, device=target, dtype=dtype)

    def track(self, frame_index: int, frame: np.ndarray, prompt: FramePrompt | None) -> np.ndarray:
        height, width = frame.shape[:2]
        if self.session is None:
            self.session = self._new_session(height, width)
        if prompt is not None:
            self._add_prompt(prompt, height, width)
        elif not self.session.obj_ids:
            raise InputError(f"frame {frame_index} comes before any prompt: prompt the first frame to track")
        with torch.inference_mode():
            output = self.model(self.session, frame=self._pixel_values(frame), frame_idx=frame_index)
            logits = F.interpolate(output.pred_masks[:1].float(), (height, width), mode="bilinear", align_corners=False)
            mask = (logits[0, 0] > 0).cpu().numpy()
        self._prune(frame_index)
        return mask

    def state_dict(self) -> dict[str, Any]:
        """The session's tracking memory (already pruned to what later frames read), for an exact resume."""
        if self.session is None:
            return {}
        session = self.session
        return {
            "size": (session.video_height, session.video_width),
            "obj_ids": list(session.obj_ids),
            "point_inputs": session.point_inputs_per_obj,
            "mask_inputs": session.mask_inputs_per_obj,
            "outputs": session.output_dict_per_obj,
            "frames_tracked": session.frames_tracked_per_obj,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.session = None
            return
        self.session = self._new_session(*state["size"])
        for obj_id in state["obj_ids"]:
            self.session.obj_id_to_idx(obj_id)
        self.session.point_inputs_per_obj.update(_to_device(state["point_inputs"], self.device))
        self.session.mask_inputs_per_obj.update(_to_device(state["mask_inputs"], self.device))
        self.session.output_dict_per_obj.update(_to_device(state["outputs"], self.device))
        self.session.frames_tracked_per_obj.update(state["frames_tracked"])

    def _new_session(self, height: int, width: int):
        return self._session_class(
            video_height=height,
            video_width=width,
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device=self.device,
            dtype=self.dtype,
        )

    def _pixel_values(self, frame: np.ndarray) -> torch.Tensor:
        """The model's input: the frame squashed to the model's square side, scaled and normalised.

        Resized as uint8 with Pillow (area-aware bilinear, like the processor's antialiased resize), so a 4K
        frame never becomes a full-size float tensor.
        """
        side = self.image_size
        resized = np.asarray(Image.fromarray(frame).resize((side, side), Image.Resampling.BILINEAR))
        pixels = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div_(255)
        pixels = (pixels - self._mean) / self._std
        return pixels[None].to(self.device, self.dtype)

    def _add_prompt(self, prompt: FramePrompt, height: int, width: int) -> None:
        """What ``Sam2VideoProcessor.add_inputs_to_inference_session`` does (its image processor needs
        torchvision): scale coordinates to the model's square input, a box as two corner points first."""
        session = self.session
        obj_idx = session.obj_id_to_idx(_OBJECT_ID)
        scale = np.array([self.image_size / width, self.image_size / height], dtype=np.float32)
        if prompt.mask is not None:
            mask = torch.from_numpy(np.asarray(prompt.mask, dtype=np.float32))[None, None]
            mask = F.interpolate(mask, (self.image_size, self.image_size), mode="bilinear", antialias=True)
            session.add_mask_inputs(obj_idx, prompt.frame, (mask >= 0.5).float())
            session.remove_point_inputs(obj_idx, prompt.frame)
        else:
            coords, labels = list(prompt.points), list(prompt.labels)
            if prompt.box is not None:
                x0, y0, x1, y1 = prompt.box
                coords, labels = [(x0, y0), (x1, y1), *coords], [2, 3, *labels]
            points = torch.from_numpy(np.asarray(coords, dtype=np.float32).reshape(-1, 2) * scale)
            session.add_point_inputs(
                obj_idx,
                prompt.frame,
                {"point_coords": points[None, None], "point_labels": torch.tensor([[labels]], dtype=torch.int32)},
            )
            session.remove_mask_inputs(obj_idx, prompt.frame)
        session.obj_with_new_inputs = [_OBJECT_ID]

    def _prune(self, frame_index: int) -> None:
        """Drop what no later frame reads: decoded frames, old memories, and full-size mask logits."""
        session = self.session
        session.processed_frames.clear()
        oldest = frame_index + 1 - self.frames_kept
        for obj_idx, outputs in session.output_dict_per_obj.items():
            for stored in outputs["cond_frame_outputs"].values():
                stored.pop("high_res_masks", None)
            recent = outputs["non_cond_frame_outputs"]
            for index in [index for index in recent if index < oldest]:
                del recent[index]
            for stored in recent.values():
                stored.pop("high_res_masks", None)
                stored.pop("pred_masks", None)
            tracked = session.frames_tracked_per_obj[obj_idx]
            for index in [index for index in tracked if index < oldest]:
                del tracked[index]
            for inputs in (session.point_inputs_per_obj[obj_idx], session.mask_inputs_per_obj[obj_idx]):
                for index in [index for index in inputs if index < frame_index]:
                    del inputs[index]


def resolve_text_prompt(
    prompt: FramePrompt, frame: np.ndarray, text_model: Any, report: Callable[[str], None] | None = None
) -> FramePrompt:
    """Turn ``prompt.text`` into a box (a detector's best box) or a mask (SAM 3) found on ``frame``.

    ``text_model`` is what :func:`mematte_hf.text_prompts.load_text_model` returns. ``report`` (optional) is
    called with one line saying what the text chose (box and score). Raises the text module's
    ``NothingFoundError``, in the words of frames and flags, when nothing on the key frame matches.
    """
    from .text_prompts import NothingFoundError, TextDetector

    if not prompt.text:
        return prompt
    if isinstance(text_model, TextDetector):
        found = text_model.detect(frame, prompt.text)
        if not len(found):
            raise NothingFoundError(_nothing_on_frame(prompt, text_model.threshold))
        box = tuple(float(v) for v in found.boxes[0])
        if report is not None:
            report(f"frame {prompt.frame}: --text {prompt.text!r} chose the box {_box_words(box)} "
                   f"(score {float(found.scores[0]):.2f})")  # fmt: skip
        return FramePrompt(prompt.frame, prompt.points, prompt.labels, box, prompt.mask, None)
    found = text_model.segment(frame, prompt.text)
    if not found.mask.any():
        raise NothingFoundError(_nothing_on_frame(prompt, text_model.threshold))
    if report is not None and len(found.detections):
        best = int(np.argmax(found.detections.scores))
        report(f"frame {prompt.frame}: --text {prompt.text!r} chose {len(found.detections)} instance(s), the best "
               f"in the box {_box_words(found.detections.boxes[best])} (score "
               f"{float(found.detections.scores[best]):.2f})")  # fmt: skip
    return FramePrompt(prompt.frame, prompt.points, prompt.labels, None, found.mask, None)


def _nothing_on_frame(prompt: FramePrompt, threshold: float) -> str:
    return (
        f"nothing on frame {prompt.frame} matches --text {prompt.text!r} (no detection scored {threshold:g} or "
        f"more): describe it differently, lower --text-threshold, or mark it with --point X,Y@{prompt.frame} or "
        f"--box X0,Y0,X1,Y1@{prompt.frame}"
    )


def _box_words(box) -> str:
    return ",".join(f"{float(value):.0f}" for value in box)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    return value
