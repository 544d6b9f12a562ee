"""The per-stage workspace lock (``idtprior.storage.lock``): held by a real other process it refuses a second run
naming the holder; a dead holder on this host, or a silent one on another host, is taken over; the heartbeat keeps a
live lock fresh; ingest runs alone; the manifest's lock is waited for."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from idtprior.storage import Workspace
from idtprior.storage.lock import (StageBusy, WorkspaceLock, _boot_id, _process_start, lock_path, manifest_lock,
                                   stage_lock)

HOLDER = """
import sys, time
from idtprior.storage import Workspace
from idtprior.storage.lock import stage_lock
with stage_lock(Workspace(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder_process(tmp_path):
    """Start a real process that takes ``stage``'s lock of a workspace and sleeps; yields a starter."""
    procs = []

    def start(ws: Workspace, stage: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, ws.url, stage], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _wait_dead(p: subprocess.Popen) -> None:
    p.wait(timeout=30)


def test_a_live_holder_refuses_naming_it_and_its_lock_is_taken_over_once_it_is_killed(tmp_path, holder_process,
                                                                                         caplog):
    ws = Workspace(tmp_path / "ws")
    p = holder_process(ws, "decode")
    with pytest.raises(StageBusy) as info:
        with stage_lock(ws, "decode"):
            pytest.fail("the lock of a live holder was taken")
    msg = str(info.value)
    assert f"stage decode of workspace {ws.url} is being run by pid {p.pid} on host {socket.gethostname()} since" in msg
    assert f"remove {ws.path('locks', 'decode.lock')} if that process is gone" in msg
    assert info.value.holder["pid"] == p.pid
    # another stage of the workspace is free
    with stage_lock(ws, "idt"):
        assert os.path.exists(lock_path(ws, "idt"))
    assert not os.path.exists(lock_path(ws, "idt"))  # released at the end

    p.send_signal(signal.SIGKILL)
    _wait_dead(p)
    assert os.path.exists(lock_path(ws, "decode"))  # a killed holder leaves its lock behind
    with caplog.at_level(logging.WARNING, logger="idtprior.lock"):
        with stage_lock(ws, "decode") as lock:
            held = json.loads(open(lock_path(ws, "decode")).read())
            assert held["pid"] == os.getpid() and held["token"] == lock.token
    assert f"taking over the lock {lock_path(ws, 'decode')} of pid {p.pid}" in caplog.text
    assert f"process {p.pid} is gone" in caplog.text


def _write_lock(ws: Workspace, stage: str, **fields) -> str:
    path = lock_path(ws, stage)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    holder = {"host": "gpu-node-7", "pid": 4242, "boot_id": "another-boot", "flow_run_name": "ws: decode",
              "started": time.time() - 3600, "token": "theirs", **fields}
    with open(path, "w") as f:
        json.dump(holder, f)
    return path


def test_a_lock_of_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path):
    ws = Workspace(tmp_path / "ws")
    path = _write_lock(ws, "decode")
    # a fresh heartbeat (mtime now): live, whatever its pid means here
    with pytest.raises(StageBusy, match=r"being run by pid 4242 on host gpu-node-7 since .* \(flow run 'ws: decode'\)"):
        WorkspaceLock(ws, "decode", stale_after_s=60).acquire()
    os.utime(path, (time.time() - 61, time.time() - 61))  # no heartbeat for over a minute
    lock = WorkspaceLock(ws, "decode", stale_after_s=60, heartbeat_s=0).acquire()
    assert json.loads(open(path).read())["token"] == lock.token
    lock.release()
    assert not os.path.exists(path)


def test_a_reused_pid_does_not_keep_a_dead_holders_lock(tmp_path):
    ws = Workspace(tmp_path / "ws")
    me = os.getpid()
    assert _process_start(me) is not None
    # this process's pid, but a process that started at another time: the pid was reused, the holder is gone
    _write_lock(ws, "decode", host=socket.gethostname(), boot_id=_boot_id(), pid=me, pid_start="1")
    with stage_lock(ws, "decode", heartbeat_s=0):
        pass
    # the same process (pid and start): live, a second run in this process is refused too
    _write_lock(ws, "decode", host=socket.gethostname(), boot_id=_boot_id(), pid=me, pid_start=_process_start(me))
    with pytest.raises(StageBusy, match=rf"pid {me} on host"):
        WorkspaceLock(ws, "decode").acquire()


def test_the_heartbeat_refreshes_the_lock_and_release_leaves_a_lock_not_ours(tmp_path):
    ws = Workspace(tmp_path / "ws")
    lock = WorkspaceLock(ws, "decode", heartbeat_s=0.05).acquire()
    path = lock_path(ws, "decode")
    old = time.time() - 1000
    os.utime(path, (old, old))
    deadline = time.monotonic() + 30
    while os.stat(path).st_mtime < old + 500:
        assert time.monotonic() < deadline, "the heartbeat never refreshed the lock"
        time.sleep(0.02)
    lock.release()
    assert not os.path.exists(path)
    # a lock taken over from us (we were judged dead) is not removed by our late release
    lock = WorkspaceLock(ws, "decode", heartbeat_s=0).acquire()
    _write_lock(ws, "decode")
    lock.release()
    assert json.loads(open(path).read())["token"] == "theirs"


def test_ingest_runs_alone(tmp_path, holder_process):
    ws = Workspace(tmp_path / "ws")
    p = holder_process(ws, "decode")
    with pytest.raises(StageBusy, match=rf"stage ingest of workspace .* cannot start while stage decode runs .*pid "
                                        rf"{p.pid}"):
        with stage_lock(ws, "ingest"):
            pass
    assert not os.path.exists(lock_path(ws, "ingest"))  # the refused run's own lock is gone again
    p.kill()
    _wait_dead(p)
    with stage_lock(ws, "ingest"):  # a dead holder's decode lock does not stop it
        pass
    # ingest held by a live process (this one, under another token): the other stages wait for it
    me = os.getpid()
    _write_lock(ws, "ingest", host=socket.gethostname(), boot_id=_boot_id(), pid=me, pid_start=_process_start(me))
    with pytest.raises(StageBusy, match=rf"stage idt of workspace .* cannot start while stage ingest runs .*pid "
                                        rf"{me}"):
        with stage_lock(ws, "idt"):
            pass
    assert not os.path.exists(lock_path(ws, "idt"))


def test_the_manifest_lock_is_waited_for(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    order, refused = [], threading.Event()
    first = WorkspaceLock(ws, "manifest", heartbeat_s=0).acquire()
    real = WorkspaceLock.try_acquire

    def try_acquire(self):  # the second taker's attempts, seen: the first is released only once it was refused
        holder = real(self)
        if holder is not None:
            refused.set()
        return holder

    monkeypatch.setattr(WorkspaceLock, "try_acquire", try_acquire)

    def second():
        try:
            with manifest_lock(ws, wait_s=60):
                order.append("second")
        except StageBusy:
            order.append("second refused")
            refused.set()

    t = threading.Thread(target=second)
    t.start()
    assert refused.wait(timeout=60)  # the second taker found the lock held (and waits, or gave up)
    order.append("first")
    first.release()
    t.join(timeout=60)
    assert order == ["first", "second"]
    with pytest.raises(StageBusy, match=r"the manifest rebuild of workspace"):
        with WorkspaceLock(ws, "manifest", what="the manifest rebuild", heartbeat_s=0):
            manifest_lock(ws, wait_s=0).__enter__()
