"""Ingest's stat cache: unchanged files are not read, any write is seen (even with mtime set back), touch costs a read."""

import os

import pytest

from idtprior.storage import Workspace, file_fingerprint
from idtprior.storage import statcache
from idtprior.storage.fingerprint import MIB
from idtprior.storage.statcache import StatCache


@pytest.fixture
def counted(monkeypatch):
    """Count the reads of file contents (the real function does the reading)."""
    calls = []

    def counting(path, full=False):
        calls.append(str(path))
        return file_fingerprint(path, full)

    monkeypatch.setattr(statcache, "file_fingerprint", counting)
    return calls


@pytest.fixture
def settled(monkeypatch):
    # Files written by a test are seconds old at most; the racy-entry rule (its own test below) would re-read them.
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0.0)


def _files(folder, n=3, size=1000):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        p = folder / f"f{i}.bin"
        p.write_bytes(bytes([i]) * size)
        out[str(p)] = f"{i % 2:04d}-of-0002"
    return out


def _run(ws, files, full=False):
    cache = StatCache(ws, full)
    fps = cache.fingerprints(files)
    cache.save()
    return fps, cache


def test_unchanged_files_are_not_read_and_nothing_is_rewritten(tmp_path, counted, settled):
    ws = Workspace(tmp_path / "ws")
    files = _files(tmp_path / "src")
    first, cache = _run(ws, files)
    assert len(counted) == 3 and cache.reads == 3
    assert first == {p: file_fingerprint(p) for p in files}
    stored = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ws" / "cache" / "ingest-stats").iterdir()}
    assert sorted(stored) == ["0000-of-0002.json", "0001-of-0002.json"]

    counted.clear()
    again, cache = _run(ws, files)
    assert again == first and counted == [] and cache.reads == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ws" / "cache" / "ingest-stats").iterdir()} == stored


def test_a_same_size_rewrite_with_mtime_set_back_is_seen(tmp_path, counted, settled):
    ws = Workspace(tmp_path / "ws")
    files = _files(tmp_path / "src")
    first, _ = _run(ws, files)
    path = next(iter(files))
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"\xff" * 10)  # same size, new bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back: (size, mtime) is the old one
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    counted.clear()
    again, _ = _run(ws, files)
    assert counted == [path]
    assert again[path] != first[path] and again[path] == file_fingerprint(path)
    assert {p: v for p, v in again.items() if p != path} == {p: v for p, v in first.items() if p != path}


def test_touch_reads_the_file_again_and_finds_the_same_content(tmp_path, counted, settled):
    ws = Workspace(tmp_path / "ws")
    files = _files(tmp_path / "src")
    first, _ = _run(ws, files)
    path = sorted(files)[1]
    os.utime(path)
    counted.clear()
    again, _ = _run(ws, files)
    assert counted == [path] and again == first
    counted.clear()
    _run(ws, files)  # the new stat was remembered
    assert counted == []


def test_a_just_written_file_is_read_again_next_time(tmp_path, counted, monkeypatch):
    # its ctime is within RACY_SECONDS of the stat: a write in the same timestamp tick could keep the stat unchanged.
    # The window is set wide, so the file is "just written" however slow this machine is, and then shut, so the
    # same two runs read it once: the re-read is the window's doing, not a file the cache never remembers
    ws = Workspace(tmp_path / "ws")
    files = _files(tmp_path / "src", n=1)
    monkeypatch.setattr(statcache, "RACY_SECONDS", 3600.0)
    _run(ws, files)
    _run(ws, files)
    assert len(counted) == 2
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0.0)
    counted.clear()
    fresh = Workspace(tmp_path / "ws2")
    _run(fresh, files)
    _run(fresh, files)
    assert len(counted) == 1


def test_full_hash_sees_a_same_size_edit_in_the_middle_that_the_edges_cannot(tmp_path):
    path = tmp_path / "big.bin"
    data = bytearray(os.urandom(3 * MIB))
    path.write_bytes(bytes(data))
    edges, full = file_fingerprint(path), file_fingerprint(path, full=True)
    data[int(1.5 * MIB)] ^= 0xFF
    path.write_bytes(bytes(data))
    assert file_fingerprint(path) == edges  # documented blind spot of the first/last-MiB fingerprint
    assert file_fingerprint(path, full=True) != full
    assert full.startswith(f"{3 * MIB}-sha256-") and edges.startswith(f"{3 * MIB}-")


def test_missing_and_unreadable_files_are_not_remembered(tmp_path, settled):
    ws = Workspace(tmp_path / "ws")
    unreadable = tmp_path / "folder.mp4"  # stat works, open fails (as a mode-000 file would for anyone but root)
    unreadable.mkdir()
    cache = StatCache(ws)
    fps = cache.fingerprints({str(tmp_path / "gone.mp4"): "0000-of-0001", str(unreadable): "0000-of-0001"})
    assert fps[str(tmp_path / "gone.mp4")] == "missing"
    assert fps[str(unreadable)].startswith("unreadable-IsADirectoryError-")
    cache.save()
    assert StatCache(ws)._known == {}
