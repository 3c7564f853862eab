"""`mematte evaluate` end to end on small PNGs, and the test-set layouts it recognises."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mematte_hf import cli
from mematte_hf.errors import InputError
from mematte_hf.eval_data import EvalSample, detect_layout, find_evaluation_samples
from mematte_hf.metrics import METRIC_NAMES, score_image


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def synthetic_sample(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, ground truth, trimap) as uint8 arrays: a soft-edged blob, a noisy guess, a band trimap."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    distance = np.hypot(yy - height / 2, xx - width / 2) - min(height, width) / 4
    gt = np.clip(0.5 - distance / 6, 0, 1)
    trimap = np.where(gt >= 1, 255, 0).astype(np.uint8)
    trimap[np.abs(distance) < 8] = 128
    prediction = np.clip(gt + 0.15 * rng.standard_normal(gt.shape), 0, 1)
    return (np.round(prediction * 255).astype(np.uint8), np.round(gt * 255).astype(np.uint8), trimap)


def write_prediction_folders(root: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
    """Write predictions/, alphas/ and trimaps/ under root; return the scores score_image gives each image."""
    expected = {}
    for index, (name, (height, width)) in enumerate(sizes.items()):
        prediction, gt, trimap = synthetic_sample(height, width, seed=index)
        save_png(root / "predictions" / f"{name}.png", prediction)
        save_png(root / "alphas" / f"{name}.png", gt)
        save_png(root / "trimaps" / f"{name}.png", trimap)
        expected[name] = score_image(prediction, gt, trimap)
    return expected


def folder_args(root: Path) -> list[str]:
    return [
        "evaluate",
        "--predictions",
        str(root / "predictions"),
        "--alphas",
        str(root / "alphas"),
        "--trimaps",
        str(root / "trimaps"),
        "--json",
        str(root / "out" / "scores.json"),
    ]


# ----------------------------------------------------------------------------------------------------------
# Mode (a): scoring existing predictions


@pytest.mark.parametrize("workers", ["1", "2"])
def test_evaluate_scores_predictions(tmp_path, capsys, workers):
    expected = write_prediction_folders(tmp_path, {"b_wide": (40, 64), "a_tall": (72, 48), "c_square": (56, 56)})

    assert cli.main([*folder_args(tmp_path), "--workers", workers]) == 0

    report = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert report["num_images"] == 3
    assert list(report["per_image"]) == ["a_tall", "b_wide", "c_square"]
    for name, scores in expected.items():
        assert report["per_image"][name] == pytest.approx(scores, rel=1e-12)
        assert all(scores[metric] > 0 for metric in METRIC_NAMES)  # a real difference was scored
    for metric in METRIC_NAMES:
        mean = sum(scores[metric] for scores in expected.values()) / 3
        assert report["mean"][metric] == pytest.approx(mean, rel=1e-12)
    table = capsys.readouterr().out.strip().splitlines()[-1]
    assert table.startswith(f"SAD {report['mean']['sad']:.2f} | MSE {report['mean']['mse']:.2f}")
    assert "3 images" in table


def test_missing_partner_is_named(tmp_path, capsys):
    write_prediction_folders(tmp_path, {"one": (32, 32), "two": (32, 32)})
    (tmp_path / "alphas" / "two.png").unlink()
    (tmp_path / "predictions" / "one.png").unlink()

    assert cli.main(folder_args(tmp_path)) != 0

    error = capsys.readouterr().err
    assert "no prediction in" in error and "for one" in error
    assert "no ground-truth alpha in" in error and "for two" in error
    assert not (tmp_path / "out" / "scores.json").exists()


def test_prediction_of_the_wrong_size_names_the_image(tmp_path, capsys):
    write_prediction_folders(tmp_path, {"good": (32, 32), "resized": (32, 40)})
    save_png(tmp_path / "predictions" / "resized.png", np.zeros((16, 20), np.uint8))

    assert cli.main([*folder_args(tmp_path), "--workers", "1"]) != 0

    error = capsys.readouterr().err
    assert "resized: sizes differ" in error


def test_mixing_the_two_modes_is_refused(tmp_path, capsys):
    write_prediction_folders(tmp_path, {"one": (32, 32)})

    assert cli.main([*folder_args(tmp_path), "--model", "some/model"]) != 0
    assert "cannot be combined" in capsys.readouterr().err

    assert cli.main(["evaluate", "--alphas", str(tmp_path / "alphas"), "--json", str(tmp_path / "x.json")]) != 0
    assert "missing --predictions, --trimaps" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# Test-set layouts


def write_layout(root: Path, folders: tuple[str, str, str], names: list[str], image_suffix: str = ".png") -> None:
    image_dir, trimap_dir, alpha_dir = folders
    for name in names:
        save_png(root / image_dir / f"{name}{image_suffix}", np.zeros((8, 8, 3), np.uint8))
        save_png(root / trimap_dir / f"{name}.png", np.full((8, 8), 128, np.uint8))
        save_png(root / alpha_dir / f"{name}.png", np.zeros((8, 8), np.uint8))


def test_composition_1k_layout_prefers_alpha_copy(tmp_path):
    write_layout(tmp_path, ("merged", "trimaps", "alpha_copy"), ["fg_1_bg_2", "fg_0_bg_1"])
    (tmp_path / "alpha").mkdir()  # the 50 foreground alphas, named differently: must not be used
    save_png(tmp_path / "alpha" / "fg.png", np.zeros((8, 8), np.uint8))

    samples = find_evaluation_samples(tmp_path)

    assert detect_layout(tmp_path) == "Composition-1K"
    assert samples == [
        EvalSample(
            "fg_0_bg_1",
            tmp_path / "merged" / "fg_0_bg_1.png",
            tmp_path / "trimaps" / "fg_0_bg_1.png",
            tmp_path / "alpha_copy" / "fg_0_bg_1.png",
        ),
        EvalSample(
            "fg_1_bg_2",
            tmp_path / "merged" / "fg_1_bg_2.png",
            tmp_path / "trimaps" / "fg_1_bg_2.png",
            tmp_path / "alpha_copy" / "fg_1_bg_2.png",
        ),
    ]


def test_composition_1k_layout_with_alpha_folder(tmp_path):
    write_layout(tmp_path, ("merged", "trimaps", "alpha"), ["x"])
    assert [s.alpha_path for s in find_evaluation_samples(tmp_path)] == [tmp_path / "alpha" / "x.png"]


def test_aim500_layout_pairs_jpeg_images_with_png_masks(tmp_path):
    write_layout(tmp_path, ("original", "trimap", "mask"), ["o_1a2b", "p_3c4d"], image_suffix=".jpg")
    (tmp_path / "usr").mkdir()  # AIM-500 ships other folders too

    samples = find_evaluation_samples(tmp_path)

    assert detect_layout(tmp_path) == "AIM-500"
    assert [s.name for s in samples] == ["o_1a2b", "p_3c4d"]
    assert samples[0].image_path == tmp_path / "original" / "o_1a2b.jpg"
    assert samples[0].alpha_path == tmp_path / "mask" / "o_1a2b.png"


def test_generic_layout_ignores_hidden_and_non_image_files(tmp_path):
    write_layout(tmp_path, ("images", "trimaps", "alphas"), ["cat"])
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "alphas" / ".DS_Store").write_bytes(b"\0")

    samples = find_evaluation_samples(tmp_path)

    assert detect_layout(tmp_path) == "generic"
    assert [s.name for s in samples] == ["cat"]


def test_unknown_layout_lists_what_was_expected(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(InputError, match=r"matches no known test-set layout \(it has pictures/\).*merged/"):
        find_evaluation_samples(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        find_evaluation_samples(tmp_path / "missing")


def test_layout_with_missing_partner_says_which(tmp_path):
    write_layout(tmp_path, ("images", "trimaps", "alphas"), ["a", "b"])
    (tmp_path / "trimaps" / "b.png").unlink()
    with pytest.raises(InputError, match=r"no trimap in .*trimaps for b"):
        find_evaluation_samples(tmp_path)


def test_two_files_with_one_stem_are_ambiguous(tmp_path):
    write_layout(tmp_path, ("images", "trimaps", "alphas"), ["a"])
    save_png(tmp_path / "images" / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match=r"holds both a\.jpg and a\.png"):
        find_evaluation_samples(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# Mode (b): running a model first


def test_evaluate_runs_a_model_then_scores(tmp_path, capsys):
    from mematte_hf.predictor import MEMattePredictor
    from tests.utils import save_tiny_checkpoint

    model_dir = tmp_path / "model"
    save_tiny_checkpoint(model_dir, seed=3)
    data = tmp_path / "data"
    for index, (height, width) in enumerate([(48, 64), (40, 40)]):
        _, gt, trimap = synthetic_sample(height, width, seed=index)
        image = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
        save_png(data / "images" / f"img{index}.png", image)
        save_png(data / "trimaps" / f"img{index}.png", trimap)
        save_png(data / "alphas" / f"img{index}.png", gt)
    out = tmp_path / "run" / "scores.json"

    argv = ["evaluate", "--model", str(model_dir), "--data", str(data), "--json", str(out), "--device", "cpu"]
    assert cli.main([*argv, "--workers", "1"]) == 0

    report = json.loads(out.read_text())
    assert report["num_images"] == 2
    predictor = MEMattePredictor.from_pretrained(str(model_dir), device="cpu")
    for sample in find_evaluation_samples(data):
        saved = np.asarray(Image.open(tmp_path / "run" / "predictions" / f"{sample.name}.png"))
        alpha = predictor.predict(sample.image_path, sample.trimap_path).alpha
        assert saved.dtype == np.uint8 and saved.shape == alpha.shape
        np.testing.assert_array_equal(saved, np.round(alpha * 255).astype(np.uint8))
        gt = np.asarray(Image.open(sample.alpha_path))
        trimap = np.asarray(Image.open(sample.trimap_path))
        assert report["per_image"][sample.name] == pytest.approx(score_image(saved, gt, trimap), rel=1e-12)
    assert "2 images" in capsys.readouterr().out
