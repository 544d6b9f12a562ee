"""The decode stage: frames resized to a short side, uint8 RGB, streamed into Zarr chunked along time.

Its plan (``plan_decode``: a chunk per ingest chunk, keyed on the videos' content fingerprints and ``decode.*``), its
chunk tasks (``decode_chunk``; ``decode_chunk_jpeg`` for ``decode.codec: jpeg``, its own code variant), its flow
(``decode_flow``) and its pictures (``decode_markdown``). The frames are read back by ``storage.frames.FrameStore``."""

from dataclasses import dataclass

from prefect import task

from idtprior.config import PipelineConfig
from idtprior.config.stages import DecodeConfig
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.records import report_stage
from idtprior.runtime.runs import stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.runtime.worker import run_chunk
from idtprior.stages.common import chunk_plans, ok_rows, publish_pictures, run_stage, stage_variant
from idtprior.storage import ChunkRecord, FrameStore, Workspace, write_frames
from idtprior.video import framecodec, io as video_io

STAGE = "decode"


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"decode": 1, "decode@jpeg": 1}


@dataclass(frozen=True)
class DecodeJob:
    """What a worker needs of ``decode.*`` to decode a chunk's videos (each video adds its path and fps)."""

    short_side: int
    time_chunk: int
    max_frames: int | None
    jpeg_quality: int | None = None  # decode.codec jpeg: each frame stored as a JPEG of this quality

    @classmethod
    def of(cls, cfg: DecodeConfig) -> "DecodeJob":
        return cls(cfg.short_side, cfg.time_chunk, cfg.max_frames, cfg.jpeg_quality if cfg.codec == "jpeg" else None)


def decode_one(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str, fps: float,
               job: DecodeJob) -> dict:
    """Stream one video's frames into ``<stage>.zarr/<chunk>/<version>/<video_id>``; never holds the whole video."""
    group = Workspace(workspace).chunk_group(stage, chunk, version, mode="a")
    frames = video_io.iter_frames(path, short_side=job.short_side)
    n, h, w = write_frames(group, video_id, frames, time_chunk=job.time_chunk, fps=fps, max_frames=job.max_frames)
    return {"frames": n, "height": h, "width": w}


def decode_one_jpeg(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str, fps: float,
                    job: DecodeJob) -> dict:
    """``decode_one`` storing each frame as a JPEG of ``job.jpeg_quality`` (``decode.codec: jpeg``)."""
    group = Workspace(workspace).chunk_group(stage, chunk, version, mode="a")
    frames = video_io.iter_frames(path, short_side=job.short_side)
    n, h, w = write_frames(group, video_id, frames, time_chunk=job.time_chunk, fps=fps, max_frames=job.max_frames,
                           serializer=framecodec.JpegFrames(job.jpeg_quality))
    return {"frames": n, "height": h, "width": w}


@task(name="decode-chunk", task_run_name="decode {chunk}")
def decode_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, tuple[str, float]],
                 config: DecodeConfig, dask_address: str | None = None) -> ChunkRecord:
    """Decode the videos of one chunk (``videos``: id -> (path, fps)); returns the committed record."""
    job = DecodeJob.of(config)
    return run_chunk(workspace, stage, chunk, fingerprint, {v: (path, fps, job) for v, (path, fps) in videos.items()},
                     decode_one, dask_address)


@task(name="decode-chunk-jpeg", task_run_name="decode {chunk}")
def decode_chunk_jpeg(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, tuple[str, float]],
                      config: DecodeConfig, dask_address: str | None = None) -> ChunkRecord:
    """``decode_chunk`` with ``decode.codec: jpeg``: its own task and code roots (``decode@jpeg``), so the JPEG codec's
    code is in the key of the workspaces that store JPEG, and in no other."""
    job = DecodeJob.of(config)
    return run_chunk(workspace, stage, chunk, fingerprint, {v: (path, fps, job) for v, (path, fps) in videos.items()},
                     decode_one_jpeg, dask_address, variant="decode@jpeg")


def decode_code(config: PipelineConfig) -> str:
    """What the decode stage's keys hold of its code for the configured frame codec (``codeprint.code_key``)."""
    return code_key(stage_variant("decode", config))


def plan_decode(config: PipelineConfig, ws: Workspace) -> dict[str, dict]:
    """Decode's chunks: chunk -> the task's arguments, with the chunk's "fingerprint". Runs nothing."""
    plans = chunk_plans("decode", ok_rows(ws), lambda r: (r.path, r.fps), config.decode.config_hash(),
                         decode_code(config), {"config": config.decode})
    return with_legacy_keys(ws, "decode", plans, lambda: plan_decode(config, ws))


@stage_flow("decode")
def decode_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Decode every ok video of the manifest into the frame store, chunk by chunk."""
    ws = Workspace(config.workspace)
    plans = plan_decode(config, ws)
    task = decode_chunk_jpeg if config.decode.codec == "jpeg" else decode_chunk
    records = run_stage(task, ws, "decode", plans, config, dask_address, progress)
    counts = report_stage(ws, "decode", records)
    publish_pictures(ws, "decode", decode_markdown, seed=config.idt.seed)
    return counts


def decode_markdown(ws: Workspace, seed: int = 0, videos: int = 3, frames: int = 6) -> str:
    """A frame strip per picked video: ``frames`` stored frames spread over it."""
    from idtprior.evaluation.figures import montage
    from idtprior.stages.pictures import cell_for, decode_frames, image_md, pick_videos

    store = FrameStore(ws)
    picked = pick_videos(store.video_ids, videos, seed, "decode")
    if not picked:
        return "_No decoded video._\n"
    rows = [decode_frames(store, v, frames) for v in picked]
    h, w = rows[0][0].shape[:2]
    image = montage(rows, cell=cell_for(h, w), row_labels=picked, label_width=120)
    return (f"### decoded frames\n\n{len(picked)} of {len(store.video_ids)} videos (seeded), {frames} frames each, "
            f"stored size {w}x{h}\n\n{image_md('decoded frames', image)}\n")
