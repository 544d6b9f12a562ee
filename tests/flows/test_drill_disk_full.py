"""Drill: the disk fills up in the middle of a chunk. The chunk fails with an error naming its stage and chunk (and the
video being written), commits no record, marks no video failed and is not retried; the next run, with space,
completes. On a real full file system (a small tmpfs mounted under the workspace, where this process may mount) and
with ENOSPC injected after some of the chunk's files are written (``IDTPRIOR_FAULT=<stage>:<chunk>:enospc``)."""

import errno
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from idtprior.runtime.errors import DiskFull, is_transient
from idtprior.runtime.worker import run_chunk
from idtprior.storage import FrameStore, Workspace, read_manifest
from idtprior.testing import FAULT_ENV
from idtprior_testutils import write_moving_square_videos

CHUNK = "0000-of-0001"


def _write_block(video_id: str, workspace: str, stage: str, chunk: str, version: str, value: int) -> dict:
    group = Workspace(workspace).chunk_group(stage, chunk, version, mode="a")
    group.create_array(video_id, data=np.full((8, 8), value, np.int32), overwrite=True)
    return {"value": value}


def test_enospc_after_some_files_fails_the_chunk_naming_it_and_the_next_run_completes(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    videos = {"a": (1,), "b": (2,), "c": (3,)}
    monkeypatch.setenv(FAULT_ENV, f"decode:{CHUNK}:enospc")
    with pytest.raises(DiskFull) as info:
        run_chunk(ws.url, "decode", CHUNK, "fp", videos, _write_block, progress=False)
    e = info.value
    assert e.errno == errno.ENOSPC and not is_transient(e)
    assert str(e).startswith(f"decode {CHUNK}: disk full (ENOSPC) while writing video c to {ws.url}: ")
    assert "no record committed, no video marked failed" in str(e)
    # the fault struck after every video's files were written (the last one's too): a partial chunk lies on disk,
    # and no record names it, so no reader sees it
    assert ws.read_record("decode", CHUNK) is None
    (orphan,) = [v for v in os.listdir(ws.path("decode.zarr", CHUNK)) if v.startswith("v")]
    assert sorted(os.listdir(ws.path("decode.zarr", CHUNK, orphan))) == ["a", "b", "c", "zarr.json"]
    # the next run (space again: the fault is spent) commits every video, ok, with its own data
    rec = run_chunk(ws.url, "decode", CHUNK, "fp", videos, _write_block, progress=False)
    assert {v: (i["status"], i["value"]) for v, i in rec.videos.items()} == {"a": ("ok", 1), "b": ("ok", 2),
                                                                             "c": ("ok", 3)}
    group = ws.chunk_group("decode", CHUNK, rec.version)
    assert [int(group[v][0, 0]) for v in "abc"] == [1, 2, 3]


def _tree_bytes(folder: Path) -> int:
    """What the files under ``folder`` take on disk (allocated blocks; a tmpfs charges whole pages too)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_engine")
@pytest.mark.parametrize("fault", ["tmpfs", "injected"])
def test_disk_full_in_the_decode_stage(tmp_path, monkeypatch, fault):
    from idtprior.config import PipelineConfig
    from idtprior.flows.pipeline import pretrain_pipeline

    write_moving_square_videos(tmp_path / "videos", 6, frames=24)

    def config(name: str) -> PipelineConfig:
        return PipelineConfig.model_validate({
            "workspace": str(tmp_path / name), "stages": ["ingest", "decode"], "dask": {"n_workers": 0},
            "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 2}, "decode": {"short_side": 48}})

    ref = config("reference")
    pretrain_pipeline(ref, progress=False)
    cfg = config("ws")
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, stages=["ingest"], progress=False)
    store = Path(ws.path("decode.zarr"))
    store.mkdir()
    mounted = False
    if fault == "tmpfs":
        # a file system a third the size of the decoded frames: some chunk runs out of space midway
        size = max(8192, _tree_bytes(Path(ref.workspace) / "decode.zarr") // 3 // 4096 * 4096)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(store)], capture_output=True,
                             text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}); the injected ENOSPC covers the drill")
        mounted = True
    else:
        monkeypatch.setenv(FAULT_ENV, "decode:0001-of-0002:enospc")
    try:
        with pytest.raises(RuntimeError, match=r"decode: \d of 2 chunks failed; first: (\d{4}-of-0002): decode \1: "
                                               r"disk full \(ENOSPC\) while writing") as info:
            pretrain_pipeline(cfg, stages=["decode"], progress=False)
        named = re.search(r"first: (\d{4}-of-0002)", str(info.value)).group(1)
        assert ws.read_record("decode", named) is None  # the chunk the error names committed nothing
        # no video is marked failed anywhere: the committed chunks are whole, the manifest names no decode failure
        assert all(i["status"] == "ok" for r in ws.records("decode").values() for i in r.videos.values())
        assert not any(r.failed_in for r in read_manifest(ws))
        committed = {c: r.created for c, r in ws.records("decode").items()}
        if mounted:  # space again, the frames written so far kept
            subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)
        counts = pretrain_pipeline(cfg, stages=["decode"], progress=False)
        assert counts["decode"]["videos_ok"] == 6 and counts["decode"]["videos_failed"] == 0
        # what was committed before the disk filled up is not recomputed
        assert {c: r.created for c, r in ws.records("decode").items() if c in committed} == committed
        frames, ref_frames = FrameStore(ws), FrameStore(Workspace(ref.workspace))
        assert sorted(frames.video_ids) == sorted(ref_frames.video_ids) and len(frames.video_ids) == 6
        for vid in ref_frames.video_ids:
            np.testing.assert_array_equal(frames.read_clip(vid, 0, 24), ref_frames.read_clip(vid, 0, 24))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(store)], check=False)
