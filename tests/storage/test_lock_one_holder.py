"""One holder of a stage lock at a time, with real processes: two takers of a stale lock at once, one wins; a holder of
another host stopped past the timeout is taken over and its commit fails once it resumes; another host's staleness is
judged by the file system's clock; ``verify --repair`` refuses beside a held run; a record without data is bad."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idtprior.cli import main
from idtprior.storage import ChunkRecord, Workspace, lock as lock_module
from idtprior.storage.integrity import IntegrityError, verify_workspace
from idtprior.storage.lock import StageBusy, WorkspaceLock, lock_path

# A taker of decode's stale lock that stops just before it removes the lock file (the old code's ``fs.rm``, or the
# rename aside) until both takers are there; the second then waits half a second more: the interleaving in which a
# delete-then-create takeover gives two holders.
TAKER = """
import os, sys, time
from pathlib import Path
from fsspec.implementations.local import LocalFileSystem
from idtprior.storage import Workspace
from idtprior.storage.lock import WorkspaceLock, lock_path

ws, gate, me, delay = Workspace(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
target, waited = lock_path(ws, "decode"), []

def wait_at_gate(path):
    if str(path) == target and not waited:
        waited.append(1)
        (gate / me).touch()
        deadline = time.monotonic() + 30
        while len(list(gate.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)

rename, rm = os.rename, LocalFileSystem.rm
os.rename = lambda src, dst, *a, **k: (wait_at_gate(src), rename(src, dst, *a, **k))[1]
LocalFileSystem.rm = lambda self, path, *a, **k: (wait_at_gate(path), rm(self, path, *a, **k))[1]
lock = WorkspaceLock(ws, "decode", heartbeat_s=0, stale_after_s=5)
holder = lock.try_acquire()
print(f"held {lock.token}" if holder is None else "busy", flush=True)
time.sleep(3)  # alive while the other taker judges this one's lock
"""


def _stale_lock_of_another_host(ws: Workspace, name: str = "decode", age_s: float = 3600.0) -> None:
    path = lock_path(ws, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_text(json.dumps({"host": "elsewhere", "pid": 4242, "started": time.time() - age_s,
                                      "token": "stale-token", "what": f"stage {name}"}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_two_takers_of_a_stale_lock_at_once_one_wins(tmp_path):
    ws = Workspace(tmp_path / "ws")
    _stale_lock_of_another_host(ws)
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", TAKER, ws.url, str(gate), name, delay], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name, delay in (("a", "0"), ("b", "0.5"))]
    outs = [p.communicate(timeout=120) for p in procs]
    lines = [out.strip() for out, _ in outs]
    assert sorted(line.split()[0] for line in lines) == ["busy", "held"], [o for o in outs]
    winner = next(line.split()[1] for line in lines if line.startswith("held"))
    assert json.loads(Path(lock_path(ws, "decode")).read_text())["token"] == winner
    assert sorted(os.listdir(os.path.dirname(lock_path(ws, "decode")))) == ["decode.lock"]  # nothing left aside


# A run of decode on "another host" (its host name says so): holds the lock with a fast heartbeat, writes a version,
# then commits it once told to.
HOLDER_ELSEWHERE = """
import socket, sys, time
from pathlib import Path
socket.gethostname = lambda: "elsewhere"
from idtprior.storage import ChunkRecord, Workspace
from idtprior.storage.lock import WorkspaceLock

ws, go = Workspace(sys.argv[1]), Path(sys.argv[2])
lock = WorkspaceLock(ws, "decode", heartbeat_s=0.2, stale_after_s=2).acquire()
version, group = ws.new_version("decode", "0000-of-0001")
group.attrs["written_by"] = "the stopped run"
print("held", flush=True)
while not go.exists():
    time.sleep(0.05)
try:
    ws.commit(ChunkRecord("decode", "0000-of-0001", "key-of-the-stopped-run", version))
    print("committed", flush=True)
except Exception as e:
    print(f"refused {type(e).__name__}: {e}", flush=True)
"""


def test_a_stopped_holder_of_another_host_is_taken_over_and_its_commit_fails_when_it_resumes(tmp_path):
    ws = Workspace(tmp_path / "ws")
    go = tmp_path / "go"
    p = subprocess.Popen([sys.executable, "-c", HOLDER_ELSEWHERE, ws.url, str(go)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        taker = WorkspaceLock(ws, "decode", heartbeat_s=0, stale_after_s=2)
        with pytest.raises(StageBusy):  # beating: refused
            taker.acquire()
        os.kill(p.pid, signal.SIGSTOP)
        taker.acquire(wait_s=30)  # taken over once its heartbeat is 2 s old
        os.kill(p.pid, signal.SIGCONT)
        time.sleep(0.6)  # its heartbeat runs again: it must not refresh a lock that is not its own
        go.touch()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
    assert out.startswith("refused LockLost: decode of workspace"), (out, err)
    assert "this run no longer holds its lock" in out and f"pid {os.getpid()}" in out
    assert not os.path.exists(ws.record_path("decode", "0000-of-0001"))
    assert taker.holder()["token"] == taker.token
    # the taker itself commits
    version, group = ws.new_version("decode", "0000-of-0001")
    group.attrs["written_by"] = "the taker"
    ws.commit(ChunkRecord("decode", "0000-of-0001", "key-of-the-taker", version))
    taker.release()
    assert ws.read_record("decode", "0000-of-0001").fingerprint == "key-of-the-taker"


class _SkewedTime:
    """``time`` of a host whose clock is ``skew`` seconds off the file system's."""

    def __init__(self, skew: float):
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_staleness_of_another_host_is_judged_by_the_file_systems_clock(tmp_path, monkeypatch, skew):
    ws = Workspace(tmp_path / "ws")
    fresh, old = WorkspaceLock(ws, "decode", heartbeat_s=0), WorkspaceLock(ws, "detect", heartbeat_s=0)
    _stale_lock_of_another_host(ws, "decode", age_s=0.0)  # its heartbeat just now, by the file system's clock
    _stale_lock_of_another_host(ws, "detect", age_s=3600.0)  # silent for an hour
    monkeypatch.setattr(lock_module, "time", _SkewedTime(skew))  # this host's clock an hour off
    assert fresh.is_stale(fresh.holder()) is None
    assert "heartbeat stopped" in old.is_stale(old.holder())
    assert not [n for n in os.listdir(ws.path("locks")) if n.startswith(".clock")]  # the probe removed


def test_verify_repair_refuses_beside_a_held_run_and_repairs_once_it_is_gone(tmp_path, capsys):
    ws = Workspace(tmp_path / "ws")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom idtprior.storage import Workspace\nfrom idtprior.storage.lock import stage_lock\n"
        "with stage_lock(Workspace(sys.argv[1]), 'decode'):\n    print('held', flush=True)\n    time.sleep(600)\n"),
        ws.url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        version, group = ws.new_version("decode", "0000-of-0001")  # the running stage's uncommitted chunk
        group.attrs["frames"] = 3
        assert main(["verify", ws.url, "--repair"]) == 2
        err = capsys.readouterr().err
        assert f"idtprior verify --repair of workspace {ws.url} cannot run while stage decode runs" in err
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "nothing was checked or removed" in err
        assert os.path.isdir(ws.version_path("decode", "0000-of-0001", version))
        assert sorted(os.listdir(ws.path("locks"))) == ["decode.lock"]  # the locks it took, released
    finally:
        holder.kill()
        holder.wait()
    assert main(["verify", ws.url, "--repair"]) == 0  # the dead holder's lock taken over: repaired
    assert "decode 0000-of-0001: orphan" in capsys.readouterr().out
    assert not os.path.exists(ws.version_path("decode", "0000-of-0001", version))
    assert os.listdir(ws.path("locks")) == []


def test_a_record_without_data_is_bad_and_a_commit_of_a_removed_version_is_refused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    version, group = ws.new_version("decode", "0000-of-0001")
    ws.fs.rm(ws.version_path("decode", "0000-of-0001", version), recursive=True)  # removed while it was written
    with pytest.raises(IntegrityError, match=r"decode chunk 0000-of-0001: version v.* has no file on storage"):
        ws.commit(ChunkRecord("decode", "0000-of-0001", "k", version))
    assert ws.read_record("decode", "0000-of-0001") is None
    # a record of that kind, as the code before this check wrote it: an empty file list and no data
    Path(ws.record_path("decode", "0000-of-0001")).parent.mkdir(parents=True)
    Path(ws.record_path("decode", "0000-of-0001")).write_text(json.dumps(
        {"stage": "decode", "chunk": "0000-of-0001", "fingerprint": "k", "version": version, "files": "[]",
         "format": 2}))
    (finding,) = verify_workspace(ws).problems
    assert (finding.chunk, finding.kind) == ("0000-of-0001", "bad data") and "lists no file" in finding.detail
