"""The Space end to end: `python app.py` with tiny random MEMatte and SAM folders, driven over HTTP by
gradio_client exactly as the browser drives it (upload, clicks, run, downloads), plus the pieces in between.

Random weights give arbitrary masks and mattes, so the assertions are about sizes, formats, consistency
between files, brush corrections, messages and the server staying up, not about matte quality.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.space_utils import APP, ROOT, app_env, running_app, save_photo, save_tiny_mematte, save_tiny_sam

WIDTH, HEIGHT = 1100, 700  # larger than the 1024 px previews: the downloads must still be 1100 x 700
MAX_PIXELS = 1_000_000  # small, so that a "huge" photo is cheap to make


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("models")
    return save_tiny_mematte(folder / "mematte"), save_tiny_sam(folder / "sam")


@pytest.fixture(scope="module")
def app_url(models, tmp_path_factory):
    mematte, sam = models
    with running_app(tmp_path_factory.mktemp("app"), mematte, sam, "--max-pixels", str(MAX_PIXELS)) as url:
        yield url


@pytest.fixture()
def client(app_url, tmp_path) -> Client:
    """A new client is a new browser tab: its own session state on the server."""
    return Client(app_url, verbose=False, download_files=str(tmp_path / "downloads"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return save_photo(tmp_path_factory.mktemp("photos") / "disc photo.png", WIDTH, HEIGHT)


def upload(client: Client, path: Path) -> tuple:
    return client.predict(handle_file(str(path)), api_name="/upload")


def click(client: Client, x: int, y: int, kind: str = "foreground", band: int = 11) -> tuple:
    return client.predict(x, y, kind, band, api_name="/add_click")


def run(client: Client, editor=None, band: int = 11, cap: str = "auto", k: int = 18500, colour: str = "#2e8b57"):
    alpha, cutout, composite, gallery, stats, files, status = client.predict(
        editor, band, cap, k, colour, api_name="/run"
    )
    return {"alpha": alpha, "cutout": cutout, "composite": composite, "gallery": gallery, "stats": stats,
            "files": files, "status": status}  # fmt: skip


def by_suffix(files: list[str]) -> dict[str, Image.Image]:
    named = {Path(file).name: Image.open(file) for file in files}
    return {key: next(image for name, image in named.items() if name.endswith(key)) for key in
            ("_alpha.png", "_alpha_16bit.png", "_cutout_rgba.png")}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# the happy path


def test_clicks_to_full_resolution_downloads(client, photo):
    preview, editor, slider, status, *results = upload(client, photo)
    assert "1100 x 700" in status
    assert max(Image.open(preview).size) == 1024, "the page shows a downscaled preview"
    assert editor is None and all(not value for value in results)
    assert slider["value"] == 11  # default_band_width(700, 1100)

    _, editor, status = click(client, 550, 350)
    assert "Mask from 1 prompt" in status
    assert Image.open(editor["background"]).size == (1024, 652)
    click(client, 15, 15, "background")
    click(client, 200, 100, "box")
    _, _, status = click(client, 900, 600, "box")
    assert "Mask from 3 prompts" in status

    result = run(client)
    assert "1100 x 700" in result["status"]
    images = by_suffix(result["files"])
    assert {name: image.size for name, image in images.items()} == dict.fromkeys(images, (WIDTH, HEIGHT))
    alpha8 = np.asarray(images["_alpha.png"])
    alpha16 = np.asarray(images["_alpha_16bit.png"])
    rgba = np.asarray(images["_cutout_rgba.png"])
    assert images["_alpha.png"].mode == "L" and images["_cutout_rgba.png"].mode == "RGBA"
    assert images["_alpha_16bit.png"].mode.startswith("I") and alpha16.max() > 255, "16 bits really used"
    assert np.abs(np.rint(alpha16 / 257.0) - alpha8).max() <= 1
    np.testing.assert_array_equal(rgba[..., 3], alpha8)
    assert 0 < alpha8.mean() < 255
    assert all(Path(file).name.startswith("disc_photo_") for file in result["files"])

    assert Image.open(result["alpha"]).size == (1024, 652), "previews stay small"
    assert Image.open(result["cutout"]).size == (1024, 652)
    assert Image.open(result["composite"]).size == (1024, 652)
    assert len(result["gallery"]) == 2, "one routing picture per router of the tiny model"
    assert all("global" in item["caption"] for item in result["gallery"])
    for row in ("time", "peak memory", "cap k", "routed to global attention", "1100 x 700"):
        assert row in result["stats"]


def test_brush_corrections_reach_the_full_resolution_trimap(client, photo, tmp_path):
    """Paint the preview's left half black, right half white and a grey band between: the matte must be 0 and
    1 exactly where painted, at full resolution."""
    upload(client, photo)
    click(client, 550, 350)
    layer = np.zeros((652, 1024, 4), dtype=np.uint8)
    layer[:, :480] = (0, 0, 0, 255)
    layer[:, 480:540] = (128, 128, 128, 255)
    layer[:, 540:] = (255, 255, 255, 255)
    layer[:, 478:482, 3] = 90  # a soft, barely-opaque stroke edge: not painted
    Image.fromarray(layer).save(tmp_path / "layer.png")
    editor = {"background": None, "layers": [handle_file(str(tmp_path / "layer.png"))], "composite": None}
    result = run(client, editor=editor)
    alpha = np.asarray(by_suffix(result["files"])["_alpha.png"])
    assert alpha.shape == (HEIGHT, WIDTH)
    scale = WIDTH / 1024
    assert (alpha[:, : int(470 * scale)] == 0).all()
    assert (alpha[:, int(545 * scale) + 1 :] == 255).all()
    assert "brush corrections changed" in result["stats"]

    layer[:] = (255, 255, 255, 255)  # all foreground: nothing left for the model, which then does not run
    Image.fromarray(layer).save(tmp_path / "white.png")
    editor = {"background": None, "layers": [handle_file(str(tmp_path / "white.png"))], "composite": None}
    result = run(client, editor=editor)
    assert result["status"].startswith("No matte computed: the trimap has no unknown")
    assert (np.asarray(by_suffix(result["files"])["_alpha.png"]) == 255).all()
    assert result["gallery"] in (None, [])


def test_fixed_cap_band_width_undo_and_composite(client, photo, tmp_path):
    upload(client, photo)
    click(client, 550, 350)
    _, status = client.predict(30, api_name="/set_band_width")
    assert "band 30 px" in status
    result = run(client, band=30, cap="fixed", k=10, colour="rgba(200, 30, 30, 1)")
    assert "10 global tokens per router" in result["stats"]
    wider = run(client, band=40)  # a width typed into the slider reaches the run without a release event
    assert float(wider["stats"].split("| trimap | ")[1].split("%")[0]) > float(
        result["stats"].split("| trimap | ")[1].split("%")[0]
    ), "a wider band gives a larger unknown region"
    red = np.asarray(Image.open(result["composite"]).convert("RGB"))
    backdrop = save_photo(tmp_path / "backdrop.png", 300, 200)
    over_picture = np.asarray(Image.open(client.predict("#000000", handle_file(str(backdrop)), api_name="/composite")))
    assert over_picture.shape[:2] == red.shape[:2] and not np.array_equal(over_picture[..., :3], red)
    _, _, status = client.predict(11, api_name="/undo")
    assert status.startswith("Click on the object")
    with pytest.raises(AppError, match="Click on the object first"):
        run(client)


# ----------------------------------------------------------------------------------------------------------
# bad input: a readable message, and the next request still works


def test_bad_inputs_give_readable_errors_and_the_app_keeps_serving(client, photo, tmp_path):
    with pytest.raises(AppError, match="Upload a photo first"):
        run(client)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    unreadable = r"^'notes\.txt' is not a readable image \(its format is not recognised\); supported kinds are PNG"
    with pytest.raises(AppError, match=unreadable):
        upload(client, text_file)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(AppError, match=r"^'broken\.png' is not a readable image"):
        upload(client, broken)
    huge = save_photo(tmp_path / "huge.png", 1300, 1000)
    with pytest.raises(AppError, match=r"1300 x 1000 = 1\.3 megapixels.*up to 1\.0 megapixels"):
        upload(client, huge)

    upload(client, photo)
    with pytest.raises(AppError, match="Click on the object first"):
        run(client)
    with pytest.raises(AppError, match=r"outside the 1100 x 700 photo"):
        click(client, 1100, 10)
    click(client, 550, 350)
    with pytest.raises(AppError, match=r"less than minimum value 1"):  # gradio checks the Number's minimum
        run(client, cap="fixed", k=0)

    result = run(client)  # the same session, after all that: still fine
    assert by_suffix(result["files"])["_alpha.png"].size == (WIDTH, HEIGHT)
    with pytest.raises(AppError, match=unreadable):
        client.predict("#000000", handle_file(str(text_file)), api_name="/composite")
    assert client.predict("#000000", None, api_name="/composite").endswith(".webp")


# ----------------------------------------------------------------------------------------------------------
# startup


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--model", "/nonexistent", "could not load the MEMatte model '/nonexistent': "),
        (
            "--model",
            "mematte-tests/no-such-model",
            "could not load the MEMatte model 'mematte-tests/no-such-model' from the Hugging Face Hub",
        ),
        ("--sam-model", "/nonexistent", "could not load the SAM model '/nonexistent'"),
    ],
)
def test_a_model_that_cannot_be_loaded_stops_the_start_with_one_line(models, tmp_path, option, value, expected):
    mematte, sam = models
    arguments = {"--model": str(mematte), "--sam-model": str(sam), option: value}
    command = [sys.executable, str(APP), *[item for pair in arguments.items() for item in pair]]
    started = time.monotonic()
    finished = subprocess.run(command, cwd=ROOT, env=app_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert finished.returncode != 0
    lines = [line for line in finished.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: " + expected), finished.stderr
    assert option in lines[-1] and ("MEMATTE_MODEL" in lines[-1] or "MEMATTE_SAM_MODEL" in lines[-1])
    assert "Traceback" not in finished.stderr + finished.stdout
    assert len(lines) == 1, f"only the error line is printed, got:\n{finished.stderr}"
    assert time.monotonic() - started < 120, "fails at startup, before any server is built"


def test_environment_variables_name_the_models(models, tmp_path):
    mematte, _ = models
    env = {**app_env(tmp_path), "MEMATTE_MODEL": str(mematte), "MEMATTE_SAM_MODEL": "/no/such/sam"}
    finished = subprocess.run([sys.executable, str(APP)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=180)  # fmt: skip
    assert finished.returncode != 0
    assert "could not load the SAM model '/no/such/sam'" in finished.stderr


# ----------------------------------------------------------------------------------------------------------
# the pieces, without a server


def test_settings_come_from_arguments_then_environment_then_defaults():
    from space.settings import DEFAULT_MODEL, DEFAULT_SAM_MODEL, parse_settings

    defaults = parse_settings([], environ={})
    assert (defaults.model, defaults.sam_model) == (DEFAULT_MODEL, DEFAULT_SAM_MODEL)
    assert "/" in DEFAULT_MODEL and "/" in DEFAULT_SAM_MODEL
    environ = {"MEMATTE_MODEL": "env/model", "MEMATTE_SAM_MODEL": "env/sam", "MEMATTE_MAX_PIXELS": "5000"}
    from_env = parse_settings([], environ=environ)
    assert (from_env.model, from_env.sam_model, from_env.max_pixels) == ("env/model", "env/sam", 5000)
    from_args = parse_settings(["--model", "arg/model", "--port", "7000", "--host", "0.0.0.0"], environ=environ)
    assert (from_args.model, from_args.sam_model, from_args.port, from_args.host) == (
        "arg/model", "env/sam", 7000, "0.0.0.0",
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parse_settings([], environ={"MEMATTE_MAX_PIXELS": "lots"})


def test_clicks_map_from_preview_to_photo_pixels_and_make_boxes():
    from space.session import Session

    session = Session()
    session.set_image(np.zeros((1400, 2048, 3), dtype=np.uint8), "a photo (1).JPG")
    assert session.name == "a_photo_1" and session.scale == 0.5
    assert session.preview.shape == (700, 1024, 3)
    session.add_preview_click(100, 50, "foreground")
    session.add_preview_click(1023, 699, "background")
    assert session.points == [(201, 101), (2047, 1399)] and session.labels == [1, 0]
    session.add_click(300, 400, "box")
    assert session.pending_corner and session.box is None
    session.add_click(100, 200, "box")
    assert session.box == (100, 200, 301, 401) and not session.pending_corner
    session.undo()
    assert session.box is None and session.pending_corner


def test_brush_layers_decode_by_nearest_grey_and_opacity():
    from space.session import apply_corrections, painted_values

    layer = np.zeros((4, 4, 4), dtype=np.uint8)
    layer[0, 0] = (250, 250, 240, 255)  # near white: foreground
    layer[0, 1] = (120, 135, 128, 200)  # near grey: unknown
    layer[0, 2] = (20, 10, 0, 130)  # near black: background
    layer[0, 3] = (255, 255, 255, 100)  # too transparent: not painted
    later = np.zeros_like(layer)
    later[0, 0] = (0, 0, 0, 255)  # a later layer paints over an earlier one
    painted = painted_values([layer, None, later])
    assert painted[0].tolist() == [0, 128, 0, -1] and (painted[1:] == -1).all()

    trimap = np.full((8, 8), 128, dtype=np.uint8)
    corrected, changed = apply_corrections(trimap, [layer])
    assert corrected[:2, :2].tolist() == [[255, 255], [255, 255]]  # one preview pixel -> 2 x 2 photo pixels
    assert (corrected[:2, 4:6] == 0).all() and changed == 8
    assert apply_corrections(trimap, [])[1] == 0


def test_options_parse_with_readable_errors():
    from mematte_hf.errors import InputError
    from space.session import global_token_cap, parse_colour

    assert global_token_cap("auto", None) == "auto"
    assert global_token_cap("none", 5) == 0
    assert global_token_cap("fixed", 4096.0) == 4096
    for bad in (0, 2.5, None):
        with pytest.raises(InputError, match="whole number"):
            global_token_cap("fixed", bad)
    assert parse_colour("#ff8000") == (255, 128, 0)
    assert parse_colour("rgba(10.4, 20, 30, 0.5)") == (10, 20, 30)
    assert parse_colour("white") == (255, 255, 255)
    with pytest.raises(InputError, match="not a colour"):
        parse_colour("blurple")


def test_downloads_live_in_their_own_folder_and_are_swept(tmp_path):
    from space.session import Session, forget, sweep_downloads, write_downloads

    alpha = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    rgba = np.zeros((12, 10, 4), dtype=np.uint8)
    folder, files = write_downloads(tmp_path, "x", alpha, rgba, keep_seconds=60)
    assert folder.parent == tmp_path and all(file.parent == folder for file in files)
    assert [Image.open(file).size for file in files] == [(10, 12)] * 3
    unrelated = tmp_path / "keep-me"
    unrelated.mkdir()
    old = time.time() - 3600
    os.utime(folder, (old, old))
    os.utime(unrelated, (old, old))
    assert sweep_downloads(tmp_path, keep_seconds=60) == 1
    assert not folder.exists() and unrelated.exists()
    session = Session(download_dirs=[write_downloads(tmp_path, "y", alpha, rgba, keep_seconds=60)[0]])
    forget(session)
    assert not list(tmp_path.glob("mematte-downloads-*"))


def test_zero_gpu_wraps_the_gpu_work_with_a_duration_from_the_pixel_count(monkeypatch):
    from space import runtime

    assert runtime.zero_gpu_requested({"SPACES_ZERO_GPU": "true"})
    assert not runtime.zero_gpu_requested({})
    calls = []

    class FakeSpaces:
        @staticmethod
        def GPU(duration):  # noqa: N802 - the real decorator's name
            def decorate(function):
                def wrapped(*args):
                    calls.append(duration(*args))
                    return function(*args)

                return wrapped

            return decorate

    monkeypatch.setattr(runtime, "_spaces", FakeSpaces)
    assert runtime.on_zero_gpu() and runtime.choose_device() == "cuda"
    doubled = runtime.gpu_task(runtime.matte_seconds)(lambda image, trimap, cap: 2 * cap)
    assert doubled(np.zeros((10, 10, 3)), None, 21) == 42
    small = runtime.matte_seconds(np.zeros((480, 640, 3)))
    large = runtime.matte_seconds(np.zeros((4000, 6000, 3)))
    assert calls == [runtime.MATTE_BASE_SECONDS] and small < large <= runtime.MATTE_MAX_SECONDS
    assert runtime.segment_seconds(np.zeros((8000, 8000, 3))) == runtime.SEGMENT_MAX_SECONDS
    monkeypatch.setattr(runtime, "_spaces", None)
    plain = runtime.gpu_task(runtime.matte_seconds)(len)
    assert plain is len and runtime.choose_device("cpu") == "cpu"


def test_routing_pictures_follow_the_token_grid():
    from space.render import routing_pictures

    preview = np.full((50, 80, 3), 200, dtype=np.uint8)  # a 100 x 160 photo at scale 0.5
    mask = np.zeros((7, 10), dtype=bool)  # ceil(100 / 16) x ceil(160 / 16) tokens
    mask[0, 0] = True
    (picture,) = routing_pictures(preview, 0.5, [mask])
    assert picture.shape == preview.shape
    orange = picture[..., 0].astype(int) - picture[..., 2]
    assert (orange[:8, :8] > 100).all() and (np.abs(orange[8:, 8:]) < 5).all()


def test_the_example_photos_are_drawn_here(tmp_path):
    from space.make_examples import EXAMPLES, EXAMPLES_DIR, write_examples

    paths = write_examples(tmp_path)
    assert [path.name for path in paths] == list(EXAMPLES)
    for path in paths:
        image = Image.open(path)
        assert image.mode == "RGB" and image.size == (640, 480)
        assert np.asarray(image).std() > 10, "a picture, not a flat colour"
        shipped = EXAMPLES_DIR / path.name
        assert shipped.exists() and shipped.stat().st_size < 512 * 1024
        difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(Image.open(shipped), dtype=np.int16))
        assert difference.mean() < 1, f"{path.name} no longer matches the drawing code: rerun make_examples.py"


def test_space_metadata_matches_the_app():
    import gradio
    import yaml

    from space.settings import DEFAULT_MODEL, DEFAULT_SAM_MODEL

    text = (ROOT / "space" / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    metadata = yaml.safe_load(text.split("---\n")[1])
    assert metadata["sdk"] == "gradio" and metadata["sdk_version"] == gradio.__version__
    assert metadata["app_file"] == "app.py" and (ROOT / metadata["app_file"]).is_file()
    assert metadata["models"] == [DEFAULT_MODEL, DEFAULT_SAM_MODEL] and metadata["license"] == "mit"
    requirements = (ROOT / "space" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert f"gradio=={gradio.__version__}" in requirements
    assert any(line.startswith("spaces") for line in requirements)
    assert not any(line.startswith("torchvision") for line in requirements)
