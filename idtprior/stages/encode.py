"""The encode stage: per video, IDT -> Fisher vector -> count sketch, fused so raw descriptors are not stored unless
asked (``encode.keep_descriptors``); each chunk's (n, S) sketches and valid mask, assembled after the last chunk into
the (N, S) ``sketches`` array aligned with the manifest.

Its plan (keyed on the videos, ``idt.*``, ``encode.*``, the codebook's record and the person boxes), its tasks
(``encode_chunk``; ``encode_chunk_torch`` for the torch backend) with their ``EncodeJob``, its flow, its readers
(``read_sketches``, ``read_assembled_sketches``) and its pictures."""

from dataclasses import dataclass

import numpy as np
from prefect import task

from idtprior.config import PipelineConfig
from idtprior.config.stages import EncodeConfig, IDTConfig
from idtprior.encoding import Codebook, count_sketch, fisher_vector
from idtprior.encoding.backend import to_device, to_numpy
from idtprior.keyscheme import upstream_key
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.keys import stamp
from idtprior.runtime.records import report_stage
from idtprior.runtime.runs import missing_stage, stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.runtime.worker import run_chunk
from idtprior.stages.common import (ALL, SKETCHES, check_idt_backend, check_settings, chunk_plans, idt_code, ok_rows,
                                    publish_pictures, run_stage, torch_backend)
from idtprior.stages.detect import chunk_boxes, with_boxes
from idtprior.stages.fit_codebook import read_codebook
from idtprior.stages.idt import Extraction, batch_idt, idt_params, params_key, video_rows, with_text_files
from idtprior.storage import ChunkRecord, Workspace, hash_json
from idtprior.storage.integrity import array_options, reading
from idtprior.storage.upstream import Upstream, checked_records, planned


@dataclass(frozen=True)
class EncodeJob:
    """What an encode worker needs for a chunk's videos (each adds its path): how to get the rows (``idt.*``, or
    ``encode.idt_text_folder``), the codebook the chunk's key was planned from, and whether the rows are kept."""

    extraction: Extraction
    codebook: Codebook | None
    keep_descriptors: bool = False

    @classmethod
    def of(cls, idt: IDTConfig, enc: EncodeConfig, codebook: Codebook | None,
           boxes_key: str | None = None) -> "EncodeJob":
        return cls(Extraction.of(idt, boxes_key, enc.idt_text_folder), codebook, enc.keep_descriptors)


def encode_one(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str,
               job: EncodeJob) -> dict:
    """One video's IDT rows (extracted, or read from its text file) encoded: ``encode_rows``. A video whose detection
    failed runs without boxes, and its record says so (``no_boxes``)."""
    how = job.extraction
    boxes, why = (None, "") if how.text_folder else chunk_boxes(workspace, chunk, how.boxes_key, video_id,
                                                                f"{stage} {chunk}")
    out = encode_rows(video_rows(video_id, path, how, boxes), job.codebook, job.keep_descriptors)
    return {**out, "no_boxes": why} if why else out


def encode_rows(rows: np.ndarray, codebook: Codebook, keep_descriptors: bool, xp=np) -> dict:
    """A video's (n, 436) IDT rows -> the record's facts and its payload: ``_sketch`` (S,) float32, the count sketch of
    its Fisher vector (computed on ``xp``'s device: CuPy after the torch backend on CUDA), and ``_rows`` where the
    descriptors are kept."""
    x = rows[:, 10:] if xp is np else to_device(np.ascontiguousarray(rows[:, 10:]), xp)
    fv, valid = fisher_vector(x, codebook)
    sketch = to_numpy(count_sketch(fv, codebook)).astype(np.float32)
    out = {"trajectories": int(len(rows)), "valid": bool(valid), "_sketch": sketch}
    if keep_descriptors:
        out["_rows"] = rows
    if not valid:
        out["note"] = "no trajectory: zero vector, marked invalid"
    return out


def _write_sketches(group, results: dict[str, dict]) -> None:
    ids = sorted(v for v, r in results.items() if r.get("status") == "ok")
    dim = next((r["_sketch"].shape[0] for r in results.values() if "_sketch" in r), 0)
    data = np.stack([results[v]["_sketch"] for v in ids]) if ids else np.zeros((0, dim), np.float32)
    arr = group.create_array("sketches", data=data, overwrite=True, **array_options())
    arr.attrs["video_ids"] = ids
    group.create_array("valid", data=np.array([results[v]["valid"] for v in ids], bool), overwrite=True,
                       **array_options())
    for v in ids:
        if "_rows" in results[v]:
            group.create_array(f"descriptors_{v}", data=results[v]["_rows"], overwrite=True, **array_options())


def encode_batch(video_ids: list[str], workspace: str, stage: str, chunk: str, version: str,
                 args: list[tuple]) -> dict[str, dict | Exception]:
    """``encode_one`` for a batch of videos with the torch backend (``args``: each video's path and the chunk's
    ``EncodeJob``): the batch's IDT in one call of the batched extractor, then each video's Fisher vector and sketch,
    on the GPU through CuPy where the extractor ran on CUDA and CuPy is installed."""
    job: EncodeJob = args[0][1]
    how = job.extraction
    found = {v: chunk_boxes(workspace, chunk, how.boxes_key, v, f"{stage} {chunk}") for v in video_ids}
    boxes = {v: b for v, (b, _) in found.items()}
    xp = _device_arrays(how.device)
    out: dict[str, dict | Exception] = {}
    for vid, rows in batch_idt({v: a[0] for v, a in zip(video_ids, args)}, how, boxes).items():
        if isinstance(rows, Exception):
            out[vid] = rows
            continue
        try:
            out[vid] = encode_rows(rows, job.codebook, job.keep_descriptors, xp)
        except Exception as e:  # noqa: BLE001 - the video's failure
            out[vid] = e
            continue
        if found[vid][1]:
            out[vid]["no_boxes"] = found[vid][1]
    return out


def _device_arrays(device: str | None):
    """The array module of the Fisher encoding after the torch backend: CuPy where the extractor runs on CUDA and
    CuPy sees a device, else NumPy."""
    from idtprior.encoding.backend import cupy_available
    from idtprior.video.idt.torch_extract import resolve_device

    if resolve_device(device).type == "cuda" and cupy_available():
        import cupy

        return cupy
    return np


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"encode": 1, "encode@torch": 1}


@task(name="encode-chunk", task_run_name="encode {chunk}")
def encode_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, str], idt: IDTConfig,
                 config: EncodeConfig, dask_address: str | None = None,
                 boxes_key: str | None = None, upstream: Upstream | None = None) -> ChunkRecord:
    """IDT -> Fisher vector -> sketch for each video of a chunk; writes the chunk's (n, sketch_dim) rows + mask.
    ``boxes_key``: the key of the chunk's detect record to read person boxes from (None: no boxes); ``upstream``:
    the records the key was planned from, the codebook's among them (``storage.upstream``)."""
    job = EncodeJob.of(idt, config, _planned_codebook(workspace, stage, chunk, fingerprint, upstream), boxes_key)
    return run_chunk(workspace, stage, chunk, fingerprint, {v: (p, job) for v, p in videos.items()}, encode_one,
                     dask_address, finish=_write_sketches, upstream=upstream)


def _planned_codebook(workspace: str, stage: str, chunk: str, fingerprint: str, upstream: Upstream | None):
    """The codebook an encode chunk's key was planned from; None when the chunk is done (``run_chunk`` skips it)."""
    ws = Workspace(workspace)
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        return None
    return read_codebook(ws, (upstream or {}).get("fit_codebook", {}).get(ALL), f"{stage} {chunk}")


@task(name="encode-chunk-torch", task_run_name="encode {chunk}")
def encode_chunk_torch(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, str],
                       idt: IDTConfig, config: EncodeConfig, dask_address: str | None = None,
                       boxes_key: str | None = None, upstream: Upstream | None = None) -> ChunkRecord:
    """``encode_chunk`` with the torch backend: the chunk's videos ``idt.batch_videos`` at a time, each batch one call
    of the batched extractor (on a Dask worker when ``dask_address`` is set). Rows imported from text files
    (``encode.idt_text_folder``) go through ``encode_chunk`` whatever the backend."""
    job = EncodeJob.of(idt, config, _planned_codebook(workspace, stage, chunk, fingerprint, upstream), boxes_key)
    return run_chunk(workspace, stage, chunk, fingerprint, {v: (p, job) for v, p in videos.items()}, encode_batch,
                     dask_address, finish=_write_sketches, batch_size=idt.batch_videos, variant="encode@torch",
                     upstream=upstream)


def read_sketches(ws: Workspace, video_ids: list[str], expected: dict[str, str] | None = None,
                  reader: str = "cluster") -> tuple[np.ndarray, np.ndarray]:
    """(N, sketch_dim) float32 rows aligned with ``video_ids`` and the (N,) valid mask (False where not encoded);
    ``expected``: the encode records (chunk -> key) the reader's key was planned from (checked when given)."""
    index = {v: i for i, v in enumerate(video_ids)}
    x, valid = None, np.zeros(len(video_ids), bool)
    for chunk, rec in checked_records(ws, "encode", expected, reader).items():
        group = ws.open_verified("encode", rec)
        with reading("encode", chunk):
            arr = group["sketches"]
            ids, data, ok = arr.attrs["video_ids"], arr[...], group["valid"][...]
        if x is None:
            x = np.zeros((len(video_ids), data.shape[1]), np.float32)
        for j, vid in enumerate(ids):
            if vid in index:
                x[index[vid]], valid[index[vid]] = data[j], ok[j]
    if x is None:
        raise KeyError(f"workspace {ws.url} has no sketches: run the encode stage first")
    return x, valid


def assemble_sketches(ws: Workspace, video_ids: list[str], fingerprint: str, rows_per_chunk: int = 1024,
                      expected: dict[str, str] | None = None) -> ChunkRecord:
    """Write ``sketches.zarr/all/<version>/``: ``sketches`` (N, S) float32 rows aligned with ``video_ids`` (the
    manifest's ok videos), ``valid`` (N,) and the ids as an attribute; committed by its record like a chunk, skipped
    when the record matches ``fingerprint``. The encode chunks are read once (as the cluster stage reads them);
    ``expected``: the encode records (chunk -> key) ``fingerprint`` was computed from (checked when given)."""
    done = ws.read_record(SKETCHES, ALL)
    if done is not None and done.fingerprint == fingerprint:
        ws.remove_orphans(SKETCHES, ALL, keep=done.version)  # what a commit killed part-way left
        return done
    if not video_ids:
        raise KeyError(f"workspace {ws.url}: no video to assemble sketches for")
    x, valid = read_sketches(ws, video_ids, expected, SKETCHES)
    version, group = ws.new_version(SKETCHES, ALL)
    arr = group.create_array("sketches", data=x, chunks=(min(rows_per_chunk, len(video_ids)), x.shape[1]),
                             overwrite=True, **array_options())
    group.create_array("valid", data=valid, overwrite=True, **array_options())
    arr.attrs["video_ids"] = list(video_ids)
    record = ChunkRecord(SKETCHES, ALL, fingerprint, version, {"sketches": {
        "status": "ok", "videos": len(video_ids), "valid": int(valid.sum()), "dim": int(x.shape[1])}})
    ws.commit(stamp(record, "encode"))
    return record


def read_assembled_sketches(ws: Workspace) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The assembled ``(N, S)`` sketches, the ``(N,)`` valid mask and the video ids (manifest order)."""
    rec = ws.read_record(SKETCHES, ALL)
    if rec is None:
        raise KeyError(f"workspace {ws.url} has no assembled sketches: run the encode stage first")
    group = ws.open_verified(SKETCHES, rec)
    with reading(SKETCHES, ALL):
        arr = group["sketches"]
        return np.asarray(arr[...]), np.asarray(group["valid"][...]), list(arr.attrs["video_ids"])


def plan_encode(config: PipelineConfig, ws: Workspace, remember: bool = True) -> dict[str, dict]:
    """Encode's chunks: chunk -> the task's arguments, with the chunk's "fingerprint". Runs nothing."""
    rows = ok_rows(ws)
    book = ws.read_record("fit_codebook", ALL)
    if book is None:
        raise missing_stage(ws, "no codebook", "fit_codebook")
    cfg_hash = hash_json([config.idt.config_hash(), params_key(config.idt), config.encode.config_hash(),
                          upstream_key(book)])
    plans = chunk_plans("encode", rows, lambda r: r.path, cfg_hash, code_key(idt_code("encode", config)),
                         {"idt": config.idt, "config": config.encode})
    for plan in plans.values():  # the codebook the keys hold, which each task checks it reads
        plan["upstream"] = {"fit_codebook": {ALL: book.content_key}}
    if config.encode.idt_text_folder:  # rows read from text files: the files are inputs, the boxes play no part
        plans = with_text_files(ws, "encode", plans, config.encode.idt_text_folder, remember)
    else:
        plans = with_boxes(ws, plans)
    return with_legacy_keys(ws, "encode", plans, lambda: plan_encode(config, ws, remember=False))


def sketches_fingerprint(records: dict, ids: list[str]) -> str:
    """The key of encode's assembled (N, S) sketches: the encode chunks' keys and the manifest's ok ids, in order."""
    return hash_json({"encode": {c: upstream_key(r) for c, r in records.items()}, "ids": ids})


@stage_flow("encode")
def encode_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Per video: IDT -> Fisher vector -> count sketch, per chunk, rows aligned with the manifest."""
    check_settings("encode", idt_params, config.idt)
    check_idt_backend("encode", config)
    ws = Workspace(config.workspace)
    plans = plan_encode(config, ws)
    rows = ok_rows(ws)
    task = encode_chunk_torch if torch_backend(config) else encode_chunk
    records = run_stage(task, ws, "encode", plans, config, dask_address, progress)
    invalid = [{"video_id": v, "error": i.get("note", "")} for r in records.values() for v, i in r.videos.items()
               if i.get("status") == "ok" and not i.get("valid")]
    counts = report_stage(ws, "encode", records, invalid)
    counts["invalid_sketches"] = len(invalid)
    ids = [r.video_id for r in rows]
    assemble_sketches(ws, ids, sketches_fingerprint(records, ids), expected=planned(records))
    publish_pictures(ws, "encode", encode_markdown)
    return counts


def encode_markdown(ws: Workspace) -> str:
    """Valid / invalid sketch counts and the histogram of the valid sketches' L2 norms."""
    from idtprior.stages.pictures import histogram_plot, image_md, table_md

    x, valid, ids = read_assembled_sketches(ws)
    norms = np.linalg.norm(x[valid].astype(np.float64), axis=1)
    md = "### sketches\n\n" + table_md(["videos", "valid", "invalid", "dim", "norm min", "norm median", "norm max"], [[
        len(ids), int(valid.sum()), int((~valid).sum()), x.shape[1],
        *([f"{norms.min():.4f}", f"{np.median(norms):.4f}", f"{norms.max():.4f}"] if len(norms) else ["-"] * 3)]])
    if len(norms):
        md += f"\n{image_md('sketch norms', histogram_plot(norms, 'sketch L2 norm'))}\n"
    return md
