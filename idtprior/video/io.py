"""Video input and output with PyAV: probing, streaming frame decode, writing.

Frames are numpy arrays ``(H, W, 3)`` uint8 RGB. Nothing here holds a whole video in memory: decoding is a generator,
writing takes an iterable.

Frames come as they are SHOWN, not as they are stored: phone footage stores frames sideways with a display matrix that
rotates (or mirrors) them upright, and anamorphic footage stores non-square pixels (a sample aspect ratio). Probing and
decoding apply both (``Orientation``), so sizes, frames and boxes are all in upright display pixels. A display matrix
that is not a multiple of 90 degrees cannot be applied without resampling: such a video is refused, naming the angle.
"""

import math
import os
import queue
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

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
    width: int  # as shown: upright, at the display aspect (what ``iter_frames`` yields)
    height: int
    codec: str
    rotation: int = 0  # degrees counter-clockwise the stored frames are turned to be shown (0, 90, 180, 270)
    sample_aspect: float = 1.0  # stored pixel width / height (1: square pixels)


@dataclass(frozen=True)
class Orientation:
    """How a stored frame ``(h, w)`` becomes the shown one: ``transpose`` then flips (exact, no resampling), and a
    stretch to square pixels by ``sample_aspect`` (a resize, folded into ``iter_frames``' resizing)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    sample_aspect: Fraction = Fraction(1)

    @property
    def rotation(self) -> int:
        """Counter-clockwise degrees of the turn (a mirror image says the turn of its unmirrored part)."""
        turns = {(False, False, False): 0, (True, True, False): 90, (False, True, True): 180,
                 (True, False, True): 270, (False, False, True): 0, (False, True, False): 180,
                 (True, False, False): 90, (True, True, True): 270}
        return turns[(self.transpose, self.flip_rows, self.flip_cols)]

    def display_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(H, W)`` shown for a stored ``(height, width)``: pixels stretched to square (never shrunk), then turned."""
        sar = self.sample_aspect
        if sar > 1:
            width = max(1, round(width * sar))
        elif 0 < sar < 1:
            height = max(1, round(height / sar))
        return (width, height) if self.transpose else (height, width)

    def turn(self, img: np.ndarray) -> np.ndarray:
        """The stored frame ``(h, w[, C])`` turned and mirrored as shown (no stretch): ``(w, h[, C])`` if transposed."""
        if self.transpose:
            img = np.swapaxes(img, 0, 1)
        if self.flip_rows:
            img = img[::-1]
        if self.flip_cols:
            img = img[:, ::-1]
        return np.ascontiguousarray(img)


def _side_data(frame):
    """A PyAV frame's side data entries: iterating the container gives them up to PyAV 18.1.0, and their types (the
    container's keys, as a mapping's) from 18.1.1 on."""
    container = frame.side_data
    for item in container:
        yield item if hasattr(item, "type") else container[item]


def frame_orientation(frame, stream, path: str | Path) -> Orientation:
    """The ``Orientation`` of a decoded PyAV frame (its display matrix side data) in ``stream`` (its sample aspect
    ratio). Raises ``VideoError`` for a display matrix that is not a multiple of 90 degrees."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or Fraction(1)
    sar = Fraction(sar) if sar > 0 else Fraction(1)
    matrix = None
    for data in _side_data(frame):
        if getattr(data.type, "name", str(data.type)).endswith("DISPLAYMATRIX"):
            matrix = np.frombuffer(bytes(data), np.int32)[:9].astype(np.float64)
    if matrix is None or len(matrix) < 9:
        return Orientation(sample_aspect=sar)
    # FFmpeg's row-vector convention (libavutil/display.h): a shown point is (x', y') = (a x + c y, b x + d y) for
    # a stored column x and row y, with [a b . c d .] the matrix's first two rows in 16.16 fixed point
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    big = max(abs(a), abs(b), abs(c), abs(d), 1.0)
    tiny = [abs(v) < 1e-3 * big for v in (a, b, c, d)]
    if tiny == [False, True, True, False]:
        return Orientation(False, d < 0, a < 0, sar)
    if tiny == [True, False, False, True]:  # x' = c y, y' = b x: the shown rows are the stored columns
        return Orientation(True, b < 0, c < 0, sar)
    angle = -math.degrees(math.atan2(b, a))  # counter-clockwise, as av_display_rotation_get
    raise VideoError(f"video {path}: its display matrix turns frames by {angle:.1f} degrees counter-clockwise; only "
                     f"multiples of 90 can be shown upright without resampling (matrix {[int(v) for v in matrix]})")


def _shown(path: str | Path, limit: int = 300) -> str:
    """A path for a message: cut in the middle past ``limit`` characters (a 5,000-character name stays readable)."""
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-(limit // 2):]}"


def probe_video(path: str | Path) -> VideoInfo:
    """Open ``path`` with PyAV, check it has a decodable video stream, and return its facts.

    Decodes the first frame, so a file whose header parses but whose data is garbage is caught here.
    Raises ``VideoError`` naming the file for zero-byte, corrupt, truncated, audio-only and non-video files.
    """
    path = Path(path)
    try:
        st = path.stat()
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if os.path.islink(path):  # False for a name too long or with a NUL byte, where is_symlink raises
            detail += f" (a symlink to {_shown(os.readlink(path))}, which does not exist)"
        raise VideoError(f"video {_shown(path)}: cannot stat: {detail}") from e
    if not stat.S_ISREG(st.st_mode):  # a folder, a FIFO (opening one would wait forever), a device
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a file"
        raise VideoError(f"video {_shown(path)}: {kind}, not a regular file")
    if st.st_size == 0:
        raise VideoError(f"video {path}: file is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
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
            orientation = frame_orientation(first, stream, path)
            height, width = orientation.display_shape(height, width)
            codec = ctx.name
    except VideoError:
        raise
    except PermissionError as e:
        raise VideoError(f"video {_shown(path)}: cannot read: permission denied ({e.strerror or e})") from e
    except (av.error.FFmpegError, OSError, StopIteration, ValueError) as e:
        raise VideoError(f"video {path}: cannot decode: {e}") from e
    if fps <= 0:
        raise VideoError(f"video {path}: frame rate unknown ({fps})")
    if duration <= 0:
        duration = frame_count / fps if frame_count else 0.0
    return VideoInfo(duration=duration, fps=fps, frame_count=frame_count, width=width, height=height, codec=codec,
                     rotation=orientation.rotation, sample_aspect=round(float(orientation.sample_aspect), 6))


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
    aspect ratio, area interpolation when shrinking). Frames come upright and at the display aspect (``Orientation``
    of the first frame, for every frame). Decoding streams: memory stays at a few frames.
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
        target = orientation = None
        try:
            for frame in container.decode(stream):
                if orientation is None:
                    orientation = frame_orientation(frame, stream, path)
                img = orientation.turn(frame.to_ndarray(format="gray" if gray else "rgb24"))
                if target is None:
                    shown = orientation.display_shape(frame.height, frame.width)
                    target = resized_shape(shown[0], shown[1], short_side, max_side)
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
                # a video codec's name gives a VideoStream; PyAV's stubs type a plain str as any stream
                stream = cast("av.VideoStream", container.add_stream(codec, rate=rate))
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


def prefetched(frames: Iterable[np.ndarray], depth: int = 8) -> Iterator[np.ndarray]:
    """Yield the items of ``frames`` in order while a background thread reads up to ``depth`` ahead: decoding overlaps
    the consumer's work instead of waking the decoder's threads for every frame. An error of the reader is raised
    here, at the item where it happened; closing the generator early (an error of the consumer, a ``break``) stops the
    reader at its next item."""
    if depth < 1:
        raise ValueError(f"prefetched: depth must be >= 1, got {depth}")
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        """Queue ``entry`` unless the consumer is gone; False when it is."""
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in frames:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer, raised in its thread
            put((end, e))

    reader = threading.Thread(target=read, name="frame-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item, error = items.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)
