"""Detect stage: person boxes per frame of every video, stored ragged (offsets + rows) per video, per chunk.

``detect.zarr/<chunk>/<version>/<video_id>/offsets`` (T + 1,) int64 and ``.../rows`` (N, 5) float32
``[x1, y1, x2, y2, score]`` in the video's own pixels; frame t's boxes are ``rows[offsets[t]:offsets[t + 1]]``.
The boxes come from a detector (``idtprior.video.detect``) or, with ``detect.bb_folder``, from bb-files of the reference
IDT release (boxes computed elsewhere). The IDT stages read them through ``read_chunk_boxes`` / ``chunk_boxes``, and
plan on them with ``with_boxes``. Its plan, task (``detect_chunk``, with its ``DetectJob``), flow and pictures.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task

from idtprior.config import PipelineConfig
from idtprior.config.stages import DetectConfig
from idtprior.keyscheme import legacy, upstream_key
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.records import report_stage
from idtprior.runtime.runs import stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.runtime.worker import run_chunk
from idtprior.stages.common import chunk_plans, ok_rows, publish_pictures, run_stage, with_imported_files
from idtprior.storage import ChunkRecord, Workspace, file_fingerprint, hash_json, read_manifest
from idtprior.storage.integrity import array_options, reading
from idtprior.storage.upstream import checked_record
from idtprior.video import detect as detect_core, io as video_io
from idtprior.video.detect import DetectParams, get_detector, pack_boxes, unpack_boxes
from idtprior.video.idt.textformat import read_boxes, write_boxes

STAGE = "detect"
BB_SUFFIXES = (".bb.gz", ".bb")  # not .txt: IDT feature files (encode.idt_text_folder) are named so


def detect_params(cfg: DetectConfig) -> DetectParams:
    """The detector's parameters from ``detect.*`` (every field the two share)."""
    return cfg.core_params(DetectParams)


@dataclass(frozen=True)
class DetectJob:
    """What a worker needs of ``detect.*`` for a chunk's videos (each video adds its path): the detector's parameters
    and the size it detects at, or the folder of bb-files to import the boxes from instead."""

    params: DetectParams
    max_side: int | None = None
    bb_folder: str | None = None

    @classmethod
    def of(cls, cfg: DetectConfig) -> "DetectJob":
        return cls(detect_params(cfg), cfg.max_side, cfg.bb_folder)


def check_backend(cfg: DetectConfig) -> None:
    """Fail before any chunk runs when the detector cannot load (missing model file or package): one clear error
    instead of one failed video per video."""
    if cfg.bb_folder:
        if not Path(cfg.bb_folder).is_dir():
            raise FileNotFoundError(f"detect.bb_folder {cfg.bb_folder} is not a folder")
        return
    detect_core.check_available(detect_params(cfg))


def model_files(cfg: DetectConfig) -> list[Path]:
    """The model files the configured detector loads (their content is in detect's key, not their paths): the
    embedded SSDLite graph, or the Mask R-CNN weights; none for HOG, no detector, or imported boxes."""
    if cfg.bb_folder or cfg.backend in ("hog", "none"):
        return []
    if cfg.backend == "maskrcnn":
        return [Path(cfg.maskrcnn_weights)] if cfg.maskrcnn_weights else []
    from idtprior.video.detect.ssdlite import find_graph

    try:
        return [find_graph()]
    except Exception:  # noqa: BLE001 - not installed: check_backend says so before any chunk runs
        return []


def imported_file(folder: str, video_id: str, path: str, suffixes: tuple[str, ...]) -> Path | None:
    """A video's file in a folder of imported results: ``<video_id>`` or the video file's stem, with one of
    ``suffixes`` (tried in order); None when there is none."""
    for stem in dict.fromkeys((video_id, Path(path).stem)):
        for suffix in suffixes:
            candidate = Path(folder) / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def bb_file(folder: str, video_id: str, path: str) -> Path | None:
    """The bb-file of a video in ``folder``: ``<video_id>`` or the video file's stem, with a .bb[.gz] suffix."""
    return imported_file(folder, video_id, path, BB_SUFFIXES)


def rescale_boxes(boxes: list[np.ndarray], src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> list[np.ndarray]:
    """Per-frame boxes from frames of size ``src_hw`` to frames of size ``dst_hw`` (scores unchanged)."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    scale = np.array([sx, sy, sx, sy, 1.0], np.float32)
    return [b * scale for b in boxes]


def video_boxes(video_id: str, path: str, job: DetectJob) -> tuple[list[np.ndarray], int, int]:
    """Per-frame (K, 5) boxes of one video in its own pixels, and its (height, width).

    With ``bb_folder``, a video without a bb-file has no boxes (as in the reference release without --bb_file)."""
    info = video_io.probe_video(path)
    height, width = info.height, info.width
    if job.bb_folder:
        found = bb_file(job.bb_folder, video_id, path)
        by_frame = read_boxes(found) if found is not None else {}
        n = max(info.frame_count or 0, max(by_frame, default=-1) + 1)
        empty = np.zeros((0, 5), np.float32)
        return [by_frame.get(t, empty) for t in range(n)], height, width
    if job.params.backend == "none":  # nothing to look at: no decoding
        return [np.zeros((0, 5), np.float32)] * (info.frame_count or 0), height, width
    frames = video_io.iter_frames(path, max_side=job.max_side)
    boxes = list(get_detector(job.params).stream(frames))
    if job.max_side and max(height, width) > job.max_side:  # back to the video's pixels
        boxes = rescale_boxes(boxes, video_io.resized_shape(height, width, None, job.max_side), (height, width))
    return boxes, height, width


def detect_one(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str,
               job: DetectJob) -> dict:
    """One video's person boxes, stored ragged under ``<chunk>/<version>/<video_id>``."""
    boxes, height, width = video_boxes(video_id, path, job)
    offsets, rows = pack_boxes(boxes)
    group = Workspace(workspace).chunk_group(stage, chunk, version, mode="a").require_group(video_id)
    group.attrs.update({"height": height, "width": width})
    group.create_array("offsets", data=offsets, overwrite=True, **array_options())
    group.create_array("rows", data=rows, overwrite=True, **array_options())
    with_person = sum(1 for b in boxes if len(b))
    out = {"frames": len(boxes), "boxes": int(len(rows)), "frames_with_person": with_person}
    if job.bb_folder and bb_file(job.bb_folder, video_id, path) is None:
        out["note"] = f"no bb-file in {job.bb_folder}: no boxes"
    return out


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"detect": 1}


@task(name="detect-chunk", task_run_name="detect {chunk}")
def detect_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, str],
                 config: DetectConfig, dask_address: str | None = None) -> ChunkRecord:
    """Person boxes of the videos of one chunk (``videos``: id -> path)."""
    job = DetectJob.of(config)
    return run_chunk(workspace, stage, chunk, fingerprint, {v: (p, job) for v, p in videos.items()}, detect_one,
                     dask_address)


# --- reading and exporting ---------------------------------------------------------------------------------------

def read_chunk_boxes(workspace: str, chunk: str, key: str | None, video_id: str, reader: str = ""
                     ) -> list[np.ndarray] | None:
    """A video's per-frame boxes from the chunk's detect record keyed ``key``, the key the reader's was planned from
    (None: no boxes; ``UpstreamChanged`` naming ``reader`` when the record is keyed otherwise now). None too where
    the video has none (``chunk_boxes`` says why)."""
    return chunk_boxes(workspace, chunk, key, video_id, reader)[0]


def chunk_boxes(workspace: str, chunk: str, key: str | None, video_id: str, reader: str = ""
                ) -> tuple[list[np.ndarray] | None, str]:
    """``read_chunk_boxes`` and, where the video has no boxes because its detection failed, why ("" otherwise): a
    reader runs without boxes then, and says so in its record (``no_boxes``), never silently."""
    if not key:
        return None, ""
    ws = Workspace(workspace)
    rec = checked_record(ws, STAGE, chunk, key, reader or f"a reader of {STAGE} {chunk}")
    info = rec.videos.get(video_id, {})
    if info.get("status") != "ok":
        why = f"{STAGE} {info.get('status', 'did not run')}: {info.get('error', 'no outcome recorded')}"[:500]
        return None, why
    group = ws.open_verified(STAGE, rec, video=video_id)  # its files checked against the record
    with reading(STAGE, chunk, video_id):
        return unpack_boxes(group[video_id]["offsets"][...], group[video_id]["rows"][...]), ""


def boxes_for_frames(boxes: list[np.ndarray] | None, height: int, width: int, max_side: int | None):
    """Boxes in the pixels of frames resized to ``max_side`` (IDT's input) from the video's pixels."""
    if boxes is None or not max_side or max(height, width) <= max_side:
        return boxes
    return rescale_boxes(boxes, (height, width), video_io.resized_shape(height, width, None, max_side))


def read_video_boxes(ws: Workspace, video_id: str) -> list[np.ndarray]:
    """A video's per-frame boxes as stored by the detect stage; KeyError when it has none."""
    for chunk, rec in ws.records(STAGE).items():
        info = rec.videos.get(video_id)
        if info is not None and info.get("status") == "ok":
            return read_chunk_boxes(ws.url, chunk, rec.content_key, video_id)
    raise KeyError(f"video {video_id!r} has no boxes in {ws.url}: run the detect stage")


def export_boxes(ws: Workspace, folder: str | Path, video_ids: list[str] | None = None) -> list[Path]:
    """Write each video's boxes as ``<folder>/<video_id>.bb`` in the reference release's bb-file format (frames
    without boxes are written as a bare index line). Returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = set(video_ids) if video_ids else None
    out = []
    for chunk, rec in sorted(ws.records(STAGE).items()):
        for vid, info in sorted(rec.videos.items()):
            if info.get("status") != "ok" or (wanted is not None and vid not in wanted):
                continue
            path = folder / f"{vid}.bb"
            write_boxes(path, read_chunk_boxes(ws.url, chunk, rec.content_key, vid))
            out.append(path)
    if wanted is not None and len(out) < len(wanted):
        missing = sorted(wanted - {p.name[:-3] for p in out})
        raise KeyError(f"no boxes in {ws.url} for {missing}: run the detect stage")
    return out


def plan_detect(config: PipelineConfig, ws: Workspace, remember: bool = True) -> dict[str, dict]:
    """Detect's chunks: chunk -> the task's arguments, with the chunk's "fingerprint". Runs nothing (``remember``:
    store the imported files' stat cache; False in ``idtprior status``, which writes nothing)."""
    cfg = config.detect
    cfg_hash = cfg.config_hash()
    if not legacy():  # the detector's model files by content (legacy keys held the weights' path, in the config)
        cfg_hash = hash_json([cfg_hash, [model_fingerprint(p) for p in model_files(cfg)]])
    plans = chunk_plans("detect", ok_rows(ws), lambda r: r.path, cfg_hash, code_key("detect"), {"config": cfg})
    if cfg.bb_folder:  # the imported files are inputs too
        plans = with_imported_files(ws, plans, lambda v, p: bb_file(cfg.bb_folder, v, p), "detect-bb",
                                     remember)
    return with_legacy_keys(ws, "detect", plans, lambda: plan_detect(config, ws, remember=False))


def model_fingerprint(path) -> str:
    """A model file's content fingerprint (every byte), computed once per (path, size, mtime) in this process."""
    try:
        st = Path(path).stat()
    except OSError:
        return "missing"  # the backend check names the file before any chunk runs
    return _model_fingerprint(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _model_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    return file_fingerprint(path, full=True)


@stage_flow("detect")
def detect_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Person boxes per frame of every ok video (or imported from bb-files with ``detect.bb_folder``)."""
    ws = Workspace(config.workspace)
    ok_rows(ws)  # no manifest: say so before checking the backend
    check_backend(config.detect)
    plans = plan_detect(config, ws)
    records = run_stage(detect_chunk, ws, "detect", plans, config, dask_address, progress)
    counts = report_stage(ws, "detect", records)
    infos = [v for r in records.values() for v in r.videos.values() if v.get("status") == "ok"]
    frames = sum(v.get("frames", 0) for v in infos)
    counts["frames_with_person"] = round(sum(v.get("frames_with_person", 0) for v in infos) / max(frames, 1), 4)
    publish_pictures(ws, "detect", detect_markdown, seed=config.idt.seed)
    return counts


def with_boxes(ws: Workspace, plans: dict[str, dict]) -> dict[str, dict]:
    """Point each chunk's plan at the chunk's person boxes where the detect stage has run (``boxes_key``: the key of
    the detect record the task reads, and checks), and make the boxes part of the chunk's fingerprint (new boxes rerun
    IDT; without a detect stage nothing changes)."""
    for chunk, plan in plans.items():
        rec = ws.read_record("detect", chunk)
        if rec is not None:
            plan["fingerprint"] = hash_json([plan["fingerprint"], "boxes", upstream_key(rec)])
            plan["boxes_key"] = rec.content_key
            plan.setdefault("upstream", {})["detect"] = {chunk: rec.content_key}
    return plans


def detect_markdown(ws: Workspace, seed: int = 0, videos: int = 3, frames: int = 4) -> str:
    """The stored person boxes of a few picked videos drawn on ``frames`` frames each."""
    from idtprior.evaluation.figures import montage
    from idtprior.stages.pictures import boxed_frames, cell_for, image_md, pick_videos, table_md

    done = sorted(v for rec in ws.records("detect").values() for v, i in rec.videos.items() if i.get("status") == "ok")
    picked = pick_videos(done, videos, seed, "detect")
    if not picked:
        return "_No video with boxes._\n"
    paths = {r.video_id: r.path for r in read_manifest(ws)}
    rows, labels, counts = [], [], []
    for v in picked:
        boxes = read_video_boxes(ws, v)
        drawn = boxed_frames(paths[v], boxes, frames)
        if drawn:
            rows.append(drawn)
            labels.append(v)
            counts.append([v, len(boxes), sum(1 for b in boxes if len(b)), sum(len(b) for b in boxes)])
    if not rows:
        return "_No frame with boxes._\n"
    h, w = rows[0][0].shape[:2]
    image = montage(rows, cell=cell_for(h, w), row_labels=labels, label_width=120)
    return ("### person boxes\n\n" + table_md(["video", "frames", "frames with a person", "boxes"], counts)
            + f"\n{image_md('person boxes', image)}\n")
