"""The Dask cluster a stage runs on (local, an address, SLURM) and ``run_chunks``: a stage's chunk tasks submitted
with their cache keys, their progress shown, their records returned."""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.futures import as_completed
from prefect.logging import get_run_logger

from idtprior.config.base import ConfigError
from idtprior.config.compute import DaskConfig, SlurmConfig
from idtprior.runtime.artifacts import artifact_key
from idtprior.runtime.errors import EnvironmentFault, StageFailed, environment_fault
from idtprior.runtime.keys import needs_refresh, warm_stamps
from idtprior.runtime.progress import ProgressArtifactUpdater, showing_progress, stage_counts, video_counts
from idtprior.runtime.records import report_stage
from idtprior.runtime.worker import close_clients, task_options
from idtprior.storage import ChunkRecord, Workspace
from idtprior.terminal import StageProgress

DASK_ADDRESS_ENV = "IDTPRIOR_DASK_ADDRESS"
"""A scheduler address for runs that name none (set in a worker's environment, e.g. by infra/compose.yaml)."""


@contextmanager
def dask_cluster(cfg: DaskConfig, address: str | None = None) -> Iterator[str | None]:
    """Yield a scheduler address: the one given, the config's, ``$IDTPRIOR_DASK_ADDRESS``, a new cluster's (a
    LocalCluster listening on ``cfg.host``, or SLURM jobs for ``cluster: slurm``), or None (in-process)."""
    address = address or cfg.address or os.environ.get(DASK_ADDRESS_ENV) or None
    if address:
        yield address
        return
    if cfg.cluster == "slurm":
        with slurm_cluster(cfg.slurm) as cluster:
            cluster.scale(jobs=cfg.slurm.jobs)
            try:
                yield cluster.scheduler_address
            finally:
                close_clients()
        return
    if cfg.n_workers == 0:
        yield None
        return
    import dask
    from distributed import LocalCluster

    # the scheduler opens its HTTP endpoints (health, metrics) even without a dashboard, by default on port 8787:
    # a free port instead, so two runs on one machine do not collide. Threads in this process (processes: false)
    # talk through memory (inproc://), which takes no host
    where = {"host": cfg.host} if cfg.processes else {}
    # Dask's nanny writes its pre-spawn environment (OMP/MKL/OpenBLAS_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_) into
    # THIS process's os.environ before each worker starts, and leaves it there: torch imported afterwards (the
    # training stages) ran with one thread on every core count, and processes this one spawns inherited it. The
    # workers get the thread limits through their own environment instead (tune_worker_process sets the rest).
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}), LocalCluster(
            n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker, processes=cfg.processes,
            dashboard_address=None, silence_logs=logging.WARNING, **where,
            scheduler_kwargs={"dashboard_address": f"{cfg.host}:0"}, preload=[WORKER_SETUP],
            **({"env": dict(WORKER_ENV)} if cfg.processes else {})) as cluster:
        try:
            yield cluster.scheduler_address
        finally:
            close_clients()


WORKER_SETUP = "idtprior.runtime.dask_worker"  # preloaded by each worker: its log filter, no profiler
WORKER_ENV = (("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"))
"""The environment of a LocalCluster's worker processes (what Dask's pre-spawn environment gives them, minus the
malloc setting that ``runtime.worker.tune_worker_process`` replaces)."""


def slurm_cluster(cfg: SlurmConfig):
    """dask-jobqueue's ``SLURMCluster`` for ``cfg``, no job submitted yet (``cluster.scale(jobs=n)`` submits;
    ``cluster.job_script()`` shows what each job runs). Its scheduler starts in this process."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as e:
        raise ConfigError("dask.cluster: slurm needs dask-jobqueue; install it with pip install 'idtprior[slurm]'"
                          ) from e
    processes = cfg.processes or cfg.cores
    return SLURMCluster(
        queue=cfg.queue, account=cfg.account, cores=cfg.cores, processes=processes, memory=cfg.memory,
        walltime=cfg.walltime, job_name="idtprior-dask", job_extra_directives=list(cfg.job_extra_directives),
        job_script_prologue=list(cfg.job_script_prologue), python=cfg.python, interface=cfg.interface,
        local_directory=cfg.local_directory, log_directory=cfg.log_directory,
        # each worker's HTTP endpoints (health, metrics) on the node's loopback only: dask's default is every
        # interface, one more open port per process on the compute nodes
        worker_extra_args=["--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--preload", WORKER_SETUP],
        scheduler_options={"dashboard_address": cfg.dashboard_address}, silence_logs=logging.WARNING)


def run_chunks(task, ws: Workspace, stage: str, plans: dict[str, dict], progress: bool = True,
               concurrency: int = 4, progress_artifact: bool = True, display=None) -> dict[str, ChunkRecord]:
    """Submit one task run per chunk (``plans``: chunk -> task kwargs), at most ``concurrency`` at once, and return
    the records.

    Every chunk runs to its end even when another fails; then the first failure is raised, so a rerun finds the
    finished chunks committed and redoes only the rest. ``progress``: the stage's display on the terminal (a bar, or
    a line per chunk; ``idtprior.terminal.StageProgress``). ``progress_artifact``: a progress artifact
    (``artifact_key(ws, stage, "progress")``) updated as each chunk ends, so the UI shows a long stage moving; a
    stage with a finer measure of its own (a training stage: epochs) passes False and keeps the key for it, and
    passes its own ``display`` (``EpochProgress``), which its tasks in this process report to and which it closes.
    A plan's ``legacy`` key (``with_legacy_keys``: what status reads, and the upgrade re-keys by) is no task argument.
    """
    logger = get_run_logger()
    warm_stamps(stage)  # the task threads then parse no source (CPython 3.11's parser is not thread-safe)
    plans = {c: {k: v for k, v in p.items() if k != "legacy"} for c, p in plans.items()}
    configured = task.with_options(**task_options(ws))
    refreshing = configured.with_options(refresh_cache=True)
    pending = sorted(plans.items())
    in_flight: dict = {}
    records: dict[str, ChunkRecord] = {}
    errors: list[tuple[str, BaseException]] = []
    own_display = display is None
    display = StageProgress(stage, plans, logger, enabled=progress) if own_display else display
    artifact = ProgressArtifactUpdater(artifact_key(ws, stage, "progress"), stage, len(plans), "chunks",
                                       logger) if progress_artifact else None
    with showing_progress(ws.url, stage, display):
        while pending or in_flight:
            while pending and len(in_flight) < concurrency:
                chunk, kwargs = pending.pop(0)
                runner = refreshing if needs_refresh(ws, stage, chunk, kwargs["fingerprint"]) else configured
                in_flight[runner.submit(workspace=ws.url, stage=stage, chunk=chunk, **kwargs)] = chunk
            fut = next(as_completed(list(in_flight)))
            chunk = in_flight.pop(fut)
            try:
                records[chunk] = fut.result()
            except Exception as e:  # noqa: BLE001 - collected, raised after the other chunks finish
                errors.append((chunk, e))
                logger.error(f"{stage} {chunk} failed: {e}")
                outcome = "failed"
            else:
                rec = records[chunk]
                outcome = f"{rec.n_ok} ok, {rec.n_failed} failed" if display.unit == "video" else "done"
                outcome += f", {rec.n_retryable} retryable" if display.unit == "video" and rec.n_retryable else ""
            display.finish(chunk, outcome, cached=getattr(fut.state, "name", "") == "Cached",
                           say=chunk in records)  # a failed chunk: its error line above says it
            if artifact is not None:
                videos = video_counts(records) if display.unit == "video" else ""
                artifact.update(len(records), f"{videos}last: {chunk} {outcome}", failed=len(errors))
    if own_display:
        display.close(stage_counts(records, errors, display.unit))
    if errors:
        why = {c: chunk_failure(e) for c, e in errors}
        try:  # the failed stage's summary and failures table: what finished, what failed and why
            report_stage(ws, stage, records, failed_chunks=why)
        except Exception as e:  # noqa: BLE001 - the report must not hide the stage's own failure
            logger.warning(f"{stage}: the failed stage's summary could not be written: {e}")
        chunk, exc = errors[0]
        raise StageFailed(f"{stage}: {len(errors)} of {len(plans)} chunks failed; first: {chunk}: {why[chunk]}") from exc
    return records


def chunk_failure(exc: BaseException) -> str:
    """Why a chunk failed, in one line: the exception's message, named by the fault of the environment behind it."""
    env = environment_fault(exc)
    return f"{env}: {type(exc).__name__}: {exc}" if env and not isinstance(exc, EnvironmentFault) else str(exc)
