"""Only the current chunking's records are read; ingest's re-chunking removes the others (records and data)."""

import json

import numpy as np
import pytest

from idtprior.stages.common import ALL
from idtprior.stages.encode import read_sketches
from idtprior.stages.idt import read_sample
from idtprior.storage import (ChunkRecord, FrameStore, ManifestRow, Workspace, chunk_count, chunk_of, write_frames,
                              write_manifest)

IDS = [f"v{i}" for i in range(8)]


def _commit(ws: Workspace, stage: str, chunk: str, videos: dict[str, np.ndarray], write) -> None:
    version, group = ws.new_version(stage, chunk)
    write(group, videos)
    ws.commit(ChunkRecord(stage, chunk, f"fp-{chunk}", version, {v: {"status": "ok"} for v in videos}))


def _frames(group, videos):
    for vid, value in videos.items():
        write_frames(group, vid, iter(value), time_chunk=2, fps=25.0)


def _sketches(group, videos):
    ids = sorted(videos)
    group.create_array("sketches", data=np.stack([videos[v] for v in ids])).attrs["video_ids"] = ids
    group.create_array("valid", data=np.ones(len(ids), bool))


def _sample(group, videos):
    for vid, value in videos.items():
        group.create_array(vid, data=value)


def _commit_chunking(ws: Workspace, num_chunks: int, offset: float) -> dict[str, dict[str, np.ndarray]]:
    """Every video in decode, encode and idt records of ``num_chunks`` chunks; values differ by ``offset``."""
    values = {"decode": {v: np.full((3, 2, 2, 3), i + offset, np.uint8) for i, v in enumerate(IDS)},
              "encode": {v: np.full(4, i + offset, np.float32) for i, v in enumerate(IDS)},
              "idt": {v: np.full((2, 436), i + offset, np.float32) for i, v in enumerate(IDS)}}
    for stage, write in (("decode", _frames), ("encode", _sketches), ("idt", _sample)):
        by_chunk: dict[str, dict] = {}
        for vid, value in values[stage].items():
            by_chunk.setdefault(chunk_of(vid, num_chunks), {})[vid] = value
        for chunk, videos in by_chunk.items():
            _commit(ws, stage, chunk, videos, write)
    return values


def test_readers_see_only_the_current_chunking_and_set_chunking_removes_the_rest(tmp_path):
    ws = Workspace(tmp_path)
    _commit_chunking(ws, 4, offset=100)
    ws.commit(ChunkRecord("cluster", ALL, "fp-all", "", {"clusters": {"status": "ok"}}))
    ws.set_chunking(4)
    new = _commit_chunking(ws, 3, offset=0)  # a re-chunking ingest+decode+... that has not committed the switch
    assert {chunk_count(c) for c in ws.records("decode")} == {4}  # the old chunking stays current until then

    removed = ws.set_chunking(3)
    assert ws.num_chunks() == 3 and json.loads((tmp_path / "chunking.json").read_text()) == {"num_chunks": 3}
    old = {chunk_of(v, 4) for v in IDS}
    assert sorted(removed) == sorted(f"{stage}{ext}/{c}" for stage in ("decode", "encode", "idt") for c in old
                                     for ext in ("", ".zarr"))
    for stage in ("decode", "encode", "idt"):
        assert set(ws.records(stage)) == {chunk_of(v, 3) for v in IDS}
        on_disk = {p.stem for p in (tmp_path / "records" / stage).iterdir()}
        assert on_disk == {chunk_of(v, 3) for v in IDS}, on_disk  # no record of the old chunking is left
        assert {p.name for p in (tmp_path / f"{stage}.zarr").iterdir() if p.is_dir()} == on_disk
    assert set(ws.records("cluster")) == {ALL}  # whole-dataset records are no chunk of any chunking

    store = FrameStore(ws)
    assert store.video_ids == IDS
    assert sum(len(r.videos) for r in ws.records("decode").values()) == len(IDS)  # each video exactly once
    for vid in IDS:
        np.testing.assert_array_equal(store.read_clip(vid, 0, 3), new["decode"][vid])
    x, valid = read_sketches(ws, IDS)
    np.testing.assert_array_equal(x, np.stack([new["encode"][v] for v in IDS]))
    assert valid.all()
    in_order = sorted(IDS, key=lambda v: (chunk_of(v, 3), v))  # read_sample's order: chunk, then id
    np.testing.assert_array_equal(read_sample(ws), np.concatenate([new["idt"][v] for v in in_order]))


def test_a_workspace_without_chunking_file_takes_the_manifests_chunking(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.num_chunks() is None  # nothing ingested: every record is current
    _commit_chunking(ws, 4, offset=100)
    _commit_chunking(ws, 3, offset=0)
    assert len(ws.records("decode")) == len({chunk_of(v, 4) for v in IDS}) + len({chunk_of(v, 3) for v in IDS})
    write_manifest(ws, [ManifestRow(video_id=v, path=f"/{v}.mp4", chunk=chunk_of(v, 3)) for v in IDS])
    assert ws.num_chunks() == 3
    assert {chunk_count(c) for c in ws.records("decode")} == {3}
    assert FrameStore(ws).read_clip("v5", 0, 1).max() == 5


def test_chunk_count_and_a_bad_chunking_file(tmp_path):
    assert [chunk_count(c) for c in ("0003-of-0004", "12-of-1000000", "all", "c", "0003-of-")] == [4, 1000000, None,
                                                                                                  None, None]
    ws = Workspace(tmp_path)
    (tmp_path / "chunking.json").write_text("{half")
    with pytest.raises(ValueError, match=r"unreadable .*chunking.json: b'\{half'"):
        ws.num_chunks()
    with pytest.raises(ValueError, match="num_chunks must be at least 1, got 0"):
        ws.set_chunking(0)
