"""Drill: the Prefect server goes away in the middle of a run. A real ``prefect server start``, a real ``idtprior run``
against it, paused in the middle of a decode chunk (``IDTPRIOR_FAULT`` hold); the server is stopped, the run let go.
What the README states is checked: the run's work in flight goes on and commits to the workspace, the run then fails
on its next call to the server, and a rerun against a new server recomputes nothing that was committed."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from idtprior.storage import Workspace
from idtprior.storage.lock import lock_path
from idtprior.testing import FAULT_ENV
from idtprior_testutils import write_moving_square_videos

pytestmark = pytest.mark.slow

IDTPRIOR = str(Path(sys.executable).with_name("idtprior"))
_spec = importlib.util.spec_from_file_location("server_process", Path(__file__).parents[1] / "server" /
                                               "server_process.py")
server_process = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(server_process)


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode} before {path} appeared:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s:\n{log.read_text()}")
        time.sleep(0.2)


def _created(ws: Workspace) -> dict[str, float]:
    return {f"{stage}/{chunk}": r.created for stage in ("ingest", "decode") for chunk, r in ws.records(stage).items()}


def test_the_server_stopped_mid_run(tmp_path):
    src = tmp_path / "videos"
    write_moving_square_videos(src, 6, frames=16)
    ws = Workspace(tmp_path / "ws")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({
        "workspace": ws.url, "stages": ["ingest", "decode"], "dask": {"n_workers": 0}, "chunk_concurrency": 1,
        "ingest": {"source": str(src), "num_chunks": 2}, "decode": {"short_side": 32}}))
    home = tmp_path / "prefect-home"
    port = server_process.free_port()
    server = server_process.ServerProcess(home, port)
    server.start()
    run = None
    try:
        log = tmp_path / "run.log"
        with open(log, "wb") as out:
            # Prefect's client retries a failed call 5 times with backoff by default (about a minute per call); one
            # retry here keeps the drill short and changes nothing else
            env = server.env(**{FAULT_ENV: "decode:0001-of-0002:hold", "PREFECT_CLIENT_MAX_RETRIES": "1"})
            run = subprocess.Popen([IDTPRIOR, "run", str(config_file)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        held = Path(ws.path("faults", "decode-0001-of-0002.held"))
        _wait_for(held, run, log)
        server.stop()  # mid-run: ingest done, decode's chunk 0 committed, chunk 1 half written
        stopped = time.time()
        Path(f"{held.with_suffix('')}.release").write_text("go\n")
        rc = run.wait(timeout=400)
        text = log.read_text()
    finally:
        if run is not None and run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        server.stop()
    # the work in flight went on without the server and committed: the held chunk after the server had stopped
    committed = _created(ws)
    assert sorted(committed) == ["decode/0000-of-0002", "decode/0001-of-0002", "ingest/0000-of-0002",
                                 "ingest/0001-of-0002"], text
    assert committed["decode/0001-of-0002"] > stopped
    # then the run failed, on its next call to the server, and said why; the stage's lock was released
    assert rc == 3, text  # one line naming the server, not httpx's traceback
    # (Prefect's own "Error logging to API" lines from its background threads may follow it)
    said = [line for line in text.splitlines() if line.startswith("idtprior run: error: the Prefect server at ")]
    assert len(said) == 1 and "cannot be reached (ConnectError" in said[0], text
    assert not os.path.exists(lock_path(ws, "decode")) and not os.path.exists(lock_path(ws, "ingest"))

    # a new server (same database), and the run again: what was committed is not recomputed
    server = server_process.ServerProcess(home, port)
    server.start()
    try:
        out = subprocess.run([IDTPRIOR, "run", str(config_file)], capture_output=True, text=True,
                             env=server.env(), timeout=400)
    finally:
        server.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    after = _created(ws)
    assert {k: after[k] for k in committed} == committed
    assert "decode: done, 2 chunks, 2 cached, 6 videos ok, 0 failed" in out.stdout + out.stderr
