"""`mematte predict`: single files, folders with resume, per-image failures, and one clear line for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mematte_hf.cli import main
from tests.test_predictor import scene
from tests.utils import save_tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_model")
    save_tiny_checkpoint(folder, seed=41)
    return folder


def write_pair(folder_images, folder_trimaps, name: str, size=(90, 120)):
    image, trimap = scene(*size)
    folder_images.mkdir(exist_ok=True)
    folder_trimaps.mkdir(exist_ok=True)
    Image.fromarray(image).save(folder_images / f"{name}.jpg")
    Image.fromarray(trimap).save(folder_trimaps / f"{name}.png")


def predict(model_dir, *arguments) -> int:
    return main(["predict", *map(str, arguments), "--model", str(model_dir)])


def test_single_image_writes_every_requested_output(model_dir, tmp_path, capsys):
    write_pair(tmp_path / "images", tmp_path / "trimaps", "cat")
    code = predict(
        model_dir,
        tmp_path / "images" / "cat.jpg",
        "--trimap",
        tmp_path / "trimaps" / "cat.png",
        "--output",
        tmp_path / "out",
        "--save",
        "alpha,foreground,rgba,composite",
        "--alpha-bits",
        "16",
        "--background",
        "#00ff00",
        "--max-global-tokens",
        "auto",
    )
    assert code == 0, capsys.readouterr().err
    alpha = Image.open(tmp_path / "out" / "cat_alpha.png")
    assert alpha.size == (120, 90) and alpha.mode.startswith("I")  # 16-bit
    assert Image.open(tmp_path / "out" / "cat_rgba.png").mode == "RGBA"
    composite = np.array(Image.open(tmp_path / "out" / "cat_composite.png"))
    assert (composite[0, 0] == [0, 255, 0]).all()  # background pixel over green
    assert "max_global_tokens=" in capsys.readouterr().err  # the auto plan is reported
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_folder_mode_resumes_and_reports_failures_without_stopping(model_dir, tmp_path, capsys):
    images, trimaps, out = tmp_path / "images", tmp_path / "trimaps", tmp_path / "out"
    for name in ("a", "b", "c"):
        write_pair(images, trimaps, name)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(trimaps / "b.png")  # wrong size for b
    code = predict(model_dir, images, "--trimap", trimaps, "--output", out)
    captured = capsys.readouterr()
    assert code == 1
    assert "failed: b: trimap is 10 x 10" in captured.err
    assert "2 done, 0 skipped (already done), 1 failed" in captured.out
    assert sorted(path.name for path in out.glob("*.png")) == ["a_alpha.png", "c_alpha.png"]
    first_written = (out / "a_alpha.png").stat().st_mtime_ns

    write_pair(images, trimaps, "b")  # fix b and run again: only b is processed
    assert predict(model_dir, images, "--trimap", trimaps, "--output", out) == 0
    assert "1 done, 2 skipped (already done), 0 failed" in capsys.readouterr().out
    assert (out / "a_alpha.png").stat().st_mtime_ns == first_written
    assert (out / "b_alpha.png").is_file()

    assert predict(model_dir, images, "--trimap", trimaps, "--output", out) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_trimap_without_unknown_region_is_said_and_written(model_dir, tmp_path, capsys):
    image, trimap = scene(90, 120)
    Image.fromarray(image).save(tmp_path / "i.png")
    Image.fromarray(np.where(trimap == 255, 255, 0).astype(np.uint8)).save(tmp_path / "t.png")
    assert predict(model_dir, tmp_path / "i.png", "--trimap", tmp_path / "t.png", "--output", tmp_path / "o") == 0
    assert "no unknown (grey) region" in capsys.readouterr().err
    written = np.array(Image.open(tmp_path / "o" / "i_alpha.png"))
    np.testing.assert_array_equal(written, np.array(Image.open(tmp_path / "t.png")))


def _single_error(model_dir, capsys, *arguments) -> str:
    assert predict(model_dir, *arguments) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    return error


def test_bad_inputs_give_one_line_and_a_non_zero_exit(model_dir, tmp_path, capsys):
    write_pair(tmp_path, tmp_path, "x")  # x.jpg and x.png side by side
    image, trimap = tmp_path / "x.jpg", tmp_path / "x.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "notes.txt").write_text("hello")
    assert "trimap is 10 x 10" in _single_error(
        model_dir, capsys, image, "--trimap", tmp_path / "small.png", "--output", tmp_path / "o"
    )
    assert "not a readable image" in _single_error(
        model_dir, capsys, tmp_path / "notes.txt", "--trimap", trimap, "--output", tmp_path / "o"
    )
    assert "megapixels" in _single_error(
        model_dir, capsys, image, "--trimap", trimap, "--output", tmp_path / "o", "--max-pixels", "100"
    )
    (tmp_path / "x_alpha.png").write_bytes(trimap.read_bytes())  # a trimap named like the output
    assert "would overwrite an input" in _single_error(
        model_dir, capsys, image, "--trimap", tmp_path / "x_alpha.png", "--output", tmp_path
    )
    assert (
        main(
            [
                "predict",
                str(image),
                "--trimap",
                str(trimap),
                "--output",
                str(tmp_path / "o"),
                "--model",
                str(tmp_path / "no" / "such" / "model"),
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
