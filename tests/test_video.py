"""Video matting from Python: a synthetic clip with known alpha through the whole pipeline."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from mematte_hf.errors import InputError
from mematte_hf.tracking import FramePrompt, MaskProviderTracker, Sam2VideoTracker
from mematte_hf.video import VideoMatter, steady_alpha

WIDTH, HEIGHT, FRAMES, RATE = 640, 360, 48, Fraction(24)
RADIUS, SOFTNESS = 60.0, 8.0  # the disc's radius, and the width of its soft edge, in pixels
SAMPLE_RATE = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def disc_centre(index: int, frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT) -> tuple[float, float]:
    """The disc moves left to right, and a little up and down."""
    progress = index / max(frames - 1, 1)
    return (0.25 + 0.5 * progress) * width, height / 2 + 0.1 * height * np.sin(2 * np.pi * progress)


def known_alpha(index: int, frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(H, W) float32: 1 inside the disc, 0 outside, a linear ramp SOFTNESS pixels wide across its edge."""
    cx, cy = disc_centre(index, frames, width, height)
    radius = RADIUS * height / HEIGHT
    distance = np.hypot(
        np.arange(width, dtype=np.float32)[None] - cx + 0.5, np.arange(height, dtype=np.float32)[:, None] - cy + 0.5
    )
    return np.clip((radius - distance) / SOFTNESS + 0.5, 0.0, 1.0).astype(np.float32)


def synthetic_frame(index: int, frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A warm disc over a blue-green textured background that drifts (so nothing in the frame is static)."""
    shift = 3.0 * index
    columns = np.sin((np.arange(width, dtype=np.float32) + shift) / 9.0)
    rows = np.cos((np.arange(height, dtype=np.float32) - 0.5 * shift) / 13.0)
    texture = 0.5 + 0.25 * np.outer(rows, columns)  # separable: cheap even at 4K
    background = np.stack([0.2 * texture, 0.5 * texture + 0.2, 0.9 * texture], axis=-1)
    foreground = np.stack([0.95 - 0.2 * texture, 0.6 + 0.1 * texture, np.full_like(texture, 0.2)], axis=-1)
    alpha = known_alpha(index, frames, width, height)[..., None]
    return np.rint((alpha * foreground + (1 - alpha) * background) * 255).astype(np.uint8)


def make_clip(path: Path, frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT, audio: bool = True) -> Path:
    """Write the synthetic clip (H.264, near-lossless, with a sine tone as AAC audio when `audio`)."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "10", "preset": "ultrafast"}
        sound = container.add_stream("aac", rate=SAMPLE_RATE) if audio else None
        samples_per_frame = int(SAMPLE_RATE / RATE)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, frames, width, height), format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
            if sound is not None:
                t = (index * samples_per_frame + np.arange(samples_per_frame)) / SAMPLE_RATE
                tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, index * samples_per_frame
                encode(container, sound, chunk)
        for stream in (video, sound):
            if stream is not None:
                encode(container, stream, None)  # flush
    return path


def encode(container, stream, frame) -> None:
    """Encode one frame (None: flush the encoder) and mux what comes out."""
    for packet in stream.encode(frame):
        container.mux(packet)


def tiny_tracker_model(seed: int = 0, image_size: int = 64):
    """A tiny SAM 2 video model with random weights (the smallest shapes transformers' SAM 2 accepts: memory
    channels 64 and a hidden size above them)."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    side = image_size
    hiera = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 8,
        "num_attention_heads": 1,
        "image_size": [side, side],
        "blocks_per_stage": [1, 1, 2, 1],
        "embed_dim_per_stage": [8, 16, 32, 64],
        "num_attention_heads_per_stage": [1, 1, 2, 2],
        "window_size_per_stage": [4, 4, 4, 2],
        "global_attention_blocks": [3],
        "window_positional_embedding_background_size": [4, 4],
    }
    vision = {
        "backbone_config": hiera,
        "backbone_channel_list": [64, 32, 16, 8],
        "backbone_feature_sizes": [[side // 4] * 2, [side // 8] * 2, [side // 16] * 2],
        "fpn_hidden_size": 128,
    }
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": 128, "image_size": side, "patch_size": 16},
        mask_decoder_config={"hidden_size": 128, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        image_size=side,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[side // 16, side // 16],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
    )
    torch.manual_seed(seed)
    return Sam2VideoModel(config).eval()


def known_masks(frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT):
    """The hook's mask provider: the disc's known mask on each frame; records the prompts it was given."""
    calls = []

    def provide(index: int, frame: np.ndarray, prompt: FramePrompt | None) -> np.ndarray:
        calls.append((index, prompt))
        return known_alpha(index, frames, width, height) > 0.5

    return provide, calls


def read_video(path: Path):
    """(frames as arrays, average frame rate, stream types) of a video written by the pipeline."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        kinds = sorted(s.type for s in container.streams)
        fmt = {"gray16le": "gray16le", "rgba": "rgba"}.get(stream.codec_context.pix_fmt, "rgb24")
        frames = [frame.to_ndarray(format=fmt) for frame in container.decode(stream)]
    return frames, rate, kinds


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="module")
def predictor():
    from mematte_hf.predictor import MEMattePredictor

    from .utils import tiny_model

    return MEMattePredictor(tiny_model(), device="cpu")


@pytest.fixture(scope="module")
def matted(clip, predictor, tmp_path_factory):
    """The clip through the pipeline with the tracker's masks replaced by the known ones (the hook)."""
    provide, calls = known_masks()
    output = tmp_path_factory.mktemp("matted")
    matter = VideoMatter(predictor, MaskProviderTracker(provide))
    prompt = FramePrompt(0, points=[disc_centre(0)], labels=[1])
    report = matter.matte(clip, output, [prompt], save=("alpha", "rgba", "composite", "alpha_png"),
                          background="#ff00ff")  # fmt: skip
    return report, calls, output


def test_every_output_has_the_inputs_frame_count_size_and_rate(matted):
    report, _, output = matted
    assert set(report.outputs) == {"alpha", "rgba", "composite", "alpha_png"}
    for kind in ("alpha", "rgba", "composite"):
        frames, rate, kinds = read_video(report.outputs[kind])
        assert len(frames) == FRAMES, kind
        assert {frame.shape[:2] for frame in frames} == {(HEIGHT, WIDTH)}, kind
        assert rate == RATE, kind
        # the source's audio is copied into the cutout and the composite, not into the matte
        assert kinds == (["video"] if kind == "alpha" else ["audio", "video"]), kind
    assert report.outputs["alpha"].suffix == ".mkv" and report.outputs["composite"].suffix == ".mp4"
    pngs = sorted(report.outputs["alpha_png"].iterdir())
    assert len(pngs) == FRAMES
    assert not (output / ".mematte-work").exists()  # work folder removed once the outputs are complete
    assert not [path for path in output.iterdir() if ".partial" in path.name]  # no partial files left


def test_alpha_follows_the_disc_through_the_hook(matted):
    report, calls, _ = matted
    # the hook saw every frame once, in order, and the prompt on the key frame only
    assert [index for index, _ in calls] == list(range(FRAMES))
    assert calls[0][1] is not None and all(prompt is None for _, prompt in calls[1:])
    frames, _, _ = read_video(report.outputs["alpha"])
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for index, alpha16 in enumerate(frames):
        alpha = alpha16.astype(np.float32) / 65535
        truth = known_alpha(index)
        cx, cy = disc_centre(index)
        # the matte sits where the disc is on this very frame (no frame mix-up): its centroid within 2 px
        weight = alpha.sum()
        assert abs((alpha * xx).sum() / weight + 0.5 - cx) < 2.0, index
        assert abs((alpha * yy).sum() / weight + 0.5 - cy) < 2.0, index
        # outside the trimap's band alpha is exact: 1 deep inside the disc, 0 far from it
        distance = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy)
        assert np.all(alpha[distance < RADIUS - 20] == 1.0), index
        assert np.all(alpha[distance > RADIUS + 20] == 0.0), index
        assert np.abs(alpha - truth)[np.abs(distance - RADIUS) > 20].max() == 0.0
    png = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(sorted(report.outputs["alpha_png"].iterdir())[5]))
    np.testing.assert_array_equal(png, frames[5])  # the PNG sequence holds the same 16-bit values


def test_cutout_and_composite_show_the_disc(matted):
    report, _, _ = matted
    rgba, _, _ = read_video(report.outputs["rgba"])
    composite, _, _ = read_video(report.outputs["composite"])
    index = 20
    truth = known_alpha(index)
    source = synthetic_frame(index)
    cx, cy = disc_centre(index)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    distance = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy)
    # beyond the trimap's band (6 px each side of the mask edge at 640 x 360) alpha is known exactly
    inside, outside = distance < RADIUS - 12, distance > RADIUS + 12
    assert truth[inside].min() == 1.0 and truth[outside].max() == 0.0
    np.testing.assert_allclose(rgba[index][..., 3][inside], 255)
    np.testing.assert_allclose(rgba[index][..., 3][outside], 0)
    # inside the disc the cutout keeps the source colours (within the H.264 source's error)
    assert np.abs(rgba[index][..., :3][inside].astype(int) - source[inside].astype(int)).mean() < 3
    # outside, the composite shows the magenta background (within H.264's error)
    assert np.abs(composite[index][outside].astype(int) - [255, 0, 255]).mean() < 4


def test_real_tracker_runs_the_pipeline(clip, predictor, tmp_path):
    """Random weights cannot follow the disc; this checks the real tracker's shapes and plumbing end to end."""
    tracker = Sam2VideoTracker(tiny_tracker_model())
    matter = VideoMatter(predictor, tracker)
    prompt = FramePrompt(2, points=[disc_centre(2)], labels=[1], box=(100, 100, 300, 260))
    report = matter.matte(clip, tmp_path, [prompt], save=("alpha",), start=2, end=10)
    frames, rate, _ = read_video(report.outputs["alpha"])
    assert len(frames) == 8 and frames[0].shape == (HEIGHT, WIDTH) and rate == RATE
    assert report.seconds["tracking"] > 0


def test_tracker_memory_stays_bounded():
    tracker = Sam2VideoTracker(tiny_tracker_model())
    frames = [synthetic_frame(index, 30, 160, 90) for index in range(30)]
    for index, frame in enumerate(frames):
        prompt = FramePrompt(0, points=[(40, 45)], labels=[1]) if index == 0 else None
        mask = tracker.track(index, frame, prompt)
        assert mask.shape == (90, 160) and mask.dtype == bool
    session = tracker.session
    outputs = session.output_dict_per_obj[0]
    assert len(session.processed_frames) == 0
    assert sorted(outputs["non_cond_frame_outputs"]) == list(range(30 - tracker.frames_kept, 30))
    assert list(outputs["cond_frame_outputs"]) == [0]
    assert all("high_res_masks" not in out for out in outputs["non_cond_frame_outputs"].values())


def test_tracker_resumes_exactly_from_its_saved_state(tmp_path):
    model = tiny_tracker_model()
    frames = [synthetic_frame(index, 12, 160, 90) for index in range(12)]
    prompt = FramePrompt(0, points=[(40, 45)], labels=[1], box=(10, 20, 80, 70))
    straight = Sam2VideoTracker(model)
    expected = [straight.track(i, frame, prompt if i == 0 else None) for i, frame in enumerate(frames)]
    first = Sam2VideoTracker(model)
    for i in range(6):
        first.track(i, frames[i], prompt if i == 0 else None)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    second = Sam2VideoTracker(model)
    second.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for i in range(6, 12):
        np.testing.assert_array_equal(second.track(i, frames[i], None), expected[i])


def test_pruning_keeps_everything_the_tracker_reads():
    """Masks with the session pruned after every frame equal masks with nothing dropped."""
    model = tiny_tracker_model(seed=0)  # a seed whose masks are neither empty nor full on this clip
    frames = [synthetic_frame(index, 12, 160, 90) for index in range(12)]
    prompt = FramePrompt(0, points=[(40, 45)], labels=[1])
    pruned, unpruned = Sam2VideoTracker(model), Sam2VideoTracker(model)
    unpruned.frames_kept = 10**6
    for index, frame in enumerate(frames):
        first = prompt if index == 0 else None
        mask = pruned.track(index, frame, first)
        np.testing.assert_array_equal(mask, unpruned.track(index, frame, first))
        assert 0 < mask.mean() < 1
    assert len(unpruned.session.output_dict_per_obj[0]["non_cond_frame_outputs"]) == 11


def test_rekeying_takes_the_mask_from_the_new_prompt_from_that_frame_on():
    model = tiny_tracker_model(seed=0)
    frames = [synthetic_frame(index, 12, 160, 90) for index in range(12)]
    first = FramePrompt(0, points=[(40, 45)], labels=[1])
    rekey = FramePrompt(8, box=(90, 10, 150, 80), points=[(120, 45)], labels=[1])
    tracker = Sam2VideoTracker(model)
    masks = [tracker.track(i, frame, {0: first, 8: rekey}.get(i)) for i, frame in enumerate(frames)]
    # frame 8 is a new conditioning frame: its mask is what the new prompt gives on that frame alone
    fresh = Sam2VideoTracker(model)
    np.testing.assert_array_equal(masks[8], fresh.track(8, frames[8], rekey))
    assert 0 < masks[8].mean() < 1
    assert sorted(tracker.session.output_dict_per_obj[0]["cond_frame_outputs"]) == [0, 8]
    # and the frames after it are tracked from it: not what tracking from frame 0 alone gives
    without = Sam2VideoTracker(model)
    plain = [without.track(i, frame, first if i == 0 else None) for i, frame in enumerate(frames)]
    assert any(not np.array_equal(masks[i], plain[i]) for i in range(8, 12))


def test_frames_without_an_edge_are_handled(predictor, tmp_path):
    """The object leaves the frame, then fills it: those trimaps have no unknown band; alpha is the mask."""
    clip = make_clip(tmp_path / "small.mp4", frames=6, width=128, height=96, audio=False)

    def provide(index, frame, prompt):
        if index in (2, 3):
            return np.zeros(frame.shape[:2], dtype=bool)
        if index == 4:
            return np.ones(frame.shape[:2], dtype=bool)
        return known_alpha(index, 6, 128, 96) > 0.5

    report = VideoMatter(predictor, MaskProviderTracker(provide)).matte(
        clip, tmp_path / "out", [FramePrompt(0, points=[(30, 48)], labels=[1])], save=("alpha",)
    )
    frames, _, _ = read_video(report.outputs["alpha"])
    assert report.frames_without_unknown == 3
    assert frames[2].max() == 0 and frames[3].max() == 0 and frames[4].min() == 65535
    assert 0 < frames[0].mean() < 65535


def test_steady_alpha_changes_the_unknown_band_only():
    trimap = np.array([[0, 128, 128, 255]], dtype=np.uint8)
    previous = np.array([[0.5, 0.50, 0.50, 0.5]], dtype=np.float32)
    alpha = np.array([[0.0, 0.54, 0.90, 1.0]], dtype=np.float32)
    steadied = steady_alpha(alpha, previous, trimap, strength=0.5)
    # known pixels untouched; a small change (flicker) halved; a large change (motion) kept
    np.testing.assert_allclose(steadied, [[0.0, 0.52, 0.90, 1.0]], atol=1e-6)


def test_temporal_filter_steadies_the_band_of_a_matted_clip(predictor, clip, tmp_path):
    provide, _ = known_masks()
    prompt = [FramePrompt(0, points=[disc_centre(0)], labels=[1])]
    results = {}
    for smoothing in (0.0, 0.6):
        matter = VideoMatter(predictor, MaskProviderTracker(provide), temporal_smoothing=smoothing)
        report = matter.matte(clip, tmp_path / str(smoothing), prompt, save=("alpha_png",), end=6)
        results[smoothing] = [np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(p)).astype(np.float32)
                              for p in sorted(report.outputs["alpha_png"].iterdir())]  # fmt: skip
    plain, steady = results[0.0], results[0.6]
    np.testing.assert_array_equal(plain[0], steady[0])  # nothing to steady against on the first frame
    for index in range(1, 6):
        known = (plain[index] == 0) | (plain[index] == 65535)
        np.testing.assert_array_equal(steady[index][known], plain[index][known])


@pytest.mark.parametrize(
    "prompt, start, message",
    [
        (FramePrompt(0, points=[(700, 10)], labels=[1]), 0, "outside the 640 x 360 frame"),
        (FramePrompt(60, points=[(10, 10)], labels=[1]), 0, "past the last frame"),
        (FramePrompt(5, points=[(10, 10)], labels=[1]), 0, "first prompt is on frame 5"),
        (FramePrompt(0, box=(50, 50, 10, 10)), 0, "X0<X1"),
    ],
)
def test_bad_prompts_are_refused_with_one_line(clip, predictor, tmp_path, prompt, start, message):
    matter = VideoMatter(predictor, MaskProviderTracker(lambda *args: None))
    with pytest.raises(InputError, match=message) as error:
        matter.matte(clip, tmp_path, [prompt], start=start)
    assert "\n" not in str(error.value)


def test_a_file_that_is_not_a_video_is_refused(predictor, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    matter = VideoMatter(predictor, MaskProviderTracker(lambda *args: None))
    with pytest.raises(InputError, match="not a video") as error:
        matter.matte(text, tmp_path / "out", [FramePrompt(0, points=[(1, 1)], labels=[1])])
    assert "\n" not in str(error.value)


def test_a_device_the_tracker_cannot_use_is_refused_before_anything_loads(tmp_path):
    # The folder does not exist: the device error must come first, before any download or load is tried.
    with pytest.raises(InputError, match="'gpu0' is not a device name") as error:
        Sam2VideoTracker.from_pretrained(tmp_path / "no-such-tracker", device="gpu0")
    assert "\n" not in str(error.value)


def test_a_text_prompt_becomes_the_detectors_best_box_on_the_key_frame(clip, predictor, tmp_path):
    from mematte_hf.text_prompts import NothingFoundError, load_text_model
    from mematte_hf.video_io import read_frames

    from .test_text_prompts import save_tiny_owlv2

    detector = load_text_model(save_tiny_owlv2(tmp_path / "owl"), device="cpu", threshold=0.0)
    provide, calls = known_masks()
    matter = VideoMatter(predictor, MaskProviderTracker(provide), text_model=detector)
    report = matter.matte(clip, tmp_path / "out", [FramePrompt(0, text="the disc")], save=("alpha",), end=2)
    key_frame = next(read_frames(clip, 0, 1))[1]
    found = detector.detect(key_frame, "the disc")
    expected = found.boxes[0]
    prompt = calls[0][1]
    assert prompt.text is None and prompt.box == pytest.approx(tuple(expected))
    # the box and score the text chose are reported
    box_words = ",".join(f"{float(value):.0f}" for value in expected)
    assert f"chose the box {box_words} (score {float(found.scores[0]):.2f})" in " ".join(report.notes)
    detector.threshold = 1.0  # no score reaches 1: nothing matches
    with pytest.raises(NothingFoundError, match=r"nothing on frame 0 matches --text 'the disc'.*--text-threshold"):
        matter.matte(clip, tmp_path / "none", [FramePrompt(0, text="the disc")], save=("alpha",), end=2)
