"""Which idtprior a process runs: a hash of the package's files, taken when the process first imports ``idtprior``.

A process computes with the code it imported, not with what is on disk now. A Dask worker started before a ``git
pull`` or an image rebuild (a long-lived ``dask worker``, the SLURM workers, the compose stack's) would compute with
old code under the keys the flow's process plans from the new code, and one that imported ``idtprior.video.io``
before the pull and ``idtprior.stages.encode`` after it runs a mix that no per-module check would notice. So the
snapshot covers every file of the package, once, at the first ``import idtprior`` (a few milliseconds): work sent to a
worker carries the flow's snapshot, and the worker refuses it when its own differs (``check_worker``); a stage run
refuses to start in a process whose snapshot no longer matches the files on disk (``check_process``).
"""

import hashlib
import os
import socket
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".so")


def source_hash(root: str = ROOT) -> str:
    """16 hex digits of SHA-256 over every file of the package under ``root`` (relative path and bytes, in sorted
    order; caches and compiled files left out)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(_SKIP_SUFFIXES) or name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:  # removed while we walked: a pull in progress
                data = b"<unreadable>"
            h.update(os.path.relpath(path, root).encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:16]


class StaleCode(RuntimeError):
    """A process runs other idtprior sources than the flow that sent it work (or than its own files now)."""


SOURCES = source_hash()
"""The package's files as this process first imported them (``import idtprior`` imports this module first)."""
SOURCES_AT = time.time()


def snapshot() -> tuple[str, float]:
    """This process's sources hash and when it was taken (its first ``import idtprior``)."""
    return SOURCES, SOURCES_AT


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def check_worker(expected: str, where: str) -> None:
    """On a worker, before it runs a piece of a chunk: its snapshot must be ``expected`` (the flow's); else
    ``StaleCode`` naming both and saying to restart the workers. ``where``: the work (stage and chunk)."""
    mine, at = snapshot()
    if mine != expected:
        try:
            from distributed import get_worker

            who = f"Dask worker {get_worker().address}"
        except (ImportError, ValueError):
            who = "worker"
        raise StaleCode(f"{where}: {who} (pid {os.getpid()} on {socket.gethostname()}) runs idtprior sources "
                        f"{mine} (imported {_when(at)}), the flow runs {expected}: the package changed after the "
                        f"worker imported it (a git pull, an image rebuild); restart the workers and run the stage "
                        f"again (nothing was committed)")


def check_process(what: str) -> None:
    """In the process that plans a stage: its snapshot must still be the files on disk; else ``StaleCode`` saying to
    restart this process (it would plan keys from code it does not run, or run a mix)."""
    mine, at = snapshot()
    now = source_hash()
    if mine != now:
        raise StaleCode(f"{what}: this process (pid {os.getpid()}) imported idtprior sources {mine} at {_when(at)}, "
                        f"and the files in {ROOT} are {now} now: restart this process (the Prefect worker, `idtprior "
                        f"serve`, the notebook) and run the stage again")
