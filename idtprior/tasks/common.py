"""What every stage task shares: chunk fingerprints and cache keys, the per-chunk run loop with Dask fan-out, retries
for transient faults only.

A stage task handles one CHUNK of videos (never one video: Prefect costs ~20 ms to 0.6 s per task run). Inside, each
video is one call of a plain function, run on a ``dask.distributed`` client when the flow gave a scheduler address,
else in-process. A video whose processing raises anything but a transient I/O error is recorded as failed with the
error message; the chunk goes on. The chunk's record is committed only when every video has an outcome.
"""

import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from idtprior.storage import ChunkRecord, Workspace, hash_json

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


class TransientError(OSError):
    """An I/O fault worth retrying (a flaky network filesystem, a lost worker)."""


class InjectedFault(RuntimeError):
    """The failure ``IDTPRIOR_FAULT`` asks for (tests and drills only); never transient, so never retried."""


FAULT_ENV = "IDTPRIOR_FAULT"


def maybe_inject_fault(ws: Workspace, stage: str, chunk: str) -> None:
    """Raise ``InjectedFault`` for the chunk named by ``IDTPRIOR_FAULT="<stage>:<chunk>:once"``; inactive when unset.

    It fires once per workspace: a marker ``faults/<stage>-<chunk>`` in the workspace records that it fired, so a
    Retry of the run (a new process, maybe another machine sharing the workspace) succeeds."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) != 3 or parts[2] != "once" or not parts[0] or not parts[1]:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected '<stage>:<chunk>:once' (e.g. 'decode:0001-of-0004:once')")
    if (parts[0], parts[1]) != (stage, chunk):
        return
    marker = ws.path("faults", f"{stage}-{chunk}")
    if ws.fs.exists(marker):
        return
    ws.write_bytes_atomic(marker, f"{spec} fired at {time.time():.3f}\n".encode())
    raise InjectedFault(f"{stage} {chunk}: fault injected by {FAULT_ENV}={spec!r} (fires once per workspace; "
                        f"marker {marker})")


def is_transient(exc: BaseException) -> bool:
    """Retry only faults that a second try can fix; bad videos and bad settings never are."""
    if isinstance(exc, (ValueError, TypeError, KeyError, InjectedFault)):
        return False
    if isinstance(exc, (TransientError, TimeoutError, ConnectionError)):
        return True
    try:
        from distributed.comm.core import CommClosedError

        if isinstance(exc, CommClosedError):
            return True
    except ImportError:
        pass
    return isinstance(exc, OSError)


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only for a transient fault."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify whatever the task raised
        return is_transient(exc)
    return False


def chunk_fingerprint(stage: str, chunk: str, inputs: dict[str, str], config_hash: str, code: str) -> str:
    """Fingerprint of a chunk's work: its videos' input fingerprints, the stage config and the stage's code
    fingerprint (``codeprint.stage_code``)."""
    return hash_json({"stage": stage, "chunk": chunk, "inputs": inputs, "config": config_hash, "code": code})


def cache_key_from_record(context: TaskRunContext, parameters: dict) -> str:
    """Prefect cache key of a chunk task: its stage, chunk and fingerprint.

    The workspace record stays the single source of truth: the flow submits a chunk whose record is missing or stale
    with ``refresh_cache=True`` (see ``needs_refresh``), so a cached result never stands in for deleted outputs.
    """
    return f"idtprior-{parameters['stage']}-{parameters['chunk']}-{parameters['fingerprint']}"


def needs_refresh(ws: Workspace, stage: str, chunk: str, fingerprint: str) -> bool:
    rec = ws.read_record(stage, chunk)
    return rec is None or rec.fingerprint != fingerprint


def get_client(address: str):
    """One ``distributed.Client`` per scheduler address per process, shared by the chunk tasks' threads."""
    from distributed import Client

    with _clients_lock:
        client = _clients.get(address)
        if client is None or client.status not in ("running", "connecting"):
            client = Client(address, set_as_default=False, timeout="60s")
            _clients[address] = client
        return client


def close_clients() -> None:
    with _clients_lock:
        for client in _clients.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        _clients.clear()


def _guard(fn: Callable, video_id: str, *args) -> dict:
    """Run one video's work; turn its failure into a result row unless it is a transient I/O fault."""
    try:
        return {"status": "ok", **(fn(video_id, *args) or {})}
    except Exception as e:  # noqa: BLE001 - a bad video must not fail its chunk
        if is_transient(e) and not isinstance(e, FileNotFoundError):
            raise
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


def run_chunk(
    workspace: str,
    stage: str,
    chunk: str,
    fingerprint: str,
    videos: dict[str, tuple],
    per_video: Callable[..., dict],
    dask_address: str | None = None,
    needs_version: bool = True,
    progress: bool = True,
    annotations: dict[str, dict] | None = None,
    finish: Callable | None = None,
) -> ChunkRecord:
    """Process one chunk: skip it if its record matches ``fingerprint``, else run ``per_video`` and commit.

    ``videos`` maps video id -> extra arguments; ``per_video(video_id, workspace_url, stage, chunk, version, *args)``
    returns a dict of facts for the record (or raises). ``annotations`` (id -> dict) are stored in the record whatever
    the outcome. Keys of a result that start with ``_`` are payload, not record: ``finish(group, results)`` gets them
    with the chunk's version group, to write chunk-level arrays, before the commit. Returns the committed (or found)
    record.
    """
    ws = Workspace(workspace)
    logger = _logger()
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        logger.info(f"{stage} {chunk}: up to date ({len(done.videos)} videos), skipped")
        return done
    t0 = time.time()
    version = ws.new_version(stage, chunk)[0] if needs_version else ""
    ids = sorted(videos)
    results: dict[str, dict] = {}
    tick = video_done_callback(ws.url, stage, chunk) if progress else _no_display
    if dask_address:
        client = get_client(dask_address)
        futures = {client.submit(_guard, per_video, vid, ws.url, stage, chunk, version, *videos[vid],
                                 key=f"{stage}-{chunk}-{version}-{vid}", pure=False): vid for vid in ids}
        from distributed import as_completed

        for fut in as_completed(futures, loop=client.loop):
            results[futures[fut]] = fut.result()
            tick()
    else:
        for vid in ids:
            results[vid] = _guard(per_video, vid, ws.url, stage, chunk, version, *videos[vid])
            tick()
    if finish is not None:
        finish(ws.chunk_group(stage, chunk, version, mode="a"), results)
    results = {vid: {k: v for k, v in res.items() if not k.startswith("_")} for vid, res in results.items()}
    # after the work and before the commit: the worst moment to die (an orphan version, no record)
    maybe_inject_fault(ws, stage, chunk)
    record = ChunkRecord(stage=stage, chunk=chunk, fingerprint=fingerprint, version=version,
                         videos={vid: {**(annotations or {}).get(vid, {}), **results[vid]} for vid in ids}, seconds=round(time.time() - t0, 3))
    ws.commit(record)
    logger.info(f"{stage} {chunk}: {record.n_ok} ok, {record.n_failed} failed in {record.seconds:.1f}s")
    return record


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (task.fn() in tests): plain logging
        import logging

        return logging.getLogger("idtprior")


# The stage flow's progress display (``idtprior.terminal.StageProgress``, ``flows.common.EpochProgress``), per
# (workspace URL, stage), for the tasks that run in the flow's own process (Prefect's thread runner): one display per
# stage counts the chunk tasks' videos, or a training task's epochs. A task elsewhere (another process, a batch job)
# finds none; its chunk still completes the display when its result comes back, and a training stage's epochs are
# read from its run's logs then.
_displays: dict[tuple[str, str], object] = {}
_displays_lock = threading.Lock()


@contextmanager
def showing_progress(workspace_url: str, stage: str, display):
    """While inside, the stage's tasks in this process report to ``display``: ``display.advance(chunk)`` once per
    finished video, ``display.epoch_done(row)`` once per finished training epoch (where it has that method)."""
    with _displays_lock:
        _displays[(workspace_url, stage)] = display
    try:
        yield
    finally:
        with _displays_lock:
            _displays.pop((workspace_url, stage), None)


def video_done_callback(workspace_url: str, stage: str, chunk: str) -> Callable[[], None]:
    """What a chunk task calls per finished video: the stage's display, or nothing where none is shown here."""
    with _displays_lock:
        display = _displays.get((workspace_url, stage))
    return (lambda: display.advance(chunk)) if display is not None else _no_display


def epoch_done_callback(workspace_url: str, stage: str) -> Callable[[dict], None] | None:
    """What a training task calls per finished epoch (``row``: epoch, loss, lr, knn_acc), or None where no display
    of the stage is shown in this process."""
    with _displays_lock:
        display = _displays.get((workspace_url, stage))
    return getattr(display, "epoch_done", None)


def _no_display() -> None:
    pass


def task_options(workspace: Workspace) -> dict:
    """Prefect options every chunk task gets: results persisted in the workspace, cache keyed by the record."""
    opts = dict(cache_key_fn=cache_key_from_record, persist_result=True, retries=2, retry_delay_seconds=[2, 10],
                retry_condition_fn=retry_transient)
    if workspace.results_dir is not None:
        opts["result_storage"] = Path(workspace.results_dir)
    else:
        opts.update(cache_key_fn=None, cache_policy=NO_CACHE, persist_result=False)
    return opts
