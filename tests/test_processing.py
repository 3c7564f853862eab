"""MEMatte's image processor pads the upstream way, crops back, and is what every folder loads with."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, VitMatteImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from mematte_hf import MEMatteImageProcessor
from mematte_hf.convert import load_image_processor
from mematte_hf.image_processing_mematte import padded_size
from mematte_hf.predictor import MEMattePredictor
from tests.utils import save_tiny_checkpoint, tiny_model

# (height, width) -> upstream's padded size: neither, one or both sides multiples of 32.
UPSTREAM_PADDING = {
    (100, 150): (128, 160),  # neither: each grows to its next multiple
    (96, 150): (128, 160),  # height is a multiple and still gains 32 (upstream's rule)
    (100, 128): (128, 160),  # width is a multiple and still gains 32
    (96, 128): (96, 128),  # both multiples: nothing is padded
    (1080, 1920): (1088, 1952),
}


def _inputs(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), (height, width))
    return image, trimap


@pytest.mark.parametrize(("size", "padded"), UPSTREAM_PADDING.items(), ids=str)
def test_padding_follows_upstream(size, padded):
    processor = MEMatteImageProcessor()
    image, trimap = _inputs(*size)
    pixel_values = processor(images=image, trimaps=trimap, return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape) == (1, 4, *padded)
    assert processor.padded_size(*size) == padded
    height, width = size
    assert pixel_values[..., height:, :].abs().sum() == 0 and pixel_values[..., width:].abs().sum() == 0
    mean, std = np.array(IMAGENET_DEFAULT_MEAN), np.array(IMAGENET_DEFAULT_STD)
    expected_rgb = ((image / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(pixel_values[0, :3, :height, :width].numpy(), expected_rgb, atol=1e-5)
    np.testing.assert_allclose(pixel_values[0, 3, :height, :width].numpy(), trimap / 255.0, atol=1e-6)


def test_minimal_padding_rule_per_call_and_crop_back():
    processor = MEMatteImageProcessor()
    image, trimap = _inputs(96, 150)
    minimal = processor(images=image, trimaps=trimap, padding_rule="minimal", return_tensors="pt")["pixel_values"]
    assert tuple(minimal.shape[-2:]) == (96, 160)
    alphas = torch.rand(2, 1, 128, 160)
    cropped = processor.post_process_alphas(alphas, [(96, 150), (100, 128)])
    assert [tuple(alpha.shape) for alpha in cropped] == [(96, 150), (100, 128)]
    torch.testing.assert_close(cropped[1], alphas[1, 0, :100, :128])
    with pytest.raises(ValueError, match="padding_rule"):
        MEMatteImageProcessor(padding_rule="centre")


def test_saved_folder_loads_the_processor_with_auto_classes(tmp_path):
    save_tiny_checkpoint(tmp_path, seed=41)
    settings = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert settings["image_processor_type"] == "MEMatteImageProcessor" and settings["padding_rule"] == "upstream"
    assert settings["auto_map"]["AutoImageProcessor"] == "image_processing_mematte.MEMatteImageProcessor"
    assert (tmp_path / "image_processing_mematte.py").is_file()  # for trust_remote_code users
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), MEMatteImageProcessor)


def test_folder_written_with_transformers_processor_still_pads_the_upstream_way(tmp_path):
    model = tiny_model(seed=42)
    model.save_pretrained(tmp_path)
    mean, std = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    VitMatteImageProcessorPil(image_mean=mean, image_std=std).save_pretrained(tmp_path)  # as before this change
    processor = load_image_processor(tmp_path)
    assert isinstance(processor, MEMatteImageProcessor) and list(processor.image_mean) == mean
    image, trimap = _inputs(96, 150)
    assert processor(images=image, trimaps=trimap, return_tensors="pt")["pixel_values"].shape[-2:] == (128, 160)
    predictor = MEMattePredictor.from_pretrained(tmp_path, device="cpu")
    assert predictor.processor.padded_size(96, 150) == (128, 160)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_checkpoint(folder, seed=43)
    return MEMattePredictor.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize("size", [(100, 150), (96, 150), (100, 128), (96, 128)], ids=str)
def test_predictor_returns_the_input_size_and_the_processor_path(predictor, size):
    image, trimap = _inputs(*size, seed=1)
    result = predictor.predict(image, trimap, decoder_tile_size=0)
    assert result.alpha.shape == size
    inputs = predictor.processor(images=image, trimaps=trimap, return_tensors="pt")
    with torch.no_grad():
        raw = predictor.model(**inputs, decoder_tile_size=0).alphas
    expected = predictor.processor.post_process_alphas(raw, [size])[0].numpy()
    unknown = trimap == 128
    np.testing.assert_allclose(result.alpha[unknown], expected[unknown], atol=1e-6)


@pytest.mark.parametrize("return_tensors, tensor_type", [("np", np.ndarray), ("pt", torch.Tensor)])
@pytest.mark.parametrize("padding_rule", ["upstream", "minimal"])
@pytest.mark.parametrize("rule_given", ["per_call", "by_the_processor"])
def test_return_tensors_is_honoured_for_every_padding_rule(return_tensors, tensor_type, padding_rule, rule_given):
    image, trimap = _inputs(96, 150)
    if rule_given == "per_call":
        processor, call_rule = MEMatteImageProcessor(padding_rule="upstream"), {"padding_rule": padding_rule}
    else:
        processor, call_rule = MEMatteImageProcessor(padding_rule=padding_rule), {}
    pixel_values = processor(images=image, trimaps=trimap, return_tensors=return_tensors, **call_rule)["pixel_values"]
    assert isinstance(pixel_values, tensor_type)
    assert tuple(pixel_values.shape) == (1, 4, *padded_size(96, 150, padding_rule=padding_rule))
    assert np.asarray(pixel_values).dtype == np.float32
