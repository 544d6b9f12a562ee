"""Ingest keys its work on file CONTENT: a same-size rewrite with the mtime set back is seen, a touch re-probes nothing,
and a rerun over unchanged files reads none of them (real Prefect engine, real videos)."""

import os
from pathlib import Path

import numpy as np
import pytest

from idtprior_testutils import moving_square_frames
from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.storage import FrameStore, Workspace, file_fingerprint, read_manifest, statcache
from idtprior.video.io import iter_frames, write_video

pytestmark = pytest.mark.usefixtures("prefect_engine")


def _raw_video(path: Path, seed: int) -> None:
    # rawvideo: the file's size depends only on the frame count and size, so another seed gives same-size new bytes
    write_video(path, moving_square_frames(24, seed=seed), fps=25, codec="rawvideo")


def _created(ws: Workspace, stage: str) -> dict[str, float]:
    return {c: r.created for c, r in ws.records(stage).items()}


@pytest.fixture
def reads(monkeypatch):
    """The files whose content ingest read (a counting wrapper around the real fingerprint function)."""
    calls: list[str] = []

    def counting(path, full=False):
        calls.append(Path(path).name)
        return file_fingerprint(path, full)

    monkeypatch.setattr(statcache, "file_fingerprint", counting)
    # The test's files are seconds old; the rule that re-reads a file changed within RACY_SECONDS of its stat has its
    # own test (tests/storage/test_statcache.py).
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0.0)
    return calls


def test_ingest_sees_content_not_timestamps(tmp_path, reads):
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(4):
        _raw_video(src / f"clip{i}.avi", seed=i)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode"], "dask": {"n_workers": 0},
        "ingest": {"source": str(src), "num_chunks": 2}, "decode": {"short_side": 32}})
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, progress=False)
    assert sorted(reads) == [f"clip{i}.avi" for i in range(4)]
    first = {s: _created(ws, s) for s in ("ingest", "decode")}

    reads.clear()  # (c) a rerun over unchanged files reads none of them and recomputes nothing
    pretrain_pipeline(cfg, progress=False)
    assert reads == []
    assert {s: _created(ws, s) for s in ("ingest", "decode")} == first

    os.utime(src / "clip1.avi")  # (b) touch: read once more, same content, nothing re-probed or re-decoded
    reads.clear()
    pretrain_pipeline(cfg, progress=False)
    assert reads == ["clip1.avi"]
    assert {s: _created(ws, s) for s in ("ingest", "decode")} == first
    reads.clear()
    pretrain_pipeline(cfg, progress=False)  # the touched file's new stat was remembered
    assert reads == []

    # (a) new bytes of the same size, mtime set back: (size, mtime) are the old ones, the ctime is not
    path = src / "clip2.avi"
    st = path.stat()
    old_fingerprint = {r.video_id: r.fingerprint for r in read_manifest(ws)}["clip2"]
    _raw_video(path, seed=99)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    reads.clear()
    pretrain_pipeline(cfg, progress=False)
    assert reads == ["clip2.avi"]
    chunk = {r.video_id: r.chunk for r in read_manifest(ws)}["clip2"]
    for stage in ("ingest", "decode"):
        after = _created(ws, stage)
        assert {c for c in after if after[c] != first[stage][c]} == {chunk}, stage
    assert {r.video_id: r.fingerprint for r in read_manifest(ws)}["clip2"] != old_fingerprint
    want = np.stack(list(iter_frames(path, short_side=32)))
    np.testing.assert_array_equal(FrameStore(ws).read_clip("clip2", 0, 24), want)
    old = np.stack(list(iter_frames(_write_tmp(tmp_path, seed=2), short_side=32)))
    assert not np.array_equal(want, old)  # the test would pass on stale frames otherwise


def _write_tmp(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / f"ref{seed}.avi"
    _raw_video(path, seed)
    return path
