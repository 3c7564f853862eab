"""The Space's GPU functions under ZeroGPU's terms, in a simulated worker (tests/zerogpu_worker.py): one forked
process, reused, with every call's arguments and result pickled. The handlers of the page run unchanged in
this process; only the three GPU functions cross into the worker, as `spaces.GPU` makes them do on a Space."""

from __future__ import annotations

import inspect
import multiprocessing

import gradio as gr
import numpy as np
import pytest
import torch

from tests.space_utils import disc_photo, load_tiny_runtime
from tests.zerogpu_worker import SimulatedWorker

WIDTH, HEIGHT = 320, 240


class Request:
    """What gradio passes as ``gr.Request``: the tab's session hash is all the handlers read."""

    def __init__(self, session_hash: str) -> None:
        self.session_hash = session_hash


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app's runtime and UI handlers configured with tiny models, the SAM encoder counted across processes,
    and the GPU functions routed through one simulated ZeroGPU worker."""
    from space import runtime, ui
    from space.store import ArrayStore

    folder = tmp_path_factory.mktemp("zerogpu")
    # A child forked after OpenMP ran with several threads hangs in its first parallel region (libgomp);
    # one intra-op thread keeps torch out of OpenMP, here and in the forked worker.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_tiny_runtime(folder)
    encoder_runs = multiprocessing.get_context("fork").Value("i", 0)  # shared memory: the child counts here
    hook = runtime.segmenter().model.vision_encoder.register_forward_hook(
        lambda *_: setattr(encoder_runs, "value", encoder_runs.value + 1)
    )
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("space.store._store", ArrayStore(folder / "store"))
    monkeypatch.setattr(ui, "_cache_root", lambda: str(folder / "cache"))
    ui.SESSIONS = ui.Sessions(ui.store(), 600, 20, ui._cache_root)
    worker = SimulatedWorker()  # forked now: photos stored later are not in its memory, only in the store
    originals = {name: getattr(runtime, name) for name in ("embed_photo", "find_objects", "matte")}
    for name, function in originals.items():
        monkeypatch.setattr(runtime, name, worker.wrap(function))
    yield runtime, ui, worker, encoder_runs
    monkeypatch.undo()
    worker.close()
    hook.remove()
    torch.set_num_threads(threads)


def upload(ui, tmp_path, session: str, seed: int) -> None:
    from PIL import Image

    photo = disc_photo(WIDTH, HEIGHT)
    photo[..., 1] = np.uint8(seed * 40)  # each photo its own pixels
    path = tmp_path / f"photo{seed}.png"
    Image.fromarray(photo).save(path)
    ui.on_upload(str(path), Request(session))


def test_ten_clicks_run_the_sam_encoder_once_and_two_visitors_do_not_share_it(app, tmp_path):
    runtime, ui, worker, encoder_runs = app
    start = encoder_runs.value
    upload(ui, tmp_path, "tab-a", 1)
    for index in range(10):
        ui.on_add_click(40 + 20 * index, 120, "foreground" if index % 3 else "background", 0, Request("tab-a"))
    assert encoder_runs.value - start == 1, "ten clicks on one photo: one image-encoder pass"
    assert ui.sessions().get("tab-a").trimap.shape == (HEIGHT, WIDTH)
    embedding = ui.sessions().get("tab-a").embedding
    assert not embedding.features.is_shared(), "the kept embedding was cloned out of the worker's shared memory"

    upload(ui, tmp_path, "tab-b", 2)
    for index in range(4):  # two visitors alternate clicks on two photos
        for tab in ("tab-a", "tab-b"):
            ui.on_add_click(100 + 10 * index, 100, "foreground", 0, Request(tab))
    assert encoder_runs.value - start == 2, "one encoder pass per photo, however the clicks interleave"
    names = [name for name, _, _ in worker.transferred]
    assert names.count("embed_photo") == 2 and "matte" not in names


def test_the_matte_call_moves_at_most_six_bytes_per_pixel(app, tmp_path):
    runtime, ui, worker, _ = app
    upload(ui, tmp_path, "tab-c", 3)
    ui.on_add_click(WIDTH // 2, HEIGHT // 2, "foreground", 0, Request("tab-c"))
    worker.transferred.clear()
    outputs = ui.on_run(None, 0, "auto", 18500, "#ffffff", Request("tab-c"), progress=lambda *a, **k: None)
    ((name, argument_bytes, result_bytes),) = worker.transferred
    assert name == "matte"
    print(f"matte call: {argument_bytes} argument bytes + {result_bytes} result bytes for {WIDTH * HEIGHT} pixels "
          f"= {(argument_bytes + result_bytes) / (WIDTH * HEIGHT):.3f} bytes per pixel")  # fmt: skip
    assert (argument_bytes + result_bytes) / (WIDTH * HEIGHT) <= 6, (argument_bytes, result_bytes)
    assert argument_bytes < 1000, "the photo and the trimap stay in the store; only their keys travel"
    from PIL import Image

    downloads = [Image.open(button["value"]) for button in outputs[5:8]]
    assert [image.size for image in downloads] == [(WIDTH, HEIGHT)] * 3
    assert downloads[1].mode.startswith("I") and np.asarray(downloads[1]).max() > 255, "16 bits came back"


def test_the_app_decorates_its_gpu_functions_with_spaces_gpu():
    """Off ZeroGPU `spaces.GPU` returns the function unchanged, so the decoration is read where it is written."""
    import spaces

    from space import runtime

    source = inspect.getsource(runtime)
    for name in ("embed_photo", "find_objects", "matte"):
        assert "@spaces.GPU(duration=" in source.split(f"def {name}(")[0].rsplit("\n\n\n", 1)[-1], name
    assert runtime.spaces is spaces, "the real package, imported before torch"
    small, large = runtime.matte_seconds_for(1_000_000), runtime.matte_seconds_for(24_000_000)
    assert runtime.CALL_OVERHEAD_SECONDS < small < large <= runtime.max_call_seconds()


def test_every_gpu_function_names_its_size_and_asks_for_h200_seconds_with_one_margin():
    """`spaces` multiplies a "large" call's seconds by its duration_factor (1.5): the app asks for H200 seconds
    with one margin, and a call never asks for more than the platform's per-call limit after that factor."""
    import re
    from pathlib import Path

    from space import runtime

    for path in Path(runtime.__file__).parent.glob("*.py"):
        for arguments in re.findall(r"spaces\.GPU\(([^)]*)\)", path.read_text()):
            assert "size=" in arguments, (path.name, arguments)
    h200 = runtime.H200_MATTE_SECONDS_PER_MEGAPIXEL * 24
    assert runtime.matte_seconds_for(24_000_000) <= runtime.CALL_OVERHEAD_SECONDS + runtime.MARGIN * h200 + 1
    assert runtime.max_call_seconds("large") * runtime.LARGE_DURATION_FACTOR <= runtime.PLATFORM_MAX_CHARGED_SECONDS
    assert runtime.call_seconds(10_000) == runtime.max_call_seconds()


def test_visitors_see_the_message_of_an_error_in_a_gpu_call_not_its_class(app, tmp_path):
    runtime, ui, worker, _ = app
    with pytest.raises(gr.Error) as gone:
        runtime.matte("ended/photo-0", "ended/trimap-0", None, "auto")  # the session ended before the call
    assert "no longer stored" in gone.value.message and "KeyError" not in gone.value.message
    upload(ui, tmp_path, "tab-e", 4)
    ui.on_add_click(WIDTH // 2, HEIGHT // 2, "foreground", 0, Request("tab-e"))
    session = ui.sessions().get("tab-e")
    trimap_key = ui.store().put(session.id, "trimap-e", session.trimap)
    with pytest.raises(gr.Error) as refused:
        runtime.matte(session.photo_key, trimap_key, None, -3)  # a cap the predictor refuses, inside the call
    assert refused.value.title != "ZeroGPU worker error" and "InputError" not in refused.value.message


def test_a_worker_forked_again_serves_the_next_call(app, tmp_path):
    """The package forks a new worker when the scheduler's answer is not idle: a session's next call works."""
    runtime, ui, worker, _ = app
    upload(ui, tmp_path, "tab-f", 5)
    ui.on_add_click(WIDTH // 2, HEIGHT // 2, "foreground", 0, Request("tab-f"))
    worker.refork()
    outputs = ui.on_run(None, 0, "auto", 18500, "#ffffff", Request("tab-f"), progress=lambda *a, **k: None)
    assert outputs[-1].startswith("Cut out") and worker.forks == 2


def test_the_video_preview_tracks_in_the_gpu_worker(app, tmp_path):
    """The tracker runs in a GPU call (not in the server's process through ZeroGPU's CPU emulation), with the
    tracker loaded at start-up, and only the shown frames' masks come back, at one bit per pixel."""
    from space import video_tab
    from tests.test_video import disc_centre, make_clip

    runtime, ui, worker, _ = app
    through_worker = worker.wrap(video_tab.preview_masks)
    worker.refork()  # the worker knows the function by name from now on
    original, video_tab.preview_masks = video_tab.preview_masks, through_worker
    try:
        clip = make_clip(tmp_path / "clip.mp4", frames=6, width=96, height=64)
        state = video_tab.load_clip(str(clip), runtime.settings())[0]
        x, y = disc_centre(0, 6, 96, 64)
        state = video_tab.set_typed_prompts(state, f"{x:.0f},{y:.0f}", "")[0]
        worker.transferred.clear()
        gallery = video_tab.preview(state, runtime, runtime.settings())
    finally:
        video_tab.preview_masks = original
    assert [caption for _, caption in gallery] == ["frame 0", "frame 2", "frame 3", "frame 5"]
    ((name, _, result_bytes),) = worker.transferred
    assert name == "preview_masks" and result_bytes < 4 * 96 * 64, "four masks at one bit per pixel, and little else"
