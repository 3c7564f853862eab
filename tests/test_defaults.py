"""Defaults that load: `--model`, else MEMATTE_MODEL, else transformers' ViTMatte ViT-S, each saying which.

No test reaches the network (HF_HUB_OFFLINE=1 from the conftest): the ViTMatte and MEMatte weights are tiny local
folders, and the default Hub id fails offline in one line that says how to point --model at a folder.
"""

from __future__ import annotations

import argparse

import pytest
from PIL import Image

from mematte_hf.cli import main
from mematte_hf.commands import video
from mematte_hf.defaults import DEFAULT_MODEL, MODEL_ENVIRONMENT_VARIABLE, choose_model
from space import render
from space.settings import Settings, parse_settings
from tests.test_predictor import scene
from tests.test_vitmatte_engine import save_tiny_vitmatte
from tests.utils import save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vitmatte_dir(tmp_path_factory):
    return save_tiny_vitmatte(tmp_path_factory.mktemp("vitmatte_default"))


@pytest.fixture(scope="module")
def mematte_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mematte_default")
    save_tiny_checkpoint(folder, seed=7)
    return folder


@pytest.fixture
def photo(tmp_path):
    image, trimap = scene(64, 96)
    Image.fromarray(image).save(tmp_path / "photo.png")
    Image.fromarray(trimap).save(tmp_path / "trimap.png")
    return tmp_path / "photo.png", tmp_path / "trimap.png"


def test_model_choice_order():
    environ = {MODEL_ENVIRONMENT_VARIABLE: "me/mematte-vits-realworld"}
    assert choose_model("./mine", environ) == choose_model("./mine", {})  # --model wins
    assert choose_model("./mine", environ).origin == "--model"
    assert choose_model(None, environ).model == "me/mematte-vits-realworld"
    assert choose_model(None, environ).origin == MODEL_ENVIRONMENT_VARIABLE
    assert choose_model(None, {MODEL_ENVIRONMENT_VARIABLE: "  "}).model == DEFAULT_MODEL
    assert DEFAULT_MODEL == "hustvl/vitmatte-small-composition-1k"
    assert "default" in choose_model(None, {}).describe()


def predict(photo, output, *extra) -> int:
    image, trimap = photo
    return main(["predict", str(image), "--trimap", str(trimap), "--output", str(output), *map(str, extra)])


def test_predict_uses_the_configured_model_and_says_which(photo, tmp_path, mematte_dir, monkeypatch, capsys):
    monkeypatch.setenv(MODEL_ENVIRONMENT_VARIABLE, str(mematte_dir))
    assert predict(photo, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert f"model: {mematte_dir} (from {MODEL_ENVIRONMENT_VARIABLE})" in out
    assert f"weights: {mematte_dir} (MEMatte, adaptive token routing)" in out
    assert (tmp_path / "out" / "photo_alpha.png").is_file()


def test_predict_runs_a_vitmatte_folder_and_says_routing_is_off(photo, tmp_path, vitmatte_dir, capsys):
    assert predict(photo, tmp_path / "out", "--model", vitmatte_dir) == 0
    assert "routing off: every token global" in capsys.readouterr().out


def test_default_without_hub_access_fails_in_one_line(photo, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(MODEL_ENVIRONMENT_VARIABLE, raising=False)
    assert predict(photo, tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert f"model: {DEFAULT_MODEL} (default" in captured.out
    error = captured.err.strip()
    assert len(error.splitlines()) == 1
    assert DEFAULT_MODEL in error and "--model" in error and "local folder" in error


def test_video_command_loads_the_configured_vitmatte(vitmatte_dir, monkeypatch, capsys):
    monkeypatch.setenv(MODEL_ENVIRONMENT_VARIABLE, str(vitmatte_dir))
    parser = argparse.ArgumentParser()
    video.add_arguments(parser)
    args = parser.parse_args(["clip.mp4", "--output", "out", "--point", "1,1", "--device", "cpu"])
    predictor = video.load_predictor(args)
    assert predictor.weights.kind == "vitmatte"
    assert "routing off" in capsys.readouterr().out


def test_space_default_is_a_model_that_exists():
    assert Settings().model == DEFAULT_MODEL
    assert parse_settings([], {}).model == DEFAULT_MODEL


def test_routing_overlay_caption_for_vitmatte_weights():
    caption = render.routing_caption(0, 1.0, routing=False)
    assert caption == "router 1: every token global (ViTMatte weights, routing off)"
    assert render.routing_caption(1, 0.25, routing=True) == "router 2: 25.0% global"
