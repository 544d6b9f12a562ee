"""Integrity of committed chunks: every record lists its files with sizes and checksums; a deleted, changed or
truncated chunk file, or a truncated record, is reported by ``idtprior verify``, refused by readers (an error naming
the stage, chunk and video, never fill values) and repaired by ``verify --repair`` plus a rerun, which recomputes
exactly the bad chunks and ends equal to an untouched workspace. A process killed while a chunk commits leaves
nothing the next run or ``verify --repair`` does not remove."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from idtprior.cli import main
from idtprior.config.stages import DecodeConfig
from idtprior.stages.decode import decode_chunk
from idtprior.storage import ChunkRecord, FrameStore, Workspace, write_frames
from idtprior.storage.integrity import VERIFY_ENV, IntegrityError, array_options, verify_workspace
from idtprior.storage.workspace import pack_files, unpack_files
from idtprior_testutils import write_moving_square_videos

CHUNKS = [f"{i:04d}-of-0004" for i in range(4)]
CONFIG = DecodeConfig(short_side=32, time_chunk=4)


def run_decode(ws: Workspace, videos: list[Path]) -> dict[str, ChunkRecord]:
    """The decode stage's chunk task on 4 chunks of one video each (as the flow runs it, keyed by a fixed
    fingerprint per chunk: the keys do not depend on the stored data)."""
    return {chunk: decode_chunk.fn(ws.url, "decode", chunk, f"fp-{chunk}", {path.stem: (str(path), 25.0)}, CONFIG)
            for chunk, path in zip(CHUNKS, videos)}


def all_frames(ws: Workspace) -> dict[str, np.ndarray]:
    store = FrameStore(ws)
    return {vid: store.read_clip(vid, 0, store.num_frames(vid)) for vid in store.video_ids}


def version_dirs(ws: Workspace, stage: str = "decode") -> dict[str, list[str]]:
    return {c: v for c, v in ws.version_groups(stage).items() if v}


def time_chunk_file(ws: Workspace, rec: ChunkRecord, vid: str, t: int) -> Path:
    return Path(ws.version_path("decode", rec.chunk, rec.version)) / vid / "c" / str(t) / "0" / "0" / "0"


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """Four tiny videos decoded into an untouched workspace, and their frames read back."""
    root = tmp_path_factory.mktemp("integrity")
    videos = write_moving_square_videos(root / "videos", 4, frames=10)
    ws = Workspace(root / "untouched")
    run_decode(ws, videos)
    return videos, ws, all_frames(ws)


def test_records_list_every_file_and_a_clean_workspace_verifies(decoded):
    _, ws, frames = decoded
    rec = ws.read_record("decode", CHUNKS[0])
    folder = Path(ws.version_path("decode", rec.chunk, rec.version))
    on_disk = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert {rel: size for rel, (size, _) in rec.file_table().items()} == on_disk
    assert "clip000/c/2/0/0/0" in rec.file_table() and len(frames["clip000"]) == 10  # 10 frames, 4 a chunk: 3 chunks
    report = verify_workspace(ws)
    assert report.checked == 4 and report.findings == []


def test_records_store_their_file_list_packed_and_records_of_format_1_still_read_and_verify(decoded, tmp_path):
    videos, untouched, reference = decoded
    shutil.copytree(untouched.root, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    path = Path(ws.record_path("decode", CHUNKS[0]))
    stored = json.loads(path.read_bytes())
    rec = ws.read_record("decode", CHUNKS[0])
    # format 2: one JSON string, decoded only when a reader checks the files
    assert stored["format"] == 2 and isinstance(stored["files"], str) and isinstance(rec.files, str)
    folder = Path(ws.version_path("decode", rec.chunk, rec.version))
    on_disk = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    table = rec.file_table()
    assert rec.files is table and {rel: size for rel, (size, _) in table.items()} == on_disk
    assert unpack_files(pack_files(table)) == table and json.loads(stored["files"]) == [
        [rel, size, crc] for rel, (size, crc) in sorted(table.items())]

    # a record of format 1 (the files as a JSON object) reads, opens and verifies as before
    path.write_bytes(json.dumps({**stored, "format": 1, "files": table}, sort_keys=True).encode())
    old = ws.read_record("decode", CHUNKS[0])
    assert old.format == 1 and old.files == table and old.file_table() == table
    np.testing.assert_array_equal(FrameStore(ws).read_clip("clip000", 0, 10), reference["clip000"])
    assert verify_workspace(ws).findings == []

    # a list that does not decode: refused by readers and reported, naming the chunk
    path.write_bytes(json.dumps({**stored, "files": '[["clip000/zarr.json", "big", "x"]]'}).encode())
    with pytest.raises(IntegrityError, match=rf"decode chunk {CHUNKS[0]} video clip000: decode chunk {CHUNKS[0]}: "
                                             "the record's file list does not decode"):
        FrameStore(ws).read_clip("clip000", 0, 2)
    found = {(f.chunk, f.kind) for f in verify_workspace(ws, full=False).problems}
    assert found == {(CHUNKS[0], "bad record"), (CHUNKS[0], "orphan")}


def test_damage_is_reported_refused_and_repaired_to_equal_an_untouched_workspace(decoded, tmp_path, monkeypatch,
                                                                               capsys):
    videos, untouched, reference = decoded
    shutil.copytree(untouched.root, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    before = {c: ws.read_record("decode", c) for c in CHUNKS}
    deleted = time_chunk_file(ws, before[CHUNKS[0]], "clip000", 1)
    deleted.unlink()
    flipped = time_chunk_file(ws, before[CHUNKS[1]], "clip001", 0)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    record = Path(ws.record_path("decode", CHUNKS[2]))
    record.write_bytes(record.read_bytes()[:40])

    # reported: the quick check sees the missing file only, the full one the changed bytes too
    quick = {(f.chunk, f.kind) for f in verify_workspace(ws, full=False).problems}
    assert quick == {(CHUNKS[0], "bad data"), (CHUNKS[2], "bad record"), (CHUNKS[2], "orphan")}
    assert main(["verify", ws.url]) == 1
    out = capsys.readouterr().out
    assert f"decode {CHUNKS[0]}: bad data: version {before[CHUNKS[0]].version}: clip000/c/1/0/0/0 missing" in out
    assert f"decode {CHUNKS[1]}: bad data: version {before[CHUNKS[1]].version}: clip001/c/0/0/0/0 changed" in out
    assert f"decode {CHUNKS[2]}: bad record: {CHUNKS[2]}.json: unreadable" in out
    assert f"decode {CHUNKS[2]}: orphan: version {before[CHUNKS[2]].version}: no record names it" in out
    assert "4 records checked (checksums), 4 problems" in out

    # refused by readers, naming stage, chunk and video; never fill values
    store = FrameStore(ws)
    with pytest.raises(IntegrityError, match=rf"decode chunk {CHUNKS[0]} video clip000: .*clip000/c/1/0/0/0 missing"):
        store.read_clip("clip000", 0, 2)
    with pytest.raises(IntegrityError, match=rf"decode chunk {CHUNKS[1]} video clip001: stored data unreadable"):
        store.read_clip("clip001", 0, 2)  # the crc32c of the stored chunk
    np.testing.assert_array_equal(store.read_clip("clip001", 4, 4), reference["clip001"][4:8])  # intact chunks read
    with pytest.raises(KeyError, match="'clip002' has no decoded frames"):
        store.read_clip("clip002", 0, 2)  # an unreadable record: the chunk is not done
    monkeypatch.setenv(VERIFY_ENV, "full")  # asked: checksums at open, before any read
    with pytest.raises(IntegrityError, match=rf"decode chunk {CHUNKS[1]} video clip001: .*checksum differs"):
        FrameStore(ws).array("clip001")
    monkeypatch.delenv(VERIFY_ENV)

    # repaired: the bad chunks' records dropped, their data removed; a rerun recomputes exactly those
    assert main(["verify", ws.url, "--repair"]) == 0
    assert "4 problems, 4 repaired" in capsys.readouterr().out
    assert sorted(ws.records("decode")) == [CHUNKS[3]] and version_dirs(ws) == {CHUNKS[3]: [before[CHUNKS[3]].version]}
    after = run_decode(ws, videos)
    assert after[CHUNKS[3]].created == before[CHUNKS[3]].created
    assert all(after[c].created > before[c].created for c in CHUNKS[:3])
    assert main(["verify", ws.url]) == 0
    frames = all_frames(ws)
    assert sorted(frames) == sorted(reference)
    for vid in reference:
        np.testing.assert_array_equal(frames[vid], reference[vid])
    assert {c: r.fingerprint for c, r in ws.records("decode").items()} == \
        {c: r.fingerprint for c, r in untouched.records("decode").items()}


def test_an_all_black_time_chunk_has_a_file_and_losing_it_is_an_error(tmp_path):
    ws = Workspace(tmp_path)
    frames = np.random.default_rng(0).integers(1, 255, (12, 4, 6, 3), dtype=np.uint8)
    frames[4:8] = 0  # a fade to black: one whole time chunk of fill values
    version, group = ws.new_version("decode", "c")
    write_frames(group, "a", iter(frames), time_chunk=4, fps=25.0)
    ws.commit(ChunkRecord("decode", "c", "fp", version, {"a": {"status": "ok"}}))
    rec = ws.read_record("decode", "c")
    black = time_chunk_file(ws, rec, "a", 1)
    assert black.is_file() and "a/c/1/0/0/0" in rec.file_table()
    np.testing.assert_array_equal(FrameStore(ws).read_clip("a", 0, 12), frames)
    black.unlink()
    with pytest.raises(IntegrityError, match=r"decode chunk c video a: .*a/c/1/0/0/0 missing"):
        FrameStore(ws).read_clip("a", 8, 4)


def test_every_reader_of_a_record_refuses_a_missing_file(tmp_path):
    from idtprior.stages.detect import read_video_boxes
    from idtprior.stages.cluster import read_cluster_labels
    from idtprior.stages.idt import read_sample

    ws = Workspace(tmp_path)
    arrays = {"idt": ("v", "v", np.ones((5, 436), np.float32)),
              "detect": ("v", "v/rows", np.ones((3, 5), np.float32)),
              "cluster": ("all", "labels", np.zeros((2, 3), np.int64))}
    for stage, (chunk, name, data) in arrays.items():
        version, group = ws.new_version(stage, chunk)
        group.create_array(name, data=data, **array_options()).attrs["video_ids"] = ["a", "b", "c"]
        if stage == "detect":
            group.create_array("v/offsets", data=np.array([0, 3]), **array_options())
        ws.commit(ChunkRecord(stage, chunk, "fp", version, {"v": {"status": "ok"}}))
    assert read_sample(ws).shape == (5, 436) and len(read_video_boxes(ws, "v")) == 1
    assert read_cluster_labels(ws)[0].shape == (2, 3)
    for stage, (chunk, name, _) in arrays.items():
        rec = ws.read_record(stage, chunk)
        os.remove(f"{ws.version_path(stage, chunk, rec.version)}/{name}/c/0/0")
    with pytest.raises(IntegrityError, match=r"idt chunk v: .*v/c/0/0 missing"):
        read_sample(ws)
    with pytest.raises(IntegrityError, match=r"detect chunk v video v: .*v/rows/c/0/0 missing"):
        read_video_boxes(ws, "v")
    with pytest.raises(IntegrityError, match=r"cluster chunk all: .*labels/c/0/0 missing"):
        read_cluster_labels(ws)


def test_a_record_from_before_files_were_listed_still_reads_and_is_reported_not_verifiable(tmp_path, capsys):
    ws = Workspace(tmp_path)
    frames = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
    version, group = ws.new_version("decode", "c")
    write_frames(group, "a", iter(frames), time_chunk=4, fps=25.0)
    old = ChunkRecord("decode", "c", "fp", version, {"a": {"status": "ok"}})
    raw = {k: v for k, v in old.__dict__.items() if k != "files"}  # as the code before this change wrote it
    Path(ws.record_path("decode", "c")).parent.mkdir(parents=True)
    Path(ws.record_path("decode", "c")).write_text(json.dumps(raw))
    np.testing.assert_array_equal(FrameStore(ws).read_clip("a", 0, 3), frames)
    assert main(["verify", ws.url]) == 0
    out = capsys.readouterr().out
    assert "decode c: not verifiable: record written before records listed their files" in out
    assert "1 records checked (checksums), 0 problems, 1 not verifiable" in out


# --- a process killed while a chunk commits -------------------------------------------------------------------

KILLED_COMMIT = """
import os, signal, sys
import numpy as np
from idtprior.storage import ChunkRecord, Workspace, write_frames
from idtprior.storage import workspace as wsmod

ws, chunk, point = Workspace(sys.argv[1]), sys.argv[2], sys.argv[3]
version, group = ws.new_version("decode", chunk)
write_frames(group, "clip000", iter(np.zeros((6, 32, 42, 3), np.uint8)), time_chunk=4, fps=25.0)
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if point == "before-rename":  # data and the record's temp file written, the rename never happens
    real_replace = os.replace
    wsmod.os.replace = lambda src, dst: die() if dst.endswith(".json") else real_replace(src, dst)
else:  # the record renamed, the older version never removed
    wsmod.Workspace.remove_stale_versions = die
ws.commit(ChunkRecord("decode", chunk, sys.argv[4], version, {"clip000": {"status": "ok"}}))
"""


def kill_while_committing(ws: Workspace, chunk: str, point: str, fingerprint: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH",
                                                                                                       "")])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_COMMIT), ws.url, chunk, point, fingerprint],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr


def test_a_process_killed_before_the_record_rename_leaves_nothing_after_the_next_run(decoded, tmp_path):
    videos, _, reference = decoded
    ws = Workspace(tmp_path / "ws")
    chunk = CHUNKS[0]
    kill_while_committing(ws, chunk, "before-rename", f"fp-{chunk}")
    assert ws.read_record("decode", chunk) is None  # no partial chunk: no record, readers see nothing
    assert "clip000" not in FrameStore(ws)
    assert len(version_dirs(ws)[chunk]) == 1 and len(list(Path(ws.path("records", "decode")).glob("*.tmp-*"))) == 1
    assert {f.kind for f in verify_workspace(ws).findings} == {"orphan", "temp file"}
    rec = decode_chunk.fn(ws.url, "decode", chunk, f"fp-{chunk}", {"clip000": (str(videos[0]), 25.0)}, CONFIG)
    assert version_dirs(ws) == {chunk: [rec.version]}
    assert sorted(p.name for p in Path(ws.path("records", "decode")).iterdir()) == [f"{chunk}.json"]
    np.testing.assert_array_equal(FrameStore(ws).read_clip("clip000", 0, 10), reference["clip000"])
    assert verify_workspace(ws).findings == []


@pytest.mark.parametrize("cleanup", ["verify --repair", "skipped rerun"])
def test_a_process_killed_after_the_record_rename_leaves_a_whole_chunk_and_the_old_one_is_removed(
        decoded, tmp_path, cleanup):
    videos, untouched, _ = decoded
    shutil.copytree(untouched.root, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    chunk = CHUNKS[0]
    old = ws.read_record("decode", chunk).version
    kill_while_committing(ws, chunk, "after-rename", "fp-new")
    new = ws.read_record("decode", chunk)
    assert new.fingerprint == "fp-new" and sorted(version_dirs(ws)[chunk]) == sorted([old, new.version])
    np.testing.assert_array_equal(FrameStore(ws).read_clip("clip000", 0, 6), np.zeros((6, 32, 42, 3), np.uint8))
    if cleanup == "verify --repair":
        report = verify_workspace(ws, repair=True)
        assert [(f.chunk, f.kind, f.repaired) for f in report.findings] == [(chunk, "orphan", True)]
    else:  # the chunk is up to date: the rerun skips it and removes what the killed commit left
        skipped = decode_chunk.fn(ws.url, "decode", chunk, "fp-new", {"clip000": (str(videos[0]), 25.0)}, CONFIG)
        assert skipped.created == new.created
    assert version_dirs(ws)[chunk] == [new.version] and verify_workspace(ws).findings == []


def test_a_damaged_input_fails_its_chunk_unretried_and_marks_no_video_failed(decoded, tmp_path):
    from idtprior.runtime.errors import is_transient
    from idtprior.runtime.worker import run_chunk

    _, untouched, _ = decoded
    shutil.copytree(untouched.root, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    time_chunk_file(ws, ws.read_record("decode", CHUNKS[0]), "clip000", 1).unlink()

    def read_all(video_id, workspace, stage, chunk, version):  # a later stage reading its input frames
        store = FrameStore(Workspace(workspace))
        return {"mean": float(store.read_clip(video_id, 0, store.num_frames(video_id)).mean())}

    with pytest.raises(IntegrityError, match=rf"decode chunk {CHUNKS[0]} video clip000") as caught:
        run_chunk(ws.url, "later", "c0", "fp", {"clip000": (), "clip001": ()}, read_all, progress=False)
    assert not is_transient(caught.value)  # the stored data reads the same on a retry: never retried
    assert ws.read_record("later", "c0") is None  # no record: the chunk recomputes once the input is repaired


def test_verify_checksums_on_the_command_line_makes_readers_check_them(decoded, tmp_path, monkeypatch):
    from idtprior.cli import apply_verify, build_parser

    _, untouched, _ = decoded
    shutil.copytree(untouched.root, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    flipped = time_chunk_file(ws, ws.read_record("decode", CHUNKS[1]), "clip001", 1)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    monkeypatch.setenv(VERIFY_ENV, "quick")  # recorded: apply_verify's writes below are undone after the test
    monkeypatch.delenv(VERIFY_ENV)
    apply_verify(build_parser().parse_args(["run", "c.yaml"]))
    FrameStore(ws).array("clip001")  # sizes only: opens (the read of that chunk would still fail on its crc32c)
    for argv in (["run", "c.yaml", "--verify-checksums"], ["demo", "--verify-checksums"]):
        monkeypatch.delenv(VERIFY_ENV, raising=False)
        apply_verify(build_parser().parse_args(argv))
        with pytest.raises(IntegrityError, match=rf"decode chunk {CHUNKS[1]} video clip001: .*checksum differs"):
            FrameStore(ws).array("clip001")
