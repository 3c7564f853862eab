"""The Space end to end: `python app.py` with tiny random MEMatte, SAM and OWLv2 folders, driven over HTTP by
gradio_client exactly as the browser drives it (upload, text prompt, clicks, run, downloads, the stateless
/cutout endpoint), plus the pieces in between, and what is left on disk and in memory when sessions end.

Random weights give arbitrary masks and mattes, so the assertions are about sizes, formats, consistency
between files, messages, files deleted and the server staying up, not about matte quality.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.space_utils import (
    APP,
    ROOT,
    app_env,
    disc_photo,
    files_under,
    open_tab,
    resident_memory,
    running_app,
    save_photo,
    save_tiny_mematte,
    save_tiny_sam,
)
from tests.test_text_prompts import save_tiny_owlv2

WIDTH, HEIGHT = 1100, 700  # larger than the 1024 px previews: the downloads must still be 1100 x 700
MAX_PIXELS = 1_000_000  # small, so that a "huge" photo is cheap to make


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {"mematte": save_tiny_mematte(folder / "mematte"), "sam": save_tiny_sam(folder / "sam"),
            "owl": save_tiny_owlv2(folder / "owl")}  # fmt: skip


@pytest.fixture(scope="module")
def prompts(models) -> dict[str, object]:
    """A text the tiny detector matches on the test photo, one it does not, and the threshold between them,
    measured here from the detector itself (random weights: which phrase scores higher is arbitrary)."""
    from mematte_hf.text_prompts import load_text_model

    detector = load_text_model(models["owl"], device="cpu")
    photo = disc_photo(WIDTH, HEIGHT)
    scores = {text: float(detector.detect(photo, text, threshold=0.0).scores.max()) for text in ("the dog", "zebra")}
    matching, other = sorted(scores, key=scores.get, reverse=True)
    assert scores[matching] - scores[other] > 2e-3
    return {"match": matching, "no_match": other, "threshold": (scores[matching] + scores[other]) / 2}


def start(tmp, models, prompts, *extra):
    arguments = ["--text-model", str(models["owl"]), "--text-threshold", f"{prompts['threshold']:.6f}", *extra]
    return running_app(tmp, models["mematte"], models["sam"], *arguments)


@pytest.fixture(scope="module")
def app_url(models, prompts, tmp_path_factory):
    with start(tmp_path_factory.mktemp("app"), models, prompts, "--max-pixels", str(MAX_PIXELS)) as url:
        yield url


@pytest.fixture()
def client(app_url, tmp_path) -> Client:
    """A new client is a new browser tab: its own session on the server."""
    return Client(app_url, verbose=False, download_files=str(tmp_path / "downloads"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return save_photo(tmp_path_factory.mktemp("photos") / "disc photo.png", WIDTH, HEIGHT)


def upload(client: Client, path: Path) -> tuple:
    return client.predict(handle_file(str(path)), api_name="/upload")


def find(client: Client, text: str, band: int = 0) -> tuple:
    return client.predict(text, band, api_name="/find")


def click(client: Client, x: int, y: int, kind: str = "foreground", band: int = 0) -> tuple:
    return client.predict(x, y, kind, band, api_name="/add_click")


def run(client: Client, editor=None, band: int = 0, cap: str = "auto", k: int = 18500, colour: str = "#2e8b57"):
    slider, alpha, composite, routing, stats, *downloads, status = client.predict(
        editor, band, cap, k, colour, api_name="/run"
    )
    files = [item["value"] if isinstance(item, dict) else item for item in downloads]
    return {"slider": slider, "alpha": alpha, "composite": composite, "routing": routing, "stats": stats,
            "files": files, "status": status}  # fmt: skip


def by_suffix(files: list[str]) -> dict[str, Image.Image]:
    named = {Path(file).name: Image.open(file) for file in files}
    return {key: next(image for name, image in named.items() if name.endswith(key)) for key in
            ("_alpha.png", "_alpha_16bit.png", "_cutout_rgba.png")}  # fmt: skip


def check_downloads(files: list[str], size=(WIDTH, HEIGHT)) -> np.ndarray:
    images = by_suffix(files)
    assert {name: image.size for name, image in images.items()} == dict.fromkeys(images, size)
    alpha8 = np.asarray(images["_alpha.png"])
    alpha16 = np.asarray(images["_alpha_16bit.png"])
    rgba = np.asarray(images["_cutout_rgba.png"])
    assert images["_alpha.png"].mode == "L" and images["_cutout_rgba.png"].mode == "RGBA"
    assert images["_alpha_16bit.png"].mode.startswith("I") and alpha16.max() > 255, "16 bits really used"
    assert np.abs(np.rint(alpha16 / 257.0) - alpha8).max() <= 1
    assert np.abs(rgba[..., 3].astype(int) - alpha8).max() <= 1
    return alpha8


# ----------------------------------------------------------------------------------------------------------
# the happy path


def test_text_then_click_then_full_resolution_downloads(client, photo, prompts):
    preview, editor, text, *results, status = upload(client, photo)
    assert "1100 x 700" in status
    assert max(Image.open(preview).size) == 1024, "the page shows a downscaled preview"
    assert editor is None and text == ""

    _, editor, status = find(client, prompts["match"])
    assert f'Outline from "{prompts["match"]}"' in status
    assert Image.open(editor["background"]).size == (1024, 652)
    _, _, status = click(client, 550, 350)
    assert "and your clicks" in status
    click(client, 15, 15, "background")

    result = run(client)
    assert "1100 x 700" in result["status"]
    alpha8 = check_downloads(result["files"])
    assert 0 < alpha8.mean() < 255
    assert all(Path(file).name.startswith("disc_photo_") for file in result["files"])
    before, after = result["slider"]
    assert Image.open(before).size == Image.open(after).size == (1024, 652), "previews stay small"
    assert Image.open(result["alpha"]).size == (1024, 652) and Image.open(result["alpha"]).mode == "L"
    assert len(result["routing"]) == 2, "one routing picture per router of the tiny model"
    for row in ("time", "peak memory", "cap k", "routed to global attention", "1100 x 700"):
        assert row in result["stats"]


def test_the_stateless_endpoint_returns_full_size_alpha_and_cutout(client, photo, prompts):
    alpha, rgba = client.predict(handle_file(str(photo)), "", "[[550, 350], [10, 10, 0]]", "", api_name="/cutout")
    assert Image.open(alpha).size == Image.open(rgba).size == (WIDTH, HEIGHT)
    assert Image.open(alpha).mode.startswith("I") and Image.open(rgba).mode == "RGBA"
    alpha, rgba = client.predict(handle_file(str(photo)), prompts["match"], "", "100, 80, 900, 650",
                                 api_name="/cutout")  # fmt: skip
    assert Image.open(rgba).size == (WIDTH, HEIGHT)
    with pytest.raises(AppError, match="nothing says what to cut out"):
        client.predict(handle_file(str(photo)), "", "", "", api_name="/cutout")
    with pytest.raises(AppError, match="Points must be JSON"):
        client.predict(handle_file(str(photo)), "", "[550", "", api_name="/cutout")


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
    scale = WIDTH / 1024
    assert (alpha[:, : int(470 * scale)] == 0).all()
    assert (alpha[:, int(545 * scale) + 1 :] == 255).all()
    assert "brush corrections changed" in result["stats"]


def test_edge_width_cap_composite_and_undo(client, photo, tmp_path):
    upload(client, photo)
    click(client, 550, 350)
    _, status = client.predict(30, api_name="/set_band_width")
    assert "Outline from your clicks" in status
    result = run(client, band=30, cap="fixed", k=10, colour="rgba(200, 30, 30, 1)")
    assert "10 global tokens per router" in result["stats"]
    wider = run(client, band=40)  # a width typed in reaches the run without an event of its own
    unknown = [float(r["stats"].split("| trimap | ")[1].split("%")[0]) for r in (result, wider)]
    assert unknown[1] > unknown[0], "a wider band gives a larger unknown region"
    backdrop = save_photo(tmp_path / "backdrop.png", 300, 200)
    over_picture = client.predict("#000000", handle_file(str(backdrop)), api_name="/composite")
    assert Image.open(over_picture).size == (1024, 652)
    _, _, status = client.predict(0, api_name="/undo")
    assert status.startswith("Click on the object")
    with pytest.raises(AppError, match="Say what to cut out, or click on the object first"):
        run(client)


# ----------------------------------------------------------------------------------------------------------
# bad input: a readable message naming the field, and the next request still works


def test_bad_inputs_give_readable_errors_and_the_app_keeps_serving(client, photo, prompts, tmp_path, app_url):
    with pytest.raises(AppError, match="Upload a photo first"):
        run(client)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    status = upload(client, text_file)[-1]
    assert status.startswith("**Not loaded:** 'notes.txt' is not a readable image")
    huge = save_photo(tmp_path / "huge.png", 1300, 1000)
    assert "1300 x 1000 = 1.3 megapixels" in upload(client, huge)[-1]

    upload(client, photo)
    with pytest.raises(AppError, match="Say what to cut out, or click on the object first"):
        run(client)
    with pytest.raises(AppError, match=r"outside the 1100 x 700 photo"):
        click(client, 1100, 10)
    with pytest.raises(AppError, match=f"Nothing in the photo matches '{prompts['no_match']}'"):
        find(client, prompts["no_match"])
    click(client, 550, 350)
    with pytest.raises(AppError, match="Global-token cap: the fixed cap k must be a whole number"):
        run(client, cap="fixed", k=0)
    with pytest.raises(AppError, match="Edge width must be 0 .automatic. or 1 to 1000 pixels, got -5"):
        run(client, band=-5)
    with pytest.raises(AppError, match="Background colour 'blurple' is not a colour"):
        run(client, colour="blurple")  # refused before the matte is computed

    check_downloads(run(client)["files"])  # the same session, after all that: still fine
    log = next(url_log for url_log in Path(app_url.cache).parent.glob("app-*.log"))
    assert "Traceback" not in log.read_text(), "ordinary user errors are one log line each"


def test_a_non_image_after_a_matte_keeps_the_photo_and_its_downloads(app_url, photo, tmp_path):
    client = Client(app_url, verbose=False, download_files=False)  # server-side paths, as the page links them
    upload(client, photo)
    click(client, 550, 350)
    first = run(client)
    links = [f"{app_url}gradio_api/file={item['path']}" for item in first["files"]]
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    preview, *_, status = upload(client, text_file)
    assert status.startswith("**Not loaded:**") and preview is not None, "the photo in use is put back on screen"
    fetched = []
    for link in links:  # every download link still on the page works
        with urllib.request.urlopen(link) as response:
            fetched.append(np.asarray(Image.open(response)))
            assert fetched[-1].shape[:2] == (HEIGHT, WIDTH)
    second = run(client)  # uses the photo shown: the same photo and outline, so the same matte
    assert "1100 x 700" in second["status"]
    with urllib.request.urlopen(f"{app_url}gradio_api/file={second['files'][0]['path']}") as response:
        fetched = [fetched[0], np.asarray(Image.open(response))]
    np.testing.assert_array_equal(*fetched)


# ----------------------------------------------------------------------------------------------------------
# privacy and memory: what is left when sessions end


def test_a_closed_tab_and_an_idle_session_leave_no_file(models, prompts, tmp_path, photo):
    with start(tmp_path, models, prompts, "--keep-seconds", "5", "--max-pixels", str(MAX_PIXELS)) as url:
        before = files_under(url.cache, url.temp)
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        with open_tab(url, client.session_hash):
            upload(client, photo)
            click(client, 550, 350)
            run(client)
            assert len(files_under(url.cache, url.temp) - before) >= 4, "photo, previews, downloads"
        wait_until(lambda: files_under(url.cache, url.temp) <= before, "the closed tab's files are deleted")

        idle = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        upload(idle, photo)
        click(idle, 550, 350)
        run(idle)
        wait_until(lambda: files_under(url.cache, url.temp) <= before, "the idle session expires with its files")
        with pytest.raises(AppError, match="expired after 5 seconds idle"):
            run(idle)

        for _ in range(20):  # 20 sessions opened and closed
            tab = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
            with open_tab(url, tab.session_hash):
                upload(tab, photo)
        wait_until(lambda: files_under(url.cache, url.temp) <= before, "20 closed sessions leave no file")
        last = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        upload(last, photo)  # still open when the app is stopped
    assert not list(url.temp.glob("mematte-sessions-*")), "stopping the app (SIGTERM) removes the store"
    assert not list(url.cache.glob("mematte-downloads-*")), "and every session's previews and downloads"


def test_mcp_serves_the_cutout_endpoint_as_its_tool(models, prompts, tmp_path, photo):
    import json

    with start(tmp_path, models, prompts, "--mcp", "--max-pixels", str(MAX_PIXELS)) as url:
        with urllib.request.urlopen(f"{url}gradio_api/mcp/schema") as response:
            tools = json.load(response)
        assert [tool["name"] for tool in tools] == ["cutout"], tools
        assert "text" in json.dumps(tools[0]) and "points" in json.dumps(tools[0])
        before = files_under(url.cache, url.temp)
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        alpha, rgba = client.predict(handle_file(str(photo)), "", "[[550, 350]]", "", api_name="/cutout")
        assert Image.open(alpha).size == Image.open(rgba).size == (WIDTH, HEIGHT)
        notes = tmp_path / "notes.png"
        notes.write_text("not an image")
        with pytest.raises(AppError, match="not a readable image"):
            client.predict(handle_file(str(notes)), "", "[[5, 5]]", "", api_name="/cutout")
        left = files_under(url.cache, url.temp) - before
        names = sorted(str(path.relative_to(url.cache.parent)) for path in left)
        assert len(left) == 2 and all(path.parent.name.startswith("mematte-downloads-") for path in left), (
            "only the two result PNGs stay (for --keep-seconds): the upload and the refused upload are gone",
            names,
        )


def wait_until(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


@pytest.mark.slow
def test_soak_of_mixed_requests_and_12_megapixel_sessions(models, prompts, tmp_path):
    """50 mixed good and bad requests, all answered, memory back near where the first good one left it; then
    20 sessions with a 12-megapixel photo, opened and closed, leave memory within 10 % of before them."""
    photo = save_photo(tmp_path / "photo.png", 640, 480)
    big = save_photo(tmp_path / "big.png", 4000, 3000)
    huge = save_photo(tmp_path / "huge.png", 4200, 3100)  # 13 MP: above the limit
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    with start(tmp_path, models, prompts, "--max-pixels", "12000000") as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        upload(client, photo)
        click(client, 320, 240)
        run(client)
        baseline = resident_memory(url.pid)
        requests = [
            lambda c: upload(c, text_file), lambda c: upload(c, huge), lambda c: run(c),
            lambda c: upload(c, photo), lambda c: run(c), lambda c: find(c, prompts["no_match"]),
            lambda c: click(c, 320, 240), lambda c: run(c, editor={"background": None, "layers": ["x"]}),
            lambda c: click(c, 9999, 5), lambda c: run(c),
        ]  # fmt: skip
        answered = 0
        for index in range(50):
            tab = client if index % 2 else Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
            try:
                requests[index % len(requests)](tab)
            except AppError:
                pass  # a refusal is an answer
            answered += 1
        assert answered == 50
        check_downloads(run(client)["files"], size=(640, 480))  # still serving
        assert resident_memory(url.pid) <= 1.1 * baseline, (resident_memory(url.pid), baseline)

        before = resident_memory(url.pid)
        for _ in range(20):
            tab = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
            with open_tab(url, tab.session_hash):
                upload(tab, big)
        time.sleep(3)
        after = resident_memory(url.pid)
        print(f"resident memory: {baseline / 2**20:.0f} MiB after the first good request, {before / 2**20:.0f} "
              f"MiB after 50 mixed requests, {after / 2**20:.0f} MiB after 20 12-MP sessions")  # fmt: skip
        assert after <= 1.1 * before, (after, before)


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
        ("--text-model", "mematte-tests/no-such-detector", "could not load the text model 'mematte-tests/no-such"),
        ("--tracker-model", "/nonexistent", "could not load the tracker model '/nonexistent'"),
    ],
)
def test_a_model_that_cannot_be_loaded_stops_the_start_with_one_line(models, tmp_path, option, value, expected):
    arguments = {"--model": str(models["mematte"]), "--sam-model": str(models["sam"]), option: value}
    command = [sys.executable, str(APP), *[item for pair in arguments.items() for item in pair]]
    finished = subprocess.run(command, cwd=ROOT, env=app_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert finished.returncode != 0
    lines = [line for line in finished.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: " + expected), finished.stderr
    assert option in lines[-1] and "MEMATTE_" in lines[-1]
    assert "Traceback" not in finished.stderr + finished.stdout
    assert len(lines) == 1, f"only the error line is printed, got:\n{finished.stderr}"


# ----------------------------------------------------------------------------------------------------------
# the pieces, without a server


def test_settings_come_from_arguments_then_environment_then_defaults():
    from space.settings import DEFAULT_KEEP_SECONDS, DEFAULT_MODEL, DEFAULT_SAM_MODEL, parse_settings

    defaults = parse_settings([], environ={})
    assert (defaults.model, defaults.sam_model, defaults.text_model) == (DEFAULT_MODEL, DEFAULT_SAM_MODEL, None)
    assert defaults.keep_seconds == DEFAULT_KEEP_SECONDS == 600 and defaults.max_sessions == 20
    environ = {"MEMATTE_MODEL": "env/model", "MEMATTE_TEXT_MODEL": "env/owl", "MEMATTE_MAX_SESSIONS": "5"}
    from_env = parse_settings([], environ=environ)
    assert (from_env.model, from_env.text_model, from_env.max_sessions) == ("env/model", "env/owl", 5)
    from_args = parse_settings(["--model", "arg/model", "--port", "7000", "--mcp"], environ=environ)
    assert (from_args.model, from_args.port, from_args.mcp) == ("arg/model", 7000, True)
    for bad in ({"MEMATTE_MAX_PIXELS": "lots"}, {"MEMATTE_TEXT_THRESHOLD": "2"}, {"MEMATTE_MAX_SESSIONS": "0"}):
        with pytest.raises(SystemExit):
            parse_settings([], environ=bad)


def test_sessions_end_on_unload_expiry_and_eviction_with_their_files(tmp_path):
    from space.session import Sessions
    from space.store import ArrayStore

    store = ArrayStore(tmp_path / "store")
    cache = tmp_path / "cache"
    sessions = Sessions(store, keep_seconds=60, max_sessions=3, cache_root=lambda: str(cache))

    def open_session(name: str):
        session = sessions.get(name)
        session.set_photo(store, disc_photo(80, 60), "p.png")
        (session.new_folder(cache) / "preview.webp").write_bytes(b"x")
        return session

    first = open_session("a")
    assert len(store.files()) == 1 and len(files_under(cache)) == 1
    assert sessions.end("a") and not store.files() and not files_under(cache)
    assert first.photo_key is None and first.embedding is None

    for name in "bcde":  # one more than max_sessions: the least recently active ("b") is ended
        open_session(name)
    assert len(sessions) == 3 and sorted(store.sessions()) == sorted(s.id for s in sessions._sessions.values())
    assert sessions.sweep(now=time.monotonic() + 61) == 3
    assert not store.files() and not files_under(cache) and len(sessions) == 0
    for index in range(20):
        open_session(f"tab{index}")
        sessions.end(f"tab{index}")
    assert not store.files() and not files_under(cache)


def test_clicks_map_from_preview_to_photo_pixels_and_make_boxes(tmp_path):
    from space.session import Session
    from space.store import ArrayStore

    session = Session()
    session.set_photo(ArrayStore(tmp_path), np.zeros((1400, 2048, 3), dtype=np.uint8), "a photo (1).JPG")
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


def test_options_parse_with_readable_errors_naming_the_field():
    from mematte_hf.errors import InputError
    from space.ui import band_width, cap_setting

    assert cap_setting("auto", None) == "auto" and cap_setting("none", 5) == 0 and cap_setting("fixed", 4096) == 4096
    for bad in (0, 2.5, None):
        with pytest.raises(InputError, match="^global-token cap: the fixed cap k must be a whole number"):
            cap_setting("fixed", bad)
    assert band_width(0, (700, 1100)) == 11 and band_width(None, (700, 1100)) == 11 and band_width(7, (9, 9)) == 7
    with pytest.raises(InputError, match="^edge width must be 0"):
        band_width(-5, (700, 1100))


def test_downloads_are_swept_after_keep_seconds(tmp_path):
    import os

    from space.session import DOWNLOAD_PREFIX, sweep_downloads, write_downloads

    folder = tmp_path / f"{DOWNLOAD_PREFIX}x"
    folder.mkdir()
    alpha = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    files = write_downloads(folder, "x", alpha, np.zeros((12, 10, 4), dtype=np.uint8))
    assert [Image.open(file).size for file in files] == [(10, 12)] * 3
    unrelated = tmp_path / "keep-me"
    unrelated.mkdir()
    old = time.time() - 700
    for path in (folder, unrelated):
        os.utime(path, (old, old))
    assert sweep_downloads(tmp_path, keep_seconds=600) == 1
    assert not folder.exists() and unrelated.exists()


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
    assert metadata["models"][:2] == [DEFAULT_MODEL, DEFAULT_SAM_MODEL] and metadata["license"] == "mit"
    requirements = (ROOT / "space" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert f"gradio[mcp]=={gradio.__version__}" in requirements
    assert any(line.startswith("spaces") for line in requirements)
    assert not any(line.startswith("torchvision") for line in requirements)
