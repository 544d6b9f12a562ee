"""The ingest stage: list the source, probe every listed video with PyAV and record its facts per chunk; the manifest
(``storage.manifest``) is rebuilt from these records, duplicates marked. Its plan (keyed on each file's content
fingerprint, read once per stat change), its task (``ingest_chunk``: a worker gets each video's path, content
fingerprint and any reason the listing refused it; no settings) and its flow."""

from prefect import task
from prefect.logging import get_run_logger

from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.config.stages import IngestConfig
from idtprior.datasets.lists import list_source, printable, read_labels, within_roots
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.dask import dask_cluster, run_chunks
from idtprior.runtime.keys import chunk_fingerprint
from idtprior.runtime.records import drop_stale_records, group_by_chunk, rebuild_manifest, report_stage
from idtprior.runtime.runs import stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.runtime.worker import run_chunk
from idtprior.storage import ChunkRecord, StatCache, Workspace, chunk_of, hash_json
from idtprior.video import io as video_io

STAGE = "ingest"


def probe_one(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str,
              fingerprint: str, refused: str = "") -> dict:
    """Probe facts of one video for the manifest; raises ``VideoError`` naming the file when it is unusable.

    ``fingerprint``: the file's content fingerprint, taken when the flow planned the chunk (it is part of the chunk's
    key), so the file is not read a second time for it. ``refused``: why the listing already refused the entry (a NUL
    byte, a dangling symlink, outside ``ingest.allowed_roots``): it fails with that reason, nothing is opened.
    ``width``/``height`` are the shown size (upright, square pixels); ``rotation`` and ``sample_aspect`` say how the
    stored frames are turned and stretched to it."""
    if refused:
        raise video_io.VideoError(f"video {path}: {refused}")
    info = video_io.probe_video(path)
    return {"fingerprint": fingerprint, "duration": round(info.duration, 4), "fps": round(info.fps, 4),
            "frame_count": info.frame_count, "width": info.width, "height": info.height, "codec": info.codec,
            "rotation": info.rotation, "sample_aspect": info.sample_aspect}


REFUSED_FINGERPRINT = "refused"
"""The content fingerprint of an entry the listing refused (its file is never read)."""


def skipped_report(skipped: list) -> list[dict]:
    """Rows of the ingest failures table for the source's skipped lines (``lists.SkippedLine``): one per line skipped
    for a reason, one in all for blank and comment lines (counted, not listed)."""
    rows = [{"video_id": "(skipped)", "error": f"{s.where}: {s.reason}"} for s in skipped if not s.ignorable]
    quiet = [s for s in skipped if s.ignorable]
    if quiet:
        blank = sum(s.reason == "blank line" for s in quiet)
        rows.append({"video_id": "(skipped)", "error": f"{blank} blank and {len(quiet) - blank} comment lines of the "
                     f"source skipped"})
    return rows


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"ingest": 1}


@task(name="ingest-chunk", task_run_name="ingest {chunk}")
def ingest_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, dict],
                 config: IngestConfig, dask_address: str | None = None) -> ChunkRecord:
    """Probe the videos of one chunk (``videos``: id -> {"path", "label", "split", "fingerprint"[, "refused"]});
    returns the committed record."""
    return run_chunk(workspace, stage, chunk, fingerprint,
                     {vid: (v["path"], v["fingerprint"], v.get("refused", "")) for vid, v in videos.items()},
                     probe_one, dask_address, needs_version=False, annotations=videos)


def plan_ingest(config: PipelineConfig, ws: Workspace, remember: bool = True,
                skipped: list | None = None) -> dict[str, dict]:
    """Ingest's chunks: chunk -> {"fingerprint", "videos", "config"} (videos: id -> path, label, split and the file's
    content fingerprint; "refused": why the listing refused an entry, which then fails without being read). Runs
    nothing. ``skipped``: extended with the source's lines that named no video (``lists.SkippedLine``).

    A chunk's key hashes its videos' paths, labels, splits and CONTENT fingerprints: a touched file (new mtime and
    ctime, same bytes) is read again but re-probes nothing, a rewritten one re-probes its chunk even with its mtime set
    back. Files whose (size, mtime, ctime, inode) did not change are not read at all (``StatCache``). ``remember``:
    store what was read so the next run reads nothing (``idtprior status`` passes False: it writes nothing)."""
    cfg = config.ingest
    if not cfg.source:
        raise ConfigError("ingest.source is not set: give a folder of videos or a list file")
    if cfg.allowed_roots is not None:
        for key in ("source", "labels_file"):
            value = getattr(cfg, key)
            if value and not within_roots(value, cfg.allowed_roots):
                raise ConfigError(f"ingest.{key} {printable(value, 300)!r} is outside ingest.allowed_roots "
                                  f"{list(cfg.allowed_roots)}")
    listed = list_source(cfg.source, cfg.source_format, cfg.video_root, cfg.extensions, cfg.allowed_roots)
    if skipped is not None:
        skipped.extend(listed.skipped)
    labels = read_labels(cfg.labels_file) if cfg.labels_file else {}
    listing = {}
    for e in listed.entries:
        label, split = labels.get(e.video_id, (e.label, e.split))
        listing[e.video_id] = {"path": e.path, "label": label, "split": split, **({"refused": e.error} if e.error
                                                                                    else {})}
    chunks = {vid: chunk_of(vid, cfg.num_chunks) for vid in listing}
    stats = StatCache(ws, cfg.full_hash)
    content = stats.fingerprints({v["path"]: chunks[vid] for vid, v in listing.items() if "refused" not in v})
    content.update({v["path"]: REFUSED_FINGERPRINT for v in listing.values() if "refused" in v})
    if remember:
        stats.save()
        get_run_logger().info(f"ingest: read {stats.reads} of {len(listing)} files (new, or stat changed since read)")
    plans = {}
    for chunk, videos in group_by_chunk(listing, chunks).items():
        videos = {vid: {**v, "fingerprint": content[v["path"]]} for vid, v in videos.items()}
        inputs = {vid: hash_json(v) for vid, v in videos.items()}
        fp = chunk_fingerprint("ingest", chunk, inputs, cfg.config_hash(), code_key("ingest"))
        plans[chunk] = {"fingerprint": fp, "videos": videos, "config": cfg}
    return with_legacy_keys(ws, "ingest", plans, lambda: plan_ingest(config, ws, remember=False))


@stage_flow("ingest")
def ingest_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """List the source, probe every video per chunk, rebuild the manifest (with duplicates) and report failures."""
    cfg = config.ingest
    ws = Workspace(config.workspace)
    skipped: list = []
    plans = plan_ingest(config, ws, skipped=skipped)
    unusable = [f"{s.where}: {s.reason}" for s in skipped if not s.ignorable]  # blank and comment lines: counted
    if unusable:
        more = f"; ... {len(unusable) - 3} more" if len(unusable) > 3 else ""
        get_run_logger().warning(f"ingest: skipped {len(unusable)} lines of the source that name no video (listed "
                                 f"in the failures artifact): {'; '.join(unusable[:3])}{more}")
    with dask_cluster(config.dask, dask_address) as address:
        records = run_chunks(ingest_chunk, ws, "ingest", {
            c: {**p, "dask_address": address} for c, p in plans.items()}, progress, config.chunk_concurrency)
    # Only now, with every chunk of this chunking committed, does it become the workspace's: a run that failed part-way
    # leaves the previous chunking current and whole. Every stage's records and data of another chunking go.
    removed = ws.set_chunking(cfg.num_chunks)
    if removed:
        get_run_logger().info(f"ingest: num_chunks is {cfg.num_chunks}; removed {len(removed)} records and stores of "
                              f"the previous chunking (later stages recompute theirs)")
    drop_stale_records(ws, "ingest", set(plans), cfg.num_chunks)
    rows = rebuild_manifest(ws)
    duplicates = [{"video_id": r.video_id, "error": r.error} for r in rows if r.duplicate_of]
    counts = report_stage(ws, "ingest", records, duplicates + skipped_report(skipped))
    counts["duplicates"] = len(duplicates)
    if skipped:
        counts["lines_skipped"] = len(skipped)
    return counts
