import csv
import gc
import io
import json
from dataclasses import asdict, fields

import numpy as np
import pytest

from idtprior.storage import (ChunkRecord, FrameStore, ManifestRow, Workspace, chunk_of, read_clip, read_manifest,
                              sanitize_id, write_frames, write_manifest)
from idtprior.storage.workspace import gc_paused


def _commit_frames(ws, chunk, videos: dict[str, np.ndarray], time_chunk=4):
    version, group = ws.new_version("decode", chunk)
    for vid, frames in videos.items():
        write_frames(group, vid, iter(frames), time_chunk=time_chunk, fps=25.0)
    ws.commit(ChunkRecord("decode", chunk, "fp", version, {v: {"status": "ok"} for v in videos}))
    return version


@pytest.mark.parametrize("root", ["local", "memory://idtprior-test-ws"])
def test_frames_round_trip_and_clip_reads(tmp_path, root):
    ws = Workspace(tmp_path / "ws" if root == "local" else root)
    frames = np.random.default_rng(0).integers(0, 255, (37, 6, 8, 3), dtype=np.uint8)
    _commit_frames(ws, "0000-of-0001", {"a": frames})
    store = FrameStore(ws)
    assert store.num_frames("a") == 37 and store.fps("a") == 25.0
    np.testing.assert_array_equal(store.read_clip("a", 5, 16), frames[5:21])
    np.testing.assert_array_equal(read_clip(ws, "a", 30, 7), frames[30:37])
    with pytest.raises(ValueError, match=r"video a: clip \[30, 46\) outside its 37 frames"):
        store.read_clip("a", 30, 16)
    with pytest.raises(KeyError, match="'zz' has no decoded frames"):
        store.read_clip("zz", 0, 1)


def test_a_new_commit_replaces_the_old_version_and_orphans_are_invisible(tmp_path):
    ws = Workspace(tmp_path)
    old = _commit_frames(ws, "c", {"a": np.zeros((3, 2, 2, 3), np.uint8)})
    # a crashed attempt: a version with data but no record
    orphan, group = ws.new_version("decode", "c")
    write_frames(group, "a", iter(np.full((3, 2, 2, 3), 9, np.uint8)), 4, 1.0)
    assert FrameStore(ws).read_clip("a", 0, 3).max() == 0  # readers follow the record, not the listing
    new = _commit_frames(ws, "c", {"a": np.ones((3, 2, 2, 3), np.uint8)})
    versions = sorted(p.name for p in (tmp_path / "decode.zarr" / "c").iterdir() if p.is_dir())
    assert versions == [new] and old != new != orphan
    assert FrameStore(ws).read_clip("a", 0, 3).min() == 1
    rec = json.loads((tmp_path / "records" / "decode" / "c.json").read_text())
    assert rec["version"] == new and rec["videos"] == {"a": {"status": "ok"}}


def test_unreadable_record_means_not_done(tmp_path):
    ws = Workspace(tmp_path)
    path = tmp_path / "records" / "decode" / "c.json"
    path.parent.mkdir(parents=True)
    path.write_text("{half a rec")
    assert ws.read_record("decode", "c") is None


@pytest.mark.parametrize("raw", ["../../etc/passwd", "/abs/path/video", "..", "a/../../b", ".hidden", "x" * 400,
                                 "we ird:na*me?"])
def test_sanitized_ids_stay_inside_the_workspace(tmp_path, raw):
    vid = sanitize_id(raw)
    assert "/" not in vid and "\\" not in vid and not vid.startswith(".") and 0 < len(vid) <= 160
    assert (tmp_path / vid).resolve().parent == tmp_path.resolve()


def test_chunk_keys_are_stable_and_independent_of_the_other_videos():
    ids = [f"video{i}" for i in range(200)]
    chunks = {v: chunk_of(v, 8) for v in ids}
    assert {chunk_of(v, 8) for v in ids + ["new"]} >= set(chunks.values())
    assert all(chunk_of(v, 8) == c for v, c in chunks.items())
    assert len(set(chunks.values())) == 8
    with pytest.raises(ValueError, match="num_chunks must be at least 1, got 0"):
        chunk_of("a", 0)


def test_the_manifest_is_written_as_csv_dictwriter_would_and_reads_back_older_manifests_too(tmp_path):
    ws = Workspace(tmp_path / "ws")
    rows = [ManifestRow("v_b", "/d/b.mp4", "12-ab", 1 / 3, 29.97, 10, 320, 240, "h264", "Run", "train", "ok", "",
                        "0000-of-0002", "", "decode,encode"),
            ManifestRow("v_a", "/d/a, \"odd\".mp4", status="failed", error="ingest: bad\nheader, \"quoted\"",
                        chunk="0001-of-0002"),
            ManifestRow("v_c", "/d/c.mp4", "12-ab", 2.0, 25.0, 50, 160, 120, "vp9", status="duplicate",
                        duplicate_of="v_b", chunk="0001-of-0002")]
    write_manifest(ws, rows)
    reference = io.StringIO()  # the writer the manifest had before: csv.DictWriter of dataclasses.asdict rows
    writer = csv.DictWriter(reference, fieldnames=[f.name for f in fields(ManifestRow)])
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r.video_id):
        writer.writerow(asdict(row))
    assert ws.read_bytes(ws.manifest_path) == reference.getvalue().encode()
    assert read_manifest(ws) == sorted(rows, key=lambda r: r.video_id) and gc.isenabled()

    # a manifest from before duplicate_of and failed_in existed, with a blank line and a row cut short
    old = "video_id,path,fingerprint,duration,fps,frame_count,width,height,codec,label,split,status,error,chunk\r\n" \
          "v_a,/d/a.mp4,9-cd,2.5,25.0,62,160,120,h264,Jump,test,ok,,0000-of-0001\r\n\r\nv_b,/d/b.mp4\r\n"
    ws.write_bytes_atomic(ws.manifest_path, old.encode())
    assert read_manifest(ws) == [
        ManifestRow("v_a", "/d/a.mp4", "9-cd", 2.5, 25.0, 62, 160, 120, "h264", "Jump", "test", "ok", "",
                    "0000-of-0001"),
        ManifestRow("v_b", "/d/b.mp4", "", 0, 0, 0, 0, 0, "", "", "", "", "", "")]


def test_the_collector_pause_nests_and_leaves_it_as_it_was():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("inside")
    assert gc.isenabled()
