"""infra/slurm/gpu-worker.sbatch: its directives, and what it runs (with a stand-in ``prefect`` on PATH: no SLURM
here, and the real worker would poll a server forever)."""

import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU_WORKER = ROOT / "infra" / "slurm" / "gpu-worker.sbatch"


def sbatch_directives(text: str) -> dict[str, str]:
    """The ``#SBATCH --key=value`` lines sbatch reads: those before the first command line."""
    out = {}
    for line in text.splitlines()[1:]:
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].partition("=")
            out[key] = value
        elif line.strip() and not line.startswith("#"):
            break  # sbatch stops reading directives at the first command
    return out


def test_the_gpu_worker_job_asks_for_one_gpu_node_and_a_day():
    text = GPU_WORKER.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    d = sbatch_directives(text)
    assert d == {"--job-name": "idtprior-gpu-worker", "--nodes": "1", "--ntasks": "1", "--gres": "gpu:1",
                 "--cpus-per-task": "16", "--mem": "64G", "--time": "24:00:00", "--export": "ALL",
                 "--output": "idtprior-gpu-worker-%j.out"}
    assert "AUTH_STRING=" not in text.replace("export PREFECT_API_AUTH_STRING=user:password", "")  # no secret in it
    assert subprocess.run(["bash", "-n", str(GPU_WORKER)]).returncode == 0


def _fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv / "bin"}:$PATH"\n')
    prefect = venv / "bin" / "prefect"
    prefect.write_text('#!/usr/bin/env bash\necho "cwd=$PWD"\necho "auth=${PREFECT_API_AUTH_STRING:-}"\n'
                       'echo "job name=${SLURM_JOB_NAME:-}"\nprintf "%s\\n" "$@"\n')
    prefect.chmod(0o755)
    return venv


def test_the_job_starts_a_process_worker_of_the_gpu_pool_named_after_its_node(tmp_path):
    venv = _fake_venv(tmp_path)
    clone = tmp_path / "clone"
    clone.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PREFECT_API_URL": "http://head:4200/api",
           "PREFECT_API_AUTH_STRING": "admin:s3cret", "IDTPRIOR_VENV": str(venv), "SLURM_JOB_ID": "4242",
           "SLURM_SUBMIT_DIR": str(clone), "SLURM_JOB_NAME": "idtprior-gpu-worker", "SLURM_NTASKS": "1"}
    out = subprocess.run(["bash", str(GPU_WORKER)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"cwd={clone}" and lines[1] == "auth=admin:s3cret"  # from the environment, not the file
    # Lightning must not read the worker's batch job as an srun-launched training job (its ddp_spawn would get
    # world size 1 and rank 0 in every process); the job name is its documented opt-out
    assert lines[2] == "job name=interactive"
    host = socket.gethostname().split(".")[0]
    assert lines[3:] == ["worker", "start", "--pool", "idtprior-gpu", "--type", "process", "--limit", "1", "--name",
                         f"idtprior-gpu-{host}-4242"]
    import prefect.cli  # noqa: F401 - registers the subcommands
    from prefect.cli._app import _app

    _, bound, _ = _app.parse_args(lines[3:])  # the installed Prefect's CLI accepts it
    assert bound.arguments["work_pool_name"] == "idtprior-gpu" and bound.arguments["worker_type"] == "process"


def test_without_a_server_address_or_a_venv_the_job_stops_and_says_which(tmp_path):
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SLURM_SUBMIT_DIR": str(tmp_path)}
    out = subprocess.run(["bash", str(GPU_WORKER)], env=base, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "PREFECT_API_URL" in out.stderr
    out = subprocess.run(["bash", str(GPU_WORKER)], env={**base, "PREFECT_API_URL": "http://h:4200/api"},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f"no prefect in {tmp_path}/.venv" in out.stderr


def test_lightning_reads_a_batch_job_as_srun_launched_unless_its_name_is_interactive(monkeypatch):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "idtprior-gpu-worker")
    assert SLURMEnvironment.detect()  # why gpu-worker.sbatch renames its job for the worker's children
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    assert not SLURMEnvironment.detect()


LOCAL_SLURM = ROOT / "infra" / "slurm" / "local-slurm.sh"


def test_the_local_slurm_script_parses_and_asks_for_a_one_node_cluster_of_its_own(tmp_path):
    """The structure of infra/slurm/local-slurm.sh, in seconds (the drills that start it are slow:
    tests/infra/test_slurm_drills.py, tests/server/test_slurm_gpu_worker.py)."""
    assert subprocess.run(["bash", "-n", str(LOCAL_SLURM)]).returncode == 0
    text = LOCAL_SLURM.read_text()
    for line in ("ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
                 "StateSaveLocation=$dir/state", "SlurmdSpoolDir=$dir/spool", "SlurmctldPidFile=$dir/slurmctld.pid",
                 "SlurmdPidFile=$dir/slurmd.pid", "AuthInfo=socket=$dir/munge-socket/munge.socket",
                 "NodeName=$host CPUs=$cpus RealMemory=$mem_mb"):
        assert line in text, line
    out = subprocess.run(["bash", str(LOCAL_SLURM)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "usage:" in out.stderr
    # without SLURM on PATH it says what to install and starts nothing
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # the daemons are in /usr/sbin
    out = subprocess.run(["/bin/bash", str(LOCAL_SLURM), "up", str(tmp_path / "c")], env=bare, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 3 and "munged not found (apt-get install -y slurm-wlm munge)" in out.stderr
    assert not (tmp_path / "c" / "slurm.conf").exists()
    # down with nothing running stops nothing and succeeds
    out = subprocess.run(["/bin/bash", str(LOCAL_SLURM), "down", str(tmp_path / "c")], env=bare,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
