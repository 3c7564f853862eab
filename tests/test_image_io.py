"""Tests for mematte_hf.image_io: every kind of input a user really has, and atomic writing."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mematte_hf.errors import InputError
from mematte_hf.image_io import (
    DEFAULT_MAX_PIXELS,
    alpha_to_uint8,
    alpha_to_uint16,
    has_unknown_region,
    list_images,
    load_image,
    load_image_float,
    load_trimap,
    save_alpha_png,
    save_rgb_image,
    save_rgba_png,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _write_bilevel_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG: a few kB on disk however large, as a decompression bomb is."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
    path.write_bytes(png + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_bilevel_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000, 20000)


# --------------------------------------------------------------------------------------------------
# load_image: files of every mode


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    pixels = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.dtype == np.uint8 and image.shape == (1, 2, 3)
    np.testing.assert_array_equal(image, pixels[..., :3])


def test_greyscale_and_grey_alpha_png(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_image(str(tmp_path / "l.png"))[0], [[0] * 3, [77] * 3, [255] * 3])
    Image.new("LA", (2, 1), (100, 0)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png"), np.full((1, 2, 3), 100))


def test_bilevel_png(tmp_path: Path) -> None:
    image = Image.new("1", (3, 1), 0)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_image(tmp_path / "b.png")[0, :, 0], [0, 255, 0])


def test_palette_png_with_transparency_keeps_palette_colours(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png", transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "palette with transparency" warning must not show
        loaded = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(loaded[0], [RED, BLUE])


def test_16_bit_png_is_scaled_with_rounding(tmp_path: Path) -> None:
    values = np.array([[0, 128, 129, 257 * 100, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    with Image.open(tmp_path / "16.png") as stored:
        assert stored.mode == "I;16"
    np.testing.assert_array_equal(load_image(tmp_path / "16.png")[0, :, 1], [0, 0, 1, 100, 128, 255])


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    image = load_image(tmp_path / "cmyk.jpg")
    assert image.shape == (8, 8, 3)
    assert np.abs(image.astype(int) - RED).max() <= 3


def _jpeg_with_orientation(path: Path, orientation: int) -> Path:
    """Stored 40 wide x 20 tall: left half red, right half blue."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = RED
    pixels[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_6_is_applied_to_files_and_pil_images(tmp_path: Path) -> None:
    path = _jpeg_with_orientation(tmp_path / "rotated.jpg", 6)
    # Orientation 6: turn 90 degrees clockwise to display, so the stored left edge ends up on top.
    with Image.open(path) as opened:
        from_pil = load_image(opened)
    for image in (load_image(path), from_pil):
        assert image.shape == (40, 20, 3)
        assert np.abs(image[:15].astype(int) - RED).max() < 40
        assert np.abs(image[25:].astype(int) - BLUE).max() < 40


def test_int32_and_float_pil_modes() -> None:
    as_int = Image.fromarray(np.array([[-5, 0, 257 * 3, 65535, 70000]], dtype=np.int32))
    assert as_int.mode == "I"
    np.testing.assert_array_equal(load_image(as_int)[0, :, 0], [0, 0, 3, 255, 255])
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert as_float.mode == "F"
    np.testing.assert_array_equal(load_image(as_float)[0, :, 2], [0, 128, 255])
    with pytest.raises(InputError, match=r"must lie in \[0, 1\] but range from 0 to 200"):
        load_image(Image.fromarray(np.array([[0.0, 200.0]], dtype=np.float32)))


# --------------------------------------------------------------------------------------------------
# load_image: numpy arrays


def test_float_and_uint16_arrays() -> None:
    rgb = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float64)
    np.testing.assert_array_equal(load_image(rgb), [[[0, 128, 255]]])
    np.testing.assert_array_equal(load_image(np.array([[65535]], dtype=np.uint16)), [[[255, 255, 255]]])
    grey = np.array([[[0.2]]], dtype=np.float32)  # (H, W, 1)
    np.testing.assert_array_equal(load_image(grey), [[[51, 51, 51]]])
    np.testing.assert_array_equal(load_image(np.array([[True, False]])), [[[255] * 3, [0] * 3]])


def test_rgba_array_drops_alpha_and_result_is_a_fresh_writable_copy() -> None:
    rgba = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    image = load_image(rgba)
    np.testing.assert_array_equal(image, rgba[..., :3])
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    image = load_image(rgb)
    image[0, 0] = 9
    assert rgb[0, 0, 0] == 0 and image.flags.c_contiguous


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\); expected \(H, W\)"),
        (np.zeros((0, 4), np.uint8), "holds no pixels"),
        (np.zeros((4, 4), np.int64), "dtype int64; use uint8"),
        (np.full((2, 2), 255.0), r"range from 255 to 255; divide 0..255 data by 255"),
        (np.array([[np.nan, 0.5]]), "must lie in"),
    ],
)
def test_unusable_arrays_are_refused(array: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_image(array)


def test_unsupported_source_type() -> None:
    with pytest.raises(InputError, match="cannot read an image from a list; pass a file path"):
        load_image([[0, 1]])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# load_image: files that are not images


def test_files_that_are_not_images(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    cases = {
        "notes.png": "its format is not recognised",
        "empty.jpg": "the file is empty",
        "cut.png": "image file is truncated",
    }
    for name, reason in cases.items():
        with pytest.raises(InputError) as caught:
            load_image(tmp_path / name)
        message = str(caught.value)
        assert f"'{tmp_path / name}' is not a readable image" in message
        assert reason in message and "PNG, JPEG" in message
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a folder, not an image file"):
        load_image(tmp_path)


# --------------------------------------------------------------------------------------------------
# Pixel limit and PIL's decompression-bomb check


def test_pixel_limit_is_checked_before_decoding(bomb_png: Path) -> None:
    with pytest.raises(InputError) as caught:
        load_image(bomb_png, max_pixels=1_000_000)
    assert str(caught.value).startswith(
        f"image '{bomb_png}' is 20000 x 20000 = 400.0 megapixels, above the limit of 1.0 megapixels; "
        "pass max_pixels=400000000"
    )


def test_default_limit_answers_before_pils_own_bomb_check(bomb_png: Path) -> None:
    # 400 MP is above twice PIL's default limit, where Image.open itself raises DecompressionBombError.
    assert 20000 * 20000 > 2 * Image.MAX_IMAGE_PIXELS and DEFAULT_MAX_PIXELS == 80_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="above the limit of 80.0 megapixels"):
            load_image(bomb_png)
        with pytest.raises(InputError, match="trimap .* above the limit of 80.0 megapixels"):
            load_trimap(bomb_png)
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # left as it was


def test_our_limit_decides_when_pils_global_limit_is_lower(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (100, 100), RED).save(tmp_path / "error_range.png")  # 10000 > 2 * 1000: error
    Image.new("RGB", (40, 40), BLUE).save(tmp_path / "warning_range.png")  # 1600 > 1000: warning
    Image.new("RGB", (60, 60), RED).save(tmp_path / "frames.tif", compression="tiff_deflate")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "error_range.png").shape == (100, 100, 3)
        assert load_image(tmp_path / "warning_range.png").shape == (40, 40, 3)
        assert load_image(tmp_path / "frames.tif").shape == (60, 60, 3)
        assert load_trimap(tmp_path / "error_range.png").shape == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_pixel_limit_applies_to_arrays_and_pil_images() -> None:
    with pytest.raises(InputError, match="image array is 30 x 20 = 0.0 megapixels"):
        load_image(np.zeros((20, 30, 3), np.uint8), max_pixels=100)
    with pytest.raises(InputError, match="image PIL image is 30 x 20"):
        load_image(Image.new("RGB", (30, 20)), max_pixels=599)
    assert load_image(Image.new("RGB", (30, 20)), max_pixels=600).shape == (20, 30, 3)
    assert load_image(np.zeros((20, 30), np.uint8), max_pixels=None).shape == (20, 30, 3)
    with pytest.raises(InputError, match="max_pixels must be a positive whole number or None"):
        load_image(np.zeros((2, 2), np.uint8), max_pixels=0)


# --------------------------------------------------------------------------------------------------
# Trimaps


LEVELS = np.array([[0, 84, 85, 128, 169, 170, 255]], dtype=np.uint8)
EXPECTED_TRIMAP = np.array([[0, 0, 128, 128, 128, 255, 255]], dtype=np.uint8)


def test_trimap_thresholds_from_uint8_uint16_float_and_colour_arrays() -> None:
    for array in (
        LEVELS,
        LEVELS[..., None],
        LEVELS.astype(np.uint16) * 257,
        LEVELS / 255.0,
        np.repeat(LEVELS[..., None], 3, axis=2),
    ):
        trimap = load_trimap(array)
        assert trimap.dtype == np.uint8
        np.testing.assert_array_equal(trimap, EXPECTED_TRIMAP)


def test_trimap_from_files_and_pil_modes(tmp_path: Path) -> None:
    Image.fromarray(LEVELS).save(tmp_path / "grey.png")
    Image.fromarray(np.repeat(LEVELS[..., None], 3, axis=2)).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(LEVELS.astype(np.uint16) * 257).save(tmp_path / "16.png")
    palette = Image.fromarray(LEVELS).convert("P")
    for source in (tmp_path / "grey.png", tmp_path / "rgba.png", tmp_path / "16.png", palette):
        np.testing.assert_array_equal(load_trimap(source), EXPECTED_TRIMAP)


def test_trimap_follows_exif_orientation(tmp_path: Path) -> None:
    trimap = load_trimap(_jpeg_with_orientation(tmp_path / "t.jpg", 6))
    assert trimap.shape == (40, 20)


def test_trimap_of_the_wrong_size() -> None:
    with pytest.raises(InputError) as caught:
        load_trimap(np.zeros((2, 3), np.uint8), expected_size=(4, 5))
    assert str(caught.value).startswith("trimap is 3 x 2 but the image is 5 x 4; the trimap must have the image's size")
    assert load_trimap(np.zeros((4, 5), np.uint8), expected_size=(4, 5)).shape == (4, 5)


def test_has_unknown_region() -> None:
    assert has_unknown_region(load_trimap(LEVELS))
    assert has_unknown_region(np.array([[0.0, 0.5]]))  # float trimaps are scaled first
    assert not has_unknown_region(np.array([[0, 255, 84, 170]], dtype=np.uint8))
    assert not has_unknown_region(np.array([[0.0, 1.0]]))


def test_load_image_float_keeps_float_precision() -> None:
    grey = np.array([[0.1234567, 1.0000001]], dtype=np.float64)
    image = load_image_float(grey)
    assert image.shape == (1, 2, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, :, 2], [0.1234567, 1.0], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(load_image_float(np.array([[255]], np.uint8)), [[[1.0, 1.0, 1.0]]])


# --------------------------------------------------------------------------------------------------
# Writers


def test_alpha_conversions_round() -> None:
    alpha = np.array([[0.0, 0.5, 1 / 255 * 0.49, 1.2, -0.1]])
    np.testing.assert_array_equal(alpha_to_uint8(alpha), [[0, 128, 0, 255, 0]])
    np.testing.assert_array_equal(alpha_to_uint16(alpha[:, :2]), [[0, 32768]])
    with pytest.raises(InputError, match="NaN"):
        alpha_to_uint8(np.array([[np.nan]]))


@pytest.mark.parametrize("bits", [8, 16])
def test_alpha_png_round_trip(tmp_path: Path, bits: int) -> None:
    alpha = np.random.default_rng(bits).random((17, 23)).astype(np.float32)
    path = save_alpha_png(tmp_path / "alpha.png", alpha, bits=bits)
    with Image.open(path) as image:
        assert image.mode == ("L" if bits == 8 else "I;16")
        stored = np.asarray(image).astype(np.float64) / (2**bits - 1)
    assert np.abs(stored - alpha).max() <= 0.5 / (2**bits - 1) + 1e-7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.png"]  # no temporary file left


def test_rgba_and_rgb_writers(tmp_path: Path) -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    save_rgba_png(tmp_path / "cut.png", rgba)
    with Image.open(tmp_path / "cut.png") as stored:
        np.testing.assert_array_equal(np.asarray(stored), rgba)
    save_rgb_image(tmp_path / "view.png", rgba[..., :3] / 255.0)
    np.testing.assert_array_equal(load_image(tmp_path / "view.png"), rgba[..., :3])
    save_rgb_image(tmp_path / "view.JPG", np.full((8, 8, 3), 200, np.uint8))
    with Image.open(tmp_path / "view.JPG") as image:
        assert image.format == "JPEG"
    with pytest.raises(InputError, match=r"give it a \.png, \.jpg or \.jpeg suffix"):
        save_rgb_image(tmp_path / "view.gif", rgba[..., :3])
    with pytest.raises(InputError, match=r"RGBA array has shape \(5, 7, 3\); expected \(H, W, 4\)"):
        save_rgba_png(tmp_path / "bad.png", rgba[..., :3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.png", "view.JPG", "view.png"]


def test_atomic_save_replaces_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "alpha.png"
    target.write_bytes(b"old")
    save_alpha_png(target, np.ones((3, 3)))
    with Image.open(target) as stored:
        assert np.asarray(stored).min() == 255
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert target.stat().st_mode == plain.stat().st_mode  # permissions follow the umask, not 0o600
    (tmp_path / "taken.png").mkdir()  # the rename onto a folder fails after the data was written
    with pytest.raises(InputError, match="could not write"):
        save_alpha_png(tmp_path / "taken.png", np.ones((3, 3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.png", "plain", "taken.png"]
    with pytest.raises(InputError, match="does not exist; create it first"):
        save_alpha_png(tmp_path / "no" / "alpha.png", np.ones((3, 3)))
    with pytest.raises(InputError, match="bits=8 or bits=16"):
        save_alpha_png(target, np.ones((3, 3)), bits=12)


def test_list_images(tmp_path: Path) -> None:
    for name in ("b.JPG", "a.png", "c.tiff", "d.WebP", ".hidden.png", "._a.jpg", "notes.txt", "e.bmp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.tiff", "d.WebP", "e.bmp"]
    with pytest.raises(InputError, match="is not a folder"):
        list_images(tmp_path / "a.png")
