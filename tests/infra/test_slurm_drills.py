"""Drills on a real SLURM: a one-node cluster started on this machine by ``infra/slurm/local-slurm.sh`` (Debian's
slurm-wlm and munge), the pipeline's Dask workers in real batch jobs (dask-jobqueue), a worker job cancelled mid-stage,
``idtprior train-stage`` under a real ``srun``. Slow; skipped, saying why, where the daemons cannot start (SLURM not
installed, not root). The default run checks the script's structure only (``test_slurm_scripts.py``)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.stages.encode import read_assembled_sketches
from idtprior.storage import FrameStore, Workspace
from idtprior.testing import FAULT_ENV
from idtprior_testutils import write_moving_square_videos

from local_slurm import local_slurm, squeue

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_engine")]


@pytest.fixture(scope="module")
def slurm():
    with local_slurm() as folder:
        yield folder


def _pipeline(root: Path, source: Path, dask: dict, stages: list[str]) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "workspace": str(root), "stages": stages, "dask": dask,
        "ingest": {"source": str(source), "num_chunks": 2}, "decode": {"short_side": 32},
        "idt": {"sample_videos": 4, "sample_rows": 200, "scale_num": 2},
        "codebook": {"gmm_components": 4, "sketch_dim": 32, "gmm_iters": 5}})


def _slurm_dask(jobs_dir: Path, jobs: int = 2, walltime: str = "00:20:00") -> dict:
    """Dask workers as SLURM jobs of one core each (this machine's two cores hold two jobs)."""
    return {"cluster": "slurm", "slurm": {"cores": 1, "memory": "2GB", "jobs": jobs, "walltime": walltime,
                                          "python": sys.executable, "log_directory": str(jobs_dir)}}


def _hold(ws: Workspace, monkeypatch, chunk: str) -> Path:
    """Arm the drills' hold on decode's ``chunk`` (the worker that runs its last video waits, its frames written; the
    jobs inherit the environment); returns the file the holder writes its pid to."""
    monkeypatch.setenv(FAULT_ENV, f"decode:{chunk}:hold")
    return Path(ws.path("faults", f"decode-{chunk}.held"))


def _wait_for(path: Path, timeout_s: float = 300) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.exists()


def _worker_logs(jobs_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in sorted(jobs_dir.glob("*.err")) + sorted(
        jobs_dir.glob("*.out"))}


def test_decode_idt_and_encode_in_slurm_jobs_equal_a_local_cluster_run(slurm, tmp_path):
    src = tmp_path / "videos"
    write_moving_square_videos(src, 6, frames=24)
    stages = ["ingest", "decode", "idt", "fit_codebook", "encode"]
    jobs_dir = tmp_path / "jobs"
    on_slurm = _pipeline(tmp_path / "slurm-ws", src, _slurm_dask(jobs_dir), stages)
    t0 = time.monotonic()
    result = pretrain_pipeline(on_slurm, progress=False)
    seconds = time.monotonic() - t0
    assert all(result[s]["videos_failed"] == 0 for s in ("decode", "encode")), result
    # the work ran in the jobs: two worker jobs, each a Dask worker that registered with the flow's scheduler
    logs = _worker_logs(jobs_dir)
    registered = [name for name, text in logs.items() if "Registered to" in text]
    assert len({name.split(".")[0] for name in registered}) == 2, logs
    assert not [j for j in squeue() if j[1] == "idtprior-dask"]  # the jobs went with the run's cluster

    local = _pipeline(tmp_path / "local-ws", src, {"n_workers": 2, "processes": True}, stages)
    pretrain_pipeline(local, progress=False)
    a, b = Workspace(on_slurm.workspace), Workspace(local.workspace)
    frames_a, frames_b = FrameStore(a), FrameStore(b)
    assert sorted(frames_a.video_ids) == sorted(frames_b.video_ids) and len(frames_b.video_ids) == 6
    for vid in frames_b.video_ids:
        np.testing.assert_array_equal(frames_a.read_clip(vid, 0, 24), frames_b.read_clip(vid, 0, 24))
    sk_a, valid_a, ids_a = read_assembled_sketches(a)
    sk_b, valid_b, ids_b = read_assembled_sketches(b)
    assert ids_a == ids_b and valid_a.all() and (valid_a == valid_b).all()
    np.testing.assert_array_equal(sk_a, sk_b)
    for stage in ("decode", "idt", "fit_codebook", "encode"):  # the same keys: the same work, wherever it ran
        assert {c: r.fingerprint for c, r in a.records(stage).items()} == \
            {c: r.fingerprint for c, r in b.records(stage).items()}, stage
    print(f"slurm drill: decode, idt, fit_codebook and encode of 6 videos in 2 SLURM jobs: {seconds:.1f} s")


def test_a_worker_job_cancelled_mid_stage_loses_nothing_and_the_rerun_recomputes_nothing(slurm, tmp_path,
                                                                                         monkeypatch):
    src = tmp_path / "videos"
    write_moving_square_videos(src, 8, frames=16)
    jobs_dir = tmp_path / "jobs"
    cfg = _pipeline(tmp_path / "ws", src, _slurm_dask(jobs_dir), ["ingest", "decode"])
    ws = Workspace(cfg.workspace)
    held = _hold(ws, monkeypatch, "0000-of-0002")
    seen: dict = {}

    def cancel_the_holder():
        if not _wait_for(held):
            return
        pid = int(held.read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        job = next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"SLURM_JOB_ID="))
        seen.update(pid=pid, job=job, queue=squeue())
        subprocess.run(["scancel", job], check=True)
        seen["cancelled_at"] = time.monotonic()

    canceller = threading.Thread(target=cancel_the_holder)
    canceller.start()
    t0 = time.monotonic()
    result = pretrain_pipeline(cfg, progress=False)
    seconds = time.monotonic() - t0
    canceller.join(timeout=60)
    monkeypatch.delenv(FAULT_ENV)

    assert seen.get("job"), "the hold never happened"
    assert sum(1 for j in seen["queue"] if j[1] == "idtprior-dask" and j[2] == "RUNNING") == 2, seen["queue"]
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)  # the cancelled job's worker is gone
    assert result["decode"]["videos_ok"] == 8 and result["decode"]["videos_failed"] == 0, result
    records = ws.records("decode")
    assert sorted(records) == ["0000-of-0002", "0001-of-0002"]
    rows = [vid for rec in records.values() for vid in rec.videos]
    assert len(rows) == len(set(rows)) == 8  # every video once, in one record
    for chunk, rec in records.items():
        assert sorted(ws.chunk_group("decode", chunk, rec.version).keys()) == sorted(rec.videos)
        assert [v for v in os.listdir(ws.path("decode.zarr", chunk)) if v.startswith("v")] == [rec.version]
    # the frames are those of a run in this process
    ref = _pipeline(tmp_path / "ref", src, {"n_workers": 0}, ["ingest", "decode"])
    pretrain_pipeline(ref, progress=False)
    mine, theirs = FrameStore(ws), FrameStore(Workspace(ref.workspace))
    for vid in theirs.video_ids:
        np.testing.assert_array_equal(mine.read_clip(vid, 0, 16), theirs.read_clip(vid, 0, 16))

    before = {c: r.created for c, r in ws.records("decode").items()}
    again = pretrain_pipeline(cfg, progress=False)  # new jobs; nothing to compute
    assert {c: r.created for c, r in ws.records("decode").items()} == before
    assert again["decode"]["videos_ok"] == 8
    print(f"slurm drill: job {seen['job']} cancelled mid-chunk, the stage finished on the other job in "
          f"{seconds:.1f} s")


def test_train_stage_under_srun_with_two_gloo_tasks_commits_the_record(slurm, tmp_path):
    src = tmp_path / "videos"
    write_moving_square_videos(src, 6, frames=12)
    tiny = {"width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 2, "negatives": 8,
            "num_workers": 0, "accelerator": "cpu", "ir_exact": True, "devices": 2, "launcher": "slurm",
            "slurm": {"cpus_per_task": 1, "mem": "4G", "time": "00:20:00", "poll_seconds": 0.5}}
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode", "pretrain_ir"],
        "ingest": {"source": str(src), "num_chunks": 2}, "decode": {"short_side": 32}, "dask": {"n_workers": 0},
        "pretrain": tiny, "pretrain_ir": {"epochs": 2}})
    t0 = time.monotonic()
    result = pretrain_pipeline(cfg, progress=False)
    seconds = time.monotonic() - t0
    ws = Workspace(cfg.workspace)
    rec = ws.read_record("pretrain_ir", "all")
    assert rec is not None and result["pretrain_ir"]["epochs"] == rec.videos["model"]["epochs"] == 2
    job_dir = Path(ws.path("jobs", "pretrain_ir", rec.fingerprint[:16]))
    script = (job_dir / "train.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "srun " in script
    log = next(job_dir.glob("slurm-*.out")).read_text()
    # the two tasks srun started met over gloo through SLURM's variables (Lightning's SLURM environment)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-3000:]
    created = rec.created
    pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)  # committed: nothing submitted again
    assert ws.read_record("pretrain_ir", "all").created == created
    print(f"slurm drill: pretrain_ir as a batch job of 2 srun tasks (DDP over gloo): {seconds:.1f} s")


def test_jobs_that_reach_their_walltime_mid_stage_leave_it_waiting_and_the_rerun_computes_only_the_missing_chunk(
        slurm, tmp_path, monkeypatch):
    """The README's word on walltime: a job that reaches it is not replaced; its unfinished videos go to the other
    jobs, and with none left the stage waits. Here both jobs have one minute and one video holds past it: the
    chunks without it commit, then the jobs end and the stage waits, its last chunk uncommitted, until the run is
    stopped (its scheduler shut down, as an operator's cancel does); the rerun computes only that chunk."""
    from distributed import Client

    src = tmp_path / "videos"
    write_moving_square_videos(src, 8, frames=16)
    jobs_dir = tmp_path / "jobs"
    cfg = _pipeline(tmp_path / "ws", src, _slurm_dask(jobs_dir, walltime="00:01:00"), ["ingest", "decode"])
    ws = Workspace(cfg.workspace)
    held_chunk, other_chunk = "0000-of-0002", "0001-of-0002"
    held = _hold(ws, monkeypatch, held_chunk)
    seen: dict = {}

    def watch_then_stop():
        deadline = time.monotonic() + 300
        _wait_for(held)
        seen["held_at"] = time.monotonic()
        while any(j[1] == "idtprior-dask" for j in squeue()) and time.monotonic() < deadline:
            time.sleep(1)
        seen["jobs_gone_at"] = time.monotonic()
        time.sleep(15)  # the stage waits: nothing left to run its last video
        seen["records_while_waiting"] = sorted(ws.records("decode"))
        seen["queue_while_waiting"] = squeue()
        logs = _worker_logs(jobs_dir)
        seen["time_limit"] = any("DUE TO TIME LIMIT" in text for text in logs.values())
        address = next(line.split()[-1] for text in logs.values() for line in text.splitlines()
                       if "Registered to:" in line)
        with Client(address, timeout=30) as client:
            client.shutdown()  # stop the run: its scheduler goes, its waiting chunk fails
        seen["stopped_at"] = time.monotonic()

    watcher = threading.Thread(target=watch_then_stop)
    watcher.start()
    t0 = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - the stage fails however Dask reports its closed scheduler
        pretrain_pipeline(cfg, progress=False)
    watcher.join(timeout=120)
    monkeypatch.delenv(FAULT_ENV)

    assert seen.get("stopped_at"), seen
    assert seen["time_limit"], "no job log says it was cancelled for its time limit"
    assert seen["records_while_waiting"] == [other_chunk]  # the held chunk never committed
    assert not [j for j in seen["queue_while_waiting"] if j[1] == "idtprior-dask"]  # and no job was replaced
    assert sorted(ws.records("decode")) == [other_chunk]
    kept = ws.read_record("decode", other_chunk).created

    again = pretrain_pipeline(cfg.with_updates(dask=_slurm_dask(jobs_dir, walltime="00:20:00")), progress=False)
    assert again["decode"]["videos_ok"] == 8 and again["decode"]["videos_failed"] == 0, again
    records = ws.records("decode")
    assert sorted(records) == [held_chunk, other_chunk]
    assert records[other_chunk].created == kept  # only the missing chunk was computed
    print(f"slurm drill: walltime 1 min; jobs gone {seen['jobs_gone_at'] - t0:.0f} s into the run, the stage "
          f"waited until stopped; the rerun computed chunk {held_chunk} only")
