"""What runs a chunk: the per-chunk loop of every chunk task (``run_chunk``: skip a current chunk, run each video on
Dask or here, commit the record), the per-video guard that turns a bad video into a failed row, a Dask worker's
process set-up, and the Prefect options every chunk task gets.

A stage task handles one CHUNK of videos (never one video: Prefect costs ~20 ms to 0.6 s per task run). Inside, each
video is one call of a plain function, run on a ``dask.distributed`` client when the flow gave a scheduler address,
else in-process. A video whose processing raises anything but a transient I/O error is recorded as failed with the
error message; the chunk goes on. The chunk's record is committed only when every video has an outcome. A full disk
(``ENOSPC``, ``EDQUOT``) is no video's fault: it fails the chunk (``DiskFull``, naming stage and chunk, never
retried) and commits nothing."""

import ctypes
import errno
import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from idtprior.runtime.errors import (MISSING_RETRY_S, DiskFull, EnvironmentFault, disk_full, environment_fault,
                                     is_transient, missing_file, retry_transient)
from idtprior.runtime.keys import cache_key_from_record, stamp
from idtprior.runtime.progress import no_display, video_done_callback
from idtprior.sources import StaleCode, check_worker, snapshot
from idtprior.storage import STATUS_RETRYABLE, ChunkRecord, Workspace, hash_json
from idtprior.storage.integrity import IntegrityError
from idtprior.storage.upstream import Upstream, UpstreamChanged, check_upstream
from idtprior.testing import fault_kind, maybe_inject_fault, video_fault

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


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


def _guard(fn: Callable, video_id: str, *args, final: bool = True) -> dict:
    """Run one video's work; turn its failure into a result row unless it is the chunk's (``_failed``). A missing
    input file is tried again after ``MISSING_RETRY_S`` in every stage but ingest (which is where a listed file that
    does not exist is first seen)."""
    pauses = list(MISSING_RETRY_S) if args[1] != "ingest" else []
    while True:
        try:
            return {"status": "ok", **(fn(video_id, *args) or {})}
        except Exception as e:  # noqa: BLE001 - a bad video must not fail its chunk
            if pauses and missing_file(e) and not isinstance(e, (IntegrityError, UpstreamChanged)):
                time.sleep(pauses.pop(0))
                continue
            return _failed(e, final)


def _failed(e: Exception, final: bool = True) -> dict:
    """A video's failure as its result row; raised instead where it is the chunk's fault.

    - a full disk, damaged stored data (``IntegrityError``: as a video's failure it would be cached under an unchanged
      key), an upstream record changed since planning: the chunk's, always;
    - a fault of the environment (``environment_fault``: memory, device, driver, unavailable storage, a store deleted
      while read) or another transient I/O fault: the chunk's while the task has retries left; on its last attempt, a
      ``retryable`` row (``run_chunk`` still fails the chunk when no video of it got through);
    - anything else, a file that stayed missing (``_guard`` tried it again) among them: the video's failure."""
    if disk_full(e) is not None or isinstance(e, (IntegrityError, UpstreamChanged, StaleCode)):
        raise e
    env = environment_fault(e)
    if env is not None or (is_transient(e) and not missing_file(e)):
        if not final:
            raise e
        return {"status": STATUS_RETRYABLE, "error": f"{env or 'a transient fault'}: {type(e).__name__}: {e}"[:2000]}
    return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


def _guard_batch(fn: Callable, video_ids: list[str], *args, final: bool = True) -> dict[str, dict]:
    """Run a batch of videos' work: ``fn(video_ids, *args)`` returns each video's result dict, or the exception that
    video failed with (a failure of the batch as a whole propagates: it is the chunk's)."""
    out = fn(video_ids, *args)
    return {v: _failed(out[v], final) if isinstance(out[v], Exception) else {"status": "ok", **(out[v] or {})}
            for v in video_ids}


def last_attempt() -> bool:
    """True on the chunk task's last attempt (its retries used up), and outside a task run (no retry to come)."""
    ctx = TaskRunContext.get()
    if ctx is None or ctx.task_run is None:
        return True
    return ctx.task_run.run_count > (ctx.task.retries or 0)


_TUNED_THREADS: int | None = None


def tune_worker_process(threads: int = 1) -> None:
    """Set up a process that runs videos (a Dask worker), once per process:

    - OpenCV, BLAS/OpenMP (threadpoolctl) and torch intra-op threads set to ``threads``: a Dask worker runs its videos
      one per worker thread, and each video's OpenCV and BLAS calls would otherwise start a thread per core of the
      machine on top (16 workers x 16 threads on a 16-core host);
    - glibc's malloc keeps freed arrays of up to 32 MiB in the heap: Dask's nanny starts workers with
      ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes the mmap threshold at its 128 KiB minimum, so every frame-sized
      array is a fresh mmap whose pages fault in again (IDT on the demo's videos: 1.25 s a video instead of 0.79, the
      difference all system time). Freed memory is still returned above 256 MiB of free heap.
    """
    global _TUNED_THREADS
    if _TUNED_THREADS == threads:
        return
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(threads)
    threadpool_limits(limits=threads)  # kept for the process: not used as a context
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    _heap_for_arrays()
    _TUNED_THREADS = threads


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _heap_for_arrays(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """glibc's ``mallopt``: allocations below ``mmap_threshold`` from the heap, trimmed above ``trim_threshold``;
    False where the C library is not glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def _guard_on_worker(sources: str, final: bool, fn: Callable, video_id: str, *args) -> dict:
    """:func:`_guard` on a Dask worker set up by :func:`tune_worker_process` (one native thread per video), once the
    worker has shown that it runs the flow's ``sources`` (``idtprior.sources.check_worker``: a worker that imported
    older code fails the chunk, not the video)."""
    check_worker(sources, f"{args[1]} {args[2]} video {video_id}")
    tune_worker_process(1)
    return _guard(fn, video_id, *args, final=final)


def _guard_batch_on_worker(sources: str, final: bool, fn: Callable, video_ids: list[str], *args) -> dict[str, dict]:
    """:func:`_guard_batch` on a Dask worker set up by :func:`tune_worker_process`, its sources checked first."""
    check_worker(sources, f"{args[1]} {args[2]} videos {video_ids[0]}+{len(video_ids)}")
    tune_worker_process(1)
    return _guard_batch(fn, video_ids, *args, final=final)


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
    batch_size: int = 0,
    variant: str | None = None,
    upstream: Upstream | None = None,
) -> ChunkRecord:
    """Process one chunk: skip it if its record matches ``fingerprint``, else run ``per_video`` and commit.

    ``videos`` maps video id -> extra arguments; ``per_video(video_id, workspace_url, stage, chunk, version, *args)``
    returns a dict of facts for the record (or raises). ``annotations`` (id -> dict) are stored in the record whatever
    the outcome. Keys of a result that start with ``_`` are payload, not record: ``finish(group, results)`` gets them
    with the chunk's version group, to write chunk-level arrays, before the commit. Returns the committed (or found)
    record.

    ``batch_size`` > 0: ``per_video`` takes the videos a batch at a time (in id order), as
    ``per_video(video_ids, workspace_url, stage, chunk, version, args_list)``, and returns id -> result dict, or the
    exception that video failed with (the batched IDT extractor: a batch is one call on the device). The fault
    injection of the drills (``IDTPRIOR_FAULT``) wraps per-video work only. ``variant``: the code the record says
    computed it, where not the stage's own (``decode@jpeg``, ``idt@torch``, ``encode@torch``). ``upstream``: the
    upstream records the key was planned from, checked before any work and again before the commit
    (``storage.upstream``: ``UpstreamChanged`` fails the chunk, nothing committed).
    """
    ws = Workspace(workspace)
    logger = run_logger()
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        logger.info(f"{stage} {chunk}: up to date ({len(done.videos)} videos), skipped")
        ws.remove_orphans(stage, chunk, keep=done.version)  # what a commit killed after its record rename left
        return done
    check_upstream(ws, upstream, f"{stage} {chunk}")
    final = last_attempt()  # environment faults: the chunk's while retries are left, then the lone video's
    t0 = time.time()
    ids = sorted(videos)
    kind = fault_kind(stage, chunk)
    if kind not in (None, "once") and ids and not batch_size:
        per_video = functools.partial(video_fault, per_video, kind, ids[-1])
    units = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)] if batch_size else [[v] for v in ids]
    results: dict[str, dict] = {}
    tick = video_done_callback(ws.url, stage, chunk) if progress else no_display
    writing = None  # the video whose work (or, after the loop, the chunk step) a full disk interrupts
    try:
        version = ws.new_version(stage, chunk)[0] if needs_version else ""

        def submit(client, unit: list[str]):
            if batch_size:
                return client.submit(_guard_batch_on_worker, sources, final, per_video, unit, ws.url, stage, chunk,
                                     version, [videos[v] for v in unit],
                                     key=f"{stage}-{chunk}-{version}-{unit[0]}+{len(unit)}", pure=False)
            return client.submit(_guard_on_worker, sources, final, per_video, unit[0], ws.url, stage, chunk, version,
                                 *videos[unit[0]], key=f"{stage}-{chunk}-{version}-{unit[0]}", pure=False)

        def run_here(unit: list[str]) -> dict[str, dict]:
            if batch_size:
                return _guard_batch(per_video, unit, ws.url, stage, chunk, version, [videos[v] for v in unit],
                                    final=final)
            return {unit[0]: _guard(per_video, unit[0], ws.url, stage, chunk, version, *videos[unit[0]],
                                    final=final)}

        if dask_address:
            client = get_client(dask_address)
            sources = snapshot()[0]  # what this process runs, which every worker must run too
            futures = {submit(client, unit): unit for unit in units}
            from distributed import as_completed

            try:
                for fut in as_completed(futures, loop=client.loop):
                    writing = futures[fut][0]
                    results.update(fut.result() if batch_size else {writing: fut.result()})
                    for _ in futures[fut]:
                        tick()
            except BaseException:
                client.cancel(list(futures))  # the chunk failed: its other videos would write for nothing
                raise
        else:
            for unit in units:
                writing = unit[0]
                results.update(run_here(unit))
                for _ in unit:
                    tick()
        writing = None
        env_failed = [v for v in ids if results[v].get("status") == STATUS_RETRYABLE]
        if env_failed and len(env_failed) == len(ids):  # no video got through: the environment's fault, not theirs
            raise EnvironmentFault(f"{stage} {chunk}: every video failed with a fault of the environment, not of the "
                                   f"videos, on the task's last attempt; first: {env_failed[0]}: "
                                   f"{results[env_failed[0]]['error']}; nothing committed: fix it and run the stage "
                                   f"again")
        if finish is not None:
            finish(ws.chunk_group(stage, chunk, version, mode="a"), results)
        results = {vid: {k: v for k, v in res.items() if not k.startswith("_")} for vid, res in results.items()}
        # after the work and before the commit: the worst moment to die (an orphan version, no record)
        maybe_inject_fault(ws, stage, chunk)
        record = ChunkRecord(stage=stage, chunk=chunk, fingerprint=fingerprint, version=version,
                             videos={vid: {**(annotations or {}).get(vid, {}), **results[vid]} for vid in ids},
                             seconds=round(time.time() - t0, 3), retried=retried_outcomes(done, fingerprint, results))
        check_upstream(ws, upstream, f"{stage} {chunk}")  # unchanged while the videos ran
        ws.commit(stamp(record, variant or stage))
    except Exception as e:
        full = disk_full(e)
        if full is None or isinstance(e, DiskFull):
            raise
        what = f"video {writing}" if writing is not None else "the chunk"
        raise DiskFull(full.errno, f"{stage} {chunk}: disk full ({errno.errorcode.get(full.errno, full.errno)}) "
                                   f"while writing {what} to {ws.url}: {full}; no record committed, no video marked "
                                   f"failed: free space and run the stage again") from e
    logger.info(f"{stage} {chunk}: {record.n_ok} ok, {record.n_failed} failed in {record.seconds:.1f}s")
    return record


RETRY_REASON = "retry-failed"
"""How ``runtime.records.reopen_failures`` marks a record whose failed videos a run tries again."""


def retried_outcomes(done: ChunkRecord | None, fingerprint: str, results: dict[str, dict]) -> str:
    """The ``retried`` of a chunk computed again because its failed videos were reopened (``done``: its record then,
    keyed ``invalidated-<fingerprint>``): a hash over the outcomes that changed and the record's earlier ``retried``;
    the earlier one where nothing changed; "" for a chunk computed for any other reason."""
    if done is None or not done.invalidated.startswith(RETRY_REASON) or done.fingerprint != \
            f"invalidated-{fingerprint}":
        return ""
    changed = {v: r.get("status") for v, r in sorted(results.items())
               if done.videos.get(v, {}).get("status") != r.get("status")}
    return hash_json([done.retried, changed]) if changed else done.retried


def run_logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (task.fn() in tests): plain logging
        import logging

        return logging.getLogger("idtprior")


RETRY_DELAYS_ENV = "IDTPRIOR_RETRY_DELAYS"


def retry_delays() -> list[float]:
    """Seconds before a chunk task's two retries: 2 and 10, or ``IDTPRIOR_RETRY_DELAYS="0,0"`` (tests and drills)."""
    spec = os.environ.get(RETRY_DELAYS_ENV, "").strip()
    if not spec:
        return [2, 10]
    try:
        delays = [float(x) for x in spec.split(",")]
    except ValueError as e:
        raise ValueError(f"{RETRY_DELAYS_ENV}={spec!r}: expected two numbers of seconds, e.g. '2,10'") from e
    if len(delays) != 2 or min(delays) < 0:
        raise ValueError(f"{RETRY_DELAYS_ENV}={spec!r}: expected two numbers of seconds, e.g. '2,10'")
    return delays


def task_options(workspace: Workspace) -> dict:
    """Prefect options every chunk task gets: results persisted in the workspace, cache keyed by the record."""
    opts = dict(cache_key_fn=cache_key_from_record, persist_result=True, retries=2, retry_delay_seconds=retry_delays(),
                retry_condition_fn=retry_transient)
    if workspace.results_dir is not None:
        opts["result_storage"] = Path(workspace.results_dir)
    else:
        opts.update(cache_key_fn=None, cache_policy=NO_CACHE, persist_result=False)
    return opts
