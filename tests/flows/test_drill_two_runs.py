"""Drill: two runs of one stage on one workspace at once. Without a lock the second would remove the version of a chunk
the first is still writing (``Workspace.commit`` drops every other version) and the first would commit a record
pointing at deleted arrays. With the per-stage lock the second run fails at once, naming the first (pid, host, flow
run), and writes nothing; the first completes whole; a later run finds every chunk done."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.storage import FrameStore, Workspace
from idtprior.storage.lock import StageBusy, WorkspaceLock, lock_path
from idtprior.testing import FAULT_ENV
from idtprior_testutils import write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")

IDTPRIOR = str(Path(sys.executable).with_name("idtprior"))


def _config(root: Path, source: Path) -> dict:
    return {"workspace": str(root), "stages": ["ingest", "decode"], "dask": {"n_workers": 0},
            "ingest": {"source": str(source), "num_chunks": 2}, "decode": {"short_side": 32}}


def test_a_stage_run_while_another_run_holds_the_stage_fails_at_once_naming_it(tmp_path):
    # the other run: this process's lock of decode, as a run in another thread of this process would hold it (the
    # lock unit tests hold it from other processes)
    ws = Workspace(tmp_path / "ws")
    other = WorkspaceLock(ws, "decode", heartbeat_s=0).acquire()
    try:
        cfg = PipelineConfig.model_validate(_config(tmp_path / "ws", tmp_path / "videos"))
        with pytest.raises(StageBusy) as info:
            pretrain_pipeline(cfg, stages=["decode"], progress=False)
        since = str(info.value).split(" since ")[1][:19]
        assert str(info.value) == (
            f"stage decode of workspace {ws.url} is being run by pid {os.getpid()} on host {socket.gethostname()} "
            f"since {since}; wait for it or remove {lock_path(ws, 'decode')} if that process is gone")
        assert time.mktime(time.strptime(since, "%Y-%m-%d %H:%M:%S")) == pytest.approx(other.holder()["started"], abs=1)
        # refused before its body: nothing planned or written, the other run's lock untouched
        assert not os.path.exists(ws.path("decode.zarr")) and not os.path.exists(ws.path("records"))
        assert other.holder()["token"] == other.token
    finally:
        other.release()


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode} before {path} appeared:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.mark.slow
def test_two_runs_forced_onto_the_same_chunk(tmp_path):
    src = tmp_path / "videos"
    write_moving_square_videos(src, 6, frames=16)
    data = _config(tmp_path / "ws", src)
    cfg = PipelineConfig.model_validate(data)
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, stages=["ingest"], progress=False)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))

    # run A: a real `idtprior run` process, paused in the middle of chunk 0 (its last video's frames written, no
    # record yet) by the drill's hold fault
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-a"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", **{FAULT_ENV: "decode:0000-of-0002:hold"})
    log = tmp_path / "run-a.log"
    with open(log, "wb") as out:
        a = subprocess.Popen([IDTPRIOR, "run", str(config_file), "--stages", "decode"], stdout=out,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        held = Path(ws.path("faults", "decode-0000-of-0002.held"))
        _wait_for(held, a, log)
        (version_a,) = [v for v in os.listdir(ws.path("decode.zarr", "0000-of-0002")) if v.startswith("v")]

        # run B on the same workspace and stage, forced onto the same chunks: refused at once, naming run A
        with pytest.raises(StageBusy, match=rf"stage decode of workspace {ws.url} is being run by pid {a.pid} on host "
                                            rf"{socket.gethostname()} since .* \(flow run 'ws: decode'\); wait for it"):
            pretrain_pipeline(cfg, stages=["decode"], progress=False)
        # B touched nothing of A's: A's half-written version is still there, alone
        assert [v for v in os.listdir(ws.path("decode.zarr", "0000-of-0002")) if v.startswith("v")] == [version_a]

        Path(f"{held.with_suffix('')}.release").write_text("go\n")
        assert a.wait(timeout=300) == 0, log.read_text()
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
    assert not os.path.exists(lock_path(ws, "decode"))  # A released its lock at its end

    # A committed whole chunks: chunk 0 is the version A wrote while B was refused
    records = ws.records("decode")
    assert records["0000-of-0002"].version == version_a
    assert sum(r.n_ok for r in records.values()) == 6
    frames = FrameStore(ws)
    for vid in frames.video_ids:
        assert frames.read_clip(vid, 0, 16).shape == (16, 32, 43, 3)  # 48x64 at short side 32
    # B again, now alone: nothing to do
    created = {c: r.created for c, r in records.items()}
    counts = pretrain_pipeline(cfg, stages=["decode"], progress=False)
    assert counts["decode"]["videos_ok"] == 6
    assert {c: r.created for c, r in ws.records("decode").items()} == created
    assert np.all([len(ws.records("decode")[c].videos) for c in created])
