"""Video matting at scale: memory flat in the clip's length, and 4K frames on this CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from .test_video import RATE, known_alpha, make_clip, read_video, synthetic_frame

# Runs the pipeline (real tiny SAM 2 video tracker, tiny MEMatte) on a clip in a fresh process and prints the peak
# resident memory the pipeline added (VmHWM, reset after the models are built), so runs of different lengths
# compare what the pipeline holds, not the interpreter and libraries around it.
PIPELINE = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {root!r})
    torch.set_num_threads(1)
    from mematte_hf.memory import measure_peak_memory
    from mematte_hf.predictor import MEMattePredictor
    from mematte_hf.tracking import FramePrompt, Sam2VideoTracker
    from mematte_hf.video import VideoMatter
    from tests.test_video import disc_centre, tiny_tracker_model
    from tests.utils import tiny_model

    clip, output, frames, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    # One frame per forward: at this size the tiny model's batched forward is slower than frames one by one.
    predictor = MEMattePredictor(tiny_model(), device="cpu")
    matter = VideoMatter(predictor, Sam2VideoTracker(tiny_tracker_model()), max_batch_size=1)
    prompt = FramePrompt(0, points=[disc_centre(0, frames, width, height)], labels=[1])
    with measure_peak_memory(torch.device("cpu")) as peak:
        report = matter.matte(clip, output, [prompt], save=("alpha",))
    print(json.dumps({{"peak": peak.bytes, "frames": report.frames, "skipped": report.frames_without_unknown}}))
    """
)
ROOT = str(Path(__file__).resolve().parents[1])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def start_pipeline(clip: Path, output: Path, frames: int, width: int, height: int) -> subprocess.Popen:
    script = PIPELINE.format(root=ROOT)
    command = [sys.executable, "-c", script, str(clip), str(output), str(frames), str(width), str(height)]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def pipeline_result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_resident_memory_is_flat_in_the_clips_length(tmp_path):
    width, height = 160, 96
    peaks, processes = {}, {}
    for frames in (48, 480):  # side by side: each process measures its own peak
        clip = make_clip(tmp_path / f"clip{frames}.mp4", frames=frames, width=width, height=height)
        processes[frames] = start_pipeline(clip, tmp_path / f"out{frames}", frames, width, height)
    for frames, process in processes.items():
        result = pipeline_result(process)
        assert result["frames"] == frames and result["skipped"] < frames  # the matting model ran
        peaks[frames] = result["peak"]
        alpha, _, _ = read_video(tmp_path / f"out{frames}" / "alpha.mkv")
        assert len(alpha) == frames
    print(f"pipeline peak: 48 frames {peaks[48] / 2**20:.1f} MiB, 480 frames {peaks[480] / 2**20:.1f} MiB")
    # The peaks are what the pipeline added above the loaded models (about 80 MiB at this size): holding every
    # decoded frame of the long clip would add 480 x 46 KB = 22 MB, every float alpha 29 MB, so a leak shows.
    assert peaks[480] <= 1.2 * peaks[48]


@pytest.mark.slow
def test_eight_4k_frames_run_on_this_cpu(tmp_path):
    from mematte_hf.predictor import MEMattePredictor
    from mematte_hf.tracking import FramePrompt, MaskProviderTracker
    from mematte_hf.video import VideoMatter

    from .utils import tiny_model

    width, height, frames = 3840, 2160, 8
    clip = tmp_path / "uhd.mkv"
    with av.open(str(clip), "w") as container:  # a 960 x 540 synthetic clip scaled up: the same disc, at 4K
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"}
        for index in range(frames):
            small = Image.fromarray(synthetic_frame(index, frames, 960, 540))
            frame = av.VideoFrame.from_ndarray(np.asarray(small.resize((width, height))), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    def disc(index, frame, prompt):
        return known_alpha(index, frames, width, height) > 0.5

    # A thinner decoder and a small cap on globally routed tokens keep the tiny model's 4K forward short here.
    thin = {"convstream_hidden_sizes": [4, 8, 8], "fusion_hidden_sizes": [16, 8, 8, 4]}
    predictor = MEMattePredictor(tiny_model(**thin), device="cpu", max_global_tokens=256)
    report = VideoMatter(predictor, MaskProviderTracker(disc)).matte(
        clip, tmp_path / "out", [FramePrompt(0, box=(1000, 700, 1500, 1300))], save=("alpha",)
    )
    alpha, rate, _ = read_video(report.outputs["alpha"])
    assert len(alpha) == frames and alpha[0].shape == (height, width) and rate == RATE
    assert report.frames_without_unknown == 0
    for index in (0, frames - 1):
        truth = known_alpha(index, frames, width, height)
        band = 2 * 38 + 16  # the 4K band is 38 px each side of the mask edge
        inside = truth == 1.0
        from scipy import ndimage

        deep = ndimage.binary_erosion(inside, iterations=band)
        far = ~ndimage.binary_dilation(truth > 0, iterations=band)
        assert alpha[index][deep].min() == 65535 and alpha[index][far].max() == 0
