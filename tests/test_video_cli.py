"""`mematte video`: progress, resume after a kill with outputs equal to an uninterrupted run, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mematte_hf.cli import main

from .test_video import make_clip, read_video, tiny_tracker_model
from .utils import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, FRAMES = 320, 180, 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video_cli")
    save_tiny_checkpoint(folder / "mematte")
    tiny_tracker_model(seed=0).save_pretrained(folder / "tracker")  # a seed whose masks have edges on this clip
    clip = make_clip(folder / "clip.mp4", frames=FRAMES, width=WIDTH, height=HEIGHT)
    return folder, clip


def command(setup, output: Path) -> list[str]:
    folder, clip = setup
    return [
        sys.executable, "-m", "mematte_hf.cli", "video", str(clip), "--output", str(output),
        "--point", "80,90", "--bg-point", "300,20", "--model", str(folder / "mematte"),
        "--tracker-model", str(folder / "tracker"), "--save", "alpha,rgba,composite", "--device", "cpu",
        "--batch-size", "1",
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_a_killed_run_resumes_and_equals_an_uninterrupted_run(setup, tmp_path):
    straight = subprocess.run(
        command(setup, tmp_path / "straight"), cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "frame/s" in straight.stderr  # the progress bar counts frames per second
    assert "resumed" not in straight.stdout

    killed_output = tmp_path / "killed"
    frames_written = killed_output / ".mematte-work" / "alpha"
    process = subprocess.Popen(
        command(setup, killed_output), cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while not (frames_written.is_dir() and len(list(frames_written.glob("*.png"))) >= 20):
            assert process.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # no chance to clean up: the hardest interruption
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    assert not (killed_output / "alpha.mkv").exists()  # final files appear complete or not at all

    resumed = subprocess.run(
        command(setup, killed_output), cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at frame" in resumed.stdout
    resumed_at = int(resumed.stdout.split("resumed at frame ")[1].split(";")[0])
    assert 8 <= resumed_at < FRAMES  # it did not start over

    expected, _, _ = read_video(tmp_path / "straight" / "alpha.mkv")
    actual, _, _ = read_video(killed_output / "alpha.mkv")
    assert len(actual) == len(expected) == FRAMES
    assert any(0 < (frame == 65535).mean() < 1 for frame in expected)  # the tracker's masks have edges
    for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
        assert np.abs(left.astype(int) - right.astype(int)).max() <= 1, index
    # the cutout is lossless: equal to within a level (alphas may differ by one in 65535)
    expected, _, _ = read_video(tmp_path / "straight" / "rgba.mov")
    actual, _, _ = read_video(killed_output / "rgba.mov")
    assert len(actual) == FRAMES
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(expected, actual, strict=True)) <= 1
    # the composite is H.264: two encodes of frames that differ by a rounding step differ by the codec's noise
    # (about 2 levels on average between two identical uninterrupted runs of this test on the main branch)
    expected, _, kinds = read_video(tmp_path / "straight" / "composite.mp4")
    actual, _, _ = read_video(killed_output / "composite.mp4")
    assert kinds == ["audio", "video"] and len(actual) == FRAMES
    assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(expected, actual, strict=True)) < 4


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--point", "80,90@99"], "past the last frame"),
        (["--point", "400,90"], "outside the 320 x 180 frame"),
        (["--box", "10,10,5"], "is not X0,Y0,X1,Y1"),
        (["--point", "80,90", "--start", "60"], "outside the clip"),
    ],
)
def test_bad_prompts_give_one_line(setup, tmp_path, capsys, arguments, message):
    _, clip = setup
    code = main(["video", str(clip), "--output", str(tmp_path), "--model", "no/such/model", *arguments])
    error = capsys.readouterr().err.strip()
    assert code == 1 and message in error and "\n" not in error


def test_a_file_that_is_not_a_video_gives_one_line(tmp_path, capsys):
    not_video = tmp_path / "clip.mp4"
    not_video.write_bytes(b"\x00\x01 definitely not a video" * 10)
    code = main(["video", str(not_video), "--output", str(tmp_path / "out"), "--point", "1,1"])
    error = capsys.readouterr().err.strip()
    assert code == 1 and "is not a video" in error and "\n" not in error
