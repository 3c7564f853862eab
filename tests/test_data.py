"""DIM-style composited training data: layout, trimap rules, crops, seeding, processor parity, errors."""

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from torch.utils.data import DataLoader

from mematte_hf.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    MattingTrainDataset,
    _trimap_crop,
    affine_matrix,
    choose_crop,
    collate_matting,
    load_alpha,
    load_rgb,
    make_synthetic_matting_folder,
    make_trimap,
    warp_affine,
)
from mematte_hf.errors import InputError

CROP = 64
UNKNOWN = torch.tensor(128 / 255, dtype=torch.float32).item()  # the float32 code, exactly


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_matting_folder(tmp_path_factory.mktemp("synth"), num_samples=6, seed=0)


@pytest.fixture(scope="module")
def items(synth_root: Path) -> list[dict[str, torch.Tensor]]:
    ds = MattingTrainDataset(synth_root, crop_size=CROP, seed=7)
    return [ds[i] for i in range(len(ds))]


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------- synthetic folder


def test_synthetic_folder_layout_and_determinism(tmp_path: Path) -> None:
    root = make_synthetic_matting_folder(tmp_path / "a", num_samples=3, size=(40, 56), seed=5)
    assert sorted(p.name for p in (root / "fg").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert len(list((root / "alpha").iterdir())) == 3 and len(list((root / "bg").iterdir())) == 3
    alpha = np.asarray(Image.open(root / "alpha" / "0000.png"))
    assert alpha.shape == (40, 56) and alpha.dtype == np.uint8
    # Solid background, solid core and a soft edge are all present.
    assert (alpha == 0).any() and (alpha == 255).any() and ((alpha > 0) & (alpha < 255)).any()
    again = make_synthetic_matting_folder(tmp_path / "b", num_samples=3, size=(40, 56), seed=5)
    assert np.array_equal(alpha, np.asarray(Image.open(again / "alpha" / "0000.png")))


def test_loaders_convert_formats(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "a16.png")
    assert np.allclose(load_alpha(tmp_path / "a16.png"), [[0.0, 32768 / 65535, 1.0]])
    assert np.allclose(load_alpha(np.array([[0, 51, 255]], np.uint8)), [[0.0, 0.2, 1.0]])
    grey = load_rgb(Image.new("L", (2, 1), 77))
    assert grey.shape == (1, 2, 3) and (grey == 77).all()
    assert (load_rgb(np.full((1, 1, 4), 0.5)) == 128).all()  # floats in [0, 1], alpha channel dropped
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="Cannot read image"):
        load_rgb(tmp_path / "broken.png")


# ---------------------------------------------------------------- item layout


def test_item_shapes_dtypes_and_ranges(items: list[dict[str, torch.Tensor]]) -> None:
    seen_codes: set[float] = set()
    for item in items:
        assert set(item) == {"pixel_values", "labels", "trimap"}
        assert item["pixel_values"].shape == (4, CROP, CROP)
        assert item["labels"].shape == item["trimap"].shape == (1, CROP, CROP)
        assert all(t.dtype == torch.float32 for t in item.values())
        labels, trimap = item["labels"], item["trimap"]
        assert labels.min() >= 0 and labels.max() <= 1
        codes = set(torch.unique(trimap).tolist())
        assert codes <= {0.0, UNKNOWN, 1.0}
        seen_codes |= codes
        # The 4th input channel is the trimap, not normalised.
        assert torch.equal(item["pixel_values"][3:], trimap)
    assert len(seen_codes) == 3


def test_trimap_agrees_with_alpha(items: list[dict[str, torch.Tensor]]) -> None:
    for item in items:
        alpha, trimap = item["labels"], item["trimap"]
        soft = (alpha > 0) & (alpha < 1)
        assert soft.any()
        unknown = (trimap > 0) & (trimap < 1)
        assert unknown[soft].all(), "every 0 < alpha < 1 pixel must be unknown"
        assert (alpha[trimap == 1] == 1).all() and (alpha[trimap == 0] == 0).all()


def test_make_trimap_by_hand() -> None:
    # Columns: 0 0 0 0 .5 1 1 1 1 1 1. Dilating alpha > 0 (cols >= 4) by 2 reaches col 2, so cols 0-1
    # stay background; eroding alpha == 1 (cols >= 5) by 1 removes col 5, so cols >= 6 are foreground.
    alpha = np.tile(np.array([0, 0, 0, 0, 0.5, 1, 1, 1, 1, 1, 1], dtype=np.float32), (5, 1))
    expected = [0, 0, 128, 128, 128, 128, 255, 255, 255, 255, 255]
    assert (make_trimap(alpha, k_dilate=2, k_erode=1) == np.array(expected, dtype=np.uint8)).all()
    # No object at all: everything is background; all solid: everything foreground.
    assert (make_trimap(np.zeros((4, 4), np.float32), 3, 3) == 0).all()
    assert (make_trimap(np.ones((4, 4), np.float32), 3, 3) == 255).all()


def test_trimap_on_crop_window_equals_full_trimap() -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:90, :110]
    alpha = np.clip(1.5 - np.hypot(y - 40, x - 60) / 12.0, 0, 1).astype(np.float32)
    alpha[rng.random(alpha.shape) < 0.002] = 0.4  # isolated soft specks far from the blob
    for k_dilate, k_erode, top, left in [(30, 1, 0, 0), (5, 17, 10, 40), (12, 12, 58, 78), (1, 30, 30, 7)]:
        full = make_trimap(alpha, k_dilate, k_erode)[top : top + 32, left : left + 32]
        assert np.array_equal(_trimap_crop(alpha, top, left, 32, k_dilate, k_erode), full)


# ---------------------------------------------------------------- crop


def test_choose_crop_centres_on_the_candidate() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((100, 120), dtype=bool)
    mask[50, 60] = True
    assert choose_crop(mask, 20, rng) == (40, 50, (10, 10))
    # Near a corner the window is pushed back inside the image and the pixel is off-centre.
    mask[:] = False
    mask[3, 118] = True
    assert choose_crop(mask, 20, rng) == (0, 100, (3, 18))


def test_choose_crop_without_candidates_is_random_and_in_bounds() -> None:
    mask = np.zeros((50, 70), dtype=bool)
    corners = set()
    for seed in range(20):
        top, left, center = choose_crop(mask, 16, np.random.default_rng(seed))
        assert center is None and 0 <= top <= 34 and 0 <= left <= 54
        corners.add((top, left))
    assert len(corners) > 10


def test_dataset_crops_are_centred_on_unknown_pixels(synth_root: Path) -> None:
    # 32 px crops of 96x128 images: a random crop would often show no object at all.
    ds = MattingTrainDataset(synth_root, crop_size=32, seed=3, samples_per_epoch=24)
    centred = 0
    for i in range(len(ds)):
        sample = ds.composite(i)
        assert sample.center is not None
        assert sample.trimap[sample.center] == 128
        centred += sample.center == (16, 16)
    assert centred >= len(ds) // 2  # only crops pushed back from a border are off-centre


# ---------------------------------------------------------------- seeding


def test_same_seed_same_item_and_variation(synth_root: Path) -> None:
    a = MattingTrainDataset(synth_root, crop_size=CROP, seed=11)
    b = MattingTrainDataset(synth_root, crop_size=CROP, seed=11)
    for key in ("pixel_values", "labels", "trimap"):
        assert torch.equal(a[2][key], b[2][key])
    assert not torch.equal(a[2]["pixel_values"], a[3]["pixel_values"])
    other_seed = MattingTrainDataset(synth_root, crop_size=CROP, seed=12)
    assert not torch.equal(a[2]["pixel_values"], other_seed[2]["pixel_values"])
    # A new epoch gives a new composite of the same foreground; composite(i, epoch) reproduces it.
    before = a[2]["pixel_values"]
    a.set_epoch(1)
    assert not torch.equal(a[2]["pixel_values"], before)
    assert np.array_equal(b.composite(2, epoch=1).image, a.composite(2).image)


def test_dataloader_workers_reproduce_direct_indexing(synth_root: Path) -> None:
    ds = MattingTrainDataset(synth_root, crop_size=32, seed=4)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_matting)
    batches = list(loader)
    direct = collate_matting([ds[i] for i in range(len(ds))])
    assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), direct["pixel_values"])


# ---------------------------------------------------------------- composition and geometry


def test_composite_without_augmentation_by_hand(tmp_path: Path) -> None:
    # Constant fg (200, 10, 50) over constant bg (0, 100, 250); alpha ramps along x.
    alpha_u8 = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (32, 1))
    _write(tmp_path / "fg" / "x.png", np.full((32, 32, 3), (200, 10, 50), np.uint8))
    _write(tmp_path / "alpha" / "x.png", alpha_u8)
    _write(tmp_path / "bg" / "b.png", np.full((48, 40, 3), (0, 100, 250), np.uint8))
    sample = MattingTrainDataset(tmp_path, crop_size=32, augment=False).composite(0)
    a = alpha_u8.astype(np.float64)[..., None] / 255
    expected = np.rint(np.array([200, 10, 50]) * a + np.array([0, 100, 250]) * (1 - a))
    assert np.array_equal(sample.image, expected.astype(np.uint8))
    assert np.array_equal(sample.alpha, alpha_u8.astype(np.float32) / 255)


def test_small_images_are_upscaled_to_the_crop(tmp_path: Path) -> None:
    root = make_synthetic_matting_folder(tmp_path, num_samples=2, size=(40, 50), seed=1)
    item = MattingTrainDataset(root, crop_size=CROP, seed=0)[1]
    assert item["pixel_values"].shape == (4, CROP, CROP)
    assert ((item["labels"] > 0) & (item["labels"] < 1)).any()


def test_affine_flip_and_half_turn_are_exact() -> None:
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (7, 10, 3), dtype=np.uint8)
    alpha = rng.random((7, 10)).astype(np.float32)
    flipped_fg, flipped_alpha = warp_affine(fg, alpha, affine_matrix(0.0, 1.0, 0.0, flip=True))
    assert np.array_equal(flipped_fg, fg[:, ::-1]) and np.allclose(flipped_alpha, alpha[:, ::-1], atol=1e-6)
    # 180 degrees about the centre (3.5, 5) of a 7x10 image maps pixel (r, c) to (6 - r, 9 - c).
    _, turned = warp_affine(fg, alpha, affine_matrix(180.0, 1.0, 0.0, flip=False))
    assert np.allclose(turned, alpha[::-1, ::-1], atol=1e-5)


# ---------------------------------------------------------------- processor parity


@pytest.mark.parametrize(
    ("mean", "std"), [(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
)
def test_pixel_values_match_vitmatte_processor(synth_root: Path, mean: tuple, std: tuple) -> None:
    ds = MattingTrainDataset(synth_root, crop_size=CROP, seed=2, image_mean=mean, image_std=std)
    processor = transformers.VitMatteImageProcessor(image_mean=list(mean), image_std=list(std), do_pad=True)
    for index in (0, 4):
        sample = ds.composite(index)
        expected = processor(
            images=Image.fromarray(sample.image), trimaps=Image.fromarray(sample.trimap), return_tensors="pt"
        )["pixel_values"]
        assert expected.shape == (1, 4, CROP, CROP)
        assert torch.allclose(ds[index]["pixel_values"], expected[0], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- Hugging Face datasets


def _hf_from_folder(root: Path) -> datasets.Dataset:
    stems = sorted(p.stem for p in (root / "fg").iterdir())
    ds = datasets.Dataset.from_dict(
        {
            "foreground": [str(root / "fg" / f"{s}.png") for s in stems],
            "alpha": [str(root / "alpha" / f"{s}.png") for s in stems],
        }
    )
    return ds.cast_column("foreground", datasets.Image()).cast_column("alpha", datasets.Image())


def test_from_hf_dataset_matches_the_folder_dataset(synth_root: Path) -> None:
    bg_paths = sorted((synth_root / "bg").iterdir())
    hf = _hf_from_folder(synth_root)
    from_folder = MattingTrainDataset(synth_root, crop_size=CROP, seed=9)
    from_list = MattingTrainDataset.from_hf_dataset(hf, backgrounds=bg_paths, crop_size=CROP, seed=9)
    bg_ds = datasets.Dataset.from_dict({"image": [str(p) for p in bg_paths]}).cast_column("image", datasets.Image())
    from_bg_ds = MattingTrainDataset.from_hf_dataset(hf, backgrounds=bg_ds, crop_size=CROP, seed=9)
    assert len(from_list) == len(from_folder) == 6
    for i in (0, 5):
        assert torch.equal(from_list[i]["pixel_values"], from_folder[i]["pixel_values"])
        assert torch.equal(from_bg_ds[i]["labels"], from_folder[i]["labels"])


def test_from_hf_dataset_with_in_memory_images_and_background_column() -> None:
    rng = np.random.default_rng(0)
    alpha = np.zeros((48, 48), np.uint8)
    alpha[12:36, 12:36] = 255
    alpha[11, 12:36] = alpha[36, 12:36] = 100
    ds = datasets.Dataset.from_dict(
        {
            "foreground": [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(2)],
            "alpha": [Image.fromarray(alpha)] * 2,
            "background": [Image.fromarray(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)) for _ in range(2)],
        }
    )
    train = MattingTrainDataset.from_hf_dataset(ds, background_column="background", crop_size=32, seed=0)
    item = train[1]
    assert item["pixel_values"].shape == (4, 32, 32)
    assert ((item["trimap"] > 0) & (item["trimap"] < 1)).any()
    with pytest.raises(InputError, match="No backgrounds"):
        MattingTrainDataset.from_hf_dataset(ds.remove_columns("background"))
    with pytest.raises(InputError, match="no column"):
        MattingTrainDataset.from_hf_dataset(ds, fg_column="fg", backgrounds=["unused"])


def test_hf_size_mismatch_is_reported_on_load() -> None:
    ds = datasets.Dataset.from_dict(
        {
            "foreground": [Image.new("RGB", (40, 40))],
            "alpha": [Image.new("L", (40, 30))],
        }
    )
    train = MattingTrainDataset.from_hf_dataset(ds, backgrounds=[np.zeros((40, 40, 3), np.uint8)], crop_size=32)
    with pytest.raises(InputError, match="must match"):
        train[0]


# ---------------------------------------------------------------- collate and errors


def test_collate_stacks_and_checks_shapes(items: list[dict[str, torch.Tensor]]) -> None:
    batch = collate_matting(items[:3])
    assert batch["pixel_values"].shape == (3, 4, CROP, CROP) and batch["labels"].shape == (3, 1, CROP, CROP)
    assert torch.equal(batch["trimap"][1], items[1]["trimap"])
    odd = {k: v[..., :32, :32] for k, v in items[3].items()}
    with pytest.raises(InputError, match="different shapes"):
        collate_matting([items[0], odd])
    with pytest.raises(InputError, match="empty"):
        collate_matting([])


def test_samples_per_epoch_cycles_foregrounds(synth_root: Path) -> None:
    ds = MattingTrainDataset(synth_root, crop_size=32, samples_per_epoch=15)
    assert len(ds) == 15 and ds.num_foregrounds == 6 and ds.num_backgrounds == 6
    assert ds.composite(13).fg_index == 1
    with pytest.raises(IndexError):
        ds.composite(15)


def test_folder_errors(tmp_path: Path) -> None:
    fg = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(InputError, match="does not exist"):
        MattingTrainDataset(tmp_path)
    for sub in ("fg", "alpha", "bg"):
        (tmp_path / sub).mkdir()
    with pytest.raises(InputError, match="holds no images"):
        MattingTrainDataset(tmp_path)
    _write(tmp_path / "fg" / "a.png", fg)
    _write(tmp_path / "fg" / "b.jpg", fg)
    _write(tmp_path / "alpha" / "a.png", np.zeros((20, 20), np.uint8))
    _write(tmp_path / "bg" / "z.png", fg)
    with pytest.raises(InputError, match="no alpha of the same name.*: b"):
        MattingTrainDataset(tmp_path)
    _write(tmp_path / "alpha" / "b.png", np.zeros((20, 24), np.uint8))
    with pytest.raises(InputError, match="must match"):
        MattingTrainDataset(tmp_path)
    _write(tmp_path / "alpha" / "b.png", np.zeros((20, 20), np.uint8))
    assert len(MattingTrainDataset(tmp_path, crop_size=16)) == 2
    with pytest.raises(InputError, match="crop_size"):
        MattingTrainDataset(tmp_path, crop_size=0)
    with pytest.raises(InputError, match="trimap_kernel_range"):
        MattingTrainDataset(tmp_path, trimap_kernel_range=(0, 5))
    with pytest.raises(InputError, match="root"):
        MattingTrainDataset(fg_dir=tmp_path / "fg")
