"""Text prompts -> object mask -> trimap, for photos nobody drew a trimap or clicked on.

Two kinds of checkpoint, chosen from the checkpoint's ``config.model_type``:

* an open-vocabulary detector, Grounding DINO (``grounding-dino``) or OWLv2 / OWL-ViT (``owlv2``, ``owlvit``):
  it finds the boxes that match the text, and SAM (a :class:`~mematte_hf.segmentation.ClickSegmenter`) turns
  each box into a mask, as Matte-Anything does. Each mask is kept inside its box (the detector says where the
  object is; SAM says which pixels in there are the object) and the masks of all the boxes are merged.
* SAM 3 (``sam3``), which segments every instance of a text concept directly. transformers' SAM 3 needs
  torchvision (``roi_align``); without it the backend refuses to load with one line saying so.

The text may name several things, separated by commas, periods or semicolons ("the dog, the ball"); every
match of every phrase counts. When nothing matches, :class:`NothingFoundError` says so: a photo is never
matted blindly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.utils import is_torchvision_available

from .devices import resolve_device
from .errors import CheckpointError, InputError
from .segmentation import ClickSegmenter, ImageEmbedding, MissingBackendError, _check_image, _hub_errors

__all__ = [
    "DETECTOR_TYPES",
    "Detections",
    "NothingFoundError",
    "Sam3TextSegmenter",
    "TextDetector",
    "TextMask",
    "TextSegmenter",
    "load_text_model",
    "split_phrases",
]

#: ``config.model_type`` of the detectors, with their transformers class and default score threshold. The
#: thresholds are the ones their authors' demos use: OWL scores are calibrated lower than Grounding DINO's.
DETECTOR_TYPES = {
    "grounding-dino": ("GroundingDinoForObjectDetection", 0.3),
    "owlv2": ("Owlv2ForObjectDetection", 0.1),
    "owlvit": ("OwlViTForObjectDetection", 0.1),
}
SAM3_TYPE = "sam3"
SAM3_THRESHOLD = 0.5
# Commas, semicolons, new lines, and periods that are not a decimal point ("3.5 inch" stays one phrase).
_PHRASE_SEPARATORS = re.compile(r"(?:[,;\n]|(?<!\d)\.|\.(?!\d))+")
#: A box is kept when its score is at least this fraction of the best score of its phrase: what a person means
#: by "the dog" is the best match and those nearly as good, not every box above the detector's threshold.
RELATIVE_SCORE = 0.5
#: Boxes of one phrase overlapping a better one by more than this intersection-over-union are the same object.
NMS_IOU = 0.5


class NothingFoundError(InputError):
    """The text prompt matched nothing in the photo."""


@dataclass
class Detections:
    """What a text prompt found: boxes (N, 4) x0 y0 x1 y1 in image pixels, scores (N,), the phrase of each."""

    boxes: np.ndarray
    scores: np.ndarray
    phrases: list[str]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class TextMask:
    """The object mask a text prompt made, (H, W) bool, and the detections it came from."""

    mask: np.ndarray
    detections: Detections


def split_phrases(text: str | None) -> list[str]:
    """The phrases of a prompt, lower case (what Grounding DINO was trained on), in their order."""
    phrases = [phrase.strip().lower() for phrase in _PHRASE_SEPARATORS.split(text or "")]
    phrases = [phrase for phrase in phrases if phrase]
    if not phrases:
        raise InputError('the text prompt is empty: say what to cut out, e.g. "the dog"')
    return phrases


def _nothing_found(phrases: list[str], threshold: float) -> NothingFoundError:
    said = ", ".join(repr(phrase) for phrase in phrases)
    return NothingFoundError(
        f"nothing in the photo matches {said} (no detection scored {threshold:g} or more): describe the object "
        "differently, or click on it"
    )


# ----------------------------------------------------------------------------------------------------------
# detectors: text -> boxes


class TextDetector:
    """Grounding DINO or OWLv2 / OWL-ViT from transformers: the boxes of the objects a text names.

    Args:
        model: a ``GroundingDinoForObjectDetection``, ``Owlv2ForObjectDetection`` or ``OwlViTForObjectDetection``.
        processor: its processor (image processor + tokenizer).
        device: where to run; ``None`` keeps the model where it is.
        threshold: the score a box needs; ``None`` uses the model family's default (``DETECTOR_TYPES``).
    """

    def __init__(self, model: Any, processor: Any, device: str | torch.device | None = None,
                 threshold: float | None = None) -> None:  # fmt: skip
        self.model_type = model.config.model_type
        if self.model_type not in DETECTOR_TYPES:
            raise InputError(f"TextDetector needs a Grounding DINO or OWL model, got model_type {self.model_type!r}")
        self.model = model.to(device).eval() if device is not None else model.eval()
        self.processor = processor
        self.threshold = DETECTOR_TYPES[self.model_type][1] if threshold is None else float(threshold)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def detect(self, image: np.ndarray, text: str, threshold: float | None = None) -> Detections:
        """Boxes of what ``text`` names in the (H, W, 3) uint8 image, best first; empty when nothing matched."""
        image = _check_image(image)
        phrases = split_phrases(text)
        threshold = self.threshold if threshold is None else float(threshold)
        height, width = image.shape[:2]
        self._check_lengths(phrases)
        if self.model_type == "grounding-dino":
            # Grounding DINO reads one caption of period-terminated phrases.
            inputs = self.processor(images=image, text=". ".join(phrases) + ".", return_tensors="pt")
            outputs = self.model(**inputs.to(self.device))
            found = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=threshold, text_threshold=threshold,
                target_sizes=[(height, width)],
            )[0]  # fmt: skip
            labels = [_closest_phrase(label, phrases) for label in found["text_labels"]]
        else:
            # Phrases of different lengths are padded to one tensor (OWL pools each at its end-of-text token).
            inputs = self.processor(images=image, text=[phrases], padding=True, return_tensors="pt")
            outputs = self.model(**inputs.to(self.device))
            # OWLv2 pads the photo to a square at the bottom / right, so its boxes are fractions of that square;
            # OWL-ViT (v1) stretches the photo to its square input, so its boxes are fractions of the photo.
            side = max(height, width)
            canvas = (side, side) if self.model_type == "owlv2" else (height, width)
            found = self.processor.post_process_grounded_object_detection(
                outputs, threshold=threshold, target_sizes=[canvas]
            )[0]
            labels = [phrases[int(index)] for index in found["labels"]]
        boxes = found["boxes"].float().cpu().numpy().reshape(-1, 4)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        scores = found["scores"].float().cpu().numpy().reshape(-1)
        kept = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)  # no empty box after clipping
        kept &= _meant(boxes, scores, labels)
        order = np.argsort(-scores[kept], kind="stable")
        return Detections(boxes[kept][order], scores[kept][order], [labels[i] for i in np.flatnonzero(kept)[order]])

    def _check_lengths(self, phrases: list[str]) -> None:
        """Refuse a phrase longer than the text positions the detector has (OWLv2 reads 16 tokens), before the
        model runs into a shape mismatch."""
        text_config = getattr(self.model.config, "text_config", None)
        positions = getattr(text_config, "max_position_embeddings", None)
        if positions is None or self.model_type == "grounding-dino":
            return  # Grounding DINO reads the whole caption (256 tokens); the processor truncates beyond
        for phrase in phrases:
            tokens = len(self.processor.tokenizer(phrase)["input_ids"])
            if tokens > positions:
                raise InputError(
                    f"the phrase {phrase!r} is {tokens} tokens long; this {self.model_type} detector reads at most "
                    f'{positions}: say it in fewer words (e.g. "the dog"), or separate things with commas'
                )


def _meant(boxes: np.ndarray, scores: np.ndarray, labels: list[str]) -> np.ndarray:
    """Which boxes a person means, per phrase: those scoring at least ``RELATIVE_SCORE`` of the phrase's best,
    without the ones that mostly repeat a better box of the phrase (non-maximum suppression)."""
    keep = np.zeros(len(scores), dtype=bool)
    for phrase in set(labels):
        members = np.array([index for index, label in enumerate(labels) if label == phrase])
        members = members[scores[members] >= RELATIVE_SCORE * scores[members].max()]
        for index in members[np.argsort(-scores[members], kind="stable")]:
            kept = np.flatnonzero(keep)
            kept = kept[[labels[k] == phrase for k in kept]] if len(kept) else kept
            if not len(kept) or box_iou(boxes[index], boxes[kept]).max() <= NMS_IOU:
                keep[index] = True
    return keep


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x0, y0, x1, y1) box with each of ``others`` (N, 4)."""
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    intersection = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return intersection / np.maximum(area + areas - intersection, 1e-9)


def _closest_phrase(label: str, phrases: list[str]) -> str:
    """Grounding DINO names a box by the tokens above the threshold; map that back to the phrase it is in."""
    return next((phrase for phrase in phrases if label and (label in phrase or phrase in label)), label)


# ----------------------------------------------------------------------------------------------------------
# SAM 3: text -> masks


class Sam3TextSegmenter:
    """transformers' SAM 3: the masks of every instance of the concept a text names (needs torchvision)."""

    model_type = SAM3_TYPE

    def __init__(self, model: Any, processor: Any, device: str | torch.device | None = None,
                 threshold: float = SAM3_THRESHOLD) -> None:  # fmt: skip
        self.model = model.to(device).eval() if device is not None else model.eval()
        self.processor = processor
        self.threshold = float(threshold)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def segment(self, image: np.ndarray, text: str, threshold: float | None = None) -> TextMask:
        """The union of the instance masks for every phrase; empty detections when nothing matched."""
        image = _check_image(image)
        threshold = self.threshold if threshold is None else float(threshold)
        height, width = image.shape[:2]
        mask = np.zeros((height, width), dtype=bool)
        boxes, scores, labels = [], [], []
        for phrase in split_phrases(text):
            inputs = self.processor(images=image, text=phrase, return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            found = self.processor.post_process_instance_segmentation(
                outputs, threshold=threshold, mask_threshold=0.5, target_sizes=[(height, width)]
            )[0]
            for instance in found["masks"].cpu().numpy().astype(bool):
                mask |= instance
            boxes.append(found["boxes"].float().cpu().numpy().reshape(-1, 4))
            scores.append(found["scores"].float().cpu().numpy().reshape(-1))
            labels += [phrase] * len(scores[-1])
        detections = Detections(np.concatenate(boxes), np.concatenate(scores), labels)
        return TextMask(mask, detections)


# ----------------------------------------------------------------------------------------------------------
# text + SAM


class TextSegmenter:
    """Text -> object mask, with a detector and SAM or with SAM 3 alone.

    ::

        segmenter = TextSegmenter.from_pretrained("IDEA-Research/grounding-dino-tiny", "facebook/sam-vit-base")
        found = segmenter.predict_mask(image, "the dog")  # raises NothingFoundError when nothing matches
        trimap = mask_to_trimap(found.mask)

    Args:
        text_model: a :class:`TextDetector` or a :class:`Sam3TextSegmenter`.
        sam: the :class:`~mematte_hf.segmentation.ClickSegmenter` that turns a detector's boxes into masks
            (not needed with SAM 3).
    """

    def __init__(self, text_model: TextDetector | Sam3TextSegmenter, sam: ClickSegmenter | None = None) -> None:
        if isinstance(text_model, TextDetector) and sam is None:
            raise InputError(f"a {text_model.model_type} detector finds boxes only: give a SAM model to mask them")
        self.text_model = text_model
        self.sam = sam

    @classmethod
    def from_pretrained(
        cls,
        text_model: str | os.PathLike[str],
        sam_model: str | os.PathLike[str] | ClickSegmenter | None = None,
        device: str | torch.device | None = None,
        **hub_kwargs: Any,
    ) -> TextSegmenter:
        """Load the text model (a detector or SAM 3, from its config) and, for a detector, SAM."""
        loaded = load_text_model(text_model, device=device, **hub_kwargs)
        if not isinstance(loaded, TextDetector):
            return cls(loaded)  # SAM 3 masks by itself
        if sam_model is None:
            raise InputError(
                f"{os.fspath(text_model)} is a {loaded.model_type} detector, which finds boxes only: also give a "
                "SAM model (--sam-model, e.g. facebook/sam-vit-base) to turn them into masks"
            )
        sam = sam_model
        if not isinstance(sam_model, ClickSegmenter):
            sam = ClickSegmenter.from_pretrained(sam_model, device=device, **hub_kwargs)
        return cls(loaded, sam)

    @property
    def needs_sam_embedding(self) -> bool:
        """Whether masks come from SAM boxes (so an image embedding is needed) rather than from SAM 3."""
        return isinstance(self.text_model, TextDetector)

    def find(self, image: np.ndarray, text: str, threshold: float | None = None) -> Detections | TextMask:
        """The text model's part (the GPU part): boxes from a detector, or a finished mask from SAM 3."""
        if isinstance(self.text_model, TextDetector):
            return self.text_model.detect(image, text, threshold)
        return self.text_model.segment(image, text, threshold)

    def predict_mask(
        self,
        image: np.ndarray,
        text: str,
        threshold: float | None = None,
        embedding: ImageEmbedding | None = None,
    ) -> TextMask:
        """The object mask for ``text``; raises :class:`NothingFoundError` when nothing matches.

        ``embedding``: the photo's SAM embedding, when the caller keeps one (no second encoder pass).
        """
        found = self.find(image, text, threshold)
        if isinstance(found, Detections):
            embedding = embedding if embedding is not None or not len(found) else self.sam.embed(image)
            found = (
                masks_from_boxes(self.sam, found, embedding)
                if len(found)
                else TextMask(np.zeros(image.shape[:2], dtype=bool), found)
            )
        if not found.mask.any():
            used = self.text_model.threshold if threshold is None else threshold
            raise _nothing_found(split_phrases(text), used)
        return found


def masks_from_boxes(sam: ClickSegmenter, detections: Detections, embedding: ImageEmbedding) -> TextMask:
    """SAM's mask for each detected box, kept inside its box, merged into one (H, W) mask.

    The detector says where the object is and SAM which pixels in there belong to it: a mask spilling out of
    its box is SAM following a neighbouring object, so it is cut at the box (rounded outwards to whole pixels).
    All boxes decode from the one ``embedding`` of the photo.
    """
    mask = np.zeros(embedding.original_size, dtype=bool)
    for box in detections.boxes:
        prediction = sam.predict_mask(box=box, multimask=False, embedding=embedding)
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        mask[y0:y1, x0:x1] |= prediction.mask[y0:y1, x0:x1]
    return TextMask(mask, detections)


# ----------------------------------------------------------------------------------------------------------
# loading


def load_text_model(
    model_id_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    threshold: float | None = None,
    **hub_kwargs: Any,
) -> TextDetector | Sam3TextSegmenter:
    """A detector or SAM 3, chosen from the checkpoint's ``config.model_type``."""
    import transformers
    from transformers import AutoConfig, AutoProcessor

    path = os.fspath(model_id_or_path)
    device = resolve_device(device)  # a clear error for a device this machine lacks, before loading
    with _hub_errors(path):
        config = AutoConfig.from_pretrained(path, **hub_kwargs)
        model_type = config.model_type
        if model_type == SAM3_TYPE:
            if not is_torchvision_available():
                raise MissingBackendError(
                    f"{path} is a SAM 3 checkpoint, and transformers' SAM 3 needs torchvision, which cannot be "
                    "imported here: install a torchvision matching this torch (pip install torchvision), or use "
                    "a Grounding DINO or OWLv2 checkpoint with a SAM model"
                )
            model = transformers.Sam3Model.from_pretrained(path, **hub_kwargs)
            processor = transformers.Sam3Processor.from_pretrained(path, **hub_kwargs)
            return Sam3TextSegmenter(model, processor, device, SAM3_THRESHOLD if threshold is None else threshold)
        if model_type not in DETECTOR_TYPES:
            raise CheckpointError(
                f"{path} is a {model_type!r} checkpoint, not a text-prompt model: use a Grounding DINO, OWLv2 or "
                "OWL-ViT detector (with a SAM model) or a SAM 3 checkpoint"
            )
        model = getattr(transformers, DETECTOR_TYPES[model_type][0]).from_pretrained(path, **hub_kwargs)
        processor = AutoProcessor.from_pretrained(path, **hub_kwargs)
        return TextDetector(model, processor, device, threshold)
