"""Video on the formats people have: rotated phone clips, variable frame rates, Opus / Vorbis / FLAC audio, an
MPEG-TS that starts at 11.4 s, truncated files, odd sizes, sources with alpha; and outputs that never replace an
input and are reused only when nothing that changes them changed. Clips are tiny (64 x 48, a dozen frames)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mematte_hf.errors import InputError
from mematte_hf.tracking import FramePrompt, MaskProviderTracker
from mematte_hf.video import VideoMatter
from mematte_hf.video_io import first_frame, probe_video, read_frames

from .test_video import encode

WIDTH, HEIGHT, FRAMES, RATE = 64, 48, 12, 24
SAMPLE_RATE = 48000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def picture(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A grey ramp with a bright block in the coded picture's top-left corner (it shows where rotation went)."""
    ramp = np.linspace(40, 160, width, dtype=np.float32)[None, :, None] + 2 * index
    frame = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8).copy()
    frame[:8, :12] = (250, 40, 40)
    return frame


def write_clip(
    path: Path,
    frames: int = FRAMES,
    width: int = WIDTH,
    height: int = HEIGHT,
    times: list[float] | None = None,
    audio: str | None = None,
    rotation: int = 0,
    video_codec: str = "libx264",
    pixel_format: str = "yuv420p",
    container_options: dict | None = None,
    offset: float = 0.0,
) -> Path:
    """A clip whose frame ``i`` shows at ``times[i]`` seconds (default ``i / RATE``) + ``offset``, with a tone
    in ``audio`` codec that covers the whole clip (its time starts at ``offset`` too)."""
    import av

    times = times if times is not None else [index / RATE for index in range(frames)]
    time_base = Fraction(1, 90000)
    with av.open(str(path), "w", options=container_options or {}) as container:
        video = container.add_stream(video_codec, rate=RATE)
        video.width, video.height, video.pix_fmt = width, height, pixel_format
        video.codec_context.time_base = time_base
        if video_codec == "libx264":
            video.options = {"crf": "10", "preset": "ultrafast"}
        if rotation:
            video.set_display_rotation(rotation)
        sound = container.add_stream(audio, rate=SAMPLE_RATE) if audio else None
        layout = "stereo" if audio == "vorbis" else "mono"  # FFmpeg's own Vorbis encoder takes stereo only
        if sound is not None:
            if audio == "vorbis":
                sound.options, sound.layout = {"strict": "experimental"}, layout
            duration = times[-1] + 1 / RATE
            samples = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
            tone = (0.2 * np.sin(2 * np.pi * 440 * samples)).astype(np.float32)[None]
            tone = np.repeat(tone, 2 if layout == "stereo" else 1, axis=0)
            chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout=layout)
            chunk.sample_rate, chunk.pts = SAMPLE_RATE, round(offset * SAMPLE_RATE)
            encode(container, sound, chunk)
        input_format = "rgba" if "a" in pixel_format.replace("yuv", "") else "rgb24"
        for index, time in enumerate(times):
            rgb = picture(index, width, height)
            if input_format == "rgba":
                rgb = np.dstack([rgb, np.full((height, width), 128, np.uint8)])
            frame = av.VideoFrame.from_ndarray(rgb, format=input_format)
            frame.pts, frame.time_base = round((time + offset) / time_base), time_base
            encode(container, video, frame)
        for stream in (video, sound):
            if stream is not None:
                encode(container, stream, None)  # flush
    return path


def block_mask(index: int, frame: np.ndarray, prompt) -> np.ndarray:
    """The tracker stand-in: a block in the middle of whatever frame it is given (it has soft edges to matte)."""
    height, width = frame.shape[:2]
    mask = np.zeros((height, width), bool)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
    return mask


@pytest.fixture(scope="module")
def predictor():
    from mematte_hf.predictor import MEMattePredictor

    from .utils import tiny_model

    return MEMattePredictor(tiny_model(), device="cpu")


def matter(predictor) -> VideoMatter:
    return VideoMatter(predictor, MaskProviderTracker(block_mask), max_batch_size=4)


def centre_prompt(frame: int = 0, x: float = 20, y: float = 20) -> list[FramePrompt]:
    return [FramePrompt(frame, points=[(x, y)], labels=[1])]


def streams(path: Path) -> dict[str, str]:
    """{stream type: codec name} of a file."""
    import av

    with av.open(str(path)) as container:
        return {stream.type: stream.codec_context.name for stream in container.streams}


def video_times_and_format(path: Path) -> tuple[list[float], str, tuple[int, int]]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        size = (frames[0].height, frames[0].width)
        return [float(frame.time) for frame in frames], stream.codec_context.pix_fmt, size


def audio_span(path: Path) -> tuple[float, float]:
    """(first, last) audio packet time in seconds."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        times = [float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None and p.size]
    return min(times), max(times)


# ----------------------------------------------------------------------------------------------------------
# 1. an output never replaces an input


@pytest.mark.parametrize("name, kind", [("alpha.mkv", "alpha"), ("composite.mp4", "composite")])
def test_an_output_never_replaces_the_source(predictor, tmp_path, name, kind):
    source = write_clip(tmp_path / name, video_codec="ffv1" if name.endswith("mkv") else "libx264",
                        pixel_format="yuv420p")  # fmt: skip
    before = source.read_bytes()
    with pytest.raises(InputError, match="would overwrite an input"):
        matter(predictor).matte(source, tmp_path, centre_prompt(), save=(kind,))
    assert source.read_bytes() == before


def test_the_command_refuses_it_before_loading_a_model(tmp_path, capsys):
    from mematte_hf.cli import main

    source = write_clip(tmp_path / "composite.mp4")
    before = source.read_bytes()
    code = main(["video", str(source), "--output", str(tmp_path), "--save", "composite", "--point", "20,20",
                 "--model", "no/such/model"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1 and "would overwrite an input" in error and "no/such/model" not in error
    assert source.read_bytes() == before


# ----------------------------------------------------------------------------------------------------------
# 2. re-running into a folder is explicit, and keyed on everything that changes an output


def test_a_rerun_reuses_its_own_outputs_and_refuses_another_runs(predictor, tmp_path):
    source = write_clip(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    first = matter(predictor).matte(source, out, centre_prompt(), save=("alpha", "composite"))
    made = (out / "alpha.mkv").stat().st_mtime_ns
    again = matter(predictor).matte(source, out, centre_prompt(), save=("alpha", "composite"))
    assert sorted(again.reused) == ["alpha", "composite"] and (out / "alpha.mkv").stat().st_mtime_ns == made
    assert first.outputs == again.outputs

    # another prompt, and only the alpha: the older composite would sit next to a new alpha
    with pytest.raises(InputError, match=r"composite\.mp4.*-y/--overwrite.*-n/--skip-existing"):
        matter(predictor).matte(source, out, centre_prompt(x=30), save=("alpha",))
    kept = matter(predictor).matte(source, out, centre_prompt(x=30), save=("alpha",), existing="skip")
    assert kept.reused == ["alpha"] and (out / "alpha.mkv").stat().st_mtime_ns == made
    redone = matter(predictor).matte(source, out, centre_prompt(x=30), save=("alpha",), existing="overwrite")
    assert redone.reused == [] and (out / "alpha.mkv").stat().st_mtime_ns != made
    assert not (out / "composite.mp4").exists()  # made from the other prompt: removed with the overwrite


def test_a_run_killed_between_two_outputs_resumes_without_a_refusal(predictor, tmp_path):
    import json

    source = write_clip(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "out"
    matter(predictor).matte(source, out, centre_prompt(), save=("alpha", "composite"))
    # as if killed after alpha.mkv was complete and before composite.mp4 was
    (out / "composite.mp4").unlink()
    keys = json.loads((out / ".mematte-video.json").read_text())
    del keys["composite.mp4"]
    (out / ".mematte-video.json").write_text(json.dumps(keys))
    report = matter(predictor).matte(source, out, centre_prompt(), save=("alpha", "composite"))
    assert report.reused == ["alpha"] and (out / "composite.mp4").is_file()


@pytest.mark.parametrize("setting", ["dtype", "max_global_tokens", "decoder_tile_size"])
def test_the_key_holds_the_precision_the_cap_and_the_tile(predictor, tmp_path, setting):
    from mematte_hf.predictor import MEMattePredictor

    source = write_clip(tmp_path / "clip.mp4", frames=4)
    matter(predictor).matte(source, tmp_path / "out", centre_prompt(), save=("alpha",))
    changed = {"dtype": {"dtype": "bfloat16"}, "max_global_tokens": {"max_global_tokens": 7},
               "decoder_tile_size": {"decoder_tile_size": 32}}[setting]  # fmt: skip
    other = MEMattePredictor(predictor.model, predictor.processor, device="cpu", **changed)
    try:
        with pytest.raises(InputError, match="made from other inputs or settings"):
            matter(other).matte(source, tmp_path / "out", centre_prompt(), save=("alpha",))
    finally:
        predictor.model.float()  # the bfloat16 predictor shares (and casts) the model


def test_work_made_with_another_cap_is_not_spliced_into_a_resumed_run(predictor, tmp_path):
    from mematte_hf.predictor import MEMattePredictor

    source = write_clip(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "out"

    def run_with(cap) -> int | None:
        """Matte with this cap into `out`, keeping the work folder and dropping the finished outputs (as if the
        run was stopped before encoding); return the frame it resumed at."""
        chosen = MEMattePredictor(predictor.model, predictor.processor, device="cpu", max_global_tokens=cap)
        report = matter(chosen).matte(
            source, out, centre_prompt(), save=("alpha",), keep_work=True, existing="overwrite"
        )
        (out / "alpha.mkv").unlink()
        return report.resumed_from

    assert run_with(None) is None
    assert run_with(None) == 4  # the same job: its frames are reused
    assert run_with(7) is None  # another cap: started over, not spliced


# ----------------------------------------------------------------------------------------------------------
# 3. checks before the work


def test_bad_settings_fail_before_any_model_loads(tmp_path, capsys):
    from mematte_hf.cli import main

    source = write_clip(tmp_path / "clip.mp4")
    (tmp_path / "a_file").write_text("x")
    base = ["video", str(source), "--point", "20,20", "--model", "no/such/model"]
    cases = [
        (["--output", str(tmp_path / "o"), "--background", "notacolour"], "--background 'notacolour' is not a colour"),
        (["--output", str(tmp_path / "a_file")], "is a file, not a folder"),
        (["--output", str(tmp_path / "o"), "--device", "tpu"], "'tpu'"),
        (["--output", str(tmp_path / "o"), "--text", "the dog"], "--text needs --text-model"),
    ]
    for arguments, message in cases:
        assert main([*base, *arguments]) == 1
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error and "no/such/model" not in error, error


# ----------------------------------------------------------------------------------------------------------
# 4. every audio codec


@pytest.mark.parametrize("audio, suffix", [("libopus", ".webm"), ("vorbis", ".webm"), ("flac", ".mkv")])
def test_audio_a_container_cannot_carry_is_reencoded_to_aac(predictor, tmp_path, audio, suffix):
    codec = "libvpx-vp9" if suffix == ".webm" else "libx264"
    source = write_clip(tmp_path / f"clip{suffix}", audio=audio, video_codec=codec)
    report = matter(predictor).matte(source, tmp_path / "out", centre_prompt(), save=("rgba", "composite"))
    for kind in ("rgba", "composite"):
        assert streams(report.outputs[kind]) == {"video": "png" if kind == "rgba" else "h264", "audio": "aac"}
    assert any("re-encoded to AAC for rgba.mov" in note for note in report.notes)


# ----------------------------------------------------------------------------------------------------------
# 5. phone clips are upright


def test_a_rotated_clip_is_matted_upright(predictor, tmp_path):
    source = write_clip(tmp_path / "phone.mp4", rotation=90)
    info = probe_video(source)
    assert (info.width, info.height) == (HEIGHT, WIDTH)
    upright = next(read_frames(source, 0, 1))[1]  # what the Space shows
    np.testing.assert_array_equal(first_frame(source), upright)
    assert upright.shape == (WIDTH, HEIGHT, 3)
    # 90 degrees counter-clockwise: the coded top-left block is now at the bottom-left
    assert upright[-4, 4, 0] > 200 and upright[4, 4, 0] < 200
    # a point in the displayed picture (x up to 48, y up to 64) is inside the frame
    report = matter(predictor).matte(source, tmp_path / "out", centre_prompt(x=40, y=60), save=("alpha", "rgba"))
    for kind in ("alpha", "rgba"):
        _, _, size = video_times_and_format(report.outputs[kind])
        assert size == (WIDTH, HEIGHT), kind
    assert info.rotation == 90


# ----------------------------------------------------------------------------------------------------------
# 6. variable frame rate keeps sync; audio cut on the source's timeline


def test_each_frame_is_written_at_its_source_time(predictor, tmp_path):
    times = [0.0, 0.04, 0.08, 0.5, 0.54, 1.0, 1.04, 1.08]
    source = write_clip(tmp_path / "vfr.mkv", times=times, audio="aac")
    report = matter(predictor).matte(source, tmp_path / "out", centre_prompt(), save=("alpha", "composite"))
    for kind in ("alpha", "composite"):
        written, _, _ = video_times_and_format(report.outputs[kind])
        np.testing.assert_allclose(written, times, atol=0.002, err_msg=kind)
    later = matter(predictor).matte(source, tmp_path / "later", centre_prompt(frame=3), save=("composite",), start=3)
    written, _, _ = video_times_and_format(later.outputs["composite"])
    np.testing.assert_allclose(written, np.array(times[3:]) - 0.5, atol=0.002)
    assert probe_video(source).variable_rate and not probe_video(write_clip(tmp_path / "cfr.mkv")).variable_rate


def test_audio_of_a_stream_that_starts_late_is_kept(predictor, tmp_path):
    source = write_clip(tmp_path / "broadcast.ts", audio="mp2", offset=11.4, video_codec="libx264")
    report = matter(predictor).matte(source, tmp_path / "out", centre_prompt(), save=("composite",))
    first, last = audio_span(report.outputs["composite"])
    assert first < 0.1 and last > FRAMES / RATE - 0.15  # the whole clip's sound, from the start
    assert probe_video(source).frame_times[0] == pytest.approx(11.4, abs=0.01)


# ----------------------------------------------------------------------------------------------------------
# 7. truncated clips say so


@pytest.fixture(scope="module")
def truncated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("truncated")
    full = write_clip(folder / "full.mp4", frames=48, container_options={"movflags": "faststart"})
    data = full.read_bytes()
    cut = folder / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    return cut


def test_a_truncated_clip_says_so_before_the_work(predictor, truncated, tmp_path):
    with pytest.raises(InputError, match=r"--start 40 is outside the clip.*truncated"):
        matter(predictor).matte(truncated, tmp_path, centre_prompt(frame=40), start=40, save=("alpha",))
    with pytest.raises(InputError, match="truncated"):  # a re-key prompt past the readable frames
        matter(predictor).matte(truncated, tmp_path, centre_prompt() + centre_prompt(frame=40), save=("alpha",))
    decodable = sum(1 for _ in read_frames(truncated))
    report = matter(predictor).matte(truncated, tmp_path / "out", centre_prompt())
    assert report.frames == decodable < 48 and any("truncated" in note for note in report.notes)
    assert probe_video(truncated).declared_frames == 48


# ----------------------------------------------------------------------------------------------------------
# 8. players open what we write


def test_an_odd_sized_composite_is_420_and_a_source_alpha_is_mentioned(predictor, tmp_path):
    source = write_clip(tmp_path / "odd.mov", width=63, height=47, video_codec="png", pixel_format="rgba")
    report = matter(predictor).matte(source, tmp_path / "out", centre_prompt(), save=("composite", "alpha"))
    notes = report.notes
    _, pixel_format, size = video_times_and_format(report.outputs["composite"])
    assert pixel_format == "yuv420p" and size == (48, 64)
    _, _, alpha_size = video_times_and_format(report.outputs["alpha"])
    assert alpha_size == (47, 63)  # the matte keeps the source's size
    assert any("even sides" in note for note in notes)
    assert any("alpha channel of its own" in note for note in notes)
