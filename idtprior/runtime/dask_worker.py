"""Set-up of the pipeline's Dask workers (its LocalCluster's and its SLURM jobs'), run in each worker process when it
starts (Dask's ``preload``).

No statistical profiler. Dask's worker samples the stack of every thread 100 times a second (``sys._current_frames``
walked from its event-loop thread), and on Python 3.11 that walk can read a frame another thread is tearing down: the
worker dies of a segmentation fault. Seen here in the decode stage, in 2 of about 20 runs of the demo's 240 videos, the
walk in ``distributed.profile.process`` while the task thread was inside PyAV's decode generator; the nanny restarted
the worker and its finished videos were decoded again. The profile only feeds Dask's dashboard, which idtprior does not
serve, so this hook drops it on every worker that preloads this module (the pipeline's LocalCluster and SLURM workers
do), before the worker starts it.

A worker's failed heartbeat is logged with its traceback on the worker's stderr, which is the terminal of the
``idtprior run`` that started the cluster. When a stage ends, its cluster closes, and a worker whose heartbeat was in
flight as the scheduler went away logged that traceback after a successful run (seen once, on a busy 2-core machine,
as the next stage trained). A scheduler really lost while a stage runs shows in the flow process instead: the chunk's
futures fail, and a lost connection is a transient fault that retries the chunk.
"""

import logging

HEARTBEAT = "Failed to communicate with scheduler during heartbeat"
PROFILER_CALLBACKS = ("profile", "profile-cycle")


class DropHeartbeatFailures(logging.Filter):
    """Drops the worker's heartbeat-failure records; lets every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(HEARTBEAT)


def stop_profiler(worker) -> None:
    """Stop and drop the worker's profiler callbacks (before the worker starts them, from the preload hook)."""
    for name in PROFILER_CALLBACKS:
        callback = worker.periodic_callbacks.pop(name, None)
        if callback is not None:
            callback.stop()


def dask_setup(worker=None) -> None:
    """Dask's preload hook: install the filter once in this worker process; no profiler on ``worker``."""
    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, DropHeartbeatFailures) for f in log.filters):
        log.addFilter(DropHeartbeatFailures())
    if worker is not None:
        stop_profiler(worker)
