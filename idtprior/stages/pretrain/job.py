"""A training stage as a SLURM batch job (``pretrain.launcher: slurm``, or ``pretrain.num_nodes > 1``).

Inside a Prefect task a stage trains with ``ddp_spawn``: the task's process spawns one process per device, which
``srun`` cannot do across machines. Here the stage's task writes a batch script that starts ``idtprior train-stage``
once per GPU on every node (``srun``; Lightning reads each process's rank and the rendezvous from SLURM's environment),
submits it with ``sbatch``, waits for the job to leave the queue and returns the record the job committed. The job
trains, exports and evaluates exactly as the in-process task does (the same function), from a snapshot of the run's
config, and refuses to run when the plan it computes differs from the one the flow submitted (``--fingerprint``).

The stage's lock (``locks/<stage>.lock``, ``idtprior.storage.lock``) is the launcher's: the flow's stage run holds it
while this task submits the job and waits for it, so the job's processes (on other nodes, several per node) take
none. A flow process that dies meanwhile leaves a lock a next run on its host takes over (its pid is gone); that run's
task then finds the job still queued (``jobs/<stage>/<key>/job_id``) and waits for it instead of submitting another.
An ``idtprior train-stage`` started by hand (``sbatch train.sbatch`` again) runs outside any lock.
"""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import task

from idtprior.config import PipelineConfig
from idtprior.runtime.errors import TransientError
from idtprior.runtime.worker import run_logger
from idtprior.sources import SOURCES
from idtprior.storage import ChunkRecord, Workspace

JOBS_DIR = "jobs"
"""In the workspace, ``jobs/<stage>/<record key>/``: one folder per submitted plan (the config snapshot, the batch
script, the job's log); beside ``runs/``, whose superseded folders a committing stage removes."""


def train_command(config: PipelineConfig) -> str:
    """The ``idtprior`` command the job runs: the configured one, else this interpreter's console script (the nodes
    share the file system the flow's environment lives on), else ``idtprior`` on the job's PATH."""
    if config.pretrain.slurm.command:
        return config.pretrain.slurm.command
    script = Path(sys.executable).with_name("idtprior")
    return str(script) if script.is_file() else "idtprior"


def train_job_script(config: PipelineConfig, stage: str, config_file: str | Path, fingerprint: str,
                     job_dir: str | Path, workdir: str | Path | None = None) -> str:
    """The sbatch script of one training stage: ``num_nodes`` nodes x ``devices`` tasks, one process per device.

    ``config_file`` is the run's config (a snapshot, so the job trains what the flow planned even if the file the
    flow read changes); ``fingerprint`` the stage record the flow expects; the job's log goes to
    ``job_dir/slurm-<job id>.out``; the job starts in ``workdir`` (default: this process's), where the config's
    relative paths resolve."""
    shared, slurm = config.pretrain, config.pretrain.slurm
    ws = Workspace(config.workspace)
    gres = slurm.gres if slurm.gres is not None else ("" if shared.accelerator == "cpu" else f"gpu:{shared.devices}")
    directives = [f"--job-name=idtprior-{stage}", f"--nodes={shared.num_nodes}",
                  f"--ntasks-per-node={shared.devices}", f"--cpus-per-task={slurm.cpus_per_task}",
                  f"--mem={slurm.mem}", f"--time={slurm.time}"]
    if gres:
        directives.append(f"--gres={gres}")
    if slurm.partition:
        directives.append(f"--partition={slurm.partition}")
    if slurm.account:
        directives.append(f"--account={slurm.account}")
    directives += [f"--chdir={Path(workdir or os.getcwd()).resolve()}",
                   f"--output={Path(job_dir).resolve() / 'slurm-%j.out'}", *slurm.job_extra_directives]
    cmd = " ".join(shlex.quote(a) for a in [train_command(config), "train-stage", ws.url, stage, "--config",
                                            str(Path(config_file).resolve()), "--fingerprint", fingerprint,
                                            "--sources", SOURCES])  # the job runs the sources this flow runs
    lines = [
        "#!/usr/bin/env bash",
        f"# idtprior: the {stage} stage of {ws.url} on {shared.num_nodes} node(s) x {shared.devices} device(s),",
        "# written by the stage's run; sbatch this file again to rerun it (a finished stage does nothing).",
        *[f"#SBATCH {d}" for d in directives],
        "",
        "set -euo pipefail",
        *slurm.job_script_prologue,
        "# One process first readies the run folder (a shorter run's checkpoint adopted), so that every rank then",
        "# resumes from the same checkpoint.",
        f"{cmd} --prepare-only",
        "# One process per device on every node. Lightning takes each one's rank (SLURM_PROCID, SLURM_LOCALID,",
        "# SLURM_NODEID) and the rendezvous (the first node of SLURM_NODELIST, a port from SLURM_JOB_ID) from SLURM;",
        "# rank 0 exports, evaluates and commits the stage's record when training ends.",
        f"srun --kill-on-bad-exit=1 {cmd}",
        "",
    ]
    return "\n".join(lines)


SLURM_CLIENT_ENV = ("SLURM_CONF",)
"""SLURM variables a submitted job keeps: the commands' configuration, not the submitting job's settings."""


def _slurm_free_env() -> dict[str, str]:
    # submitted from inside another job (a GPU-pool worker started by infra/slurm/gpu-worker.sbatch), the SLURM_*
    # variables of that job would act as defaults of this one (its memory, its task count) and override the script's;
    # SLURM_CONF is no job's setting but where the commands find the cluster (a site's, or infra/slurm/local-slurm.sh's)
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k in SLURM_CLIENT_ENV}


def submit(script: Path) -> str:
    """``sbatch`` the script; returns the job id."""
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                             env=_slurm_free_env(), timeout=120)
    except FileNotFoundError as e:
        raise RuntimeError(f"sbatch not found on PATH ({os.environ.get('PATH', '')}): pretrain.launcher slurm and "
                           f"pretrain.num_nodes > 1 need a SLURM login or compute node") from e
    if out.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]


def job_state(job_id: str) -> str | None:
    """The job's state while SLURM still lists it (PENDING, RUNNING, COMPLETING, ...), None once it has left the
    queue. A failing ``squeue`` (a busy controller) raises ``TransientError``."""
    out = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format", "%T"], capture_output=True, text=True,
                         env=_slurm_free_env(), timeout=120)
    if out.returncode != 0:
        if "invalid job id" in out.stderr.lower():  # finished long enough ago that the controller forgot it
            return None
        raise TransientError(f"squeue --jobs {job_id} failed ({out.returncode}): {out.stderr.strip()}")
    states = [s.strip() for s in out.stdout.splitlines() if s.strip()]
    return states[0] if states else None


def final_state(job_id: str) -> str:
    """What the accounting says the job ended as (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...); '' without sacct."""
    try:
        out = subprocess.run(["sacct", "--noheader", "--allocations", "--parsable2", "--jobs", job_id,
                              "--format", "State"], capture_output=True, text=True, env=_slurm_free_env(), timeout=120)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return ""
    lines = [s.strip() for s in out.stdout.splitlines() if s.strip()]
    return lines[0] if out.returncode == 0 and lines else ""


def wait_for_job(job_id: str, poll_seconds: float, max_query_failures: int = 10) -> str:
    """Poll until the job has left the queue; returns its final state ('' where accounting is off)."""
    failures, last = 0, None
    logger = run_logger()
    while True:
        try:
            state = job_state(job_id)
            failures = 0
        except (TransientError, subprocess.TimeoutExpired) as e:
            failures += 1
            if failures >= max_query_failures:
                raise TransientError(f"SLURM job {job_id}: {failures} queue queries in a row failed; last: {e}") from e
            state = last
        if state is None and failures == 0:
            return final_state(job_id)
        if state != last:
            logger.info(f"SLURM job {job_id}: {state}")
            last = state
        time.sleep(poll_seconds)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@task(name="train-stage-job", task_run_name="{stage} (sbatch)")
def train_stage_job_task(workspace: str, stage: str, chunk: str, fingerprint: str, config: PipelineConfig,
                         progress: bool = True) -> ChunkRecord:
    """Train one stage as a SLURM job and return the record it committed (at once when it is already committed)."""
    ws = Workspace(workspace)
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        return done
    job_dir = Path(ws.path(JOBS_DIR, stage, fingerprint[:16]))
    job_dir.mkdir(parents=True, exist_ok=True)
    logger = run_logger()
    script, job_file = job_dir / "train.sbatch", job_dir / "job_id"
    job_id = job_file.read_text().strip() if job_file.is_file() else ""
    if job_id and job_state(job_id) is not None:
        # a retry of this task (after a lost squeue, a restarted worker): the job it submitted still holds the run
        # folder; a second job would train the same run beside it
        logger.info(f"{stage}: SLURM job {job_id}, submitted earlier for this plan, is still in the queue: waiting")
    else:
        config_file = job_dir / "config.yaml"
        data = config.model_dump(mode="json")
        data["workspace"] = ws.url
        ws.write_bytes_atomic(str(config_file), yaml.safe_dump(data, sort_keys=False).encode())
        ws.write_bytes_atomic(str(script), train_job_script(config, stage, config_file, fingerprint, job_dir).encode())
        job_id = submit(script)
        ws.write_bytes_atomic(str(job_file), job_id.encode())
        logger.info(f"{stage}: SLURM job {job_id} submitted ({config.pretrain.num_nodes} node(s) x "
                    f"{config.pretrain.devices} device(s)); script {script}, log {job_dir / f'slurm-{job_id}.out'}")
    log = job_dir / f"slurm-{job_id}.out"
    state = wait_for_job(job_id, config.pretrain.slurm.poll_seconds)
    record = ws.read_record(stage, chunk)
    if record is None or record.fingerprint != fingerprint:
        raise RuntimeError(f"{stage}: SLURM job {job_id} ended {state or '(no accounting)'} without committing the "
                           f"stage's record; its log {log} ends:\n{_tail(log)}")
    logger.info(f"{stage}: SLURM job {job_id} ended {state or '(no accounting)'}; record committed")
    return record
