"""The Space's Video tab: its handlers on a real clip with tiny models, its limits, its ZeroGPU sizing."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

from space.video_tab import (
    VideoSession,
    build_video_tab,
    encodable_frames,
    frames_per_call,
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


def test_the_tabs_state_holds_no_pixels_and_a_click_after_the_clip_went_says_so(clip, tmp_path):
    # gradio keeps a closed tab's gr.State for an hour: a first frame held there (25 MB at 4K) would outlive the
    # visitor's clip by that long. The state keeps the clip's path and the prompts; a click decodes the frame.
    import pickle
    import shutil

    own = shutil.copy(clip, tmp_path / "visitor.mp4")  # the visitor's own copy (deleted below)
    session, first, _ = load_clip(str(own), SimpleNamespace())
    assert len(pickle.dumps(session)) < 1024, "the state must stay small (no frame in it)"
    session, drawn, _ = set_typed_prompts(session, "20,30", "")
    assert drawn.shape == first.shape and not np.array_equal(drawn, first)  # the point drawn on the first frame
    own.unlink()  # the session ended: its files went
    with pytest.raises(gr.Error, match="no longer on the server"):
        set_typed_prompts(session, "20,30", "")


def test_zero_gpu_duration_grows_with_frames_and_pixels_and_stays_within_one_call():
    from space.runtime import LARGE_DURATION_FACTOR, PLATFORM_MAX_CHARGED_SECONDS

    small = video_seconds_for(48, 640 * 360)
    assert video_seconds_for(96, 640 * 360) > small and video_seconds_for(48, 3840 * 2160) > small
    for pixels in (640 * 360, 1920 * 1080, 3840 * 2160):  # a call of frames_per_call frames fits the platform
        for encode, frames in ((False, frames_per_call(pixels)), (True, encodable_frames(pixels))):
            charged = video_seconds_for(frames, pixels, encode=encode) * LARGE_DURATION_FACTOR
            assert charged <= PLATFORM_MAX_CHARGED_SECONDS, (pixels, encode, charged)
    assert frames_per_call(3840 * 2160) < frames_per_call(640 * 360)


def test_a_clip_is_matted_in_several_gpu_calls_like_in_one(runtime, clip, tmp_path):
    settings = SimpleNamespace()
    session = load_clip(str(clip), settings)[0]
    x, y = disc_centre(0, 10, 160, 96)
    session = set_typed_prompts(session, f"{x:.0f},{y:.0f}", "")[0]
    one = matte(session, 0.3, "#0000ff", runtime, settings, output=str(tmp_path / "one"))
    several = matte(session, 0.3, "#0000ff", runtime, settings, output=str(tmp_path / "several"), frames_per_gpu_call=4)
    assert "1 GPU call(s)" in one[4] or "2 GPU call(s)" in one[4]
    assert "3 GPU call(s)" in several[4], several[4]  # 8 + 2 frames (it mattes chunks of 8), then the encoding
    first, _, _ = read_video(one[1])
    second, _, _ = read_video(several[1])
    assert len(first) == len(second) == 10
    assert max(np.abs(a.astype(np.int32) - b.astype(np.int32)).max() for a, b in zip(first, second, strict=True)) <= 1
