"""Progress: the stage's display in the flow's process (videos or epochs as they finish) and the ``progress`` artifact
the Prefect UI shows while a stage runs."""

import json
import threading
from collections.abc import Callable
from contextlib import contextmanager

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from idtprior.runtime.artifacts import artifact_key
from idtprior.storage import ChunkRecord, Workspace
from idtprior.terminal import EpochDisplay, epoch_text

# The stage flow's progress display (``idtprior.terminal.StageProgress``, ``EpochProgress`` below), per
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
    return (lambda: display.advance(chunk)) if display is not None else no_display


def epoch_done_callback(workspace_url: str, stage: str) -> Callable[[dict], None] | None:
    """What a training task calls per finished epoch (``row``: epoch, loss, lr, knn_acc), or None where no display
    of the stage is shown in this process."""
    with _displays_lock:
        display = _displays.get((workspace_url, stage))
    return getattr(display, "epoch_done", None)


def no_display() -> None:
    pass


def video_counts(records: dict[str, ChunkRecord]) -> str:
    """``"N videos ok, M failed; "`` over the committed chunks (with the retryable ones where there are some)."""
    ok = sum(r.n_ok for r in records.values())
    bad = sum(r.n_failed for r in records.values())
    retryable = sum(r.n_retryable for r in records.values())
    return f"{ok} videos ok, {bad} failed" + (f" ({retryable} retryable)" if retryable else "") + "; "


def stage_counts(records: dict[str, ChunkRecord], errors: list, unit: str) -> str:
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
