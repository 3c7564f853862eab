"""Shared helpers for the Space tests: tiny random models saved to folders, synthetic photos, and the app
launched as a subprocess on a free localhost port (as `python app.py` runs on a Space)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
STARTUP_SECONDS = 180  # importing torch + gradio on a busy 2-core machine takes a while


def save_tiny_mematte(folder: Path, seed: int = 0) -> Path:
    """A tiny random MEMatte (4 blocks, 2 routers) with the MEMatte image processor, saved like a checkpoint."""
    from tests.utils import save_tiny_checkpoint

    save_tiny_checkpoint(folder, seed=seed)
    return folder


def save_tiny_sam(folder: Path, seed: int = 0) -> Path:
    """A tiny random transformers SAM with its processor (the tiny configs of the segmentation tests)."""
    from transformers import SamProcessor

    from tests.test_segmentation import tiny_image_processor
    from tests.test_segmentation import tiny_model as tiny_sam_model

    tiny_sam_model("sam", seed=seed).save_pretrained(folder)
    SamProcessor(tiny_image_processor()).save_pretrained(folder)
    return folder


def save_tiny_tracker(folder: Path, seed: int = 0) -> Path:
    """A tiny random SAM 2 video model (the video tests' shapes), saved like a Hub checkpoint."""
    from tests.test_video import tiny_tracker_model

    tiny_tracker_model(seed).save_pretrained(folder)
    return folder


def load_tiny_runtime(folder: Path):
    """Configure the Space's runtime in this process with tiny MEMatte, SAM and tracker models saved under
    `folder`, on the CPU, and load them; returns the `space.runtime` module."""
    from space import runtime
    from space.settings import parse_settings

    mematte, sam = save_tiny_mematte(folder / "mematte"), save_tiny_sam(folder / "sam")
    tracker = save_tiny_tracker(folder / "tracker")
    settings = parse_settings(["--model", str(mematte), "--sam-model", str(sam), "--tracker-model", str(tracker),
                               "--device", "cpu"], environ={})  # fmt: skip
    runtime.configure(settings)
    runtime.load_models()
    return runtime


def disc_photo(width: int, height: int) -> np.ndarray:
    """A bright soft-edged disc on a horizontal gradient: an object with an edge to click on."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    radius = 0.3 * min(height, width)
    distance = np.hypot(yy - height / 2, xx - width / 2)
    inside = np.clip((radius - distance) / 4 + 0.5, 0, 1)[..., None]
    backdrop = np.stack([xx / width * 120 + 30, np.full_like(xx, 60), 180 - xx / width * 120], axis=-1)
    disc = np.array([235, 200, 90], dtype=np.float32)
    return np.rint(inside * disc + (1 - inside) * backdrop).astype(np.uint8)


def save_photo(path: Path, width: int, height: int) -> Path:
    Image.fromarray(disc_photo(width, height)).save(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppUrl(str):
    """The URL of a running app, with the process id (to read its memory) and its folders on disk."""

    pid: int
    cache: Path  # gradio's cache folder (previews, downloads, uploads)
    temp: Path  # the app's temporary folder (the session store lives in it)


def app_env(tmp: Path) -> dict[str, str]:
    """Offline, no telemetry, gradio's cache and temporary files in the test's own folders, one torch thread."""
    env = dict(os.environ)
    (tmp / "temp").mkdir(parents=True, exist_ok=True)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(tmp / "gradio"),
        TMPDIR=str(tmp / "temp"),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    for variable in ("MEMATTE_MODEL", "MEMATTE_SAM_MODEL", "MEMATTE_TEXT_MODEL", "MEMATTE_TEXT_THRESHOLD"):
        env.pop(variable, None)
    env.pop("SPACES_ZERO_GPU", None)
    return env


@contextlib.contextmanager
def running_app(tmp: Path, model: Path, sam: Path, *extra: str) -> Iterator[AppUrl]:
    """Run `python app.py` on a free port until the block ends; yields its URL (with its pid and folders). The
    Video tab's tracker is a tiny one saved in ``tmp`` unless ``extra`` names one."""
    port = free_port()
    if "--tracker-model" not in extra:
        tracker = tmp / "tracker"
        extra = (*extra, "--tracker-model", str(tracker if tracker.is_dir() else save_tiny_tracker(tracker)))
    log_path = tmp / f"app-{port}.log"
    command = [sys.executable, str(APP), "--model", str(model), "--sam-model", str(sam)]
    command += ["--host", "127.0.0.1", "--port", str(port), *extra]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=app_env(tmp), stdout=log, stderr=subprocess.STDOUT)
    url = AppUrl(f"http://127.0.0.1:{port}/")
    url.pid, url.cache, url.temp = process.pid, tmp / "gradio", tmp / "temp"
    try:
        _wait_until_serving(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def open_tab(url: str, session_hash: str) -> Iterator[None]:
    """Hold a session's heartbeat open, as a browser tab does; leaving the block closes the tab (gradio then
    runs the app's unload event for that session)."""
    import httpx

    with httpx.Client(timeout=30) as client:
        with client.stream("GET", f"{url}gradio_api/heartbeat/{session_hash}") as response:
            next(response.iter_lines())  # the server has registered the tab
            yield


def files_under(*folders: Path) -> set[Path]:
    return {path for folder in folders if folder.exists() for path in folder.rglob("*") if path.is_file()}


def resident_memory(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def _wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the app did not answer within {STARTUP_SECONDS} s:\n{log_path.read_text(errors='replace')}")
