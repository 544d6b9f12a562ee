"""Decoded frames in the workspace: streaming writes and random-access clip reads.

Each video is one Zarr array ``(T, H, W, 3)`` uint8, chunked along time (``time_chunk`` frames a chunk, whole frames
spatially), so reading a 16-frame clip touches one or two chunks and never decodes the video. A chunk's bytes are zstd's
(lossless) or, with ``decode.codec: jpeg``, one JPEG per frame (``idtprior.video.framecodec``, imported here so that
Zarr knows the codec wherever frames are read). Every chunk has a file
(a black one too) with a crc32c, and a video is opened only after its files are checked against the decode record, so
a missing or damaged chunk is an ``IntegrityError`` naming the chunk and video, never black frames.
"""

from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import zarr

from idtprior.storage.integrity import array_options, reading
from idtprior.video import framecodec  # noqa: F401 - registers the JPEG frames codec with Zarr
from idtprior.storage.workspace import ChunkRecord, Workspace

STAGE = "decode"


def write_frames(group: zarr.Group, video_id: str, frames: Iterable[np.ndarray], time_chunk: int, fps: float,
                 max_frames: int | None = None, serializer=None) -> tuple[int, int, int]:
    """Stream ``frames`` ((H, W, 3) uint8) into a new array ``group[video_id]``; returns (frames, height, width).

    Frames are buffered one time-chunk at a time and appended, so memory stays at ``time_chunk`` frames whatever the
    video's length. ``serializer``: the chunks' codec (``framecodec.JpegFrames``), else zstd.
    """
    arr = None
    buf: list[np.ndarray] = []
    n = 0
    for img in frames:
        if max_frames is not None and n >= max_frames:
            break
        if arr is None:
            h, w = img.shape[:2]
            arr = group.create_array(video_id, shape=(0, h, w, 3), chunks=(time_chunk, h, w, 3), dtype="uint8",
                                     overwrite=True, **array_options(serializer))
        buf.append(img)
        n += 1
        if len(buf) == time_chunk:
            arr.append(np.stack(buf), axis=0)
            buf.clear()
    if arr is None:
        raise ValueError(f"video {video_id}: no frames decoded")
    if buf:
        arr.append(np.stack(buf), axis=0)
    arr.attrs.update({"fps": float(fps), "frames": n})
    return n, arr.shape[1], arr.shape[2]


class FrameStore:
    """Read decoded clips of a workspace by video id.

    >>> store = FrameStore(Workspace("ws"))
    >>> clip = store.read_clip("v_Bouncing_g01_c01", start=8, length=16)   # (16, H, W, 3) uint8
    """

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._index: dict[str, ChunkRecord] = {}
        for rec in ws.records(STAGE).values():
            for vid, info in rec.videos.items():
                if info.get("status") == "ok":
                    self._index[vid] = rec
        self._arrays: dict[str, zarr.Array] = {}

    @property
    def video_ids(self) -> list[str]:
        return sorted(self._index)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._index

    def array(self, video_id: str) -> zarr.Array:
        arr = self._arrays.get(video_id)
        if arr is None:
            if video_id not in self._index:
                raise KeyError(f"video {video_id!r} has no decoded frames in {self.ws.url} (run the decode stage)")
            rec = self._index[video_id]
            group = self.ws.open_verified(STAGE, rec, video=video_id)
            with reading(STAGE, rec.chunk, video_id):
                arr = group[video_id]
            self._arrays[video_id] = arr
        return arr

    def num_frames(self, video_id: str) -> int:
        return int(self.array(video_id).shape[0])

    def fps(self, video_id: str) -> float:
        return float(self.array(video_id).attrs["fps"])

    def nbytes(self, video_id: str) -> int:
        """The decoded frames' size in memory, ``T * H * W * 3`` uint8, from the decode record without opening the
        array (from its shape for a record that does not say)."""
        info = self._index[video_id].videos[video_id] if video_id in self._index else {}
        if all(k in info for k in ("frames", "height", "width")):
            return int(info["frames"]) * int(info["height"]) * int(info["width"]) * 3
        return int(np.prod(self.array(video_id).shape))

    def read_clip(self, video_id: str, start: int, length: int) -> np.ndarray:
        """Frames ``[start, start + length)`` of ``video_id`` as ``(length, H, W, 3)`` uint8.

        Raises ``ValueError`` naming the video and the range when it is out of bounds.
        """
        arr = self.array(video_id)
        check_clip(video_id, start, length, arr.shape[0])
        with reading(STAGE, self._index[video_id].chunk, video_id):
            return arr[start:start + length]


def check_clip(video_id: str, start: int, length: int, total: int) -> None:
    """Raise ``ValueError`` naming the video and the range when ``[start, start + length)`` is not within its
    ``total`` frames."""
    if start < 0 or length < 1 or start + length > total:
        raise ValueError(f"video {video_id}: clip [{start}, {start + length}) outside its {total} frames")


@lru_cache(maxsize=8)
def _store_for(url: str) -> FrameStore:
    return FrameStore(Workspace(url))


def read_clip(workspace: str | Workspace, video_id: str, start: int, length: int) -> np.ndarray:
    """Convenience: ``FrameStore(workspace).read_clip(...)``, with the store's index cached per workspace URL."""
    url = workspace.url if isinstance(workspace, Workspace) else Workspace(workspace).url
    return _store_for(url).read_clip(video_id, start, length)
