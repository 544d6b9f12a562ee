"""The terminal of ``idtprior run`` / ``idtprior demo``: one progress display per stage and the log lines a user
needs (stage start and end with counts, failures, errors); everything else is kept for the Prefect logs (the UI).

How it is wired, all through settings read at start-up (``use_terminal_logging``, before Prefect is imported):
- ``PREFECT_LOGGING_SETTINGS_PATH`` -> ``idtprior/logging.yml``: Prefect's own logging config with the console handler
  replaced by ``TerminalConsoleHandler``, which prints WARNING and above, and INFO records flagged ``terminal``
  (``logger.info(msg, extra=TERMINAL)``); Prefect's INFO lines about every flow and task run, Lightning's INFO lines
  (its tips) and Python warnings raised inside a run (Lightning's deprecation warnings) go to the API only;
- ``DASK_LOGGING__DISTRIBUTED=warning``: the scheduler's and nannies' INFO lines (start, connections, close) run in
  the cluster's own threads, outside any flow run, so the API could not take them: they are not emitted at all.

``StageProgress`` is the display: a tqdm bar per stage when stderr is a terminal, else one line per finished chunk.
"""

import copy
import logging
import os
import sys
import threading
import time
from pathlib import Path

TERMINAL = {"terminal": True}
"""``extra=`` of a log record the user needs on the terminal at INFO level (stage start and end, chunk lines)."""

LOGGING_CONFIG = Path(__file__).with_name("logging.yml")

# Lines of these loggers (and their children) go to the Prefect logs only when they come from inside a flow or task
# run (the API takes them there); outside a run they stay on the terminal, so a warning is never lost.
RUN_ONLY_LOGGERS = ("py.warnings", "pytorch_lightning", "lightning")


def terminal_settings() -> dict[str, str]:
    """The environment ``use_terminal_logging`` sets (where the user has not set it already)."""
    return {
        "PREFECT_LOGGING_SETTINGS_PATH": str(LOGGING_CONFIG),
        # Lightning's INFO lines and captured warnings reach the API (the run's logs in the UI) through these
        "PREFECT_LOGGING_EXTRA_LOGGERS": ",".join(RUN_ONLY_LOGGERS),
        # a warning raised outside any run stays on the terminal; the API handler must not warn about it again
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "DASK_LOGGING__DISTRIBUTED": "warning",
    }


SERVE_SETTINGS = {"DASK_LOGGING__DISTRIBUTED": "warning"}
"""What ``idtprior serve`` sets (where the user has not): the flow runs it starts (subprocesses, which inherit it) print
their stage lines and errors, not the Dask scheduler's and nannies' start, connection and close lines (a third of a
served demo's terminal). As with ``run`` and ``demo``, those INFO lines are not emitted: they come from the cluster's
own threads, outside any flow run, so the Prefect logs could not take them either; Dask's warnings still print."""


def use_serve_logging() -> None:
    """Set ``SERVE_SETTINGS`` for ``idtprior serve`` and the flow runs it starts (a setting the user made is kept)."""
    for key, value in SERVE_SETTINGS.items():
        os.environ.setdefault(key, value)


def use_terminal_logging() -> bool:
    """Set up the terminal for a CLI run (a setting the user made is kept); returns whether it did.

    Only before Prefect is imported: Prefect reads its logging settings once, at import. Where it already is (``main``
    called from Python, as the tests do), the calling process's logging is its own and nothing changes."""
    if "prefect" in sys.modules:
        return False
    for key, value in terminal_settings().items():
        os.environ.setdefault(key, value)
    # Python warnings (Lightning's among them) become log records of ``py.warnings``: inside a run they go to the
    # run's logs in the UI, outside one to the terminal as before
    logging.captureWarnings(True)
    return True


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class TerminalFilter(logging.Filter):
    """Pass a record to the terminal when it is flagged ``terminal``, or is a WARNING or worse that the Prefect logs
    do not already hold alone (see ``RUN_ONLY_LOGGERS``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "terminal", False):
            return True
        if record.levelno < logging.WARNING:
            return False
        if record.name.split(".", 1)[0] in RUN_ONLY_LOGGERS or record.name == "py.warnings":
            return not _in_run()
        return True


class TerminalConsoleHandler(logging.Handler):
    """Prefect's console handler (its colours and format) behind ``TerminalFilter``, writing around the active tqdm
    bars so that a log line never lands inside a bar. Built by the logging config, once Prefect is imported (this
    module is imported before, to set the environment, so it does not import Prefect itself)."""

    def __init__(self, stream=None, styles: dict | None = None, level: int | str = logging.NOTSET):
        super().__init__(level)
        from prefect.logging.handlers import PrefectConsoleHandler

        self.console = PrefectConsoleHandler(stream=stream, styles=styles)
        self.addFilter(TerminalFilter())

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        self.console.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        if record.exc_info or record.exc_text or record.stack_info:
            # the message line only: the traceback stays in the run's Prefect logs (the API handler formats the
            # original record) and reaches the terminal with --verbose
            record = copy.copy(record)
            record.exc_info = record.exc_text = record.stack_info = None
        with tqdm.external_write_mode(file=self.console.stream):
            self.console.emit(record)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class StageProgress:
    """One stage's progress display: a tqdm bar over the stage's videos (over its chunks where a chunk lists no
    videos: the codebook, the clusters, a training stage) when stderr is a terminal, else one line per finished chunk.

    ``advance(chunk)`` counts one video of a chunk (called by the chunk tasks of this process); ``finish(chunk, ...)``
    completes the chunk (a cached chunk, or one that ran elsewhere, jumps to done). Thread-safe.
    """

    def __init__(self, stage: str, plans: dict[str, dict], logger, enabled: bool = True, bar: bool | None = None):
        self.stage, self.logger, self.enabled = stage, logger, enabled
        per_video = bool(plans) and all(isinstance(p.get("videos"), dict) for p in plans.values())
        self.unit = "video" if per_video else "chunk"
        self.size = {c: (len(p["videos"]) if per_video else 1) for c, p in plans.items()}
        self.counted = dict.fromkeys(plans, 0)
        self.n_chunks, self.n_done, self.n_cached = len(plans), 0, 0
        self.t0 = time.time()
        self._lock = threading.Lock()
        self.bar_mode = enabled and (stderr_is_terminal() if bar is None else bar)
        # a whole-dataset step (the codebook, the clusters, a training stage) says only its end line
        self.quiet = self.unit == "chunk" and self.n_chunks <= 1
        self._bar = None
        if self.bar_mode:
            from tqdm import tqdm

            self._bar = tqdm(total=sum(self.size.values()), desc=stage, unit=self.unit, file=sys.stderr,
                             dynamic_ncols=True)
            self._bar.set_postfix_str(f"0/{self.n_chunks} chunks", refresh=False)
        elif enabled and not self.quiet:
            videos = f", {sum(self.size.values())} videos" if per_video else ""
            self.logger.info(f"{stage}: {self.n_chunks} chunks{videos}", extra=TERMINAL)

    def advance(self, chunk: str, n: int = 1) -> None:
        with self._lock:
            room = self.size.get(chunk, 0) - self.counted.get(chunk, 0)
            step = min(n, room)
            if step > 0:
                self.counted[chunk] += step
                if self._bar is not None:
                    self._bar.update(step)

    def finish(self, chunk: str, outcome: str, cached: bool = False, say: bool = True) -> None:
        """Complete ``chunk``; ``outcome``: what its line says (``3 ok, 1 failed``); ``say``: False where the chunk's
        line is not wanted (a failed chunk, whose error line says it)."""
        with self._lock:
            self.n_done += 1
            self.n_cached += cached
            rest = self.size.get(chunk, 0) - self.counted.get(chunk, 0)
            self.counted[chunk] = self.size.get(chunk, 0)
            if self._bar is not None:
                self._bar.set_postfix_str(f"{self.n_done}/{self.n_chunks} chunks", refresh=False)
                if rest:
                    self._bar.update(rest)
                else:
                    self._bar.refresh()
            elif self.enabled and not self.quiet and say:
                self.logger.info(f"{self.stage}: chunk {self.n_done}/{self.n_chunks} {chunk}: {outcome}"
                                 f"{' (cached)' if cached else ''}", extra=TERMINAL)

    def close(self, summary: str) -> None:
        """End the display with the stage's one end line (``summary``: its counts)."""
        if self._bar is not None:
            self._bar.close()
        if self.enabled:
            took = f"({time.time() - self.t0:.1f} s)"
            if self.quiet:
                cached = " (cached)" if self.n_cached else ""
                self.logger.info(f"{self.stage}: done{cached}{', ' + summary if summary else ''} {took}",
                                 extra=TERMINAL)
                return
            cached = f", {self.n_cached} cached" if self.n_cached else ""
            self.logger.info(f"{self.stage}: done, {self.n_chunks} chunks{cached}, {summary} {took}", extra=TERMINAL)


def epoch_text(row: dict) -> str:
    """``loss 3.0954, lr 0.03, kNN 0.412`` of an epoch's row (``EpochReporter``)."""
    parts = [f"loss {row['loss']:.4f}"] if "loss" in row else []
    parts += [f"lr {row['lr']:.3g}"] if "lr" in row else []
    parts += [f"kNN {row['knn_acc']:.3f}"] if "knn_acc" in row else []
    return ", ".join(parts)


class EpochDisplay:
    """A training stage's progress on the terminal: a tqdm bar over its epochs when stderr is a terminal, else one
    line per finished epoch (loss, lr, kNN monitor). Thread-safe."""

    def __init__(self, stage: str, epochs: int, logger, enabled: bool = True, bar: bool | None = None):
        self.stage, self.epochs, self.logger, self.enabled = stage, epochs, logger, enabled
        self.t0 = time.time()
        self._lock = threading.Lock()
        self._bar = None
        if enabled and (stderr_is_terminal() if bar is None else bar):
            from tqdm import tqdm

            self._bar = tqdm(total=epochs, desc=stage, unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def epoch_done(self, row: dict) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(epoch_text(row), refresh=False)
                self._bar.update(max(0, min(row["epoch"], self.epochs) - self._bar.n))
            elif self.enabled:
                self.logger.info(f"{self.stage}: epoch {row['epoch']}/{self.epochs}: {epoch_text(row)}",
                                 extra=TERMINAL)

    def close(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.enabled:
            self.logger.info(f"{self.stage}: done, {summary} ({time.time() - self.t0:.1f} s)", extra=TERMINAL)
