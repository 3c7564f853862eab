"""The Space's Video tab: its handlers on a real clip with tiny models, its limits, its ZeroGPU sizing."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

from space.video_tab import (
    VideoSession,
    build_video_tab,
    load_clip,
    matte,
    preview,
    set_typed_prompts,
    video_seconds_for,
)

from .test_video import disc_centre, make_clip, read_video, tiny_tracker_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runtime():
    from mematte_hf.predictor import MEMattePredictor
    from mematte_hf.tracking import Sam2VideoTracker

    from .utils import tiny_model

    predictor, tracker_model = MEMattePredictor(tiny_model(), device="cpu"), tiny_tracker_model()
    return SimpleNamespace(predictor=lambda: predictor, video_tracker=lambda: Sam2VideoTracker(tracker_model))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("space_clip") / "clip.mp4", frames=10, width=160, height=96)


def test_the_tab_builds_inside_blocks(runtime):
    with gr.Blocks() as demo, gr.Tab("Video"):
        tab = build_video_tab(SimpleNamespace(), runtime)
    assert tab.upload in demo.blocks.values() and tab.result in demo.blocks.values()


def test_upload_prompt_preview_and_matte(runtime, clip):
    settings = SimpleNamespace(video_max_frames=20, video_max_pixels=160 * 96)
    session, first, status = load_clip(str(clip), settings)
    assert first.shape == (96, 160, 3) and "10 frames of 160 x 96" in status
    x, y = disc_centre(0, 10, 160, 96)
    session, drawn, text = set_typed_prompts(session, f"{x:.0f},{y:.0f}; 150,10,bg", "")
    assert session.points == [(round(x), round(y), 1), (150.0, 10.0, 0)] and drawn.shape == first.shape
    gallery = preview(session, runtime, settings)
    assert [caption for _, caption in gallery] == ["frame 0", "frame 3", "frame 6", "frame 9"]
    assert all(image.shape == (96, 160, 3) for image, _ in gallery)
    shown, alpha, rgba, composite, status = matte(session, 0.3, "#0000ff", runtime, settings)
    assert shown == composite and "Matted 10 frames" in status
    for path in (alpha, rgba, composite):
        frames, _, _ = read_video(path)
        assert len(frames) == 10 and frames[0].shape[:2] == (96, 160)


@pytest.mark.parametrize(
    "limits, message",
    [((5, 160 * 96), "at most 5"), ((20, 100 * 96), "megapixels")],
)
def test_clips_over_the_limits_are_refused(clip, limits, message):
    settings = SimpleNamespace(video_max_frames=limits[0], video_max_pixels=limits[1])
    with pytest.raises(gr.Error, match=message):
        load_clip(str(clip), settings)


def test_matte_without_a_prompt_says_what_to_do(runtime, clip):
    session = load_clip(str(clip), SimpleNamespace())[0]
    with pytest.raises(gr.Error, match="Click the object"):
        matte(session, 0.0, "#00ff00", runtime, SimpleNamespace())
    with pytest.raises(gr.Error, match="Upload a clip"):
        preview(VideoSession(), runtime, SimpleNamespace())


def test_zero_gpu_duration_grows_with_frames_and_pixels():
    small = video_seconds_for(48, 640 * 360)
    assert video_seconds_for(96, 640 * 360) > small and video_seconds_for(48, 3840 * 2160) > small
    assert video_seconds_for(10**6, 3840 * 2160) == 600  # capped
    assert np.isclose(video_seconds_for(0, 0), 15)
