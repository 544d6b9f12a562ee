"""Flow-level plumbing shared by the stage flows: the Dask cluster, chunk submission with progress, the manifest
rebuild, and the failure artifacts (artifacts are made at flow level: a cached task does not re-create its own)."""

import hashlib
import json
import logging
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                                update_progress_artifact)
from prefect.futures import as_completed
from prefect.logging import get_run_logger

from idtprior.config import STAGES, ConfigError, DaskConfig, SlurmConfig
from idtprior.storage import (STATUS_DUPLICATE, STATUS_FAILED, STATUS_OK, STATUS_RETRYABLE, ChunkRecord, ManifestRow,
                              Workspace, chunk_count, write_manifest)
from idtprior.storage.lock import manifest_lock
from idtprior.storage.workspace import gc_paused
from idtprior.tasks.common import (EnvironmentFault, close_clients, environment_fault, needs_refresh, run_logger,
                                   showing_progress, task_options, warm_stamps)
from idtprior.terminal import EpochDisplay, StageProgress, epoch_text

ARTIFACT_PREFIX = "idtprior"


def _slug(text: str) -> str:
    """Lowercase letters, digits and single dashes only (Prefect's rule for artifact keys)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def workspace_slug(ws: "Workspace | str") -> str:
    """The workspace's folder name slugified, plus 6 hex chars of sha1 of its URL: two workspaces with one folder
    name (``/a/demo``, ``/b/demo``) on one server get different keys, the same workspace always the same one."""
    url = ws.url if isinstance(ws, Workspace) else _workspace_url(ws)
    name = _slug(url.rstrip("/").rsplit("/", 1)[-1])[:40].strip("-") or "workspace"
    return f"{name}-{hashlib.sha1(url.encode()).hexdigest()[:6]}"


def _workspace_url(path: str) -> str:
    """``Workspace(path).url`` (one key per workspace however it is spelled), without creating a local folder."""
    import fsspec

    fs, local = fsspec.core.url_to_fs(str(path))
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        from pathlib import Path

        return str(Path(local).resolve())
    return Workspace(path).url


def artifact_key(ws: "Workspace | str", stage: str, what: str) -> str:
    """The key of a stage's artifact: ``idtprior-<workspace slug>-<stage>-<what>`` (``what``: summary, failures,
    progress, ...), so one workspace's history of one artifact stays together on a shared server and apart from
    every other workspace's."""
    if not _slug(stage) or not _slug(what):
        raise ValueError(f"artifact_key: stage {stage!r} and what {what!r} must hold a letter or digit")
    return f"{ARTIFACT_PREFIX}-{workspace_slug(ws)}-{_slug(stage)}-{_slug(what)}"


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


WORKER_SETUP = "idtprior.flows.dask_worker"  # preloaded by each worker: its log filter, no profiler
WORKER_ENV = (("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"))
"""The environment of a LocalCluster's worker processes (what Dask's pre-spawn environment gives them, minus the
malloc setting that ``tasks.common.tune_worker_process`` replaces)."""


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


FAISS_SENSITIVE = ("cluster", "pretrain_ir", "pretrain_la", "tune_joint", "pretrain_la_bank", "supervised",
                   "evaluate")
"""Stages whose k-means chose faiss by itself before behaviour versions, whenever faiss was importable: where it is
importable now, their legacy records may hold faiss's labels, and are not re-keyed (they recompute, with numpy)."""


def with_legacy_keys(ws: Workspace, stage: str, plans: dict[str, dict], replan) -> dict[str, dict]:
    """Mark each chunk of ``plans`` with the key it had under the legacy scheme (``plan["legacy"]``:
    {"fingerprint", and for a trained network "train_fingerprint"}), computed by ``replan()`` under
    ``keyscheme.legacy_keys``, when the workspace still holds records of ``stage`` made before behaviour versions;
    ``plans`` unchanged otherwise (a workspace made or upgraded since plans once)."""
    from idtprior.keyscheme import UPGRADED, legacy, legacy_keys

    if legacy() or ws.fs.exists(ws.path(*UPGRADED)) or all(r.behaviour for r in ws.records(stage).values()):
        return plans
    if stage in FAISS_SENSITIVE:
        from idtprior.encoding.kmeans import faiss_available

        if faiss_available():
            return plans
    with legacy_keys():
        try:
            old = replan()
        except (ConfigError, KeyError, FileNotFoundError, ValueError):  # what the legacy scheme cannot plan: no reuse
            return plans
    for chunk, plan in plans.items():
        if chunk in old:
            plan["legacy"] = {k: old[chunk][k] for k in ("fingerprint", "train_fingerprint") if k in old[chunk]}
    return plans


def rekey_legacy(ws: Workspace, stage: str, plans: dict[str, dict], variant: str) -> int:
    """Re-key in place the records of ``stage`` whose key is their chunk's legacy key (``with_legacy_keys``): computed
    by the code at the switch to behaviour versions, from the same inputs and settings, so they are this plan's
    results; ``variant``: the code they are stamped with (``flows.stages.stage_variant``). Drops the ``legacy``
    entries from ``plans``; returns how many records were re-keyed."""
    from idtprior.tasks.codeprint import code_key, pins, variant_of

    done = 0
    for chunk, plan in plans.items():
        old = plan.pop("legacy", None)
        if old is None or old["fingerprint"] == plan["fingerprint"]:
            continue
        rec = ws.read_record(stage, chunk)
        if rec is None or rec.behaviour or rec.fingerprint != old["fingerprint"]:
            continue
        name = variant_of(variant)
        stamp = {"behaviour": code_key(name), "code": pins()[name]["at_switch"]}
        train = (old["train_fingerprint"], plan["train_fingerprint"]) if "train_fingerprint" in old else None
        done += ws.rekey(stage, chunk, old["fingerprint"], plan["fingerprint"], stamp, train)
    if done:
        run_logger().info(f"{stage}: {done} records made before behaviour versions re-keyed in place (same code, "
                       f"inputs and settings: nothing recomputed)")
    return done


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
                videos = _video_counts(records) if display.unit == "video" else ""
                artifact.update(len(records), f"{videos}last: {chunk} {outcome}", failed=len(errors))
    if own_display:
        display.close(_stage_counts(records, errors, display.unit))
    if errors:
        chunk, exc = errors[0]
        env = environment_fault(exc)
        why = f"{env}: {type(exc).__name__}: {exc}" if env and not isinstance(exc, EnvironmentFault) else str(exc)
        raise RuntimeError(f"{stage}: {len(errors)} of {len(plans)} chunks failed; first: {chunk}: {why}") from exc
    return records


def _video_counts(records: dict[str, ChunkRecord]) -> str:
    """``"N videos ok, M failed; "`` over the committed chunks (with the retryable ones where there are some)."""
    ok = sum(r.n_ok for r in records.values())
    bad = sum(r.n_failed for r in records.values())
    retryable = sum(r.n_retryable for r in records.values())
    return f"{ok} videos ok, {bad} failed" + (f" ({retryable} retryable)" if retryable else "") + "; "


def _stage_counts(records: dict[str, ChunkRecord], errors: list, unit: str) -> str:
    failed = f", {len(errors)} chunks failed" if errors else ""
    if unit != "video":
        return f"{len(errors)} of {len(records) + len(errors)} chunks failed" if errors else ""
    ok = sum(r.n_ok for r in records.values())
    bad = sum(r.n_failed for r in records.values())
    return f"{ok} videos ok, {bad} failed{failed}"


class ProgressArtifactUpdater:
    """A progress artifact (``create_progress_artifact``) of ``total`` steps, updated in place at each step: one
    artifact per stage run under the stage's ``progress`` key, its description saying how many steps are done.

    Made at flow level, like every artifact here. A failed update (the API unreachable for a moment) is logged once
    and skipped: the stage's own work never fails for its progress display."""

    def __init__(self, key: str, stage: str, total: int, what: str, logger):
        self.stage, self.total, self.what, self.logger = stage, total, what, logger
        self.id = None
        try:
            self.id = create_progress_artifact(100.0 if total == 0 else 0.0, key=key,
                                               description=f"{stage}: 0 of {total} {what} done")
        except Exception as e:  # noqa: BLE001 - progress only; the work goes on
            self._skip(e)

    def update(self, done: int, note: str = "", failed: int = 0) -> None:
        """``done`` steps finished well and ``failed`` failed (the bar counts both as ended); the description says
        both, and how many are still to run: "decode: 2 of 4 chunks done, 2 failed; ...", never a failure as done."""
        if self.id is None:
            return
        ended = done + failed
        percent = 100.0 * ended / self.total if self.total else 100.0
        left = self.total - ended
        text = (f"{self.stage}: {done} of {self.total} {self.what} done" + (f", {failed} failed" if failed else "")
                + (f", {left} to run" if left > 0 else "") + (f"; {note}" if note else ""))
        try:
            update_progress_artifact(self.id, percent, description=text)
        except Exception as e:  # noqa: BLE001 - progress only; the work goes on
            self._skip(e)

    def _skip(self, error: Exception) -> None:
        self.logger.warning(f"{self.stage}: the progress artifact could not be written ({error}); the stage goes on "
                            f"without it")
        self.id = None


class EpochProgress:
    """A training stage's progress while it runs, per epoch: on the terminal (``EpochDisplay``), as a progress
    artifact (``artifact_key(ws, stage, "progress")``: epochs done of the stage's epochs) and as a table artifact of
    one row per epoch (``artifact_key(ws, stage, "epochs")``: epoch, loss, lr, knn_acc), both made here at flow level
    and updated in place. Fed by the training task through ``epoch_done`` where it runs in this process;
    ``complete(rows)`` sets the table from the run's logs at the end (a cached stage, a job elsewhere, a resumed
    run's earlier epochs). As a ``run_chunks`` display it passes on the task's chunk events silently."""

    unit = "chunk"

    def __init__(self, ws: Workspace, stage: str, epochs: int, logger, enabled: bool = True,
                 rows: list[dict] | None = None):
        self.stage, self.epochs, self.logger = stage, epochs, logger
        self.rows: dict[int, dict] = {r["epoch"]: r for r in rows or []}
        self.cached = False
        self._lock = threading.Lock()
        self.terminal = EpochDisplay(stage, epochs, logger, enabled)
        self.progress = ProgressArtifactUpdater(artifact_key(ws, stage, "progress"), stage, epochs, "epochs", logger)
        self.table_id = None
        try:
            self.table_id = create_table_artifact(key=artifact_key(ws, stage, "epochs"), table=self._table(),
                                                  description=f"{stage}: one row per finished epoch")
        except Exception as e:  # noqa: BLE001 - progress only; the work goes on
            logger.warning(f"{stage}: the epochs table artifact could not be written ({e}); the stage goes on")

    def _table(self) -> list[dict]:
        return [self.rows[e] for e in sorted(self.rows)]

    def advance(self, chunk: str) -> None:
        pass

    def finish(self, chunk: str, outcome: str, cached: bool = False, say: bool = True) -> None:
        self.cached = cached

    def epoch_done(self, row: dict) -> None:
        with self._lock:
            self.rows[row["epoch"]] = row
            self._publish(f"epoch {row['epoch']}: {epoch_text(row)}")
        self.terminal.epoch_done(row)

    def complete(self, rows: list[dict]) -> None:
        """The run's epochs as its logs hold them (every epoch, across restarts): the table's final rows."""
        with self._lock:
            self.rows = {r["epoch"]: r for r in rows}
            last = self._table()[-1] if self.rows else None
            self._publish(f"last epoch {last['epoch']}: {epoch_text(last)}" if last else "no epoch logged")

    def _publish(self, note: str) -> None:
        done = min(max(self.rows, default=0), self.epochs)
        self.progress.update(done, note)
        if self.table_id is None:
            return
        try:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.actions import ArtifactUpdate

            with get_client(sync_client=True) as client:
                client.update_artifact(self.table_id, ArtifactUpdate(data=json.dumps(self._table())))
        except Exception as e:  # noqa: BLE001 - progress only; the work goes on
            self.logger.warning(f"{self.stage}: the epochs table artifact could not be updated ({e})")
            self.table_id = None

    def close(self, summary: str = "") -> None:
        """The stage's end line: cached or not, its epochs and loss, then ``summary`` (e.g. the kNN accuracies)."""
        rows = self._table()
        parts = ["cached"] if self.cached else []
        if rows:
            parts.append(f"{len(rows)} epochs, loss {rows[0].get('loss')} -> {rows[-1].get('loss')}")
        self.terminal.close(", ".join(parts + ([summary] if summary else [])))


RETRY_CHOICES = ("retryable", "all")
"""``idtprior run --retry-failed [retryable|all]``: the videos a run tries again."""


def reopen_failures(ws: Workspace, stage: str, which: str) -> dict[str, int]:
    """Make the next run of ``stage`` compute again every chunk that holds a video recorded ``retryable`` (a fault of
    the environment), or also ``failed`` with ``which="all"``: each such record is marked (``Workspace.invalidate``),
    so its chunk no longer matches its plan, and Prefect's cached result of the chunk is refreshed. The chunk is
    recomputed under the same key; what the retry changes goes into its ``retried``, which downstream keys hold
    (``ChunkRecord.content_key``), so the stages after it recompute what read the old outcomes. Takes the stage's
    lock. Returns chunk -> videos reopened."""
    if which not in RETRY_CHOICES:
        raise ConfigError(f"--retry-failed {which!r}: expected one of {list(RETRY_CHOICES)}")
    statuses = {STATUS_RETRYABLE} | ({STATUS_FAILED} if which == "all" else set())
    from idtprior.storage.lock import stage_lock
    from idtprior.tasks.common import RETRY_REASON

    out: dict[str, int] = {}
    with stage_lock(ws, stage):
        for chunk, rec in ws.records(stage).items():
            n = sum(1 for info in rec.videos.values() if info.get("status") in statuses)
            if n and chunk_count(chunk) is not None and ws.invalidate(
                    stage, chunk, rec.fingerprint, f"{RETRY_REASON}: {n} videos ({which})"):
                out[chunk] = n
    if out:
        run_logger().info(f"{stage}: {sum(out.values())} recorded failures ({which}) in {len(out)} chunks will be "
                       f"tried again: {', '.join(sorted(out))}")
    return out


def drop_stale_records(ws: Workspace, stage: str, keep: set[str], num_chunks: int | None = None) -> None:
    """Remove records (and data) of chunks of the current chunking that no longer hold any video.

    The current chunking is the workspace's (``ws.records`` lists only its chunks; ingest removes other chunkings'
    when it commits a new one), not ``num_chunks``: a stage run with a config whose ``ingest.num_chunks`` differs
    from the last ingest's still plans the manifest's chunks and must drop its emptied ones. Whole-dataset records
    (``all``) are never dropped here."""
    for chunk in ws.records(stage):
        if chunk_count(chunk) is not None and chunk not in keep:
            ws.fs.rm(ws.record_path(stage, chunk))
            ws.remove_stale_versions(stage, chunk, keep=None)


def rebuild_manifest(ws: Workspace) -> list[ManifestRow]:
    """The manifest from the records: ingest's probe facts, duplicates by fingerprint, then the failures of later
    stages (in ``failed_in`` and ``error``; ``status`` stays ingest's, so no later failure changes any stage's plan).
    Written atomically; returns the rows.

    Every stage rebuilds it when it ends, and two stages of one workspace may end together: the read of the records
    and the write are one step under the manifest's lock (``storage.lock.manifest_lock``, waited for), so a rebuild
    that read the records before another stage committed never overwrites that stage's newer manifest."""
    with manifest_lock(ws), gc_paused():
        return _rebuild_manifest(ws)


def _rebuild_manifest(ws: Workspace) -> list[ManifestRow]:
    # ``ws.records`` lists only the workspace's current chunking: filtering on the config's ``num_chunks`` too would
    # empty the manifest when a later stage runs with a config whose num_chunks differs from the last ingest's
    rows: dict[str, ManifestRow] = {}
    for chunk, rec in ws.records("ingest").items():
        for vid, info in rec.videos.items():
            if info["status"] == STATUS_OK:
                rows[vid] = ManifestRow(
                    video_id=vid, path=info.get("path", ""), fingerprint=info["fingerprint"],
                    duration=info["duration"], fps=info["fps"], frame_count=info["frame_count"], width=info["width"],
                    height=info["height"], codec=info["codec"], label=info.get("label", ""),
                    split=info.get("split", ""), status=STATUS_OK, chunk=chunk)
            else:
                rows[vid] = ManifestRow(video_id=vid, path=info.get("path", ""), label=info.get("label", ""),
                                        split=info.get("split", ""), chunk=chunk, status=info["status"],
                                        error=f"ingest: {info.get('error', '')}")
    first_by_content: dict[str, str] = {}
    for vid in sorted(rows):
        row = rows[vid]
        if row.status != STATUS_OK:
            continue
        if row.fingerprint in first_by_content:
            row.status, row.duplicate_of = STATUS_DUPLICATE, first_by_content[row.fingerprint]
            row.error = f"ingest: same content as {row.duplicate_of}"
        else:
            first_by_content[row.fingerprint] = vid
    for stage in STAGES[1:]:
        for chunk, rec in ws.records(stage).items():
            if chunk_count(chunk) is None:  # whole-dataset records (``all``) hold no per-video outcome
                continue
            for vid, info in [(v, i) for v, i in rec.videos.items()
                              if i.get("status") in (STATUS_FAILED, STATUS_RETRYABLE)]:
                row = rows.get(vid)
                if row is not None and row.status == STATUS_OK:
                    row.failed_in = ",".join(filter(None, [row.failed_in, stage]))
                    row.error = row.error or f"{stage}: {info.get('error', '')}"
    out = sorted(rows.values(), key=lambda r: r.video_id)
    write_manifest(ws, out)
    return out


def provenance_lines(ws: Workspace, stage: str, chunks) -> list[str]:
    """``tasks.pins.provenance`` of the stage's records of ``chunks`` as committed (where this environment differs
    from the one that computed them, code re-pinned since), logged as warnings too. Read from the workspace: a chunk
    task Prefect served from its cache returns the record as it was first committed."""
    from idtprior.tasks.pins import provenance

    lines = provenance(stage, [ws.read_record(stage, chunk) for chunk in chunks])
    for line in lines:
        run_logger().warning(f"{stage}: {line}")
    return lines


def report_stage(ws: Workspace, stage: str, records: dict[str, ChunkRecord], extra: list[dict] | None = None) -> dict:
    """Make the stage's artifacts (a summary and a table of per-video failures, keyed by ``artifact_key``) and return
    the counts."""
    ok = sum(r.n_ok for r in records.values())
    failed = {vid: info.get("error", "") for r in records.values() for vid, info in r.videos.items()
              if info.get("status") == STATUS_FAILED}
    retryable = {vid: info.get("error", "") for r in records.values() for vid, info in r.videos.items()
                 if info.get("status") == STATUS_RETRYABLE}
    no_boxes = sum(1 for r in records.values() for info in r.videos.values() if info.get("no_boxes"))
    counts = {"stage": stage, "chunks": len(records), "videos_ok": ok, "videos_failed": len(failed)}
    if retryable:
        counts["videos_retryable"] = len(retryable)
    if no_boxes:
        counts["videos_without_boxes"] = no_boxes
    table = [{"video_id": vid, "error": err} for vid, err in sorted(failed.items())] + [
        {"video_id": vid, "error": f"retryable (`idtprior run --retry-failed`): {err}"}
        for vid, err in sorted(retryable.items())] + (extra or [])
    notes = "".join(f"\n- {line}" for line in provenance_lines(ws, stage, records))
    if no_boxes:
        notes += (f"\n- {no_boxes} videos ran without person boxes: their detection failed (the failures table of "
                  f"detect says why)")
    more = f", {len(retryable)} retryable" if retryable else ""
    create_markdown_artifact(
        key=artifact_key(ws, stage, "summary"),
        markdown=f"## {stage}\n\n| chunks | videos ok | videos failed | retryable (environment) |\n|---|---|---|---|\n"
                 f"| {len(records)} | {ok} | {len(failed)} | {len(retryable)} |\n" + (
                     f"\n**How it was computed:**\n{notes}\n" if notes else ""),
        description=f"{stage}: {ok} ok, {len(failed)} failed{more}")
    if table:
        create_table_artifact(key=artifact_key(ws, stage, "failures"), table=table,
                              description=f"{stage}: videos that failed")
    hint = (f" ({len(retryable)} for a fault of the environment: `idtprior run CONFIG --retry-failed` tries them "
            f"again)" if retryable else "")
    get_run_logger().info(f"{stage}: {len(records)} chunks, {ok} videos ok, {len(failed)} failed{more}{hint}")
    return counts


def group_by_chunk(items: dict[str, object], chunk_of_video: dict[str, str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = defaultdict(dict)
    for vid, value in items.items():
        out[chunk_of_video[vid]][vid] = value
    return dict(out)
