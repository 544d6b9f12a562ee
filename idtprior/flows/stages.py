"""One flow per stage, so a single stage can be rerun from the UI or the CLI after a failure.

No ``from __future__ import annotations`` here: it breaks pydantic parameters under ``flow.serve()``.
"""

from pathlib import Path

from prefect import flow

from idtprior.config import ConfigError, PipelineConfig
from idtprior.datasets.lists import read_labels, read_source
from idtprior.flows.common import (dask_cluster, drop_stale_records, group_by_chunk, rebuild_manifest,
                                   report_stage, run_chunks)
from idtprior.storage import Workspace, chunk_of, hash_json, read_manifest, stat_fingerprint
from idtprior.tasks import decode as decode_tasks
from idtprior.tasks import ingest as ingest_tasks
from idtprior.tasks.common import chunk_fingerprint


@flow(name="ingest", flow_run_name="ingest {config.workspace}")
def ingest_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """List the source, probe every video per chunk, rebuild the manifest (with duplicates) and report failures."""
    cfg = config.ingest
    if not cfg.source:
        raise ConfigError("ingest.source is not set: give a folder of videos or a list file")
    ws = Workspace(config.workspace)
    entries = read_source(cfg.source, cfg.source_format, cfg.video_root, cfg.extensions)
    labels = read_labels(cfg.labels_file) if cfg.labels_file else {}
    listing = {}
    for e in entries:
        label, split = labels.get(e.video_id, (e.label, e.split))
        listing[e.video_id] = {"path": e.path, "label": label, "split": split}
    chunks = {vid: chunk_of(vid, cfg.num_chunks) for vid in listing}
    plans = {}
    for chunk, videos in group_by_chunk(listing, chunks).items():
        inputs = {vid: hash_json([v, stat_fingerprint(v["path"])]) for vid, v in videos.items()}
        fp = chunk_fingerprint("ingest", chunk, inputs, cfg.config_hash(), ingest_tasks.CODE_VERSION)
        plans[chunk] = {"fingerprint": fp, "videos": videos, "config": cfg}
    with dask_cluster(config.dask, dask_address) as address:
        records = run_chunks(ingest_tasks.ingest_chunk, ws, "ingest", {
            c: {**p, "dask_address": address} for c, p in plans.items()}, progress, config.chunk_concurrency)
    drop_stale_records(ws, "ingest", set(plans), cfg.num_chunks)
    rows = rebuild_manifest(ws, cfg.num_chunks)
    duplicates = [{"video_id": r.video_id, "error": r.error} for r in rows if r.duplicate_of]
    counts = report_stage("ingest", records, duplicates)
    counts["duplicates"] = len(duplicates)
    return counts


@flow(name="decode", flow_run_name="decode {config.workspace}")
def decode_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Decode every ok video of the manifest into the frame store, chunk by chunk."""
    ws = Workspace(config.workspace)
    manifest = [r for r in read_manifest(ws) if r.ok]
    if not manifest:
        raise ConfigError(f"workspace {ws.url}: the manifest has no usable video; run the ingest stage first")
    cfg = config.decode
    videos = {r.video_id: (r.path, r.fps) for r in manifest}
    plans = {}
    for chunk, vids in group_by_chunk(videos, {r.video_id: r.chunk for r in manifest}).items():
        inputs = {r.video_id: r.fingerprint for r in manifest if r.video_id in vids}
        fp = chunk_fingerprint("decode", chunk, inputs, cfg.config_hash(), decode_tasks.CODE_VERSION)
        plans[chunk] = {"fingerprint": fp, "videos": vids, "config": cfg}
    with dask_cluster(config.dask, dask_address) as address:
        records = run_chunks(decode_tasks.decode_chunk, ws, "decode", {
            c: {**p, "dask_address": address} for c, p in plans.items()}, progress, config.chunk_concurrency)
    drop_stale_records(ws, "decode", set(plans), config.ingest.num_chunks)
    rebuild_manifest(ws, config.ingest.num_chunks)
    return report_stage("decode", records)


STAGE_FLOWS = {"ingest": ingest_flow, "decode": decode_flow}
