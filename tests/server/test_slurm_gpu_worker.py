"""Drill: infra/slurm/gpu-worker.sbatch on a real SLURM (``infra/slurm/local-slurm.sh``, one node here), its resource
requests overridden on the sbatch line to fit this machine (no GPU, two cores): the job starts a Prefect process
worker that takes a stage deployment's run from a real server and completes it. Slow; skipped, saying why, where
SLURM's daemons cannot start."""

import subprocess
import sys
import time

import pytest
import yaml
from idtprior_testutils import write_moving_square_videos
from local_slurm import local_slurm, squeue
from server_process import BIN, REPO

from idtprior.storage import Workspace, read_manifest

pytestmark = pytest.mark.slow
POOL = "idtprior-gpu-slurm"  # a pool of its own: the session's local workers poll idtprior-gpu


def test_the_gpu_worker_job_takes_a_stage_run_from_the_server_and_completes_it(prefect_server, tmp_path):
    server = prefect_server
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump({
        "name": "idtprior-slurm-drill", "prefect-version": "3.9.1",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
        "deployments": [{"name": "slurm", "entrypoint": "idtprior/flows/deployments.py:ingest_ui",
                         "enforce_parameter_schema": True, "work_pool": {"name": POOL}}]}))
    for args in ([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"],
                 [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)]):
        done = subprocess.run(args, cwd=REPO, env=server.env(), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    src = tmp_path / "videos"
    write_moving_square_videos(src, 4, frames=8)
    config = tmp_path / "ingest.yaml"
    config.write_text(yaml.safe_dump({"stages": ["ingest"], "dask": {"n_workers": 0},
                                      "ingest": {"source": str(src), "num_chunks": 2}}))
    with local_slurm() as cluster:
        t0 = time.monotonic()
        submit = subprocess.run(
            ["sbatch", "--parsable", "--gres=none", "--cpus-per-task=1", "--mem=2G", "--time=00:15:00",
             f"--output={tmp_path / 'gpu-worker-%j.out'}", str(REPO / "infra" / "slurm" / "gpu-worker.sbatch")],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env=server.env(SLURM_CONF=str(cluster / "slurm.conf"), IDTPRIOR_VENV=sys.prefix,
                           IDTPRIOR_HOME=str(REPO), IDTPRIOR_GPU_POOL=POOL))
        assert submit.returncode == 0, submit.stderr
        job = submit.stdout.strip().split(";")[0]
        try:
            deadline = time.monotonic() + 120
            while not server.post(f"/work_pools/{POOL}/workers/filter", {}):
                assert time.monotonic() < deadline, f"no worker online; queue {squeue()}, log:\n" + "".join(
                    p.read_text() for p in tmp_path.glob("gpu-worker-*.out"))
                time.sleep(0.5)
            online = time.monotonic() - t0
            deployment = server.deployment("idtprior-ingest", "slurm")
            run = server.run_deployment_like_the_ui(deployment, {"config": str(config),
                                                                 "workspace": str(tmp_path / "ws")})
            run = server.wait_flow_run(run["id"], 300)
            log = "".join(p.read_text() for p in tmp_path.glob("gpu-worker-*.out"))
            assert run["state_type"] == "COMPLETED", (run["state"]["message"], server.logs(run["id"])[-3000:],
                                                      log[-3000:])
            assert run["work_pool_name"] == POOL
            host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
            assert server.workers_of(run["id"]) == {f"idtprior-gpu-{host}-{job}"}  # the job's worker took it
            assert (job, "idtprior-gpu-worker", "RUNNING") in squeue()
        finally:
            subprocess.run(["scancel", job], capture_output=True, timeout=60)
    assert len(read_manifest(Workspace(str(tmp_path / "ws")))) == 4
    print(f"slurm drill: gpu-worker job {job} online {online:.1f} s after sbatch; the ingest run completed in it")
