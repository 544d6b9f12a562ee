"""Decode stage: frames resized to a short side, uint8 RGB, streamed into Zarr chunked along time."""

from prefect import task

from idtprior.config import DecodeConfig
from idtprior.storage import ChunkRecord, Workspace, write_frames
from idtprior.tasks.common import run_chunk
from idtprior.video import framecodec
from idtprior.video import io as video_io

STAGE = "decode"


def decode_one(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str, fps: float,
               short_side: int, time_chunk: int, max_frames: int | None) -> dict:
    """Stream one video's frames into ``<stage>.zarr/<chunk>/<version>/<video_id>``; never holds the whole video."""
    group = Workspace(workspace).chunk_group(stage, chunk, version, mode="a")
    frames = video_io.iter_frames(path, short_side=short_side)
    n, h, w = write_frames(group, video_id, frames, time_chunk=time_chunk, fps=fps, max_frames=max_frames)
    return {"frames": n, "height": h, "width": w}


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/tasks/test_behaviour_pins.py says when.
BEHAVIOUR = {"decode": 1, "decode@jpeg": 1}


def decode_one_jpeg(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str, fps: float,
                    short_side: int, time_chunk: int, max_frames: int | None, quality: int) -> dict:
    """``decode_one`` storing each frame as a JPEG of ``quality`` (``decode.codec: jpeg``)."""
    group = Workspace(workspace).chunk_group(stage, chunk, version, mode="a")
    frames = video_io.iter_frames(path, short_side=short_side)
    n, h, w = write_frames(group, video_id, frames, time_chunk=time_chunk, fps=fps, max_frames=max_frames,
                           serializer=framecodec.JpegFrames(quality))
    return {"frames": n, "height": h, "width": w}


@task(name="decode-chunk", task_run_name="decode {chunk}")
def decode_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, tuple[str, float]],
                 config: DecodeConfig, dask_address: str | None = None) -> ChunkRecord:
    """Decode the videos of one chunk (``videos``: id -> (path, fps)); returns the committed record."""
    args = {vid: (path, fps, config.short_side, config.time_chunk, config.max_frames)
            for vid, (path, fps) in videos.items()}
    return run_chunk(workspace, stage, chunk, fingerprint, args, decode_one, dask_address)


@task(name="decode-chunk-jpeg", task_run_name="decode {chunk}")
def decode_chunk_jpeg(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, tuple[str, float]],
                      config: DecodeConfig, dask_address: str | None = None) -> ChunkRecord:
    """``decode_chunk`` with ``decode.codec: jpeg``: its own task and code roots (``decode@jpeg``), so the JPEG codec's
    code is in the key of the workspaces that store JPEG, and in no other."""
    args = {vid: (path, fps, config.short_side, config.time_chunk, config.max_frames, config.jpeg_quality)
            for vid, (path, fps) in videos.items()}
    return run_chunk(workspace, stage, chunk, fingerprint, args, decode_one_jpeg, dask_address, variant="decode@jpeg")
