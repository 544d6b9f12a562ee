"""The per-video fan-out on a Dask cluster as on a cluster of machines: a scheduler and two workers started as
separate OS processes from the ``dask`` command line, found through a scheduler file, and a run given only the
scheduler's address."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.storage import FrameStore, Workspace, read_manifest
from idtprior_testutils import moving_square_frames
from idtprior.video.io import write_video

pytestmark = pytest.mark.usefixtures("prefect_engine")

DASK = str(Path(sys.executable).with_name("dask"))


def _wait_for(predicate, what: str, procs: list[subprocess.Popen], timeout: float = 90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: process exited early: {dead}")
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not ready after {timeout} s")


@pytest.fixture
def dask_processes(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on the loopback; yields (address, dashboard port)."""
    sched_file = tmp_path / "scheduler.json"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
              "--scheduler-file", str(sched_file))
        info = _wait_for(lambda: sched_file.exists() and json.loads(sched_file.read_text() or "{}"),
                         "dask scheduler", procs)
        for i in range(2):
            start(f"worker{i}", "worker", "--scheduler-file", str(sched_file), "--nthreads", "1", "--host",
                  "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--name", f"w{i}")
        yield info["address"], info["services"]["dashboard"]
    finally:  # killed: the test is over, and a graceful close took 8 s
        for p in procs[::-1]:
            p.kill()
        for p in procs[::-1]:
            p.wait()


def _config(root: Path, source: Path, workers: int) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "workspace": str(root / "ws"), "stages": ["ingest", "decode"], "dask": {"n_workers": workers},
        "ingest": {"source": str(source), "num_chunks": 2}, "decode": {"short_side": 32}})


def test_ingest_and_decode_on_scheduler_and_worker_processes_match_an_in_process_run(tmp_path, dask_processes):
    from distributed import Client

    address, dashboard = dask_processes
    assert address.startswith("tcp://127.0.0.1:")
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(6):
        write_video(src / f"clip{i}.mp4", moving_square_frames(20, seed=i), fps=25, options={"preset": "ultrafast"})

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=90)
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        # the scheduler's health route, as infra/compose.yaml's health check reads it (no bokeh needed)
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/health", timeout=10) as r:
            assert r.read() == b"ok"

        cfg = _config(tmp_path / "cluster", src, workers=0)
        result = pretrain_pipeline(cfg, dask_address=address, progress=False)
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)

    assert result["ingest"]["videos_ok"] == 6 and result["decode"]["videos_ok"] == 6
    # every video's ingest and decode ran in the worker processes, and both workers took some
    assert sum(executed.values()) == 12, executed
    assert all(n > 0 for n in executed.values()), executed

    ref = _config(tmp_path / "in-process", src, workers=0)
    pretrain_pipeline(ref, progress=False)
    ws, ref_ws = Workspace(cfg.workspace), Workspace(ref.workspace)
    assert [(r.video_id, r.fingerprint, r.frame_count, r.chunk) for r in read_manifest(ws)] == \
        [(r.video_id, r.fingerprint, r.frame_count, r.chunk) for r in read_manifest(ref_ws)]
    store, ref_store = FrameStore(ws), FrameStore(ref_ws)
    assert sorted(store.video_ids) == sorted(ref_store.video_ids) and len(store.video_ids) == 6
    for vid in ref_store.video_ids:
        np.testing.assert_array_equal(store.read_clip(vid, 0, 20), ref_store.read_clip(vid, 0, 20))
