"""Drill: a Dask worker process is SIGKILLed in the middle of a chunk. Dask reruns the lost worker's task on another
worker (the LocalCluster's nanny restarts the dead one), the stage completes, and every video has exactly one committed
result: one row in one chunk record, its frames once in that chunk's version group, equal to an in-process run's."""

import os
from pathlib import Path

import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.storage import FrameStore, Workspace
from idtprior.testing import FAULT_ENV
from idtprior_testutils import write_moving_square_videos

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_engine")]

KILLED_CHUNK = "0000-of-0002"


def _config(root: Path, source: Path, workers: int) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "workspace": str(root), "stages": ["ingest", "decode"],
        "dask": {"n_workers": workers, "processes": True, "threads_per_worker": 1},
        "ingest": {"source": str(source), "num_chunks": 2}, "decode": {"short_side": 32}})


def test_a_worker_killed_mid_chunk_loses_nothing_and_duplicates_nothing(tmp_path, monkeypatch):
    src = tmp_path / "videos"
    write_moving_square_videos(src, 8, frames=16)
    cfg = _config(tmp_path / "ws", src, workers=2)
    ws = Workspace(cfg.workspace)
    # the worker that runs the chunk's last video kills itself (SIGKILL) once that video's frames are written; the
    # LocalCluster's worker processes are started after this, with it in their environment
    monkeypatch.setenv(FAULT_ENV, f"decode:{KILLED_CHUNK}:kill")
    result = pretrain_pipeline(cfg, progress=False)
    monkeypatch.delenv(FAULT_ENV)

    marker = Path(ws.path("faults", f"decode-{KILLED_CHUNK}"))
    assert marker.is_file(), "the kill never fired"
    killed = int(marker.read_text().rsplit("pid ", 1)[1])
    assert killed != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # the worker is gone (a fresh one took its place)

    assert result["decode"]["videos_ok"] == 8 and result["decode"]["videos_failed"] == 0
    records = ws.records("decode")
    assert sorted(records) == ["0000-of-0002", "0001-of-0002"]
    # exactly once: every video in one record once, and once in that record's version group, nothing else there
    rows = [vid for rec in records.values() for vid in rec.videos]
    assert len(rows) == len(set(rows)) == 8
    for chunk, rec in records.items():
        group = ws.chunk_group("decode", chunk, rec.version)
        assert sorted(group.keys()) == sorted(rec.videos)
        assert all(info["status"] == "ok" for info in rec.videos.values())
        versions = [v for v in os.listdir(ws.path("decode.zarr", chunk)) if v.startswith("v")]
        assert versions == [rec.version]
    # and the frames are those of a run without the fault
    ref = _config(tmp_path / "ref", src, workers=0)
    pretrain_pipeline(ref, progress=False)
    frames, ref_frames = FrameStore(ws), FrameStore(Workspace(ref.workspace))
    assert sorted(frames.video_ids) == sorted(ref_frames.video_ids)
    for vid in ref_frames.video_ids:
        np.testing.assert_array_equal(frames.read_clip(vid, 0, 16), ref_frames.read_clip(vid, 0, 16))
