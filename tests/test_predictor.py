"""The predictor on every kind of input, the memory budget, and the cutouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mematte_hf.errors import InputError
from mematte_hf.memory import estimate_peak_bytes, plan_memory
from mematte_hf.predictor import MEMattePredictor
from tests.utils import save_tiny_checkpoint, tiny_config

HEIGHT, WIDTH = 120, 170


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_mematte")
    save_tiny_checkpoint(folder, seed=31)
    return folder


@pytest.fixture(scope="module")
def predictor(model_dir):
    return MEMattePredictor.from_pretrained(model_dir, device="cpu")


def scene(height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """An RGB photo-like image and its 0/128/255 trimap (a disc with an unknown ring)."""
    yy, xx = np.mgrid[:height, :width]
    distance = np.hypot(yy - height / 2, xx - width / 2)
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(90, 30, (height, width, 3)) + (distance < 40)[..., None] * 120, 0, 255)
    trimap = np.where(distance < 30, 255, np.where(distance > 50, 0, 128)).astype(np.uint8)
    return image.astype(np.uint8), trimap


def test_predict_returns_full_resolution_alpha_with_known_regions_forced(predictor):
    image, trimap = scene()
    result = predictor.predict(image, trimap)
    assert result.model_ran
    assert result.alpha.shape == (HEIGHT, WIDTH) and result.alpha.dtype == np.float32
    assert (result.alpha[trimap == 0] == 0).all() and (result.alpha[trimap == 255] == 1).all()
    unknown = result.alpha[trimap == 128]
    assert 0 <= unknown.min() and unknown.max() <= 1 and unknown.std() > 0
    assert [mask.shape for mask in result.routing_masks] == [(8, 11)] * 2
    assert all(0 <= fraction <= 1 for fraction in result.routed_fraction)


def test_processor_and_model_agree_with_the_predictor(predictor, model_dir):
    from transformers import AutoImageProcessor, AutoModelForImageMatting

    image, trimap = scene()
    model = AutoModelForImageMatting.from_pretrained(model_dir).eval()
    inputs = AutoImageProcessor.from_pretrained(model_dir)(images=image, trimaps=trimap, return_tensors="pt")
    with torch.no_grad():
        raw = model(**inputs).alphas[0, 0, :HEIGHT, :WIDTH].numpy()
    unknown = trimap == 128
    np.testing.assert_allclose(predictor.predict(image, trimap).alpha[unknown], raw[unknown], atol=1e-6)


def _save(array: np.ndarray, path, mode: str | None = None, **kwargs):
    Image.fromarray(array).convert(mode or Image.fromarray(array).mode).save(path, **kwargs)
    return path


def test_every_input_kind_gives_the_same_matte(predictor, tmp_path):
    image, trimap = scene()
    reference = predictor.predict(image, trimap).alpha
    grey_trimap = np.where(trimap == 128, 100, np.where(trimap == 255, 230, 20)).astype(np.uint8)  # any grey levels
    rgba = np.dstack([image, np.full((HEIGHT, WIDTH), 77, np.uint8)])
    variants = {
        "png path": (_save(image, tmp_path / "i.png"), _save(trimap, tmp_path / "t.png")),
        "str path": (str(tmp_path / "i.png"), str(tmp_path / "t.png")),
        "PIL": (Image.fromarray(image), Image.fromarray(trimap)),
        "float arrays": (image / 255.0, trimap / 255.0),
        "RGBA file, grey-level trimap": (_save(rgba, tmp_path / "rgba.png"), grey_trimap),
        "16-bit trimap": (image, trimap.astype(np.uint16) * 257),
        "RGB trimap file": (image, _save(np.dstack([trimap] * 3), tmp_path / "t3.png")),
    }
    for name, (image_source, trimap_source) in variants.items():
        alpha = predictor.predict(image_source, trimap_source).alpha
        np.testing.assert_allclose(alpha, reference, atol=1e-6, err_msg=name)


def test_grayscale_palette_cmyk_and_16bit_images_are_read(predictor, tmp_path):
    image, trimap = scene()
    grey = _save(image, tmp_path / "grey.png", "L")
    palette = _save(image, tmp_path / "palette.png", "P")
    cmyk = _save(image, tmp_path / "cmyk.jpg", "CMYK")
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(image[..., 0].astype(np.uint16) * 257).save(sixteen)
    for source in (grey, palette, cmyk, sixteen):
        result = predictor.predict(source, trimap)
        assert result.alpha.shape == (HEIGHT, WIDTH) and result.image.shape == (HEIGHT, WIDTH, 3), source.name


def test_exif_orientation_is_applied_to_image_and_trimap(predictor, tmp_path):
    image, trimap = scene()
    # Stored sideways with orientation 6 (rotate 270 to display): the predictor must see the upright image.
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(image, k=1)))
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    result = predictor.predict(tmp_path / "rotated.jpg", trimap)
    assert result.alpha.shape == (HEIGHT, WIDTH)


def test_trimap_without_unknown_region_is_returned_as_is_without_a_model_run(predictor):
    image, trimap = scene()
    binary = np.where(trimap == 255, 255, 0).astype(np.uint8)
    result = predictor.predict(image, binary)
    assert not result.model_ran and "no unknown" in result.message
    np.testing.assert_array_equal(result.alpha, binary / 255.0)


@pytest.mark.parametrize(
    ("trimap_shape", "message"), [((HEIGHT + 1, WIDTH), "trimap is"), ((WIDTH, HEIGHT), "trimap is")]
)
def test_trimap_of_another_size_is_refused(predictor, trimap_shape, message):
    image, _ = scene()
    with pytest.raises(InputError, match=message):
        predictor.predict(image, np.full(trimap_shape, 128, np.uint8))


def test_non_image_and_oversized_inputs_are_refused(model_dir, tmp_path):
    image, trimap = scene()
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    small_limit = MEMattePredictor.from_pretrained(model_dir, device="cpu", max_pixels=HEIGHT * WIDTH - 1)
    with pytest.raises(InputError, match="not a readable image"):
        small_limit.predict(text, trimap)
    with pytest.raises(InputError, match="megapixels"):
        small_limit.predict(image, trimap)


def test_missing_model_gives_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        MEMattePredictor.from_pretrained(tmp_path / "missing" / "model")


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16"])
def test_half_precision_on_cpu_stays_close(model_dir, predictor, dtype):
    image, trimap = scene()
    half = MEMattePredictor.from_pretrained(model_dir, device="cpu", dtype=dtype)
    difference = np.abs(half.predict(image, trimap).alpha - predictor.predict(image, trimap).alpha)
    assert difference.mean() < 0.02


def test_auto_budget_picks_a_smaller_cap_for_a_smaller_budget_and_the_result_respects_it(tmp_path):
    # A wide backbone with a slim decoder, so that at 1024 px the backbone (and so the cap) sets the peak.
    folder = tmp_path / "wide"
    model = save_tiny_checkpoint(
        folder, seed=33, hidden_size=96, convstream_hidden_sizes=[4, 8, 8], fusion_hidden_sizes=[16, 8, 8, 4]
    )
    image, trimap = scene(1024, 1024)
    trimap[:] = 128  # every token is a candidate
    caps = {}
    for cap in (8, 1000):
        budget = estimate_peak_bytes(model.config, 1024, 1024, cap, 128)
        predictor = MEMattePredictor.from_pretrained(folder, max_global_tokens="auto", memory_budget=budget)
        result = predictor.predict(image, trimap)
        caps[cap] = result.plan.max_global_tokens
        assert result.max_global_tokens == result.plan.max_global_tokens
        assert result.plan.estimated_bytes <= budget
        assert all(mask.sum() <= result.plan.max_global_tokens for mask in result.routing_masks)
    assert 8 <= caps[8] < caps[1000]


def test_plan_for_a_vit_s_at_4k_trades_the_cap_and_tile_against_the_budget():
    config = tiny_config(hidden_size=384, num_attention_heads=6)
    tight = plan_memory(config, 4096, 4096, budget_bytes=int(1.2 * 2**30))
    roomy = plan_memory(config, 4096, 4096, budget_bytes=8 * 2**30)
    assert tight.max_global_tokens < roomy.max_global_tokens == roomy.tokens == 65536
    assert "max_global_tokens" in str(tight) and "budget" in str(tight)
    with pytest.raises(InputError, match="needs at least"):
        plan_memory(config, 4096, 4096, budget_bytes=2**20)


def test_cutouts_and_composites(predictor):
    image, trimap = scene()
    result = predictor.predict(image, trimap)
    rgba = result.rgba()
    assert rgba.shape == (HEIGHT, WIDTH, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[..., 3], np.round(result.alpha * 255).astype(np.uint8))
    over_red = result.composite("#ff0000")
    assert over_red.shape == (HEIGHT, WIDTH, 3)
    assert (over_red[trimap == 0] == [255, 0, 0]).all()


def test_prepare_then_run_and_batches_equal_predict(predictor):
    image, trimap = scene()
    other = np.ascontiguousarray(image[::-1])
    single = [predictor.predict(image, trimap), predictor.predict(other, trimap)]
    prepared = predictor.prepare(image, trimap)
    assert prepared.pixel_values is not None and prepared.size == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(predictor.run(prepared).alpha, single[0].alpha)
    batch = predictor.predict_batch([image, other], [trimap, trimap])
    for result, alone in zip(batch, single, strict=True):
        np.testing.assert_allclose(result.alpha, alone.alpha, atol=1e-5)
        for mask, alone_mask in zip(result.routing_masks, alone.routing_masks, strict=True):
            np.testing.assert_array_equal(mask, alone_mask)
    known = np.where(trimap == 128, 255, trimap).astype(np.uint8)  # no unknown region: no model run for it
    mixed = predictor.predict_batch([image, image], [trimap, known])
    assert mixed[0].model_ran and not mixed[1].model_ran
    with pytest.raises(InputError, match="one size"):
        predictor.predict_batch([image, image[:, :-32]], [trimap, trimap[:, :-32]])


def test_foreground_in_the_same_call_and_in_the_plan(predictor):
    image, trimap = scene()
    result = predictor.predict(image, trimap, with_foreground=True)
    assert result.foreground_colors is not None and result.foreground_colors.shape == (HEIGHT, WIDTH, 3)
    assert result.foreground() is result.foreground_colors
    config = tiny_config()
    without = estimate_peak_bytes(config, 2000, 3000, 1000, 512)
    assert estimate_peak_bytes(config, 2000, 3000, 1000, 512, with_foreground=True) > without
    with pytest.raises(InputError, match="budget"):
        plan_memory(config, 2000, 3000, budget_bytes=without * 2, with_foreground=True)


def test_device_requests_go_through_the_shared_resolution():
    """The predictor resolves devices with `mematte_hf.devices`: one clear error for a device it cannot use."""
    from mematte_hf import MEMatteForImageMatting, devices, predictor

    assert predictor.resolve_device is devices.resolve_device
    with pytest.raises(InputError, match="'tpu' is not a device name"):
        MEMattePredictor(MEMatteForImageMatting(tiny_config()), device="tpu")
