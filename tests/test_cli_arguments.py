"""The command line people expect: an instant `--help` and `--version`, one vocabulary for `predict` and
`video`, range errors that name the flag, every check before the work, keyed reuse with -y / -n."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mematte_hf.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(*arguments: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime -m mematte_hf.cli ARGUMENTS`; return the run and the modules it imported."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mematte_hf.cli", *arguments],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    modules = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    return run, modules


@pytest.mark.parametrize(
    "arguments",
    [
        ["--help"],
        ["video", "--help"],
        ["predict", "--help"],
        ["--version"],
        ["video", "missing.mp4", "--output", "o", "--point", "1,1"],  # "does not exist": one line, no torch
        ["predict", "missing.png", "--trimap", "missing.png", "--output", "o"],
    ],
)
def test_help_version_and_argument_errors_import_neither_torch_nor_transformers(arguments):
    run, modules = imported_modules(*arguments)
    assert "torch" not in modules and "transformers" not in modules, sorted(m for m in modules if "torch" in m)
    if arguments == ["--version"]:
        from mematte_hf import __version__

        assert run.returncode == 0 and run.stdout.strip() == f"mematte {__version__}"
    if "missing" in " ".join(arguments):
        assert run.returncode == 1 and "does not exist" in run.stderr


def test_predict_and_video_share_flags_and_state_their_defaults():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the sub-parsers by name
    shared = ["--text-model", "--text-threshold", "--device", "--dtype", "--max-global-tokens", "--memory-budget"]
    shared += ["--decoder-tile-size", "--save", "--background", "--overwrite", "--skip-existing", "-y", "-n"]
    for name in ("predict", "video"):
        options = {option for action in commands[name]._actions for option in action.option_strings}
        assert set(shared) <= options, (name, set(shared) - options)
        text = commands[name].format_help()
        assert "(default: alpha)" in text and "(default: #" in text, name  # --save and --background


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--smooth", "1.5", "argument --smooth: 1.5 is outside"),
        ("--batch-size", "0", "argument --batch-size: 0 is outside"),
        ("--text-threshold", "5", "argument --text-threshold: 5 is outside"),
        ("--band-width", "0", "argument --band-width: 0 is outside"),
    ],
)
def test_value_ranges_are_checked_under_the_flags_name(capsys, flag, value, words):
    with pytest.raises(SystemExit) as exit_info:
        main(["video", "clip.mp4", "--output", "o", "--point", "1,1", flag, value])
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_predict_checks_the_text_threshold_range_too(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--text", "dog", "--text-model", "m", "--output", "o", "--text-threshold", "-1"])
    assert "argument --text-threshold: -1 is outside" in capsys.readouterr().err


def test_a_negative_coordinate_is_a_value_the_frame_check_explains(tmp_path, capsys):
    from .test_video_formats import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    code = main(["video", str(clip), "--output", str(tmp_path / "o"), "--point", "-5,10", "--model", "no/such"])
    error = capsys.readouterr().err
    assert code == 1 and "(-5, 10) on frame 0 is outside the 64 x 48 frame" in error


def test_video_text_needs_a_text_model_like_predict(tmp_path, capsys):
    from .test_video_formats import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    assert main(["video", str(clip), "--output", str(tmp_path / "o"), "--text", "the dog"]) == 1
    assert "--text needs --text-model" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# predict: checks before the work, keyed reuse, one output name per input


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from .utils import save_tiny_checkpoint

    folder = tmp_path_factory.mktemp("cli_arguments_model")
    save_tiny_checkpoint(folder, seed=3)
    return folder


def write_pair(folder: Path, name: str, band: int = 10, suffix: str = ".png") -> tuple[Path, Path]:
    from .test_predictor import scene

    image, trimap = scene(40, 56)
    if band != 10:
        trimap = np.where(trimap == 128, 255, trimap).astype(np.uint8)
        trimap[10 : 10 + band, 10:30] = 128
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "trimaps").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{name}{suffix}")
    Image.fromarray(trimap).save(folder / "trimaps" / f"{name}.png")
    return folder / "images" / f"{name}{suffix}", folder / "trimaps" / f"{name}.png"


def test_predict_checks_background_output_and_device_before_the_work(model_dir, tmp_path, capsys):
    image, trimap = write_pair(tmp_path, "cat")
    (tmp_path / "a_file").write_text("x")
    base = ["predict", str(image), "--trimap", str(trimap), "--model", "no/such/model"]
    cases = [
        (["--output", str(tmp_path / "o"), "--save", "composite", "--background", "notacolour"],
         "--background 'notacolour' is not a colour"),
        (["--output", str(tmp_path / "a_file")], "is a file, not a folder"),
        (["--output", str(tmp_path / "o"), "--device", "tpu"], "'tpu'"),
    ]  # fmt: skip
    for arguments, message in cases:
        assert main([*base, *arguments]) == 1
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error and "no/such/model" not in error, error


def test_two_images_with_one_name_are_an_error(model_dir, tmp_path, capsys):
    write_pair(tmp_path, "animal", suffix=".jpg")
    write_pair(tmp_path, "animal", suffix=".png")
    code = main(["predict", str(tmp_path / "images"), "--trimap", str(tmp_path / "trimaps"),
                 "--output", str(tmp_path / "out"), "--model", str(model_dir)])  # fmt: skip
    assert code == 1 and "would both write animal_*.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_reuses_only_what_the_same_inputs_made(model_dir, tmp_path, capsys):
    image, trimap = write_pair(tmp_path, "cat")
    command = ["predict", str(image), "--trimap", str(trimap), "--output", str(tmp_path / "out"),
               "--model", str(model_dir), "--device", "cpu"]  # fmt: skip
    alpha = tmp_path / "out" / "cat_alpha.png"
    assert main(command) == 0
    first = np.array(Image.open(alpha))
    assert main(command) == 0 and "nothing to do" in capsys.readouterr().out

    write_pair(tmp_path, "cat", band=4)  # another trimap under the same name
    assert main(command) == 1
    assert "made from other inputs or settings" in capsys.readouterr().err
    np.testing.assert_array_equal(np.array(Image.open(alpha)), first)  # refused: the old matte is untouched
    assert main([*command, "-n"]) == 0 and "nothing to do" in capsys.readouterr().out
    np.testing.assert_array_equal(np.array(Image.open(alpha)), first)
    assert main([*command, "-y"]) == 0
    assert np.abs(np.array(Image.open(alpha)).astype(int) - first).max() > 0  # remade from the new trimap
    assert main([*command, "--dtype", "bfloat16"]) == 1  # the precision is part of the key
    capsys.readouterr()


def test_a_failure_line_is_printed_above_the_progress_bar(model_dir, tmp_path, capsys):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "trimaps" / "b.png")
    code = main(["predict", str(tmp_path / "images"), "--trimap", str(tmp_path / "trimaps"),
                 "--output", str(tmp_path / "out"), "--model", str(model_dir), "--device", "cpu"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1
    failure = [line for line in error.replace("\r", "\n").splitlines() if "failed: b:" in line]
    assert failure and failure[0].startswith("failed: b: trimap is 5 x 5")  # a line of its own, not in a bar
