"""Streaming video input and output with PyAV: frames are decoded and encoded one at a time, never all held.

* :func:`probe_video` checks a file is a readable video and reads its size, frame count and frame rate.
* :func:`read_frames` yields ``(index, (H, W, 3) uint8 RGB)`` for a range of frames.
* :class:`VideoWriter` encodes frames into a temporary file next to its destination and renames it into place
  on :meth:`~VideoWriter.close`, so a final file is either complete or absent. It can copy the source's audio
  packets (no re-encoding), interleaved with the video by time.
* :class:`PngSequenceWriter` writes numbered PNGs into a temporary folder renamed into place on close.

Frame indices count decoded frames from 0 in presentation order. Frames come upright: a phone clip's display
matrix (rotation) is applied on decoding, so sizes and prompts are those of the picture players show. Each
output frame is written at its source frame's time (a variable-frame-rate clip stays in sync with its audio),
and audio is cut on the source's own timeline (a stream may start at any time, e.g. 11.4 s in an MPEG-TS).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError

__all__ = [
    "DEFAULT_TRACKER",
    "OUTPUT_KINDS",
    "VIDEO_FORMATS",
    "PngSequenceWriter",
    "VideoInfo",
    "VideoWriter",
    "audio_plan",
    "first_frame",
    "probe_video",
    "read_frames",
    "read_png",
    "write_png",
]

#: What :meth:`mematte_hf.video.VideoMatter.matte` can write: videos, and PNG sequences (folders of numbered PNGs).
OUTPUT_KINDS = ("alpha", "rgba", "composite", "alpha_png", "rgba_png")
#: The mask tracker `mematte video` uses unless told otherwise (here, torch-free, for the command's --help).
DEFAULT_TRACKER = "facebook/sam2.1-hiera-tiny"
#: Output kind -> (file suffix, codec, pixel format). FFV1 keeps the alpha lossless at 16 bits; PNG in a
#: QuickTime file is the most widely read lossless codec with an alpha channel; H.264 plays everywhere.
VIDEO_FORMATS = {
    "alpha": (".mkv", "ffv1", "gray16le"),
    "rgba": (".mov", "png", "rgba"),
    "composite": (".mp4", "libx264", "yuv420p"),
}
# Audio codecs each output container carries and common players play from it; other audio is re-encoded to AAC.
_COPIED_AUDIO = {
    ".mp4": {"aac", "mp3", "ac3", "eac3", "alac"},
    ".mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
}
_REENCODED_AUDIO = "aac"
_TIME_BASE = Fraction(1, 90000)
# A frame's time may differ from index / average rate by this many frame durations before the clip counts as
# variable-frame-rate (timestamps are rounded to the container's time base).
_VFR_TOLERANCE = 0.5


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a source video."""

    path: Path
    width: int
    height: int
    frame_count: int
    frame_rate: Fraction
    codec: str
    audio_codec: str | None
    #: Counter-clockwise degrees the display matrix turns the coded picture by (already applied to frames).
    rotation: int = 0
    #: Each readable frame's presentation time in seconds on the source's timeline (empty: index / frame_rate).
    frame_times: tuple[float, ...] = ()
    #: The frame count the container declares, when it declares more than can be read (a truncated file).
    declared_frames: int | None = None
    #: Whether the source's pixels carry an alpha channel (ProRes 4444, PNG, ...).
    has_alpha: bool = False

    @property
    def duration(self) -> float:
        return float(self.frame_count / self.frame_rate)

    def time_of(self, index: int) -> float:
        """Source time in seconds of frame ``index`` (``frame_count``: the end of the last frame)."""
        if not self.frame_times:
            return float(index / self.frame_rate)
        if index < len(self.frame_times):
            return self.frame_times[index]
        return self.frame_times[-1] + float(1 / self.frame_rate)

    @property
    def variable_rate(self) -> bool:
        """Whether frame times stray from a constant rate (by more than half a frame)."""
        if not self.frame_times:
            return False
        first, step = self.frame_times[0], float(1 / self.frame_rate)
        times = enumerate(self.frame_times)
        return any(abs(time - first - index * step) > _VFR_TOLERANCE * step for index, time in times)

    @property
    def truncated(self) -> bool:
        return self.declared_frames is not None


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Open ``path``, check it holds a decodable video stream, and describe it (upright size, frame times).

    The frames are counted and timed by demuxing the video packets (no decoding): a truncated file reports the
    frames it holds, and the frame count its container declared in ``declared_frames``. Raises
    :class:`InputError` for a missing file, a file that is not a video, and a codec this FFmpeg build cannot
    decode.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; give a video file (e.g. .mp4, .mov, .mkv)")
    with _open_input(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream; give a video file (e.g. .mp4, .mov, .mkv)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as error:
            raise InputError(
                f"cannot decode the video stream of {path} ({stream.codec_context.name}): {error}"
            ) from None
        if first is None:
            raise InputError(f"{path} holds a video stream without any frame")
        rotation = _quarter_turns(first.rotation) * 90
        width, height = (first.height, first.width) if rotation % 180 else (first.width, first.height)
        has_alpha = any(component.is_alpha for component in first.format.components)
        declared, codec = stream.frames, stream.codec_context.name
    if not rate:
        raise InputError(f"{path} does not say its frame rate; remux it with a frame rate (ffmpeg -r)")
    times = _frame_times(path)
    if declared and declared > len(times):  # truncated: its last packet may be cut short too; decode to be sure
        times = times[: sum(1 for _ in _decoded_frames(path))]
    frame_count = len(times)
    return VideoInfo(path, width, height, frame_count, Fraction(rate), codec, audio, rotation=rotation,
                     frame_times=tuple(times) if None not in times else (),
                     declared_frames=declared if declared and declared > frame_count else None,
                     has_alpha=has_alpha)  # fmt: skip


def first_frame(path: str | os.PathLike[str]) -> np.ndarray:
    """The clip's first frame as (H, W, 3) uint8 RGB, upright as players show it."""
    for _, frame in read_frames(path, 0, 1):
        return frame
    raise InputError(f"{path} holds a video stream without any frame")


def read_frames(
    path: str | os.PathLike[str], start: int = 0, end: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for frames ``start <= index < end`` (``end=None``: to the last frame), upright.

    Frames before ``start`` are decoded but not converted: decoding from the beginning is the only way to land
    on an exact frame index in every codec (seeking lands on keyframes and timestamps can be irregular).
    """
    import av

    with _open_input(Path(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads: decoding 4K is otherwise a bottleneck
        try:
            for index, frame in enumerate(container.decode(stream)):
                if end is not None and index >= end:
                    return
                if index >= start:
                    yield index, _upright(frame.to_ndarray(format="rgb24"), frame.rotation)
        except av.FFmpegError as error:
            raise InputError(f"decoding {path} failed ({error}); re-encode the video (e.g. to H.264)") from None


def audio_plan(info: VideoInfo, suffix: str) -> str | None:
    """How the source's audio goes into an output file with ``suffix``: "copy", "aac" (re-encoded, because
    that container or its players do not take the source's codec), or None (no audio)."""
    if info.audio_codec is None:
        return None
    copied = _COPIED_AUDIO.get(suffix)
    return "copy" if copied is None or info.audio_codec in copied else _REENCODED_AUDIO


class VideoWriter:
    """Encode frames of one output kind (``alpha``, ``rgba`` or ``composite``) into ``path``.

    Args:
        path: the final file; frames go to a temporary file beside it until :meth:`close`.
        kind: a key of :data:`VIDEO_FORMATS`.
        width / height / frame_rate: of the source (upright). A composite with an odd side is padded by one
            row or column (its edge repeated): 4:2:0 H.264, which every player opens, needs even sides.
        audio_from: a source whose first audio stream goes along (copied, or re-encoded to AAC where
            :func:`audio_plan` says the container cannot carry it), cut to ``audio_start`` .. ``audio_end``
            seconds of the source's timeline and shifted so that ``audio_start`` plays at 0; or ``None``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        kind: str,
        width: int,
        height: int,
        frame_rate: Fraction,
        audio_from: VideoInfo | None = None,
        audio_start: float = 0.0,
        audio_end: float | None = None,
    ) -> None:
        import av

        _, codec, pixel_format = VIDEO_FORMATS[kind]
        self.path = Path(path)
        self._partial = self.path.with_name(f".{self.path.name}.partial{self.path.suffix}")
        self._container = av.open(str(self._partial), "w")
        self._stream = self._container.add_stream(codec, rate=frame_rate)
        self._pad = (height % 2, width % 2) if kind == "composite" else (0, 0)
        self._stream.width, self._stream.height = width + self._pad[1], height + self._pad[0]
        self._stream.pix_fmt = pixel_format
        # Timestamps in a fine time base, so each frame lands at its source time (variable frame rates too).
        self._stream.codec_context.time_base = _TIME_BASE
        if codec == "libx264":
            self._stream.options = {"crf": "17", "preset": "medium"}
        self._input_format = {"alpha": "gray16le", "rgba": "rgba", "composite": "rgb24"}[kind]
        self._frame_rate = Fraction(frame_rate)
        self._count = 0
        self._audio = None
        mode = audio_plan(audio_from, self.path.suffix) if audio_from is not None else None
        if mode is not None:
            self._audio = _AudioPipe(audio_from.path, self._container, audio_start, audio_end, reencode=mode != "copy")

    def write(self, array: np.ndarray, time: float | None = None) -> None:
        """Append one frame: (H, W) uint16 alpha, (H, W, 4) uint8 RGBA or (H, W, 3) uint8 RGB by kind, shown at
        ``time`` seconds of the output (default: its index over the frame rate)."""
        import av

        time = float(self._count / self._frame_rate) if time is None else time
        if self._audio is not None:
            self._audio.copy_until(time)
        if any(self._pad):
            array = np.pad(array, [(0, self._pad[0]), (0, self._pad[1])] + [(0, 0)] * (array.ndim - 2), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=self._input_format)
        frame.pts, frame.time_base = round(time / _TIME_BASE), _TIME_BASE
        self._count += 1
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> Path:
        """Flush the encoder, copy the remaining audio, and move the file into place."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        if self._audio is not None:
            self._audio.copy_until(None)
            self._audio.close()
        self._container.close()
        os.replace(self._partial, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file (after an error)."""
        try:
            if self._audio is not None:
                self._audio.close()
            self._container.close()
        except Exception:  # noqa: BLE001 - the container may already be broken; the file goes anyway
            pass
        self._partial.unlink(missing_ok=True)


def composite_suffix(audio_codec: str | None) -> str:
    """The composite's suffix: always ``.mp4`` (audio an MP4 cannot carry is re-encoded to AAC)."""
    return ".mp4"


class _AudioPipe:
    """Moves the audio of a source, in time order, into an output container while video is written: packets
    copied as they are, or decoded and re-encoded to AAC (``reencode``)."""

    def __init__(self, source: Path, output, start: float, end: float | None, reencode: bool) -> None:
        import av

        self._input = av.open(str(source))
        self._in_stream = self._input.streams.audio[0]
        self._reencode = reencode
        if reencode:
            rate = self._in_stream.codec_context.sample_rate
            self._out_stream = output.add_stream(_REENCODED_AUDIO, rate=rate)
            self._out_stream.layout = self._in_stream.codec_context.layout
            self._items = self._frames()
        else:
            self._out_stream = output.add_stream_from_template(self._in_stream)
            self._items = (p for p in self._input.demux(self._in_stream) if p.pts is not None)
        self._output = output
        self._start, self._end = start, end
        self._offset = round(start / self._in_stream.time_base)  # source time `start` plays at 0
        self._pending = next(self._items, None)

    def _frames(self):
        import av

        try:
            for frame in self._input.decode(self._in_stream):
                if frame.pts is not None:
                    yield frame
        except av.FFmpegError:
            return  # a truncated file: its audio ends where it does

    def copy_until(self, seconds: float | None) -> None:
        """Mux the source's audio that starts before ``seconds`` of output time (all when None)."""
        while self._pending is not None:
            item = self._pending
            time = float(item.pts * item.time_base)
            if self._end is not None and time >= self._end:
                self._pending = None
                return
            if seconds is not None and time - self._start >= seconds:
                return
            self._pending = next(self._items, None)
            if time < self._start:
                continue
            self._mux(item)

    def _mux(self, item) -> None:
        if self._reencode:
            item.pts = None  # the encoder counts samples from 0: the first frame kept plays at 0
            for packet in self._out_stream.encode(item):
                self._output.mux(packet)
            return
        item.pts -= self._offset
        item.dts = item.pts if item.dts is None else item.dts - self._offset
        item.stream = self._out_stream
        self._output.mux(item)

    def close(self) -> None:
        if self._reencode:
            for packet in self._out_stream.encode():
                self._output.mux(packet)
            self._reencode = False  # flushed once
        self._input.close()


class PngSequenceWriter:
    """Numbered PNGs (``000000.png`` ...) in a folder that appears complete or not at all."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._partial = self.folder.with_name(f".{self.folder.name}.partial")
        shutil.rmtree(self._partial, ignore_errors=True)
        self._partial.mkdir(parents=True)
        self._count = 0

    def write(self, array: np.ndarray) -> None:
        write_png(self._partial / f"{self._count:06d}.png", array)
        self._count += 1

    def close(self) -> Path:
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(self._partial, self.folder)
        return self.folder

    def abort(self) -> None:
        shutil.rmtree(self._partial, ignore_errors=True)


def write_png(path: Path, array: np.ndarray) -> None:
    """Save (H, W) uint16 (16-bit grey), (H, W, 3) or (H, W, 4) uint8 atomically: a temporary name, then rename."""
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(array).save(partial, format="PNG", compress_level=1)
    os.replace(partial, path)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _open_input(path: Path):
    import av

    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise InputError(
            f"{path} is not a video FFmpeg can read ({error}); give a video file (.mp4, .mov, .mkv)"
        ) from None


def _frame_times(path: Path) -> list[float | None]:
    """Presentation times (seconds) of the video packets that hold data, in presentation order; demux only.

    A packet without a timestamp gives None (the caller then times frames by index and average rate)."""
    import av

    times: list[float | None] = []
    with _open_input(path) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if packet.size:
                    times.append(float(packet.pts * packet.time_base) if packet.pts is not None else None)
        except av.FFmpegError:
            pass  # a truncated file: the packets read so far are the frames it holds
    if None in times:
        return times
    return sorted(times)


def _decoded_frames(path: Path) -> Iterator[None]:
    """One None per frame that decodes, stopping quietly at the first that does not."""
    import av

    with _open_input(path) as container:
        try:
            for _ in container.decode(container.streams.video[0]):
                yield None
        except av.FFmpegError:
            return


def _quarter_turns(degrees: float | None) -> int:
    """A display rotation in degrees as counter-clockwise quarter turns 0..3 (players round the same way)."""
    return round((degrees or 0) / 90) % 4


def _upright(array: np.ndarray, degrees: float | None) -> np.ndarray:
    turns = _quarter_turns(degrees)
    return np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array
