"""After the chunks: the stage's summary artifact and counts (``report_stage``), the manifest rebuilt from the ingest
and decode records, records of another chunking dropped, failed videos reopened for a retry."""

from collections import defaultdict

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from idtprior.config import STAGES
from idtprior.config.base import ConfigError
from idtprior.runtime.artifacts import artifact_key
from idtprior.runtime.worker import run_logger
from idtprior.storage import (STATUS_DUPLICATE, STATUS_FAILED, STATUS_OK, STATUS_RETRYABLE, ChunkRecord, ManifestRow,
                              Workspace, chunk_count, write_manifest)
from idtprior.storage.lock import manifest_lock
from idtprior.storage.workspace import gc_paused

RETRY_CHOICES = ("retryable", "all")
"""``idtprior run --retry-failed [retryable|all]``: the videos a run tries again."""


def reopen_failures(ws: Workspace, stage: str, which: str) -> dict[str, int]:
    """Make the next run of ``stage`` compute again every chunk that holds a video recorded ``retryable`` (a fault of
    the environment), or also ``failed`` with ``which="all"``: each such record is marked (``Workspace.invalidate``),
    so its chunk no longer matches its plan, and Prefect's cached result of the chunk is refreshed. The chunk is
    recomputed under the same key; what the retry changes goes into its ``retried``, which downstream keys hold
    (``ChunkRecord.content_key``), so the stages after it recompute what read the old outcomes. Takes the stage's
    lock. Returns chunk -> videos reopened."""
    if which not in RETRY_CHOICES:
        raise ConfigError(f"--retry-failed {which!r}: expected one of {list(RETRY_CHOICES)}")
    statuses = {STATUS_RETRYABLE} | ({STATUS_FAILED} if which == "all" else set())
    from idtprior.storage.lock import stage_lock
    from idtprior.runtime.worker import RETRY_REASON

    out: dict[str, int] = {}
    with stage_lock(ws, stage):
        for chunk, rec in ws.records(stage).items():
            n = sum(1 for info in rec.videos.values() if info.get("status") in statuses)
            if n and chunk_count(chunk) is not None and ws.invalidate(
                    stage, chunk, rec.fingerprint, f"{RETRY_REASON}: {n} videos ({which})"):
                out[chunk] = n
    if out:
        run_logger().info(f"{stage}: {sum(out.values())} recorded failures ({which}) in {len(out)} chunks will be "
                       f"tried again: {', '.join(sorted(out))}")
    return out


def drop_stale_records(ws: Workspace, stage: str, keep: set[str], num_chunks: int | None = None) -> None:
    """Remove records (and data) of chunks of the current chunking that no longer hold any video.

    The current chunking is the workspace's (``ws.records`` lists only its chunks; ingest removes other chunkings'
    when it commits a new one), not ``num_chunks``: a stage run with a config whose ``ingest.num_chunks`` differs
    from the last ingest's still plans the manifest's chunks and must drop its emptied ones. Whole-dataset records
    (``all``) are never dropped here."""
    for chunk in ws.records(stage):
        if chunk_count(chunk) is not None and chunk not in keep:
            ws.fs.rm(ws.record_path(stage, chunk))
            ws.remove_stale_versions(stage, chunk, keep=None)


def rebuild_manifest(ws: Workspace) -> list[ManifestRow]:
    """The manifest from the records: ingest's probe facts, duplicates by fingerprint, then the failures of later
    stages (in ``failed_in`` and ``error``; ``status`` stays ingest's, so no later failure changes any stage's plan).
    Written atomically; returns the rows.

    Every stage rebuilds it when it ends, and two stages of one workspace may end together: the read of the records
    and the write are one step under the manifest's lock (``storage.lock.manifest_lock``, waited for), so a rebuild
    that read the records before another stage committed never overwrites that stage's newer manifest."""
    with manifest_lock(ws), gc_paused():
        return _rebuild_manifest(ws)


def _rebuild_manifest(ws: Workspace) -> list[ManifestRow]:
    # ``ws.records`` lists only the workspace's current chunking: filtering on the config's ``num_chunks`` too would
    # empty the manifest when a later stage runs with a config whose num_chunks differs from the last ingest's
    rows: dict[str, ManifestRow] = {}
    for chunk, rec in ws.records("ingest").items():
        for vid, info in rec.videos.items():
            if info["status"] == STATUS_OK:
                rows[vid] = ManifestRow(
                    video_id=vid, path=info.get("path", ""), fingerprint=info["fingerprint"],
                    duration=info["duration"], fps=info["fps"], frame_count=info["frame_count"], width=info["width"],
                    height=info["height"], codec=info["codec"], label=info.get("label", ""),
                    split=info.get("split", ""), status=STATUS_OK, chunk=chunk)
            else:
                rows[vid] = ManifestRow(video_id=vid, path=info.get("path", ""), label=info.get("label", ""),
                                        split=info.get("split", ""), chunk=chunk, status=info["status"],
                                        error=f"ingest: {info.get('error', '')}")
    first_by_content: dict[str, str] = {}
    for vid in sorted(rows):
        row = rows[vid]
        if row.status != STATUS_OK:
            continue
        if row.fingerprint in first_by_content:
            row.status, row.duplicate_of = STATUS_DUPLICATE, first_by_content[row.fingerprint]
            row.error = f"ingest: same content as {row.duplicate_of}"
        else:
            first_by_content[row.fingerprint] = vid
    for stage in STAGES[1:]:
        for chunk, rec in ws.records(stage).items():
            if chunk_count(chunk) is None:  # whole-dataset records (``all``) hold no per-video outcome
                continue
            for vid, info in [(v, i) for v, i in rec.videos.items()
                              if i.get("status") in (STATUS_FAILED, STATUS_RETRYABLE)]:
                row = rows.get(vid)
                if row is not None and row.status == STATUS_OK:
                    row.failed_in = ",".join(filter(None, [row.failed_in, stage]))
                    row.error = row.error or f"{stage}: {info.get('error', '')}"
    out = sorted(rows.values(), key=lambda r: r.video_id)
    write_manifest(ws, out)
    return out


def provenance_lines(ws: Workspace, stage: str, chunks) -> list[str]:
    """``runtime.pins.provenance`` of the stage's records of ``chunks`` as committed (where this environment differs
    from the one that computed them, code re-pinned since), logged as warnings too. Read from the workspace: a chunk
    task Prefect served from its cache returns the record as it was first committed."""
    from idtprior.runtime.pins import provenance

    lines = provenance(stage, [ws.read_record(stage, chunk) for chunk in chunks])
    for line in lines:
        run_logger().warning(f"{stage}: {line}")
    return lines


def report_stage(ws: Workspace, stage: str, records: dict[str, ChunkRecord], extra: list[dict] | None = None,
                 failed_chunks: dict[str, str] | None = None) -> dict:
    """Make the stage's artifacts (a summary and a table of per-video failures, keyed by ``artifact_key``) and return
    the counts. ``failed_chunks`` (chunk -> why), for a stage that failed: the summary says so first, with what
    finished, and each failed chunk is a row of the failures table (its videos have no outcome: nothing of the chunk
    was committed)."""
    ok = sum(r.n_ok for r in records.values())
    failed = {vid: info.get("error", "") for r in records.values() for vid, info in r.videos.items()
              if info.get("status") == STATUS_FAILED}
    retryable = {vid: info.get("error", "") for r in records.values() for vid, info in r.videos.items()
                 if info.get("status") == STATUS_RETRYABLE}
    no_boxes = sum(1 for r in records.values() for info in r.videos.values() if info.get("no_boxes"))
    counts = {"stage": stage, "chunks": len(records), "videos_ok": ok, "videos_failed": len(failed)}
    if retryable:
        counts["videos_retryable"] = len(retryable)
    if no_boxes:
        counts["videos_without_boxes"] = no_boxes
    failed_chunks = failed_chunks or {}
    table = [{"video_id": f"(chunk {c}: every video of it)", "error": f"the chunk failed: {why}"[:2000]}
             for c, why in sorted(failed_chunks.items())]
    table += [{"video_id": vid, "error": err} for vid, err in sorted(failed.items())] + [
        {"video_id": vid, "error": f"retryable (`idtprior run --retry-failed`): {err}"}
        for vid, err in sorted(retryable.items())] + (extra or [])
    notes = "".join(f"\n- {line}" for line in provenance_lines(ws, stage, records))
    if no_boxes:
        notes += (f"\n- {no_boxes} videos ran without person boxes: their detection failed (the failures table of "
                  f"detect says why)")
    more = f", {len(retryable)} retryable" if retryable else ""
    verdict, head = "", f"## {stage}"
    if failed_chunks:
        total = len(records) + len(failed_chunks)
        first, why = sorted(failed_chunks.items())[0]
        head = f"## {stage}: FAILED"
        verdict = (f"**{len(failed_chunks)} of {total} chunks failed** (nothing of them was committed; the failures "
                   f"table lists them); {len(records)} finished. First: `{first}`: {why.splitlines()[0][:500]}\n\n"
                   f"Fix the cause and run the stage again: the finished chunks are not computed again.\n\n")
    create_markdown_artifact(
        key=artifact_key(ws, stage, "summary"),
        markdown=f"{head}\n\n{verdict}| chunks done | videos ok | videos failed | retryable (environment) |\n"
                 f"|---|---|---|---|\n| {len(records)} | {ok} | {len(failed)} | {len(retryable)} |\n" + (
                     f"\n**How it was computed:**\n{notes}\n" if notes else ""),
        description=(f"{stage}: FAILED, {len(failed_chunks)} of {len(records) + len(failed_chunks)} chunks failed; "
                     if failed_chunks else f"{stage}: ") + f"{ok} videos ok, {len(failed)} failed{more}")
    if table:
        create_table_artifact(key=artifact_key(ws, stage, "failures"), table=table,
                              description=f"{stage}: " + ("chunks and videos that failed" if failed_chunks
                                                          else "videos that failed"))
    hint = (f" ({len(retryable)} for a fault of the environment: `idtprior run CONFIG --retry-failed` tries them "
            f"again)" if retryable else "")
    get_run_logger().info(f"{stage}: {len(records)} chunks, {ok} videos ok, {len(failed)} failed{more}{hint}")
    return counts


def group_by_chunk(items: dict[str, object], chunk_of_video: dict[str, str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = defaultdict(dict)
    for vid, value in items.items():
        out[chunk_of_video[vid]][vid] = value
    return dict(out)
