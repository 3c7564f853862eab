"""Video matting throughput: frames per second at 1080p and 4K, end to end and per stage, and peak memory.

A synthetic clip (a soft-edged disc moving over a drifting texture, H.264) is made at each size and run through
`mematte_hf.video.VideoMatter` with random weights:

- MEMatte: `--model tiny` (the 4-block test model) or `--model vits` (ViT-S shapes, 12 blocks of 384, routers
  calibrated to route about 25 % of the tokens, as in `memory_latency.py`). Random weights are fine for time
  and memory, not for quality.
- Tracker: transformers' `Sam2VideoModel` with its default config, which has the shapes of SAM 2.1 Hiera-tiny
  (39 M parameters, 1024 px input), streamed one frame at a time. Its random masks would be empty or full on
  most frames, so matting would be skipped; the benchmark runs the tracker on every frame (timed as
  "tracking") and then uses the disc's known mask, so every frame gets a trimap with an edge and is matted.

Stages (seconds summed over the run, from `VideoReport.seconds`): decode (both passes), tracking, trimaps,
matting (MEMatte), filter (alpha quantisation), foreground (colour estimation for rgba / composite), encode
(work PNGs, reading them back, FFV1 / PNG / H.264 encoding). End to end is the wall time of `matte()`. Peak
memory is the process's peak resident set above what it held before the run (`measure_peak_memory`).

It also times MEMatte alone on the same frames one by one against batches (`--batch-sizes`), side by side,
to show what batching buys on this device.

    python benchmarks/video_speed.py --sizes 1080 2160 --frames 16 8 --model tiny --output benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

SIZES = {1080: (1920, 1080), 2160: (3840, 2160)}
VIT_S = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6}


def make_clip(path: Path, frames: int, width: int, height: int, rate: int = 24) -> list[np.ndarray]:
    """Write the clip; return the disc's known mask for each frame."""
    import av
    from PIL import Image

    masks = []
    small_width, small_height = width // 4, height // 4
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "16", "preset": "ultrafast"}
        for index in range(frames):
            frame, alpha = synthetic_frame(index, frames, small_width, small_height)
            frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
            alpha = np.asarray(Image.fromarray(alpha).resize((width, height), Image.Resampling.BILINEAR))
            masks.append(alpha > 0.5)
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return masks


def synthetic_frame(index: int, frames: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    progress = index / max(frames - 1, 1)
    cx, cy = (0.25 + 0.5 * progress) * width, height / 2 + 0.1 * height * np.sin(2 * np.pi * progress)
    columns = np.sin((np.arange(width, dtype=np.float32) + 3 * index) / 9.0)
    rows = np.cos((np.arange(height, dtype=np.float32) - 1.5 * index) / 13.0)
    texture = 0.5 + 0.25 * np.outer(rows, columns)
    distance = np.hypot(np.arange(width)[None] + 0.5 - cx, np.arange(height)[:, None] + 0.5 - cy)
    alpha = np.clip((height / 6 - distance) / 2 + 0.5, 0, 1).astype(np.float32)[..., None]
    background = np.stack([0.2 * texture, 0.5 * texture + 0.2, 0.9 * texture], axis=-1)
    foreground = np.stack([0.95 - 0.2 * texture, 0.6 + 0.1 * texture, np.full_like(texture, 0.2)], axis=-1)
    rgb = np.rint((alpha * foreground + (1 - alpha) * background) * 255).astype(np.uint8)
    return rgb, alpha[..., 0]


class TrackThenUseKnownMask:
    """Runs the real tracker on every frame (so its time is measured), then returns the disc's known mask."""

    def __init__(self, tracker, masks: list[np.ndarray]) -> None:
        self.tracker, self.masks = tracker, masks

    def track(self, frame_index, frame, prompt):
        self.tracker.track(frame_index, frame, prompt)
        return self.masks[frame_index]

    def state_dict(self):
        return self.tracker.state_dict()

    def load_state_dict(self, state):
        self.tracker.load_state_dict(state)


def build_predictor(model: str, device: str):
    import torch

    from mematte_hf import MEMatteConfig, MEMatteForImageMatting
    from mematte_hf.calibration import set_routed_fraction
    from mematte_hf.predictor import MEMattePredictor

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if model == "tiny":
        from tests.utils import tiny_model

        network = tiny_model()
    else:
        from tests.utils import randomize_weights

        network = randomize_weights(MEMatteForImageMatting(MEMatteConfig(**VIT_S)), seed=0).eval()
        generator = torch.Generator().manual_seed(0)
        calibration = torch.cat(
            [torch.randn(1, 3, 1024, 1024, generator=generator), torch.full((1, 1, 1024, 1024), 0.5)], 1
        )
        set_routed_fraction(network, calibration, 0.25)
    return MEMattePredictor(network, device=device)


def run_size(height_key: int, frames: int, args, predictor, tracker_model) -> dict:
    import torch

    from mematte_hf.memory import measure_peak_memory
    from mematte_hf.tracking import FramePrompt, Sam2VideoTracker
    from mematte_hf.video import VideoMatter

    width, height = SIZES[height_key]
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.mp4"
        masks = make_clip(clip, frames, width, height)
        tracker = TrackThenUseKnownMask(Sam2VideoTracker(tracker_model), masks)
        matter = VideoMatter(predictor, tracker, max_batch_size=args.max_batch_size)
        prompt = FramePrompt(0, points=[(width / 4, height / 2)], labels=[1])
        began = time.perf_counter()
        with measure_peak_memory(torch.device(args.device)) as peak:
            report = matter.matte(clip, Path(folder) / "out", [prompt], save=tuple(args.save))
        wall = time.perf_counter() - began
        batching = time_batches(predictor, clip, masks, args.batch_sizes, min(frames, max(args.batch_sizes)))
    stages = {stage: round(seconds, 3) for stage, seconds in report.seconds.items()}
    result = {
        "size": f"{width}x{height}",
        "frames": report.frames,
        "batch_size": report.batch_size,
        "end_to_end_fps": round(report.frames / wall, 3),
        "stage_seconds": stages,
        "stage_fps": {stage: round(report.frames / s, 2) if s > 0 else None for stage, s in report.seconds.items()},
        "wall_seconds": round(wall, 2),
        "peak_memory_mib": round(peak.bytes / 2**20, 1) if peak.bytes is not None else None,
        "matting_fps_by_batch_size": batching,
    }
    print(json.dumps(result), flush=True)
    return result


def time_batches(predictor, clip: Path, masks, batch_sizes: list[int], frames: int) -> dict[str, float]:
    """MEMatte alone on the same frames, one forward per batch of each size: frames per second, side by side."""
    from mematte_hf.trimap import mask_to_trimap
    from mematte_hf.video_io import read_frames

    images = [frame for _, frame in read_frames(clip, 0, frames)]
    trimaps = [mask_to_trimap(masks[index]) for index in range(frames)]
    predictor.predict_batch(images[:1], trimaps[:1])  # warm-up
    speeds = {}
    for size in batch_sizes:
        began = time.perf_counter()
        for first in range(0, frames, size):
            predictor.predict_batch(images[first : first + size], trimaps[first : first + size])
        speeds[str(size)] = round(frames / (time.perf_counter() - began), 3)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1080, 2160], choices=sorted(SIZES))
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 8], help="frames per size, in order")
    parser.add_argument("--model", choices=["tiny", "vits"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", nargs="+", default=["alpha"], help="outputs to write (alpha, rgba, composite)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel

    torch.manual_seed(0)
    tracker_model = Sam2VideoModel(Sam2VideoConfig()).eval().to(args.device)
    predictor = build_predictor(args.model, args.device)
    results = [
        run_size(size, frames, args, predictor, tracker_model)
        for size, frames in zip(args.sizes, args.frames, strict=True)
    ]
    device = (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    )
    summary = {
        "device": device,
        "model": args.model,
        "tracker": "Sam2VideoModel, default config (SAM 2.1 Hiera-tiny shapes), random weights",
        "outputs": args.save,
        "command": "python " + " ".join(sys.argv),
        "results": results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    name = f"video_speed_{'cuda' if args.device.startswith('cuda') else 'cpu'}_{args.model}.json"
    (args.output / name).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.output / name}")


if __name__ == "__main__":
    main()
