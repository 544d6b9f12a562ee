"""The idt stage (sample mode): raw IDT descriptors of a seeded sample of videos, R seeded rows each, for the codebook.
The full mode is fused with encoding (``stages/encode.py``) so raw descriptors of every video are never stored.

Also what both IDT stages share: the core's parameters from ``idt.*`` (``idt_params``), how a worker gets a video's rows
(``Extraction``: extracted on the CPU or, batched, with the torch backend; or read from the reference release's text
files), the plan's text-file inputs (``with_text_files``). Its plan, tasks (``idt_sample_chunk``; ``..._torch``) with
their ``SampleJob``, flow, reader (``read_sample``, the codebook's input) and pictures."""

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task

from idtprior.config import PipelineConfig
from idtprior.config.stages import IDTConfig
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.errors import TransientError
from idtprior.runtime.records import report_stage
from idtprior.runtime.runs import stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.runtime.worker import run_chunk
from idtprior.stages.common import (check_idt_backend, check_settings, chunk_plans, idt_code, ok_rows, publish_pictures,
                                    run_stage, torch_backend, with_imported_files)
from idtprior.stages.detect import boxes_for_frames, chunk_boxes, imported_file, with_boxes
from idtprior.storage import ChunkRecord, Workspace, hash_json
from idtprior.storage.integrity import array_options, reading
from idtprior.storage.upstream import Upstream, checked_records
from idtprior.video import io as video_io
from idtprior.video.idt import IDTParams, extract_idt
from idtprior.video.idt.textformat import read_idt_text

STAGE = "idt"


def idt_params(cfg: IDTConfig) -> IDTParams:
    """The core's parameters from ``idt.*`` (every field the two share; finer flow and pruning settings keep the
    core's defaults)."""
    return cfg.core_params(IDTParams)


@dataclass(frozen=True)
class Extraction:
    """How a worker gets a video's IDT rows (the idt and encode stages): extracted with the core's ``params`` (person
    boxes from the detect record ``boxes_key``; the torch backend on ``device``), or read from the reference
    release's text files in ``text_folder`` instead."""

    params: IDTParams
    boxes_key: str | None = None
    text_folder: str | None = None
    device: str | None = None  # the torch backend's: its device, homography fit and seed
    homography: str = "cpu"
    seed: int = 0

    @classmethod
    def of(cls, cfg: IDTConfig, boxes_key: str | None = None, text_folder: str | None = None) -> "Extraction":
        return cls(idt_params(cfg), boxes_key, text_folder or None, cfg.device, cfg.torch_homography, cfg.seed)


@dataclass(frozen=True)
class SampleJob:
    """What an idt worker needs for a chunk's videos (each adds its path): how to get the rows, and which to keep
    (``rows`` of them, drawn with ``seed``, stored as float16 or float32)."""

    extraction: Extraction
    rows: int
    seed: int
    float16: bool = False

    @classmethod
    def of(cls, cfg: IDTConfig, boxes_key: str | None = None, text_folder: str | None = None) -> "SampleJob":
        return cls(Extraction.of(cfg, boxes_key, text_folder), cfg.sample_rows, cfg.seed, cfg.float16)


def params_key(cfg: IDTConfig) -> dict:
    """Every field of the ``IDTParams`` the stage runs with, for the cache keys: the core's own defaults (flow settings,
    pruning thresholds, ``warp_flow``) change results as much as the fields the config sets."""
    return dataclasses.asdict(idt_params(cfg))


def video_idt(path: str, params: IDTParams, boxes: list[np.ndarray] | None = None) -> np.ndarray:
    """(N, 436) float32 IDT rows of one video, frames streamed from the file; (0, 436) when too short or static.

    ``boxes``: per-frame person boxes in the video's pixels (the detect stage's), or None; camera motion ignores
    matches inside them."""
    frames = video_io.iter_frames(path, max_side=params.max_side)
    if boxes is not None and params.max_side:
        info = video_io.probe_video(path)
        boxes = boxes_for_frames(boxes, info.height, info.width, params.max_side)
    return extract_idt(frames, params, boxes=boxes)


def batch_idt(paths: dict[str, str], how: Extraction, boxes: dict[str, list[np.ndarray] | None]
              ) -> dict[str, np.ndarray | Exception]:
    """The torch backend: (N, 436) IDT rows of a batch of videos (id -> path), extracted together on ``how.device``.

    Each video is decoded on its own, so a video that does not decode fails alone (its entry is the exception). When
    the batched extraction raises, each video is extracted alone, so the one that fails it fails alone too; running
    out of device memory is the batch's fault (a TransientError: the chunk is retried, no video is marked failed)."""
    import torch

    from idtprior.video.idt.torch_extract import extract_idt_batch

    out: dict[str, np.ndarray | Exception] = {}
    frames, frame_boxes = {}, {}
    for vid, path in paths.items():
        try:
            frames[vid] = list(video_io.iter_frames(path, max_side=how.params.max_side))
            b = boxes.get(vid)
            if b is not None and how.params.max_side:
                info = video_io.probe_video(path)
                b = boxes_for_frames(b, info.height, info.width, how.params.max_side)
            frame_boxes[vid] = b
        except Exception as e:  # noqa: BLE001 - the video's failure, reported as its result
            out[vid] = e

    def extract(ids: list[str]) -> list[np.ndarray]:
        try:
            return extract_idt_batch([frames[v] for v in ids], how.params, [frame_boxes[v] for v in ids],
                                     device=how.device, homography=how.homography, seed=how.seed)
        except torch.OutOfMemoryError as e:
            raise TransientError(f"idt: the torch backend ran out of memory on {how.device or 'the default device'} "
                                 f"with {len(ids)} videos ({ids[0]}...): lower idt.batch_videos") from e

    ids = [v for v in paths if v in frames]
    try:
        out.update(zip(ids, extract(ids)))
    except TransientError:
        raise
    except Exception:  # noqa: BLE001 - find the video that fails the batch: each one alone
        for vid in ids:
            try:
                out[vid] = extract([vid])[0]
            except TransientError:
                raise
            except Exception as e:  # noqa: BLE001
                out[vid] = e
    return {v: out[v] for v in paths}


TEXT_SUFFIXES = (".txt.gz", ".txt")  # reference-release IDT output, as imported with ``encode.idt_text_folder``


def idt_text_file(folder: str, video_id: str, path: str) -> Path | None:
    """A video's IDT text file in ``folder``: ``<video_id>`` or the video file's stem, with a .txt[.gz] suffix."""
    return imported_file(folder, video_id, path, TEXT_SUFFIXES)


def video_rows(video_id: str, path: str, how: Extraction, boxes: list[np.ndarray] | None = None) -> np.ndarray:
    """A video's (N, 436) IDT rows: read from its reference-release text file when ``how.text_folder`` is set (the
    same rows for the codebook sample as for the encoding), else computed."""
    if how.text_folder:
        found = idt_text_file(how.text_folder, video_id, path)
        if found is None:
            raise FileNotFoundError(f"video {video_id}: no IDT text file {video_id}.txt[.gz] or "
                                    f"{Path(path).stem}.txt[.gz] in {how.text_folder}")
        return read_idt_text(found)
    return video_idt(path, how.params, boxes)


def sample_rank(video_id: str, seed: int) -> str:
    """Seeded, id-keyed order: the sample is the S videos of lowest rank, stable when videos are added."""
    return hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()


def choose_sample(video_ids: list[str], count: int, seed: int) -> set[str]:
    return set(sorted(video_ids, key=lambda v: sample_rank(v, seed))[:count])


def sample_one(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str,
               job: SampleJob) -> dict:
    """One video's IDT rows (extracted, or read from its text file), its seeded R rows stored. A video whose
    detection failed runs without boxes, and its record says so (``no_boxes``)."""
    how = job.extraction
    boxes, why = (None, "") if how.text_folder else chunk_boxes(workspace, chunk, how.boxes_key, video_id,
                                                                f"{stage} {chunk}")
    out = keep_sample(video_id, workspace, stage, chunk, version, video_rows(video_id, path, how, boxes), job)
    return {**out, "no_boxes": why} if why else out


def keep_sample(video_id: str, workspace: str, stage: str, chunk: str, version: str, rows: np.ndarray,
                job: SampleJob) -> dict:
    """Store ``job.rows`` of a video's IDT rows (all of them where it has fewer), drawn with a seed of the
    config's and the video's, in their original order; returns the record's facts."""
    rng = np.random.default_rng([job.seed, int(sample_rank(video_id, job.seed)[:12], 16)])
    keep = rows if len(rows) <= job.rows else rows[np.sort(rng.choice(len(rows), job.rows, False))]
    group = Workspace(workspace).chunk_group(stage, chunk, version, mode="a")
    group.create_array(video_id, data=keep.astype(np.float16 if job.float16 else np.float32), overwrite=True,
                       **array_options())
    note = "" if len(rows) else "no trajectory (video too short or static)"
    return {"trajectories": int(len(rows)), "kept": int(len(keep)), "note": note}


def sample_batch(video_ids: list[str], workspace: str, stage: str, chunk: str, version: str,
                 args: list[tuple]) -> dict[str, dict | Exception]:
    """``sample_one`` for a batch of videos with the torch backend (``args``: each video's path and the chunk's
    ``SampleJob``)."""
    paths = {v: a[0] for v, a in zip(video_ids, args)}
    job: SampleJob = args[0][1]
    found = {v: chunk_boxes(workspace, chunk, job.extraction.boxes_key, v, f"{stage} {chunk}") for v in video_ids}
    boxes = {v: b for v, (b, _) in found.items()}
    out: dict[str, dict | Exception] = {}
    for vid, rows in batch_idt(paths, job.extraction, boxes).items():
        out[vid] = rows if isinstance(rows, Exception) else keep_sample(vid, workspace, stage, chunk, version, rows,
                                                                        job)
        if found[vid][1] and isinstance(out[vid], dict):
            out[vid]["no_boxes"] = found[vid][1]
    return out


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"idt": 1, "idt@torch": 1}


@task(name="idt-sample-chunk", task_run_name="idt {chunk}")
def idt_sample_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, str],
                     config: IDTConfig, dask_address: str | None = None,
                     boxes_key: str | None = None, text_folder: str | None = None,
                     upstream: Upstream | None = None) -> ChunkRecord:
    """IDT of the sampled videos of one chunk (``videos``: id -> path); R seeded rows each to the workspace.
    ``boxes_key``: the key of the chunk's detect record to read person boxes from (None: no boxes). ``text_folder``
    (``encode.idt_text_folder``): read the rows from the imported files instead, as the encode stage does.
    ``upstream``: the records the key was planned from (``storage.upstream``)."""
    job = SampleJob.of(config, boxes_key, text_folder)
    return run_chunk(workspace, stage, chunk, fingerprint, {v: (p, job) for v, p in videos.items()}, sample_one,
                     dask_address, upstream=upstream)


@task(name="idt-sample-chunk-torch", task_run_name="idt {chunk}")
def idt_sample_chunk_torch(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, str],
                           config: IDTConfig, dask_address: str | None = None,
                           boxes_key: str | None = None, upstream: Upstream | None = None) -> ChunkRecord:
    """``idt_sample_chunk`` with the torch backend: the chunk's videos ``config.batch_videos`` at a time, each batch
    one call of the batched extractor (on a Dask worker when ``dask_address`` is set). Rows imported from text files
    (``encode.idt_text_folder``) go through ``idt_sample_chunk`` whatever the backend."""
    job = SampleJob.of(config, boxes_key)
    return run_chunk(workspace, stage, chunk, fingerprint, {v: (p, job) for v, p in videos.items()}, sample_batch,
                     dask_address, batch_size=config.batch_videos, variant="idt@torch", upstream=upstream)


def read_sample(ws: Workspace, expected: dict[str, str] | None = None, reader: str = "fit_codebook") -> np.ndarray:
    """All stored sample rows, (n, 436) float32, in video-id order; ``expected``: the sample's records (chunk -> key)
    the reader's key was planned from (``storage.upstream.checked_records``)."""
    parts = []
    for chunk, rec in sorted(checked_records(ws, STAGE, expected, reader).items()):
        group = ws.open_verified(STAGE, rec)
        for vid in sorted(v for v, info in rec.videos.items() if info.get("status") == "ok"):
            with reading(STAGE, chunk, vid):
                parts.append(np.asarray(group[vid][:], dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 436), np.float32)


def with_text_files(ws: Workspace, stage: str, plans: dict[str, dict], folder: str,
                     remember: bool) -> dict[str, dict]:
    """Each video's imported IDT text file (``encode.idt_text_folder``) in its chunk's fingerprint, by content; the
    stage keeps its own stat cache (the sample reads a subset of encode's files)."""
    return with_imported_files(ws, plans, lambda v, p: idt_text_file(folder, v, p), f"idt-text-{stage}",
                                remember, "idt_text")


def plan_idt(config: PipelineConfig, ws: Workspace, remember: bool = True) -> dict[str, dict]:
    """The IDT sample's chunks: chunk -> the task's arguments, with the chunk's "fingerprint". Runs nothing."""
    rows = ok_rows(ws)
    chosen = choose_sample([r.video_id for r in rows], config.idt.sample_videos, config.idt.seed)
    rows = [r for r in rows if r.video_id in chosen]
    text_folder = config.encode.idt_text_folder  # imported rows: the sample is drawn from the files encode reads
    cfg_hash = hash_json([config.idt.config_hash(), params_key(config.idt)])
    extra = {"config": config.idt} if torch_backend(config) else {"config": config.idt, "text_folder": text_folder}
    plans = chunk_plans("idt", rows, lambda r: r.path, cfg_hash, code_key(idt_code("idt", config)), extra)
    plans = with_text_files(ws, "idt", plans, text_folder, remember) if text_folder else with_boxes(ws, plans)
    return with_legacy_keys(ws, "idt", plans, lambda: plan_idt(config, ws, remember=False))


@stage_flow("idt")
def idt_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """IDT of a seeded sample of S videos (R seeded rows each), the codebook's training data."""
    check_settings("idt", idt_params, config.idt)
    check_idt_backend("idt", config)
    ws = Workspace(config.workspace)
    plans = plan_idt(config, ws)
    task = idt_sample_chunk_torch if torch_backend(config) else idt_sample_chunk
    records = run_stage(task, ws, "idt", plans, config, dask_address, progress)
    counts = report_stage(ws, "idt", records)
    counts["sample_rows"] = sum(v.get("kept", 0) for r in records.values() for v in r.videos.values())
    publish_pictures(ws, "idt", idt_markdown, config.idt, seed=config.idt.seed)
    return counts


def drawing_params(idt_config):
    """The IDT parameters of the pictures: the stage's, at the original scale only (the tracks drawn on a small cell;
    the coarser scales' would cost as much again for a few more lines)."""

    return dataclasses.replace(idt_params(idt_config), scale_num=1)


def idt_markdown(ws: Workspace, idt_config, seed: int = 0, videos: int = 3) -> str:
    """The IDT sample's rows per pyramid scale, and trajectories (a window ending at the middle frame) drawn on a few
    picked sample videos."""
    from idtprior.evaluation.figures import draw_tracks, montage
    from idtprior.stages.pictures import CELL_SIDE, VideoFrames, cell_for, image_md, pick_videos, scale_counts, table_md, window_tracks

    rows = read_sample(ws)
    counts = scale_counts(rows)
    md = (f"### IDT sample\n\n{len(rows)} rows; per pyramid scale:\n\n"
          + table_md(["scale", "rows"], [[f"{s:g}", c] for s, c in counts.items()]))
    sampled = sorted(v for rec in ws.records("idt").values() for v, i in rec.videos.items()
                     if i.get("status") == "ok")
    picked = pick_videos(sampled, videos, seed, "idt")
    if not picked:
        return md
    source = VideoFrames(ws, picked)
    params = drawing_params(idt_config)
    drawn, labels = [], []
    for i, v in enumerate(picked):
        frame, points = window_tracks(source, i, params)
        drawn.append(draw_tracks(frame, points))
        labels.append(f"{v}: {len(points)} tracks")
    h, w = drawn[0].shape[:2]
    image = montage([[im] for im in drawn], cell=cell_for(2 * h, 2 * w, 2 * CELL_SIDE), row_labels=labels,
                    label_width=160)
    return (md + f"\nTrajectories of the {params.track_length + 1} frames ending at the middle frame (scale 1):"
            f"\n\n{image_md('IDT trajectories', image)}\n")
