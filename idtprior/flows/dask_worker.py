"""Set-up of the pipeline's LocalCluster workers, run in each worker process when it starts (Dask's ``preload``).

A worker's failed heartbeat is logged with its traceback on the worker's stderr, which is the terminal of the
``idtprior run`` that started the cluster. When a stage ends, its cluster closes, and a worker whose heartbeat was in
flight as the scheduler went away logged that traceback after a successful run (seen once, on a busy 2-core machine,
as the next stage trained). A scheduler really lost while a stage runs shows in the flow process instead: the chunk's
futures fail, and a lost connection is a transient fault that retries the chunk.
"""

import logging

HEARTBEAT = "Failed to communicate with scheduler during heartbeat"


class DropHeartbeatFailures(logging.Filter):
    """Drops the worker's heartbeat-failure records; lets every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(HEARTBEAT)


def dask_setup(worker=None) -> None:
    """Dask's preload hook: install the filter once in this worker process."""
    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, DropHeartbeatFailures) for f in log.filters):
        log.addFilter(DropHeartbeatFailures())
