"""transformers ViTMatte checkpoints through MEMatte's engine: same alphas as `VitMatteForImageMatting`.

A tiny ViTMatte with random weights is saved as the hustvl checkpoints are (config `model_type: vitmatte`, and
a `preprocessor_config.json` of transformers' `VitMatteImageProcessor` with its 0.5 mean and std and the old
`size_divisibility` key). Its global blocks' relative-position tables are sized for a 128 px grid, so that the
sizes below also exercise ViTDet's interpolation of the tables.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import VitDetConfig, VitMatteForImageMatting
from transformers.models.vitdet.modeling_vitdet import VitDetAttention
from transformers.models.vitmatte.image_processing_pil_vitmatte import VitMatteImageProcessorPil

from mematte_hf import MEMatteForImageMatting
from mematte_hf.modeling_mematte import MEMatteAttention
from mematte_hf.predictor import MEMattePredictor

from .utils import randomize_weights, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HUSTVL_PREPROCESSOR = {
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "VitMatteImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "rescale_factor": 0.00392156862745098,
    "size_divisibility": 32,
}


def tiny_vitmatte() -> VitMatteForImageMatting:
    config = tiny_config().to_vitmatte_config(global_image_size=128)
    return randomize_weights(VitMatteForImageMatting(config), seed=3).eval()


def save_tiny_vitmatte(folder):
    """A folder laid out as the hustvl ViTMatte checkpoints are; returns it."""
    tiny_vitmatte().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(HUSTVL_PREPROCESSOR))
    return folder


@pytest.fixture(scope="module")
def vitmatte_dir(tmp_path_factory):
    return save_tiny_vitmatte(tmp_path_factory.mktemp("vitmatte"))


def photo_and_trimap(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=(height, width), p=[0.3, 0.4, 0.3])
    return image, trimap


def transformers_alpha(folder, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """transformers' ViTMatte with the checkpoint's own processor, cropped, known regions forced as the
    predictor forces them."""
    model = VitMatteForImageMatting.from_pretrained(folder).eval()
    inputs = VitMatteImageProcessorPil.from_pretrained(folder)(images=image, trimaps=trimap, return_tensors="pt")
    with torch.no_grad():
        alpha = model(**inputs).alphas[0, 0, : image.shape[0], : image.shape[1]].numpy()
    return np.where(trimap == 0, 0.0, np.where(trimap == 255, 1.0, alpha))


@pytest.mark.parametrize("size", [(96, 128), (100, 150)], ids=["multiple-of-32", "not-multiple-of-32"])
def test_predictor_runs_a_vitmatte_folder_with_vitmatte_alphas(vitmatte_dir, size):
    image, trimap = photo_and_trimap(*size)
    predictor = MEMattePredictor.from_pretrained(vitmatte_dir, device="cpu")
    result = predictor.predict(image, trimap)
    np.testing.assert_allclose(result.alpha, transformers_alpha(vitmatte_dir, image, trimap), atol=1e-4, rtol=0)
    assert result.routing_masks and all(mask.all() for mask in result.routing_masks)  # every token global


def test_predictor_says_which_weights_run(vitmatte_dir):
    predictor = MEMattePredictor.from_pretrained(vitmatte_dir, device="cpu")
    assert predictor.weights.kind == "vitmatte" and not predictor.weights.routing
    assert str(vitmatte_dir) in predictor.describe()
    assert "routing off: every token global" in predictor.describe()


def test_automatic_cap_keeps_the_vitmatte_decoder_whole(vitmatte_dir):
    """`max_global_tokens="auto"` plans decoder tiles for MEMatte; a ViTMatte's alphas need the whole image."""
    image, trimap = photo_and_trimap(100, 150, seed=1)
    predictor = MEMattePredictor.from_pretrained(vitmatte_dir, device="cpu", max_global_tokens="auto")
    result = predictor.predict(image, trimap)
    assert result.decoder_tile_size == 0
    np.testing.assert_allclose(result.alpha, transformers_alpha(vitmatte_dir, image, trimap), atol=1e-4, rtol=0)


def test_routing_is_refused_for_vitmatte_weights():
    model = MEMatteForImageMatting.from_vitmatte(tiny_vitmatte(), run_as_vitmatte=True).eval()
    with pytest.raises(ValueError, match="routing_mode='adaptive' needs MEMatte weights"):
        model(torch.zeros(1, 4, 64, 64), routing_mode="adaptive")


@pytest.mark.parametrize("chunk_elements", [7, 2**24], ids=["chunks-across-rows", "one-chunk"])
def test_global_attention_on_the_grid_equals_vitdet(chunk_elements):
    """Chunked queries with ViTDet's relative positions give transformers' `VitDetAttention` output."""
    grid, size, dim, heads = 8, (5, 7), 32, 2
    config = VitDetConfig(hidden_size=dim, num_attention_heads=heads, use_relative_position_embeddings=True)
    reference = VitDetAttention(config, input_size=(grid, grid))
    randomize_weights(reference, seed=5)
    ours = MEMatteAttention(tiny_config(global_relative_position_size=grid, routing_mode="global"))
    ours.load_state_dict(reference.state_dict())
    tokens = torch.randn(2, size[0] * size[1], dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(tokens.reshape(2, *size, dim))[0].reshape(2, -1, dim)
        got = ours.forward_on_grid(tokens, size, chunk_elements=chunk_elements)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
