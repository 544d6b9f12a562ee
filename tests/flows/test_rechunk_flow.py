"""Changing ``ingest.num_chunks``: every reader sees exactly the new chunking's records, no old record or store is
left, the frames are the same, and the re-chunking reads no source file again (real Prefect engine, real videos)."""

from pathlib import Path

import numpy as np
import pytest

from idtprior_testutils import moving_square_frames
from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.storage import FrameStore, Workspace, chunk_count, file_fingerprint, read_manifest, statcache
from idtprior.video.io import write_video

pytestmark = pytest.mark.usefixtures("prefect_engine")


def test_a_new_num_chunks_replaces_the_old_chunking_everywhere(tmp_path, monkeypatch):
    reads: list[str] = []
    monkeypatch.setattr(statcache, "file_fingerprint", lambda p, full=False: reads.append(p) or file_fingerprint(p))
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0.0)  # the files are seconds old; see test_statcache.py
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(6):
        write_video(src / f"clip{i}.mp4", moving_square_frames(24, seed=i), fps=25, options={"preset": "ultrafast"})
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode"], "dask": {"n_workers": 0},
        "ingest": {"source": str(src), "num_chunks": 4}, "decode": {"short_side": 32}})
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, progress=False)
    ids = [f"clip{i}" for i in range(6)]
    before = FrameStore(ws)
    assert ws.num_chunks() == 4 and before.video_ids == ids
    frames = {v: before.read_clip(v, 0, 24) for v in ids}

    reads.clear()
    pretrain_pipeline(cfg.with_updates(ingest={"num_chunks": 3}), progress=False)
    assert reads == []  # the content fingerprints are the files', whatever the chunking
    assert ws.num_chunks() == 3
    manifest = read_manifest(ws)
    assert [r.video_id for r in manifest] == ids and {chunk_count(r.chunk) for r in manifest} == {3}
    for stage in ("ingest", "decode"):
        records = ws.records(stage)
        assert set(records) == {r.chunk for r in manifest}
        assert sorted(v for r in records.values() for v in r.videos) == ids  # each video exactly once
        on_disk = {p.stem for p in Path(ws.root, "records", stage).iterdir()}
        assert on_disk == set(records), on_disk  # no record of the old chunking is left
    assert {p.name for p in Path(ws.root, "decode.zarr").iterdir() if p.is_dir()} == {r.chunk for r in manifest}
    assert {p.stem for p in Path(ws.root, "cache", "ingest-stats").iterdir()} == {r.chunk for r in manifest}
    after = FrameStore(ws)
    assert after.video_ids == ids
    for vid in ids:
        assert after._index[vid].chunk == next(r.chunk for r in manifest if r.video_id == vid)
        np.testing.assert_array_equal(after.read_clip(vid, 0, 24), frames[vid])

    # a later stage run alone with the OLD num_chunks in its config plans the workspace's chunking, and the manifest
    # it rebuilds keeps every video (it used to filter on the config's chunk names and came out empty)
    decoded = {c: r.created for c, r in ws.records("decode").items()}
    pretrain_pipeline(cfg, stages=["decode"], progress=False)
    assert [r.video_id for r in read_manifest(ws)] == ids
    assert {c: r.created for c, r in ws.records("decode").items()} == decoded
