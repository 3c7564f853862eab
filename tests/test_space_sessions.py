"""A visitor's work never mixes with another's, never vanishes under them and never outlives them: the page's
handlers called in this process (as gradio calls them, one ``session_hash`` per tab) with tiny random models,
the GPU call interleaved with other events of the same tab, sessions ended while work is in flight."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from mematte_hf.errors import InputError
from tests.space_utils import disc_photo, files_under, load_tiny_runtime

WIDTH, HEIGHT = 160, 120


class Request:
    """What gradio passes as ``gr.Request``: the tab's session hash is all the handlers read."""

    def __init__(self, session_hash: str) -> None:
        self.session_hash = session_hash


def no_progress(*args, **kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The runtime and handlers with tiny models, the store and gradio's cache in the test's folders."""
    from space import runtime, ui
    from space.store import ArrayStore

    folder = tmp_path_factory.mktemp("sessions")
    load_tiny_runtime(folder)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("space.store._store", ArrayStore(folder / "store"))
    monkeypatch.setattr(ui, "_cache_root", lambda: str(folder / "cache"))
    yield runtime, ui, folder
    monkeypatch.undo()


@pytest.fixture()
def sessions(app):
    """A fresh registry per test (keep 600 s, at most 3 sessions)."""
    runtime, ui, folder = app
    ui.SESSIONS = ui.Sessions(ui.store(), 600, 3, ui._cache_root)
    yield ui.SESSIONS
    ui.SESSIONS.close()


def photo_file(folder: Path, seed: int) -> str:
    photo = disc_photo(WIDTH, HEIGHT)
    photo[..., 1] = np.uint8(40 * seed)  # each photo its own green channel
    path = folder / f"photo{seed}.png"
    Image.fromarray(photo).save(path)
    return str(path)


def ready_to_run(ui, tmp_path: Path, tab: str, seed: int = 1) -> None:
    ui.on_upload(photo_file(tmp_path, seed), Request(tab))
    ui.on_add_click(WIDTH // 2, HEIGHT // 2, "foreground", 0, Request(tab))


def run(ui, tab: str) -> tuple:
    return ui.on_run(None, 0, "auto", 18500, "#ffffff", Request(tab), progress=no_progress)


def spy_on_matte(monkeypatch, runtime, during=None) -> list[dict]:
    """Record what each GPU matte call read from the store; ``during()`` runs inside the call, first."""
    calls: list[dict] = []
    original = runtime.matte

    def matte(photo_key, trimap_key, pixel_values_key, cap):
        if during is not None:
            during()
        from space.store import store

        calls.append({"photo_key": photo_key, "trimap_key": trimap_key,
                      "green": int(np.asarray(store().get(photo_key))[0, 0, 1])})  # fmt: skip
        return original(photo_key, trimap_key, pixel_values_key, cap)

    monkeypatch.setattr(runtime, "matte", matte)
    return calls


# -- 1. every photo and every run has its own store key -----------------------------------------------------------


def test_a_photo_uploaded_during_a_matte_is_not_read_by_it_and_the_run_says_so(app, sessions, tmp_path, monkeypatch):
    runtime, ui, _ = app
    ready_to_run(ui, tmp_path, "tab", seed=1)
    calls = spy_on_matte(monkeypatch, runtime, during=lambda: ui.on_upload(photo_file(tmp_path, 5), Request("tab")))
    with pytest.raises(gr.Error, match="new photo was loaded"):
        run(ui, "tab")
    assert calls[0]["green"] == 40, "the matte read photo A, not the photo uploaded during its GPU call"
    session = sessions.get("tab")
    assert int(np.asarray(ui.store().get(session.photo_key))[0, 0, 1]) == 200, "photo B is the session's now"
    assert [path.name for path in ui.store().files()] == [Path(session.photo_key).name + ".npy"], "A's file is gone"


def test_two_runs_of_one_tab_store_their_inputs_under_their_own_keys(app, sessions, tmp_path, monkeypatch):
    runtime, ui, _ = app
    ready_to_run(ui, tmp_path, "tab")
    calls = spy_on_matte(monkeypatch, runtime)
    run(ui, "tab")
    run(ui, "tab")
    assert calls[0]["trimap_key"] != calls[1]["trimap_key"]
    assert len(ui.store().files()) == 1, "each run's trimap and model input are deleted when it ends"


# -- 2. a session with work in flight is never evicted, swept or expired ------------------------------------------


def test_work_in_flight_keeps_its_session_through_eviction_and_sweeps(app, sessions, tmp_path, monkeypatch):
    runtime, ui, _ = app
    ready_to_run(ui, tmp_path, "busy")

    def crowd_and_sweep() -> None:
        for index in range(5):  # more tabs than --max-sessions (3) open while the matte runs
            ui.on_upload(photo_file(tmp_path, 2), Request(f"other{index}"))
        sessions.sweep(now=time.monotonic() + 3600)

    spy_on_matte(monkeypatch, runtime, during=crowd_and_sweep)
    outputs = run(ui, "busy")
    assert Path(outputs[5]["value"]).is_file(), "the run finished with its downloads"
    assert sessions.get("busy").photo_key is not None


def test_painting_counts_as_activity_and_an_expired_session_says_so(app, sessions, tmp_path):
    runtime, ui, _ = app
    ready_to_run(ui, tmp_path, "painter")
    session = sessions.get("painter")
    session.last_active -= 590
    ui.on_activity(Request("painter"))  # a brush stroke
    assert sessions.sweep(now=time.monotonic() + 30) == 0, "painting refreshed the session"
    assert sessions.sweep(now=time.monotonic() + 601) == 1
    with pytest.raises(gr.Error, match="expired after 10 minutes idle"):
        run(ui, "painter")


# -- 3. handlers never write into a forgotten session ---------------------------------------------------------------


def test_a_handler_that_fetched_its_session_before_the_tab_closed_writes_nothing(app, sessions, tmp_path):
    runtime, ui, folder = app
    session = sessions.get("closing")  # the handler has its session ...
    sessions.end("closing")  # ... the tab closes before it takes the session's lock
    with pytest.raises(InputError, match="session has ended"):
        with ui._working_on(session):
            session.set_photo(ui.store(), disc_photo(WIDTH, HEIGHT), "late.png")
    assert not ui.store().files() and not files_under(folder / "cache")


def test_a_tab_whose_session_was_closed_is_told_why_its_photo_is_gone(app, sessions, tmp_path):
    """gradio runs the unload event when a tab closes, and also when an open tab's heartbeat reconnects."""
    runtime, ui, folder = app
    ready_to_run(ui, tmp_path, "reconnected")
    ui.on_unload(Request("reconnected"))
    assert not ui.store().files()
    with pytest.raises(gr.Error, match="session was closed .* upload again"):
        run(ui, "reconnected")


def test_a_tab_closed_during_a_matte_leaves_no_file_once_the_matte_ends(app, sessions, tmp_path, monkeypatch):
    runtime, ui, folder = app
    ready_to_run(ui, tmp_path, "leaving")
    spy_on_matte(monkeypatch, runtime, during=lambda: ui.on_unload(Request("leaving")))
    with pytest.raises(gr.Error, match="session has ended"):
        run(ui, "leaving")
    assert not ui.store().files() and not files_under(folder / "cache")


# -- 4. examples for everyone, every time; the page never points at deleted pictures -------------------------------


def test_an_example_clicked_twice_keeps_gradios_cached_copy(app, sessions, tmp_path):
    runtime, ui, folder = app
    (folder / "cache").mkdir(exist_ok=True)
    cached = Path(photo_file(folder / "cache", 3))  # where gradio keeps the example's copy
    for tab in ("first", "second", "first"):
        outputs = ui.on_example(str(cached), Request(tab))
        assert outputs[-1].startswith("Photo 160 x 120 px loaded"), outputs[-1]
    assert cached.is_file()


def test_cut_out_keeps_the_pictures_the_page_still_shows(app, sessions, tmp_path):
    runtime, ui, _ = app
    ui.on_upload(photo_file(tmp_path, 1), Request("tab"))
    photo, editor, _ = ui.on_add_click(WIDTH // 2, HEIGHT // 2, "foreground", 0, Request("tab"))
    first = run(ui, "tab")
    second = run(ui, "tab")
    for shown in (photo, editor["background"], *second[0], second[1], second[2], second[5]["value"]):
        assert Path(shown).is_file(), shown
    assert not Path(first[1]).exists(), "the previous run's pictures, no longer on the page, are deleted"


# -- 5. the colour after a background picture ------------------------------------------------------------------


def test_changing_the_colour_after_a_background_picture(app, sessions, tmp_path):
    runtime, ui, folder = app
    ready_to_run(ui, tmp_path, "tab")
    run(ui, "tab")
    picture = photo_file(folder / "cache", 4)  # an upload, in gradio's cache
    with_picture = ui.on_composite("#ff0000", picture, Request("tab"))
    assert not Path(picture).exists(), "the upload is read once and deleted"
    again = ui.on_composite("#0000ff", picture, Request("tab"))  # the page sends the picture's old path again
    assert np.abs(np.asarray(Image.open(again), np.int16) - np.asarray(Image.open(with_picture), np.int16)).max() <= 1
    assert sessions.get("tab").backdrop is not None
    ui.on_composite("#0000ff", None, Request("tab"))
    assert sessions.get("tab").backdrop is None, "picture cleared: the colour shows again"


# -- 11. one tab bar ------------------------------------------------------------------------------------------------


def test_video_is_a_tab_next_to_photo(app):
    runtime, ui, _ = app
    demo = ui.build_demo(runtime.settings())
    components = {component["id"]: component for component in demo.config["components"]}

    def tab_bars(node: dict) -> list[list[str]]:
        found = []
        children = node.get("children", [])
        if components.get(node["id"], {}).get("type") == "tabs":
            found.append([components[child["id"]]["props"]["label"] for child in children])
        for child in children:
            found += tab_bars(child)
        return found

    assert tab_bars(demo.config["layout"]) == [["Photo", "Video"]]
    ui.SESSIONS.close()


# -- 6. the Video tab's files live in the session -------------------------------------------------------------------


def test_the_video_tabs_files_live_in_the_session_and_go_with_it(app, sessions, tmp_path):
    from space.video_tab import VideoHost, _Handlers
    from tests.test_video import disc_centre, make_clip

    runtime, ui, folder = app
    cache, temp = folder / "cache", Path(tempfile.gettempdir())
    temp_before, cache_before = set(temp.glob("mematte-video-*")), files_under(cache)
    (cache / "upload-clip").mkdir(parents=True, exist_ok=True)
    clip = make_clip(cache / "upload-clip" / "clip.mp4", frames=6, width=96, height=64)  # gradio's copy of an upload
    handlers = _Handlers(SimpleNamespace(), runtime, VideoHost(ui._session, ui._video_picture, ui._cache_root))
    tab = Request("video")
    state, frame, _ = handlers.on_clip(str(clip), tab)
    clip.unlink()  # gradio's cache sweep deletes the upload --keep-seconds after it arrived, even mid-matte
    x, y = disc_centre(0, 6, 96, 64)
    state, frame, _ = handlers.on_typed(state, f"{x:.0f},{y:.0f}", "", tab)
    gallery = handlers.on_preview(state, tab)
    shown, alpha, rgba, composite, status = handlers.on_matte(state, 0.0, "#00ff00", tab)
    ui.on_upload(photo_file(tmp_path, 1), tab)  # a photo in the Photo tab of the same tab leaves the video alone
    session_folder = sessions.get("video").video_home
    for path in (frame, *(picture for picture, _ in gallery), shown, alpha, rgba, composite):
        assert Path(path).is_file() and Path(path).is_relative_to(session_folder), path
    assert set(temp.glob("mematte-video-*")) == temp_before, "nothing in TMPDIR"
    second_upload = cache / "upload-clip-2" / "clip.mp4"
    second_upload.parent.mkdir()
    shutil.copyfile(state.path, second_upload)
    replaced = handlers.on_clip(str(second_upload), tab)[0]
    assert Path(replaced.path).is_file() and not Path(state.path).exists(), "the next clip replaces the first"
    ui.on_unload(tab)
    assert files_under(cache) == cache_before, "the clip, the previews and the videos went with the tab"


# -- 7. the editor's uploads and rejected /cutout uploads do not stay -------------------------------------------------


def test_the_editors_uploads_are_deleted_once_read(app, sessions, tmp_path):
    runtime, ui, folder = app
    ready_to_run(ui, tmp_path, "painter")
    uploads = folder / "cache" / "editor-upload"
    uploads.mkdir(parents=True, exist_ok=True)
    layer = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    layer[:, : WIDTH // 4] = (0, 0, 0, 255)  # paint the left quarter "not the object"
    for name, array in (("layer.png", layer), ("background.png", disc_photo(WIDTH, HEIGHT)),
                        ("composite.png", disc_photo(WIDTH, HEIGHT))):  # fmt: skip
        Image.fromarray(array).save(uploads / name)
    editor = {"background": {"path": str(uploads / "background.png")}, "layers": [{"path": str(uploads / "layer.png")}],
              "composite": {"path": str(uploads / "composite.png")}}  # fmt: skip
    outputs = ui.on_run(editor, 0, "auto", 18500, "#ffffff", Request("painter"), progress=no_progress)
    assert "brush corrections changed" in outputs[4] or (sessions.get("painter").trimap[:, 0] == 0).all()
    assert not files_under(uploads), "the layer, the background and the composite the page sent are deleted"
    Image.fromarray(layer).save(uploads / "layer.png")
    with pytest.raises(gr.Error, match="Upload a photo first"):  # a run refused: its layer goes all the same
        ui.on_run({"layers": [{"path": str(uploads / "layer.png")}]}, 0, "auto", 18500, "#ffffff", Request("new"),
                  progress=no_progress)  # fmt: skip
    assert not files_under(uploads)


def test_an_upload_that_cutout_refuses_is_deleted(app, sessions):
    runtime, ui, folder = app
    upload = folder / "cache" / "refused" / "notes.png"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(b"not an image")
    with pytest.raises(gr.Error):
        ui.cutout(str(upload), points="[[5, 5]]")
    assert not upload.exists()
