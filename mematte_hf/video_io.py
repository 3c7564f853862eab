"""Streaming video input and output with PyAV: frames are decoded and encoded one at a time, never all held.

* :func:`probe_video` checks a file is a readable video and reads its size, frame count and frame rate.
* :func:`read_frames` yields ``(index, (H, W, 3) uint8 RGB)`` for a range of frames.
* :class:`VideoWriter` encodes frames into a temporary file next to its destination and renames it into place
  on :meth:`~VideoWriter.close`, so a final file is either complete or absent. It can copy the source's audio
  packets (no re-encoding), interleaved with the video by time.
* :class:`PngSequenceWriter` writes numbered PNGs into a temporary folder renamed into place on close.

Frame indices count decoded frames from 0 in presentation order. Outputs are written at the source's average
frame rate, one output frame per source frame.
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
    "VIDEO_FORMATS",
    "PngSequenceWriter",
    "VideoInfo",
    "VideoWriter",
    "probe_video",
    "read_frames",
    "read_png",
    "write_png",
]

#: Output kind -> (file suffix, codec, pixel format). FFV1 keeps the alpha lossless at 16 bits; PNG in a
#: QuickTime file is the most widely read lossless codec with an alpha channel; H.264 plays everywhere.
VIDEO_FORMATS = {
    "alpha": (".mkv", "ffv1", "gray16le"),
    "rgba": (".mov", "png", "rgba"),
    "composite": (".mp4", "libx264", "yuv420p"),
}
# Audio codecs an MP4 file can carry; other audio makes the composite a Matroska file instead.
_MP4_AUDIO_CODECS = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}


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

    @property
    def duration(self) -> float:
        return float(self.frame_count / self.frame_rate)


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Open ``path``, check it holds a decodable video stream, and describe it.

    The frame count comes from the container when it records one, else from counting the video packets
    (demuxing only, no decoding). Raises :class:`InputError` for a missing file, a file that is not a video,
    and a codec this FFmpeg build cannot decode.
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
        width, height = first.width, first.height
    frame_count = stream.frames or _count_packets(path)
    if not rate:
        raise InputError(f"{path} does not say its frame rate; remux it with a frame rate (ffmpeg -r)")
    return VideoInfo(path, width, height, frame_count, Fraction(rate), stream.codec_context.name, audio)


def read_frames(
    path: str | os.PathLike[str], start: int = 0, end: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for frames ``start <= index < end`` (``end=None``: to the last frame).

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
                    yield index, frame.to_ndarray(format="rgb24")
        except av.FFmpegError as error:
            raise InputError(f"decoding {path} failed ({error}); re-encode the video (e.g. to H.264)") from None


class VideoWriter:
    """Encode frames of one output kind (``alpha``, ``rgba`` or ``composite``) into ``path``.

    Args:
        path: the final file; frames go to a temporary file beside it until :meth:`close`.
        kind: a key of :data:`VIDEO_FORMATS`.
        width / height / frame_rate: of the source.
        audio_from: a source whose first audio stream is copied (packets between ``audio_start`` and
            ``audio_end`` seconds, shifted to start at 0), or ``None``.
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
        self._stream.width, self._stream.height = width, height
        if kind == "composite" and (width % 2 or height % 2):
            pixel_format = "yuv444p"  # 4:2:0 needs even sides
        self._stream.pix_fmt = pixel_format
        if codec == "libx264":
            self._stream.options = {"crf": "17", "preset": "medium"}
        self._input_format = {"alpha": "gray16le", "rgba": "rgba", "composite": "rgb24"}[kind]
        self._frame_rate = Fraction(frame_rate)
        self._count = 0
        self._audio = _AudioCopier(audio_from.path, self._container, audio_start, audio_end) if audio_from else None

    def write(self, array: np.ndarray) -> None:
        """Append one frame: (H, W) uint16 alpha, (H, W, 4) uint8 RGBA or (H, W, 3) uint8 RGB by kind."""
        import av

        if self._audio is not None:
            self._audio.copy_until(float(self._count / self._frame_rate))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=self._input_format)
        frame.pts = self._count
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
    """``.mp4`` unless the source's audio cannot go in an MP4 file, then ``.mkv``."""
    return ".mp4" if audio_codec is None or audio_codec in _MP4_AUDIO_CODECS else ".mkv"


class _AudioCopier:
    """Copies the audio packets of a source, in time order, into an output container while video is written."""

    def __init__(self, source: Path, output, start: float, end: float | None) -> None:
        import av

        self._input = av.open(str(source))
        self._in_stream = self._input.streams.audio[0]
        self._out_stream = output.add_stream_from_template(self._in_stream)
        self._output = output
        self._start, self._end = start, end
        self._offset = None
        self._packets = (p for p in self._input.demux(self._in_stream) if p.pts is not None)
        self._pending = next(self._packets, None)

    def copy_until(self, seconds: float | None) -> None:
        """Mux the source's audio packets that start before ``seconds`` of output time (all when None)."""
        while self._pending is not None:
            packet = self._pending
            time = float(packet.pts * packet.time_base)
            if self._end is not None and time >= self._end:
                self._pending = None
                return
            if seconds is not None and time - self._start >= seconds:
                return
            self._pending = next(self._packets, None)
            if time < self._start:
                continue
            if self._offset is None:
                self._offset = packet.pts
            packet.pts -= self._offset
            packet.dts = packet.pts if packet.dts is None else packet.dts - self._offset
            packet.stream = self._out_stream
            self._output.mux(packet)

    def close(self) -> None:
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


def _count_packets(path: Path) -> int:
    with _open_input(path) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)
