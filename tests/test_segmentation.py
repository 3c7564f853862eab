"""ClickSegmenter on tiny random SAM / SAM-HQ / SAM 2 models: clicks -> mask -> trimap, one encoder pass per
image, the same masks as transformers' own pipeline, and clear errors for bad prompts.

Random weights give arbitrary masks, so nothing here assumes the mask finds the disc: the assertions compare
against the returned mask itself, against transformers' reference pipeline, or between prompts.
"""

import json
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage
from transformers import (
    Sam2Config,
    Sam2Model,
    SamConfig,
    SamHQConfig,
    SamHQModel,
    SamHQProcessor,
    SamImageProcessorPil,
    SamModel,
    SamProcessor,
    ViTConfig,
    ViTModel,
)

from mematte_hf.errors import CheckpointError, HubError, InputError
from mematte_hf.segmentation import ClickSegmenter, MaskPrediction, MissingBackendError
from mematte_hf.trimap import BACKGROUND, FOREGROUND, UNKNOWN, default_band_width

HEIGHT, WIDTH = 200, 300
INSIDE, OUTSIDE = (150, 100), (25, 20)  # (x, y): on the disc, on the dark background
BOX = (80, 30, 220, 170)
IMAGE_SIZE = 128  # model input side: the 300 px side becomes 128, the image embedding 8x8

VISION = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": 16,
    "output_channels": 32,  # == prompt encoder / mask decoder hidden_size
    "window_size": 4,
    "global_attn_indexes": [1],  # SAM-HQ takes the ViT features of the first global block
    "mlp_dim": 64,
    "num_pos_feats": 16,  # == prompt encoder hidden_size / 2
}
PROMPT_ENCODER = {"hidden_size": 32, "image_size": IMAGE_SIZE, "patch_size": 16}
MASK_DECODER = {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32}
HIERA = {
    "model_type": "sam2_hiera_det_model",
    "hidden_size": 8,
    "num_attention_heads": 1,
    "image_size": [IMAGE_SIZE, IMAGE_SIZE],
    "blocks_per_stage": [1, 1, 2, 1],
    "embed_dim_per_stage": [8, 16, 32, 64],
    "num_attention_heads_per_stage": [1, 1, 2, 2],
    "window_size_per_stage": [4, 4, 4, 2],
    "global_attention_blocks": [3],  # not the first block of a stage (query pooling needs a window)
    "window_positional_embedding_background_size": [4, 4],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_sam_config() -> SamConfig:
    return SamConfig(vision_config=VISION, prompt_encoder_config=PROMPT_ENCODER, mask_decoder_config=MASK_DECODER)


def tiny_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if model_type == "sam":
        return SamModel(tiny_sam_config()).eval()
    if model_type == "sam_hq":
        config = SamHQConfig(
            vision_config=VISION,
            prompt_encoder_config=PROMPT_ENCODER,
            mask_decoder_config={**MASK_DECODER, "vit_dim": VISION["hidden_size"]},
        )
        return SamHQModel(config).eval()
    vision = {
        "backbone_config": HIERA,
        "backbone_channel_list": [64, 32, 16, 8],  # embed_dim_per_stage reversed
        "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],  # strides 4, 8, 16 of the 128 px input
        "fpn_hidden_size": 32,
    }
    config = Sam2Config(vision_config=vision, prompt_encoder_config=PROMPT_ENCODER, mask_decoder_config=MASK_DECODER)
    return Sam2Model(config).eval()


def tiny_image_processor() -> SamImageProcessorPil:
    side, mask_side = IMAGE_SIZE, IMAGE_SIZE // 4
    return SamImageProcessorPil(
        size={"longest_edge": side},
        pad_size={"height": side, "width": side},
        mask_size={"longest_edge": mask_side},
        mask_pad_size={"height": mask_side, "width": mask_side},
    )


def disc_image(height: int = HEIGHT, width: int = WIDTH, brightness: int = 230) -> np.ndarray:
    """A bright disc on a dark background: the object the clicks point at."""
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 20, dtype=np.uint8)
    image[(yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.3 * height) ** 2] = brightness
    return image


@pytest.fixture(scope="module", params=["sam", "sam_hq", "sam2"])
def model(request):
    return tiny_model(request.param)


@pytest.fixture()
def segmenter(model):
    segmenter = ClickSegmenter(model, device="cpu")
    segmenter.set_image(disc_image())
    return segmenter


class EncoderCalls:
    """Counts forward passes of the vision encoder with a forward hook (the real module runs)."""

    def __init__(self, model):
        self.count = 0
        self._handle = model.vision_encoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.count += 1

    def remove(self):
        self._handle.remove()


# ----------------------------------------------------------------------------------------------------------
# masks and trimaps


def test_prediction_is_full_resolution_and_picks_the_best_score(segmenter):
    prediction = segmenter.predict_mask(points=[INSIDE], labels=[1])
    assert isinstance(prediction, MaskPrediction)
    assert prediction.masks.shape == (3, HEIGHT, WIDTH) and prediction.masks.dtype == bool
    assert prediction.scores.shape == (3,)
    assert prediction.index == int(np.argmax(prediction.scores))
    assert prediction.score == pytest.approx(float(prediction.scores.max()))
    np.testing.assert_array_equal(prediction.mask, prediction.masks[prediction.index])
    single = segmenter.predict_mask(points=[INSIDE], labels=[1], multimask=False)
    assert single.masks.shape == (1, HEIGHT, WIDTH) and single.index == 0


@pytest.mark.parametrize("band_width", [None, 6])
def test_trimap_has_three_values_and_the_band_around_the_mask(segmenter, band_width):
    mask, trimap = segmenter.predict_trimap(points=[INSIDE], labels=[1], band_width=band_width)
    assert mask.shape == trimap.shape == (HEIGHT, WIDTH) and trimap.dtype == np.uint8
    assert mask.any() and not mask.all(), "the seeded random model should give a mask with an edge"
    assert set(np.unique(trimap).tolist()) == {BACKGROUND, UNKNOWN, FOREGROUND}
    width = default_band_width(HEIGHT, WIDTH) if band_width is None else band_width
    unknown = trimap == UNKNOWN
    # centre-to-centre distance from each pixel to the nearest pixel on the other side of the mask boundary
    distance = np.where(mask, ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask))
    assert (distance[unknown] <= width).all()
    assert unknown[distance <= width - 1].all()
    assert (trimap[~unknown] == np.where(mask, FOREGROUND, BACKGROUND)[~unknown]).all()


def test_negative_point_changes_the_mask(segmenter):
    positive = segmenter.predict_mask(points=[INSIDE], labels=[1]).mask
    with_negative = segmenter.predict_mask(points=[INSIDE, OUTSIDE], labels=[1, 0]).mask
    both_positive = segmenter.predict_mask(points=[INSIDE, OUTSIDE], labels=[1, 1]).mask
    assert not np.array_equal(positive, with_negative)
    assert not np.array_equal(with_negative, both_positive)  # the label, not just the extra point, matters


def test_box_changes_the_mask(segmenter):
    points_only = segmenter.predict_mask(points=[INSIDE], labels=[1]).mask
    with_box = segmenter.predict_mask(points=[INSIDE], labels=[1], box=BOX).mask
    box_only = segmenter.predict_mask(box=BOX).mask
    assert not np.array_equal(points_only, with_box)
    assert not np.array_equal(with_box, box_only)


def test_same_prompts_give_the_same_mask(segmenter):
    first = segmenter.predict_mask(points=[INSIDE, OUTSIDE], labels=[1, 0], box=BOX)
    second = segmenter.predict_mask(points=np.array([INSIDE, OUTSIDE]), labels=np.array([1, 0]), box=BOX)
    np.testing.assert_array_equal(first.masks, second.masks)
    np.testing.assert_array_equal(first.scores, second.scores)


@pytest.mark.parametrize(("model_type", "processor_class"), [("sam", SamProcessor), ("sam_hq", SamHQProcessor)])
def test_cached_embedding_matches_transformers_pipeline(model_type, processor_class):
    """The click path (embedding once, prompts scaled here) gives exactly what the processor + full forward
    pass documented by transformers gives."""
    model = tiny_model(model_type)
    processor = processor_class(tiny_image_processor())
    image = disc_image()
    segmenter = ClickSegmenter(model, processor, device="cpu")
    segmenter.set_image(image)
    points, labels, box = [INSIDE, OUTSIDE], [1, 0], BOX
    ours = segmenter.predict_mask(points=points, labels=labels, box=box)
    inputs = processor(
        images=image,
        input_points=[[list(p) for p in points]],
        input_labels=[labels],
        input_boxes=[[list(box)]],
        return_tensors="pt",
    )
    with torch.no_grad():
        outputs = model(**{k: v for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")})
    reference = processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][0]
    np.testing.assert_array_equal(ours.masks, reference.numpy())
    np.testing.assert_allclose(ours.scores, outputs.iou_scores[0, 0].numpy(), atol=1e-6)


def test_sam2_cached_embedding_matches_full_forward():
    model = tiny_model("sam2")
    segmenter = ClickSegmenter(model, device="cpu")
    image = disc_image()
    segmenter.set_image(image)
    ours = segmenter.predict_mask(points=[INSIDE, OUTSIDE], labels=[1, 0], box=BOX)
    # SAM 2 squashes the image to a 128x128 square, so x scales by 128/300 and y by 128/200.
    scale = np.array([IMAGE_SIZE / WIDTH, IMAGE_SIZE / HEIGHT])
    pixel_values = segmenter.processor(images=image)["pixel_values"]
    with torch.no_grad():
        outputs = model(
            pixel_values=pixel_values,
            input_points=torch.tensor(np.array([INSIDE, OUTSIDE]) * scale, dtype=torch.float32)[None, None],
            input_labels=torch.tensor([[[1, 0]]]),
            input_boxes=torch.tensor(np.array(BOX) * np.tile(scale, 2), dtype=torch.float32)[None, None],
        )
    reference = torch.nn.functional.interpolate(outputs.pred_masks[0], (HEIGHT, WIDTH), mode="bilinear") > 0
    np.testing.assert_array_equal(ours.masks, reference[0].numpy())


# ----------------------------------------------------------------------------------------------------------
# one encoder pass per image


def test_vision_encoder_runs_once_per_image(model):
    segmenter = ClickSegmenter(model, device="cpu", cache_size=2)
    calls = EncoderCalls(model)
    try:
        image, other = disc_image(), disc_image(brightness=120)
        segmenter.set_image(image)
        for points, labels in [([INSIDE], [1]), ([INSIDE, OUTSIDE], [1, 0]), ([OUTSIDE], [0])]:
            segmenter.predict_mask(points=points, labels=labels)
            segmenter.predict_trimap(points=points, labels=labels, box=BOX)
        assert calls.count == 1
        segmenter.set_image(image.copy())  # same pixels, another array: cached
        segmenter.predict_mask(points=[INSIDE], image=image)
        assert calls.count == 1
        segmenter.set_image(other)
        assert calls.count == 2
        segmenter.set_image(image)  # still in the 2-image cache
        assert calls.count == 2
        image[0, 0] = 99  # edited in place: new pixels, new embedding
        segmenter.set_image(image)
        assert calls.count == 3
        segmenter.set_image(other)  # dropped from the cache: least recently used of the three
        assert calls.count == 4
    finally:
        calls.remove()


def test_a_pickled_embedding_decodes_like_the_current_image_without_the_encoder(model):
    """The Space's ZeroGPU path: embed once, pickle to the CPU (as a GPU worker returns it), decode clicks there."""
    import pickle

    segmenter = ClickSegmenter(model, device="cpu")
    calls = EncoderCalls(model)
    try:
        embedding = pickle.loads(pickle.dumps(segmenter.embed(disc_image()).to("cpu")))
        assert calls.count == 1 and not segmenter.is_image_set, "embed() leaves the current image alone"
        assert embedding.original_size == (HEIGHT, WIDTH) and embedding.nbytes > 0
        prompts = [({"points": [INSIDE], "labels": [1]}), ({"points": [INSIDE, OUTSIDE], "labels": [1, 0], "box": BOX})]
        from_embedding = [segmenter.predict_mask(**prompt, embedding=embedding) for prompt in prompts]
        assert calls.count == 1, "clicks on a kept embedding never run the encoder"
        segmenter.set_image(disc_image())
        for prompt, prediction in zip(prompts, from_embedding, strict=True):
            reference = segmenter.predict_mask(**prompt)
            np.testing.assert_array_equal(prediction.masks, reference.masks)
            np.testing.assert_allclose(prediction.scores, reference.scores, atol=1e-6)
        with pytest.raises(InputError, match="either an image or its embedding"):
            segmenter.predict_mask(points=[INSIDE], image=disc_image(), embedding=embedding)
    finally:
        calls.remove()


def test_image_argument_switches_images_and_matches_set_image(model):
    image, other = disc_image(), disc_image(brightness=120)
    segmenter = ClickSegmenter(model, device="cpu")
    via_argument = segmenter.predict_mask(points=[INSIDE], labels=[1], image=other)
    assert segmenter.image_size == (HEIGHT, WIDTH)
    reference = ClickSegmenter(model, device="cpu")
    reference.set_image(image)
    reference.set_image(other)
    np.testing.assert_array_equal(via_argument.masks, reference.predict_mask(points=[INSIDE], labels=[1]).masks)


# ----------------------------------------------------------------------------------------------------------
# loading


def test_from_pretrained_loads_a_saved_sam_folder(tmp_path):
    model = tiny_model("sam")
    processor = SamProcessor(tiny_image_processor())
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = ClickSegmenter.from_pretrained(tmp_path, device="cpu")
    assert loaded.model_type == "sam"
    assert isinstance(loaded.model, SamModel)
    direct = ClickSegmenter(model, processor, device="cpu")
    for segmenter in (loaded, direct):
        segmenter.set_image(disc_image())
    mask, trimap = loaded.predict_trimap(points=[INSIDE], labels=[1], band_width=4)
    np.testing.assert_array_equal(mask, direct.predict_mask(points=[INSIDE], labels=[1]).mask)
    assert set(np.unique(trimap).tolist()) == {BACKGROUND, UNKNOWN, FOREGROUND}


def test_from_pretrained_without_processor_files_uses_the_standard_processor(tmp_path):
    model = tiny_model("sam_hq")
    model.save_pretrained(tmp_path)  # no processor_config.json
    loaded = ClickSegmenter.from_pretrained(str(tmp_path), device="cpu", dtype="float32")
    assert loaded.model_type == "sam_hq"
    loaded.set_image(disc_image())
    direct = ClickSegmenter(model, device="cpu")
    direct.set_image(disc_image())
    np.testing.assert_array_equal(
        loaded.predict_mask(points=[INSIDE]).masks, direct.predict_mask(points=[INSIDE]).masks
    )


def test_from_pretrained_sam2_reads_the_saved_image_processor_settings(tmp_path):
    model = tiny_model("sam2")
    model.save_pretrained(tmp_path)
    image_processor = {
        "image_processor_type": "Sam2ImageProcessor",
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
    }
    config = {"image_processor": image_processor, "processor_class": "Sam2Processor"}
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    loaded = ClickSegmenter.from_pretrained(tmp_path, device="cpu")
    assert loaded.model_type == "sam2"
    loaded.set_image(disc_image())
    pixel_values = loaded.processor(images=disc_image())["pixel_values"]
    assert pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert pixel_values.max().item() == pytest.approx((230 / 255 - 0.5) / 0.25, abs=1e-4)  # saved mean/std
    assert loaded.predict_mask(points=[INSIDE]).masks.shape == (3, HEIGHT, WIDTH)


def test_from_pretrained_refuses_a_checkpoint_that_is_not_sam(tmp_path):
    ViTModel(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    ).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="'vit' checkpoint"):
        ClickSegmenter.from_pretrained(tmp_path, device="cpu")


def test_from_pretrained_unreachable_hub_id_is_a_hub_error():
    with pytest.raises(HubError, match="not a local folder"):
        ClickSegmenter.from_pretrained("mematte-tests/no-such-sam-model", device="cpu")


def test_constructor_refuses_other_models():
    with pytest.raises(InputError, match="SAM, SAM-HQ or SAM 2 model, got ViTModel"):
        ClickSegmenter(ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)))


def test_dtype_is_applied():
    segmenter = ClickSegmenter(tiny_model("sam"), device="cpu", dtype="bfloat16")
    assert next(segmenter.model.parameters()).dtype == torch.bfloat16
    segmenter.set_image(disc_image())
    assert segmenter.predict_mask(points=[INSIDE]).mask.shape == (HEIGHT, WIDTH)
    with pytest.raises(InputError, match="dtype"):
        ClickSegmenter(tiny_model("sam"), dtype="float99")


def test_segment_anything_backend_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # as if not installed, even where it is
    checkpoint = tmp_path / "sam_vit_b_01ec64.pth"
    checkpoint.write_bytes(b"")
    for backend in ("segment_anything", "auto"):
        with pytest.raises(MissingBackendError, match="install segment-anything and torchvision") as raised:
            ClickSegmenter.from_pretrained(checkpoint, backend=backend)
        assert isinstance(raised.value, InputError) and isinstance(raised.value, ImportError)


def test_unknown_backend_name():
    with pytest.raises(InputError, match="backend must be one of auto, transformers, segment_anything"):
        ClickSegmenter.from_pretrained("facebook/sam-vit-base", backend="onnx")


# ----------------------------------------------------------------------------------------------------------
# errors


def test_predict_before_set_image():
    segmenter = ClickSegmenter(tiny_model("sam"), device="cpu")
    assert not segmenter.is_image_set and segmenter.image_size is None
    with pytest.raises(InputError, match=r"no image set: call set_image\(image\)"):
        segmenter.predict_mask(points=[INSIDE], labels=[1])
    segmenter.set_image(disc_image())
    segmenter.reset_image()
    with pytest.raises(InputError, match="no image set"):
        segmenter.predict_trimap(points=[INSIDE], labels=[1])


@pytest.fixture(scope="module")
def sam_segmenter():
    segmenter = ClickSegmenter(tiny_model("sam"), device="cpu")
    segmenter.set_image(disc_image())
    return segmenter


@pytest.mark.parametrize("points", [None, []])
def test_no_points_and_no_box(sam_segmenter, points):
    with pytest.raises(InputError, match="no points or box given: click on the object first"):
        sam_segmenter.predict_mask(points=points, labels=None)


@pytest.mark.parametrize("point", [(300, 10), (-1, 10), (10, 200), (10.5, 250.0), (float("nan"), 3)])
def test_point_outside_the_image_names_the_point_and_the_size(sam_segmenter, point):
    x, y = point
    with pytest.raises(InputError, match=rf"point \({x:g}, {y:g}\) is outside the 300x200 image"):
        sam_segmenter.predict_mask(points=[INSIDE, point], labels=[1, 0])


def test_points_on_the_last_pixel_are_inside(sam_segmenter):
    sam_segmenter.predict_mask(points=[(0, 0), (WIDTH - 1, HEIGHT - 1)], labels=[1, 0])


@pytest.mark.parametrize(("points", "labels"), [([INSIDE, OUTSIDE], [1]), ([INSIDE], [1, 0]), ([INSIDE], [])])
def test_labels_length_mismatch(sam_segmenter, points, labels):
    with pytest.raises(InputError, match=rf"got {len(labels)} labels for {len(points)} points"):
        sam_segmenter.predict_mask(points=points, labels=labels)


def test_bad_labels_and_points(sam_segmenter):
    with pytest.raises(InputError, match="labels must be 1 .* or 0"):
        sam_segmenter.predict_mask(points=[INSIDE], labels=[2])
    with pytest.raises(InputError, match="labels but no points"):
        sam_segmenter.predict_mask(labels=[1], box=BOX)
    with pytest.raises(InputError, match=r"\(x, y\) pairs"):
        sam_segmenter.predict_mask(points=[(1, 2, 3)], labels=[1])
    with pytest.raises(InputError, match=r"\(x, y\) pairs"):
        sam_segmenter.predict_mask(points=[("a", "b")], labels=[1])


@pytest.mark.parametrize("box", [(10, 10, 5, 50), (0, 0, 301, 100), (-2, 0, 50, 50), (0, 0, 10)])
def test_bad_box(sam_segmenter, box):
    with pytest.raises(InputError, match="box"):
        sam_segmenter.predict_mask(box=box)


def test_full_image_box_is_allowed(sam_segmenter):
    assert sam_segmenter.predict_mask(box=(0, 0, WIDTH, HEIGHT)).mask.shape == (HEIGHT, WIDTH)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((20, 30), dtype=np.uint8),
        np.zeros((20, 30, 4), dtype=np.uint8),
        np.zeros((20, 30, 3), dtype=np.float32),
        np.zeros((0, 30, 3), dtype=np.uint8),
        [[0, 0, 0]],
    ],
)
def test_bad_images(sam_segmenter, image):
    with pytest.raises(InputError, match="image"):
        sam_segmenter.set_image(image)


@pytest.mark.parametrize(
    "device, message", [("tpu", "not a device name|not available"), ("cuda:7", "CUDA|does not exist")]
)
def test_a_device_this_machine_cannot_use_is_refused_before_loading(tmp_path, device, message):
    """The library's one device resolution: a clear InputError naming the device, not torch's error mid-load."""
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    tiny_model("sam").save_pretrained(tmp_path)
    SamProcessor(tiny_image_processor()).save_pretrained(tmp_path)
    with pytest.raises(InputError, match=message):
        ClickSegmenter.from_pretrained(tmp_path, device=device)
