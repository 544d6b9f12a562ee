"""Video input and output with PyAV: probing, streaming frame decode, writing.

Frames are numpy arrays ``(H, W, 3)`` uint8 RGB. Nothing here holds a whole video in memory: decoding is a generator,
writing takes an iterable.
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np


class VideoError(ValueError):
    """A video that cannot be probed or decoded; the message names the file and the decoder's complaint."""


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns about a video without decoding all of it."""

    duration: float  # seconds
    fps: float
    frame_count: int  # from the container when it says, else duration * fps rounded
    width: int
    height: int
    codec: str


def probe_video(path: str | Path) -> VideoInfo:
    """Open ``path`` with PyAV, check it has a decodable video stream, and return its facts.

    Decodes the first frame, so a file whose header parses but whose data is garbage is caught here.
    Raises ``VideoError`` naming the file for zero-byte, corrupt, truncated, audio-only and non-video files.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise VideoError(f"video {path}: cannot stat: {e}") from e
    if size == 0:
        raise VideoError(f"video {path}: file is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise VideoError(f"video {path}: no video stream (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            width, height = int(ctx.width or 0), int(ctx.height or 0)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            duration = 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            frame_count = int(stream.frames or 0)
            if frame_count <= 0 and duration > 0 and fps > 0:
                frame_count = int(round(duration * fps))
            first = next(container.decode(stream), None)
            if first is None:
                raise VideoError(f"video {path}: no decodable frame")
            width, height = width or first.width, height or first.height
            codec = ctx.name
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, StopIteration, ValueError) as e:
        raise VideoError(f"video {path}: cannot decode: {e}") from e
    if fps <= 0:
        raise VideoError(f"video {path}: frame rate unknown ({fps})")
    if duration <= 0:
        duration = frame_count / fps if frame_count else 0.0
    return VideoInfo(duration=duration, fps=fps, frame_count=frame_count, width=width, height=height, codec=codec)


def resized_shape(height: int, width: int, short_side: int | None = None, max_side: int | None = None) -> tuple[int, int]:
    """Target ``(H, W)`` keeping the aspect ratio: short side set to ``short_side``, then capped at ``max_side``."""
    scale = 1.0
    if short_side:
        scale = short_side / min(height, width)
    if max_side and max(height, width) * scale > max_side:
        scale = max_side / max(height, width)
    if scale == 1.0:
        return height, width
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def iter_frames(
    path: str | Path,
    short_side: int | None = None,
    max_side: int | None = None,
    gray: bool = False,
) -> Iterator[np.ndarray]:
    """Yield the frames of ``path`` one by one: ``(H, W, 3)`` uint8 RGB, or ``(H, W)`` uint8 when ``gray``.

    ``short_side`` resizes so the shorter side has that many pixels; ``max_side`` caps the longer side (both keep the
    aspect ratio, area interpolation when shrinking). Decoding streams: memory stays at a few frames.
    """
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"video {path}: cannot open: {e}") from e
    with container:
        if not container.streams.video:
            raise VideoError(f"video {path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        target = None
        try:
            for frame in container.decode(stream):
                img = frame.to_ndarray(format="gray" if gray else "rgb24")
                if target is None:
                    target = resized_shape(img.shape[0], img.shape[1], short_side, max_side)
                if target != img.shape[:2]:
                    interp = cv2.INTER_AREA if target[0] < img.shape[0] else cv2.INTER_LINEAR
                    img = cv2.resize(img, (target[1], target[0]), interpolation=interp)
                yield img
        except av.error.FFmpegError as e:
            raise VideoError(f"video {path}: decode failed: {e}") from e


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> int:
    """Encode RGB uint8 frames ``(H, W, 3)`` to ``path``; returns the number of frames written.

    ``codec`` is any PyAV encoder: ``libx264`` (yuv420p, lossy), ``libx264rgb`` with ``{"crf": "0"}`` or ``ffv1``
    (lossless RGB, for round-trip tests), ``mjpeg``, ``libvpx``.
    """
    pix_fmt = {"libx264rgb": "rgb24", "ffv1": "bgr0", "mjpeg": "yuvj420p"}.get(codec, "yuv420p")
    n = 0
    rate = _as_fraction(fps)
    with av.open(str(path), mode="w") as container:
        stream = None
        for img in frames:
            img = np.ascontiguousarray(img, dtype=np.uint8)
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height = img.shape[1], img.shape[0]
                stream.pix_fmt = pix_fmt
                if options:
                    stream.options = dict(options)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return n


def _as_fraction(fps: float):
    from fractions import Fraction

    if math.isclose(fps, round(fps)):
        return Fraction(int(round(fps)), 1)
    return Fraction(fps).limit_denominator(1001)
