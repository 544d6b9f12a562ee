"""IDT stage (sample mode): raw IDT descriptors of a seeded sample of videos, R seeded rows each, for the codebook.

The full mode is fused with encoding (``tasks/encode.py``) so raw descriptors of every video are never stored.
"""

import hashlib

import numpy as np
from prefect import task

from idtprior.config import IDTConfig
from idtprior.storage import ChunkRecord, Workspace
from idtprior.tasks.common import code_version, run_chunk
from idtprior.tasks.detect import boxes_for_frames, read_chunk_boxes, rescale_boxes
from idtprior.video import io as video_io
from idtprior.video.idt import IDTParams, extract_idt

STAGE = "idt"


def idt_params(cfg: IDTConfig) -> IDTParams:
    """The core's parameters from the stage config (finer flow and pruning settings keep the core's defaults)."""
    names = ("scale_num", "scale_stride", "init_gap", "track_length", "min_distance", "quality", "patch_size",
             "nxy_cell", "nt_cell", "max_side", "feature_detector", "use_camera_compensation")
    return IDTParams(**{n: getattr(cfg, n) for n in names})


def video_idt(path: str, cfg: IDTConfig, boxes: list[np.ndarray] | None = None) -> np.ndarray:
    """(N, 436) float32 IDT rows of one video, frames streamed from the file; (0, 436) when too short or static.

    ``boxes``: per-frame person boxes in the video's pixels (the detect stage's), or None; camera motion ignores
    matches inside them."""
    frames = video_io.iter_frames(path, max_side=cfg.max_side)
    if boxes is not None and cfg.max_side:
        info = video_io.probe_video(path)
        boxes = boxes_for_frames(boxes, info.height, info.width, cfg.max_side)
    return extract_idt(frames, idt_params(cfg), boxes=boxes)


def sample_rank(video_id: str, seed: int) -> str:
    """Seeded, id-keyed order: the sample is the S videos of lowest rank, stable when videos are added."""
    return hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()


def choose_sample(video_ids: list[str], count: int, seed: int) -> set[str]:
    return set(sorted(video_ids, key=lambda v: sample_rank(v, seed))[:count])


def sample_one(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str, cfg: IDTConfig,
               boxes_version: str | None = None) -> dict:
    rows = video_idt(path, cfg, read_chunk_boxes(workspace, chunk, boxes_version, video_id))
    rng = np.random.default_rng([cfg.seed, int(sample_rank(video_id, cfg.seed)[:12], 16)])
    keep = rows if len(rows) <= cfg.sample_rows else rows[np.sort(rng.choice(len(rows), cfg.sample_rows, False))]
    group = Workspace(workspace).chunk_group(stage, chunk, version, mode="a")
    group.create_array(video_id, data=keep.astype(np.float16 if cfg.float16 else np.float32), overwrite=True)
    note = "" if len(rows) else "no trajectory (video too short or static)"
    return {"trajectories": int(len(rows)), "kept": int(len(keep)), "note": note}


CODE_VERSION = code_version(sample_one, video_idt, idt_params, extract_idt, read_chunk_boxes, boxes_for_frames,
                            rescale_boxes)


@task(name="idt-sample-chunk", task_run_name="idt {chunk}")
def idt_sample_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, str],
                     config: IDTConfig, dask_address: str | None = None,
                     boxes_version: str | None = None) -> ChunkRecord:
    """IDT of the sampled videos of one chunk (``videos``: id -> path); R seeded rows each to the workspace.
    ``boxes_version``: the chunk's detect output to read person boxes from (None: no boxes)."""
    return run_chunk(workspace, stage, chunk, fingerprint, {v: (p, config, boxes_version) for v, p in videos.items()},
                     sample_one, dask_address)


def read_sample(ws: Workspace) -> np.ndarray:
    """All stored sample rows, (n, 436) float32, in video-id order."""
    parts = []
    for chunk, rec in sorted(ws.records(STAGE).items()):
        group = ws.chunk_group(STAGE, chunk, rec.version)
        for vid in sorted(v for v, info in rec.videos.items() if info.get("status") == "ok"):
            parts.append(np.asarray(group[vid][:], dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 436), np.float32)
