"""Fault injection for the tests and the drills, and nothing else: ``IDTPRIOR_FAULT="<stage>:<chunk>:<kind>"``.

Unset (every production run), each hook is one environment lookup that does nothing. The runtime calls the hooks at
the two moments a drill needs: ``maybe_inject_fault`` after a chunk's work and before its commit, ``video_fault``
around the chunk's last video. ``IDTPRIOR_FAULT_LOSS`` makes one training batch's loss non-finite
(``fault_loss_from_env``, passed by the training task to the core's ``train``: the core reads no environment)."""

import errno
import math
import os
import signal
import time
from collections.abc import Callable

from idtprior.storage import Workspace


class InjectedFault(RuntimeError):
    """The failure ``IDTPRIOR_FAULT`` asks for (tests and drills only); never transient, so never retried."""


FAULT_ENV = "IDTPRIOR_FAULT"
FAULT_KINDS = ("once", "enospc", "kill", "hold")
"""What ``IDTPRIOR_FAULT="<stage>:<chunk>:<kind>"`` does to that chunk, once per workspace (tests and drills only):

- ``once``: ``InjectedFault`` after the work, before the commit (the worst moment to die: an orphan version);
- ``enospc``: a disk-full ``OSError`` (``ENOSPC``) once the chunk's last video's files are written;
- ``kill``: SIGKILL to the process running the chunk's last video (a Dask worker, or the flow's own process without
  Dask) once that video's files are written;
- ``hold``: the chunk's last video, its files written, waits until ``faults/<stage>-<chunk>.release`` exists in the
  workspace (it writes ``faults/<stage>-<chunk>.held`` first): a run paused in the middle of a chunk."""
HOLD_MAX_S = 600.0


def fault_kind(stage: str, chunk: str) -> str | None:
    """The kind of fault ``IDTPRIOR_FAULT`` asks for this chunk, or None (unset, or another chunk)."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) != 3 or parts[2] not in FAULT_KINDS or not parts[0] or not parts[1]:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected '<stage>:<chunk>:<kind>', kind one of {list(FAULT_KINDS)} "
                         f"(e.g. 'decode:0001-of-0004:once')")
    return parts[2] if (parts[0], parts[1]) == (stage, chunk) else None


def _fire(ws: Workspace, stage: str, chunk: str, kind: str) -> str | None:
    """The fault's marker ``faults/<stage>-<chunk>`` written, or None when it fired before (once per workspace: a
    Retry of the run, a new process or another machine sharing the workspace, succeeds)."""
    marker = ws.path("faults", f"{stage}-{chunk}")
    if ws.fs.exists(marker):
        return None
    ws.write_bytes_atomic(marker, f"{stage}:{chunk}:{kind} fired at {time.time():.3f} in pid {os.getpid()}\n".encode())
    return marker


def maybe_inject_fault(ws: Workspace, stage: str, chunk: str) -> None:
    """Raise ``InjectedFault`` for the chunk named by ``IDTPRIOR_FAULT="<stage>:<chunk>:once"``; inactive when unset
    or for another kind (those act on a video: ``video_fault``)."""
    if fault_kind(stage, chunk) != "once":
        return
    marker = _fire(ws, stage, chunk, "once")
    if marker is None:
        return
    spec = os.environ.get(FAULT_ENV, "").strip()
    raise InjectedFault(f"{stage} {chunk}: fault injected by {FAULT_ENV}={spec!r} (fires once per workspace; "
                        f"marker {marker})")


def video_fault(fn: Callable, kind: str, target: str, video_id: str, workspace: str, stage: str, chunk: str,
                 version: str, *args) -> dict:
    """``fn`` for one video, then, for the ``target`` video only and once per workspace, the ``kind`` of fault."""
    out = fn(video_id, workspace, stage, chunk, version, *args)
    if video_id != target:
        return out
    ws = Workspace(workspace)
    marker = _fire(ws, stage, chunk, kind)
    if marker is None:
        return out
    if kind == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAULT_ENV} after video {video_id}'s "
                                    f"files were written; marker {marker})", ws.path(f"{stage}.zarr", chunk, version))
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hold":
        release = f"{marker}.release"
        ws.write_bytes_atomic(f"{marker}.held", f"{os.getpid()}\n".encode())
        deadline = time.monotonic() + HOLD_MAX_S
        while not ws.fs.exists(release):
            if time.monotonic() > deadline:
                raise InjectedFault(f"{stage} {chunk}: held by {FAULT_ENV} for {HOLD_MAX_S:.0f} s; {release} never "
                                    f"appeared")
            time.sleep(0.1)
    return out


FAULT_LOSS_ENV = "IDTPRIOR_FAULT_LOSS"
"""Tests and drills only: ``"<epoch>:<batch>[:<value>[:<rank>]]"`` makes the loss of that batch ``value`` (default
nan; ``inf``, ``-inf``) on every rank or on global rank ``rank``; epoch and batch count from 1, as
:class:`idtprior.models.lightning.NonFiniteLossError` names them."""


def fault_loss_from_env() -> tuple[int, int, float, int | None] | None:
    """``(epoch, batch, value, rank)`` of :data:`FAULT_LOSS_ENV`, or None where it is unset: what the training task
    passes to ``models.training.train`` (``fault_loss``)."""
    spec = os.environ.get(FAULT_LOSS_ENV, "").strip()
    if not spec:
        return None
    parts = spec.split(":")
    try:
        if not 2 <= len(parts) <= 4:
            raise ValueError(f"{len(parts)} fields")
        epoch, batch = int(parts[0]), int(parts[1])
        value = float(parts[2]) if len(parts) > 2 and parts[2] else float("nan")
        rank = int(parts[3]) if len(parts) > 3 else None
        if epoch < 1 or batch < 1 or math.isfinite(value):
            raise ValueError("epoch and batch count from 1; the value must be nan, inf or -inf")
    except ValueError as e:
        raise ValueError(f"{FAULT_LOSS_ENV}={spec!r}: expected '<epoch>:<batch>[:<nan|inf|-inf>[:<rank>]]', "
                         f"epoch and batch counted from 1 (e.g. '2:3'): {e}") from e
    return epoch, batch, value, rank
