"""Ingest stage: probe every listed video with PyAV and record its facts; the manifest is built from these records."""

from prefect import task

from idtprior.config import IngestConfig
from idtprior.storage import ChunkRecord
from idtprior.tasks.common import run_chunk
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
# and upgrades"); tests/tasks/test_behaviour_pins.py says when.
BEHAVIOUR = {"ingest": 1}


@task(name="ingest-chunk", task_run_name="ingest {chunk}")
def ingest_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, dict],
                 config: IngestConfig, dask_address: str | None = None) -> ChunkRecord:
    """Probe the videos of one chunk (``videos``: id -> {"path", "label", "split", "fingerprint"[, "refused"]});
    returns the committed record."""
    return run_chunk(workspace, stage, chunk, fingerprint,
                     {vid: (v["path"], v["fingerprint"], v.get("refused", "")) for vid, v in videos.items()},
                     probe_one, dask_address, needs_version=False, annotations=videos)
