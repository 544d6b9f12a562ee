"""The faults a chunk can meet, sorted: a full disk (the chunk's, never retried), a fault of the environment or
another transient I/O fault (retried), a missing file (tried again, then the video's)."""

import errno
from collections.abc import Iterator

from idtprior.storage.integrity import IntegrityError
from idtprior.testing import InjectedFault


class StageFailed(RuntimeError):
    """Chunks of a stage failed (``runtime.dask.run_chunks``, after every chunk ended): the message says how many, the
    first one and why; each failed chunk's task run holds its details, the stage's summary and failures table list
    them. A failure the pipeline understood: its flow run ends Failed with this one message, no traceback."""


class TransientError(OSError):
    """An I/O fault worth retrying (a flaky network filesystem, a lost worker)."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(OSError):
    """The disk (or the quota) filled up while a chunk was written: the chunk fails, no video is marked failed, no
    record is committed, and it is never retried (a retry seconds later finds the disk as full). ``str()`` is the
    message, which names the stage, the chunk and the video being written."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, else ``__context__``), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException | None) -> OSError | None:
    """The ``ENOSPC`` / ``EDQUOT`` error in ``exc`` or its causes (a store may wrap it), or None."""
    return next((e for e in causes(exc) if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS), None)


_UNAVAILABLE_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                                 errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                                 errno.EAGAIN, errno.EBUSY, errno.ENOLCK})
_DEVICE_WORDS = ("not compiled with cuda", "no cuda gpus", "cuda error", "cuda driver", "cudnn", "nccl",
                 "device-side assert", "out of memory", "cublas", "hip error", "mps backend out of memory")


def environment_fault(exc: BaseException | None) -> str | None:
    """What fault of the environment ``exc`` (or an exception it was raised from) is: memory, a device or its
    driver, storage that is briefly unavailable, or an upstream store deleted while it was read (a concurrent rerun);
    None when it is none of these. Such a fault is never a video's own: ``_failed``, ``is_transient``."""
    for e in causes(exc):
        name = type(e).__name__
        if isinstance(e, MemoryError) or name == "OutOfMemoryError":  # torch's, CuPy's (cupy.cuda.memory)
            return "out of memory"
        if isinstance(e, (RuntimeError, AssertionError)) and any(w in str(e).lower() for w in _DEVICE_WORDS):
            return "a device or its driver"
        if name in ("GroupNotFoundError", "ArrayNotFoundError", "NodeNotFoundError"):
            return "an upstream store deleted while it was read"
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno in _UNAVAILABLE_ERRNOS:
            return "storage unavailable"
    return None


class EnvironmentFault(TransientError):
    """A chunk that failed for a fault of the environment (``environment_fault``); ``str()`` names the cause."""


def is_transient(exc: BaseException) -> bool:
    """Retry only faults that a second try can fix; bad videos, bad settings and a full disk never are."""
    if disk_full(exc) is not None:
        return False
    if environment_fault(exc) is not None:
        return True
    if isinstance(exc, (ValueError, TypeError, KeyError, InjectedFault, IntegrityError)):
        return False  # IntegrityError: stored data is damaged; reading it again gives the same answer
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


MISSING_RETRY_S = (1.0, 3.0)
"""After a video's input file is found missing in a stage after ingest (it was there when ingest probed it: a network
file system's file briefly gone), its work is tried again after these pauses before the video is failed."""


def missing_file(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it was raised from is a missing file (``VideoError`` wraps the decoder's)."""
    return any(isinstance(e, FileNotFoundError) for e in causes(exc))
