"""Per-stage locks of a workspace: ``<workspace>/locks/<stage>.lock``, so two runs never write one stage at once.

Two runs of one stage on one workspace would destroy each other's work: ``Workspace.commit`` removes every other
version of a chunk (one that the other run is still writing, whose record then points at deleted arrays), and a
training stage removes the other run folders of its stage. A stage run therefore holds its stage's lock from start to
end (``idtprior.runtime.runs.stage_flow`` takes it; a training stage run as a SLURM job is covered by the flow that
submitted the job and waits for it, the launcher).

The lock is a small JSON file created exclusively (``O_CREAT | O_EXCL``) that names its holder: host, pid, the
process's start time, the Prefect flow run, the start time. A second run of the stage fails at once with a message
naming the holder. A lock is stale, and is taken over with a warning, when

- its holder ran on this host and that process is gone (the pid is dead, or now belongs to a younger process), or
- its holder ran on another host and has not refreshed the lock's modification time (its heartbeat, every
  ``heartbeat_s`` from a thread) for ``stale_after_s`` (a machine that died cannot say so).

Locks are not the pipeline's: a pipeline run holds none, so its own stage runs (subflows in its process, or
deployment runs in other processes) never wait for it; two pipelines on one workspace meet at their first common
stage. Ingest is a writer of every stage's inputs (the manifest, the chunking, and it removes every stage's data of
an older chunking), so ``conflicts`` lets ingest refuse to start while another stage runs, and the other stages
refuse while ingest runs. Short read-modify-writes shared by all stages (the manifest's rebuild) take a lock with
``wait_s``: they wait for each other instead of failing.

One holder at a time, checked where it matters:

- every commit of a stage's record (``Workspace.commit``) made in a process that took the stage's lock first checks
  that the lock file still holds this run's token (``check_holder``): a run whose lock was taken over (stopped past
  the timeout, then resumed) fails its commit (``LockLost``) and writes no record;
- taking over a stale lock is atomic: the stale file is renamed aside (one rename wins), and one renamed by mistake
  (taken by another run between the judgement and the rename) is linked back, never deleted then created;
- a holder of another host is judged by the file system's clock (the modification time of a probe file written
  beside the lock), not this host's: two hosts' clocks may differ by minutes;
- the heartbeat refreshes the file only while it holds this run's token.

On an object store (an fsspec URL) the exclusive create is a check then a write, which two runs that start in the
same instant can both pass: best effort there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the workspace imports this module (a commit checks the lock's holder)
    from idtprior.storage.workspace import Workspace

LOCKS_DIR = "locks"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # a lock of another host without a heartbeat for this long is stale (10 heartbeats missed)

logger = logging.getLogger("idtprior.lock")


LOCK_OF = {"sketches": "encode"}
"""The lock that covers the records of a stage written by another stage's run (encode assembles the sketches)."""

_held: dict[tuple[str, str], WorkspaceLock] = {}  # (workspace URL, lock name) -> the lock this process holds
_held_lock = threading.Lock()


class LockLost(RuntimeError):
    """A commit of a run whose stage lock is no longer its own (taken over as stale): nothing was committed."""


class StageBusy(RuntimeError):
    """The stage (or a stage it conflicts with) is being run by another process; the message names the holder."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def lock_path(ws: Workspace, name: str) -> str:
    return ws.path(LOCKS_DIR, f"{name}.lock")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), None where unknown: with the
    pid it names one process, never a later one that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
        return raw.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name's closing bracket
    except (OSError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fs_now(ws: Workspace, folder: str) -> float:
    """Now by the clock of the file system holding ``folder``: the modification time of a probe file written there
    (and removed). Another host's heartbeat set the lock's time by that clock too."""
    probe = f"{folder}/.clock-{uuid.uuid4().hex[:12]}"
    try:
        ws.fs.pipe_file(probe, b"")
        return _mtime(ws.fs.info(probe))
    except OSError:
        return time.time()
    finally:
        try:
            ws.fs.rm(probe)
        except OSError:
            pass


def _flow_run() -> tuple[str, str]:
    """The current Prefect flow run's id and name, or empty strings outside one."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is not None and ctx.flow_run is not None:
            return str(ctx.flow_run.id), ctx.flow_run.name
    except Exception:  # noqa: BLE001 - a lock works outside Prefect too
        pass
    return "", ""


def describe(holder: dict) -> str:
    """``pid 123 on host h since 18:20:05 (flow run 'ws: decode')``."""
    since = datetime.fromtimestamp(holder.get("started", 0)).strftime("%Y-%m-%d %H:%M:%S")
    run = f" (flow run {holder['flow_run_name']!r})" if holder.get("flow_run_name") else ""
    what = holder.get("what") or ""
    run += f" ({what})" if what and not what.startswith("stage ") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {since}{run}"


class WorkspaceLock:
    """One lock file of a workspace, held by this process between ``acquire()`` and ``release()``."""

    def __init__(self, ws: Workspace, name: str, what: str | None = None, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.ws, self.name, self.path = ws, name, lock_path(ws, name)
        self.shown = self.path if ws.is_local else f"{ws.url}/{LOCKS_DIR}/{name}.lock"  # what a user removes
        self.what = what or f"stage {name}"
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.held = False

    # reading ------------------------------------------------------------------------------------------------------
    def holder(self) -> dict | None:
        """The lock file's content plus ``mtime`` (its last heartbeat); None when there is no lock. A lock file that
        cannot be parsed (a holder killed while writing it) reads as a holder that is long gone."""
        try:
            raw = self.ws.fs.cat_file(self.path)
            info = self.ws.fs.info(self.path)
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
            if not isinstance(holder, dict):
                raise ValueError(holder)
        except ValueError:
            holder = {"unreadable": raw[:200].decode(errors="replace")}
        holder["mtime"] = _mtime(info)
        return holder

    def is_stale(self, holder: dict) -> str | None:
        """Why ``holder`` no longer holds the lock, or None while it may."""
        if "unreadable" in holder:
            if time.time() - holder["mtime"] > min(self.stale_after_s, 60.0):
                return f"its lock file is unreadable ({holder['unreadable']!r})"
            return None
        if holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id():
            pid = int(holder.get("pid", 0))
            if not _pid_alive(pid):
                return f"process {pid} is gone"
            start = holder.get("pid_start")
            if start is not None and _process_start(pid) not in (None, start):
                return f"process {pid} is gone (the pid now belongs to another process)"
            return None
        age = _fs_now(self.ws, self.path.rsplit("/", 1)[0]) - holder["mtime"]
        if age > self.stale_after_s:
            return f"its heartbeat stopped {age:.0f} s ago (more than {self.stale_after_s:.0f} s)"
        return None

    def busy_message(self, holder: dict) -> str:
        if "unreadable" in holder:
            who = f"a process whose lock file is unreadable ({holder['unreadable']!r})"
        else:
            who = describe(holder)
        return (f"{self.what} of workspace {self.ws.url} is being run by {who}; wait for it or remove {self.shown} if "
                f"that process is gone")

    # taking -------------------------------------------------------------------------------------------------------
    def _create(self) -> bool:
        """Create the lock file exclusively with our content; False when it exists."""
        run_id, run_name = _flow_run()
        pid = os.getpid()
        data = json.dumps({"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
                           "boot_id": _boot_id(), "flow_run_id": run_id, "flow_run_name": run_name,
                           "started": time.time(), "token": self.token, "what": self.what}).encode()
        self.ws.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        if self.ws.is_local:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        if self.ws.fs.exists(self.path):  # an object store: check, then write (best effort, see the module doc)
            return False
        self.ws.fs.pipe_file(self.path, data)
        return True

    def try_acquire(self) -> dict | None:
        """Take the lock (a stale one is taken over with a warning); None when taken, else the live holder."""
        for _ in range(3):
            if self._create():
                self.held = True
                return None
            holder = self.holder()
            if holder is None:
                continue  # released in between: try again
            why = self.is_stale(holder)
            if why is None:
                return holder
            logger.warning(f"{self.what} of workspace {self.ws.url}: taking over the lock {self.shown} of "
                           f"{describe(holder) if 'unreadable' not in holder else 'an unknown holder'}: {why}")
            self._remove_judged(holder)
        holder = self.holder()
        return holder or {"host": "?", "pid": "?", "started": time.time()}

    def _remove_judged(self, judged: dict) -> None:
        """Remove the lock file only while it is the stale one judged (``judged``), in one step: renamed aside (of two
        takers one rename wins), then checked; a lock another run took in between is linked back (an exclusive
        create: it never replaces a lock a third run took since; that run's lock then stands and the one moved aside
        has lost its lock, which its next commit finds). On an object store: re-read, then removed (best effort)."""
        if not self.ws.is_local:
            again = self.holder()
            if again is not None and again.get("token") == judged.get("token") and \
                    again.get("unreadable") == judged.get("unreadable"):
                try:
                    self.ws.fs.rm(self.path)
                except FileNotFoundError:
                    pass
            return
        aside = f"{self.path}.taken-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another taker moved it first
        try:
            with open(aside, "rb") as f:
                raw = f.read()
            try:
                moved = json.loads(raw)
                same = isinstance(moved, dict) and moved.get("token") == judged.get("token") and "token" in judged
            except ValueError:
                same = "unreadable" in judged and raw[:200].decode(errors="replace") == judged["unreadable"]
            if not same:
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
        finally:
            try:
                os.remove(aside)
            except FileNotFoundError:
                pass

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.2) -> WorkspaceLock:
        """Take the lock, waiting up to ``wait_s`` for a live holder to release it; ``StageBusy`` naming the holder
        otherwise. Starts the heartbeat."""
        deadline = time.monotonic() + wait_s
        while True:
            holder = self.try_acquire()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise StageBusy(self.busy_message(holder), holder)
            time.sleep(poll_s)
        with _held_lock:
            _held[(self.ws.url, self.name)] = self
        if self.heartbeat_s > 0:
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, name=f"idtprior-lock-{self.name}", daemon=True)
            self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.refresh():
                    logger.error(f"{self.what} of workspace {self.ws.url}: the lock {self.shown} is no longer this "
                                 f"run's (taken over as stale): its commits will fail")
                    return
            except Exception as e:  # noqa: BLE001 - a missed beat is not fatal; the next one tries again
                logger.warning(f"{self.what}: could not refresh the lock {self.path}: {e}")

    def still_held(self) -> dict | None:
        """None while the lock file holds this run's token, else its holder now ({} when there is no lock file)."""
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            return None
        return holder or {}

    def refresh(self) -> bool:
        """The heartbeat: the lock file's modification time set to now (its content rewritten on an object store),
        only while it is this run's; False (nothing touched) when it is not."""
        if self.still_held() is not None:
            return False
        if self.ws.is_local:
            os.utime(self.path)
        else:
            self.ws.fs.pipe_file(self.path, self.ws.fs.cat_file(self.path))
        return True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        with _held_lock:
            if _held.get((self.ws.url, self.name)) is self:
                del _held[(self.ws.url, self.name)]
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        if not self.held:
            return
        self.held = False
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            try:
                self.ws.fs.rm(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> WorkspaceLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_holder(ws: Workspace, stage: str) -> None:
    """Before a commit of ``stage``'s record: where this process took the lock that covers it (``LOCK_OF``), the lock
    file must still hold that run's token; ``LockLost`` naming the stage, the lock and its holder now otherwise. A
    commit in a process that holds no such lock (a task run on its own, a training job whose launcher holds it) is
    not checked here."""
    name = LOCK_OF.get(stage, stage)
    with _held_lock:
        lock = _held.get((ws.url, name))
    if lock is None:
        return
    now = lock.still_held()
    if now is None:
        return
    who = describe(now) if now and "unreadable" not in now else ("nobody" if not now else "an unknown holder")
    raise LockLost(f"{stage} of workspace {ws.url}: this run no longer holds its lock {lock.shown} (taken over as "
                   f"stale; held now by {who}): nothing committed; let the run that holds it finish, then run the "
                   f"stage again")


def _mtime(info: dict) -> float:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return time.time()  # no time known: never judged stale by age


INGEST = "ingest"
"""The stage that rewrites what every other stage reads: it runs alone (see ``stage_lock``)."""


@contextmanager
def stage_lock(ws: Workspace, stage: str, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
    """Hold ``stage``'s lock of ``ws`` while inside; ``StageBusy`` at once when another live process holds it.

    Ingest runs alone: it rewrites the manifest and the chunking and removes every stage's data of an older chunking,
    so it refuses to start while any other stage of the workspace runs, and every other stage refuses while ingest
    runs. Each side takes its own lock first and then looks at the others', so of two that start together at least
    one sees the other."""
    own = WorkspaceLock(ws, stage, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s).acquire()
    try:
        others = [INGEST] if stage != INGEST else _other_stage_locks(ws, stage)
        for name in others:
            other = WorkspaceLock(ws, name, heartbeat_s=0, stale_after_s=stale_after_s)
            holder = other.holder()
            if holder is not None and other.is_stale(holder) is None:
                why = "ingest rewrites the manifest every stage reads" if name == INGEST else \
                    "ingest rewrites the manifest and chunking that stage reads"
                raise StageBusy(f"stage {stage} of workspace {ws.url} cannot start while stage {name} runs ({why}): "
                                f"{name} is being run by {describe(holder)}; wait for it or remove {other.shown} if "
                                f"that process is gone", holder)
        yield own
    finally:
        own.release()


@contextmanager
def every_stage_lock(ws: Workspace, stages, what: str):
    """Hold the lock of every stage in ``stages`` and of every stage that has a lock file (ingest's included) while
    inside, for a writer of every stage's data (``idtprior verify --repair``); ``StageBusy`` naming the first live
    holder, and nothing held, when a run holds one. Stages that start meanwhile fail at once naming ``what``."""
    names = sorted({LOCK_OF.get(s, s) for s in stages} | set(_other_stage_locks(ws, "")) | {INGEST})
    taken: list[WorkspaceLock] = []
    try:
        for name in names:
            lock = WorkspaceLock(ws, name, what=what)
            try:
                taken.append(lock.acquire())
            except StageBusy as e:
                holder = e.holder
                raise StageBusy(f"{what} of workspace {ws.url} cannot run while stage {name} runs: {name} is being run "
                                f"by {describe(holder) if 'unreadable' not in holder else 'an unknown holder'}; wait "
                                f"for it or remove {lock.shown} if that process is gone", holder) from None
        yield taken
    finally:
        for lock in taken:
            lock.release()


def _other_stage_locks(ws: Workspace, stage: str) -> list[str]:
    folder = ws.path(LOCKS_DIR)
    try:
        names = [p.rsplit("/", 1)[-1] for p in ws.fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n[: -len(".lock")] for n in names
                  if n.endswith(".lock") and n[: -len(".lock")] not in (stage, MANIFEST))


MANIFEST = "manifest"
"""The lock of the manifest's read-modify-write (``rebuild_manifest``), shared by every stage: waited for."""


@contextmanager
def manifest_lock(ws: Workspace, wait_s: float = 120.0):
    """Hold the manifest's lock while inside, waiting up to ``wait_s`` for another stage's rebuild to end."""
    lock = WorkspaceLock(ws, MANIFEST, what="the manifest rebuild", heartbeat_s=HEARTBEAT_S).acquire(wait_s=wait_s)
    try:
        yield lock
    finally:
        lock.release()
