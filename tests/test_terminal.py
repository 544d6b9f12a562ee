"""The terminal of ``idtprior run``: one progress display per stage and the lines a user needs; Prefect's per-run
lines, Dask's INFO lines, Lightning's tips and warnings stay out of it (they are in the Prefect logs).

Measured on a tiny run (6 videos and a broken file, ingest..cluster + a 1-epoch IR stage, 2 Dask workers, stdout and
stderr piped): 143 lines before this display (33 Dask INFO lines, 42 Prefect flow/task-run lines, 51 tqdm bar lines,
6 Lightning INFO lines and its bar, 2 warnings, ...), 27 after it: per stage its chunk (or epoch) lines and its end
line, then the summary. A failed chunk: 293 lines before (three tracebacks), 12 after. The test runs ingest, decode
and the IR stage, which make every kind of noise there was."""

import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from idtprior_testutils import moving_square_frames
from idtprior.terminal import TERMINAL, StageProgress, TerminalFilter
from idtprior.video.io import write_video

MAX_LINES = 40  # the measured run prints 27
NOISE = ("distributed.", "LightningDeprecationWarning", "Tip:", "dashboard", "Traceback", "Finished in state Completed",
         "Beginning flow run", "Beginning subflow run", "Warning:", "Epoch 0/0", "it/s")
# the noise comes from the Dask cluster (every stage) and Lightning (training): three stages show all of it
STAGES = ["ingest", "decode", "pretrain_ir"]


def tiny_run_config(tmp_path: Path) -> Path:
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(6):
        write_video(src / f"clip{i:03d}.mp4", moving_square_frames(24, seed=i), fps=25,
                    options={"preset": "ultrafast"})
    (src / "bad.mp4").write_bytes(b"not a video")
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
workspace: {tmp_path / 'term-ws'}
stages: [{', '.join(STAGES)}]
ingest: {{source: {src}, num_chunks: 2}}
decode: {{short_side: 32}}
pretrain: {{width: 0.125, embed_dim: 16, clip_length: 4, crop_size: 32, batch_size: 4, negatives: 8, num_workers: 0,
           accelerator: cpu}}
pretrain_ir: {{epochs: 1}}
dask: {{n_workers: 2}}
""")
    return path


def run_cli(args: list[str], api_url: str, **env) -> subprocess.CompletedProcess:
    """``idtprior ARGS`` in a new process (pipes, not a terminal), against the test session's Prefect server."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING", "DASK_"))}
    full_env.update(PREFECT_API_URL=api_url, **env)
    return subprocess.run([sys.executable, "-m", "idtprior.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=600)


def flow_run_logs(stage: str) -> str:
    """The Prefect logs of this test workspace's runs of ``stage`` (their names hold both)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
            like_="term-ws"))) if stage in r.name]
        assert runs, f"no flow run of {stage} in term-ws"
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))
    return "\n".join(log.message for log in logs)


@pytest.mark.usefixtures("prefect_engine")
def test_cli_run_prints_a_line_per_chunk_and_stage_and_keeps_the_noise_in_the_prefect_logs(tmp_path):
    from prefect.settings import PREFECT_API_URL

    config = tiny_run_config(tmp_path)
    api = PREFECT_API_URL.value()

    # 1. one chunk of decode fails: the error in a few lines, no traceback; the traceback is in the run's logs
    failed = run_cli(["run", str(config), "--stages", "ingest,decode"], api,
                     IDTPRIOR_FAULT="decode:0000-of-0002:once")
    out = failed.stdout + failed.stderr
    lines = out.splitlines()
    assert failed.returncode == 1, out
    assert len(lines) <= 15, out
    assert not [n for n in NOISE if n in out], out
    assert "ingest: done, 2 chunks, 6 videos ok, 1 failed" in out
    assert any("ERROR" in line and "decode 0000-of-0002 failed" in line for line in lines), out
    assert lines[-1].startswith("idtprior run: error: stage decode failed"), out
    # the details went to Prefect: the failed chunk and why, in one message, no engine traceback (issue 36; it is
    # logged at debug level)
    logs = flow_run_logs("decode")
    assert "decode: 1 of 2 chunks failed; first: 0000-of-0002: decode 0000-of-0002: fault injected" in logs, logs
    assert "Traceback" not in logs and "Encountered exception" not in logs, logs

    # 2. the same command again: finishes, the chunks done before are cached, every stage says its result
    done = run_cli(["run", str(config)], api)
    out = done.stdout + done.stderr
    lines = out.splitlines()
    assert done.returncode == 0, out
    assert len(lines) <= MAX_LINES, out
    assert not [n for n in NOISE if n in out], out
    # not a terminal: one line per finished chunk, then the stage's end line, then the summary table on stdout
    assert re.search(r"decode: chunk [12]/2 0000-of-0002: 3 ok, 0 failed\n", out), out
    assert re.search(r"decode: chunk [12]/2 0001-of-0002: 3 ok, 0 failed \(cached\)\n", out), out
    assert "decode: done, 2 chunks, 1 cached, 6 videos ok, 0 failed" in out
    assert "ingest: done, 2 chunks, 2 cached, 6 videos ok, 1 failed" in out
    assert re.search(r"pretrain_ir: epoch 1/1: loss \d+\.\d{4}, lr 0\.03\n", out), out  # one line per epoch
    assert re.search(r"pretrain_ir: done, 1 epochs, loss ", out), out
    for stage in STAGES:
        assert any(f"{stage}: done" in line for line in lines), (stage, out)
        assert any(line.strip().startswith(f"{stage}:") for line in done.stdout.splitlines()), (stage, done.stdout)
    # Prefect's per-run lines and Lightning's INFO lines are in the Prefect logs, not lost
    logs = flow_run_logs("pretrain_ir")
    assert "Finished in state" in logs and "GPU available" in logs


def record(level: int, name: str = "prefect.flow_runs", **extra) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, "message", None, None)
    rec.__dict__.update(extra)
    return rec


def test_terminal_filter_lets_through_flagged_info_and_warnings_outside_runs():
    keep = TerminalFilter().filter
    assert keep(record(logging.INFO, **TERMINAL))
    assert not keep(record(logging.INFO))
    assert not keep(record(logging.INFO, "distributed.scheduler"))
    assert keep(record(logging.ERROR)) and keep(record(logging.WARNING, "distributed.nanny"))
    # a Python warning outside any flow or task run has no run log to go to: it stays on the terminal
    assert keep(record(logging.WARNING, "py.warnings"))
    assert keep(record(logging.WARNING, "pytorch_lightning.utilities.rank_zero"))


def test_terminal_filter_leaves_warnings_inside_a_run_to_the_prefect_logs(prefect_engine):
    from prefect import flow

    @flow
    def decide() -> list[bool]:
        keep = TerminalFilter().filter
        return [keep(record(logging.WARNING, "py.warnings")), keep(record(logging.WARNING, "pytorch_lightning")),
                keep(record(logging.WARNING, "idtprior")), keep(record(logging.INFO, "pytorch_lightning"))]

    assert decide() == [False, False, True, False]


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, rec):
        self.lines.append(rec.getMessage())


def test_stage_progress_bar_counts_every_video_once_from_many_threads():
    plans = {"a": {"videos": {f"a{i}": 0 for i in range(40)}}, "b": {"videos": {f"b{i}": 0 for i in range(25)}},
             "c": {"videos": {"c0": 0}}}
    logger = logging.getLogger("test-terminal-bar")
    logger.propagate, logger.level, handler = False, logging.INFO, Lines()
    logger.addHandler(handler)
    progress = StageProgress("decode", plans, logger, bar=True)
    threads = [threading.Thread(target=lambda c=c: [progress.advance(c) for _ in range(50)]) for c in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert progress._bar.n == 65  # never past a chunk's size, whatever the ticks
    progress.finish("a", "40 ok, 0 failed")
    progress.finish("b", "25 ok, 0 failed")
    progress.finish("c", "1 ok, 0 failed", cached=True)  # a cached chunk jumps to done
    assert progress._bar.n == 66 and progress.n_done == 3 and progress.n_cached == 1
    progress.close("66 videos ok, 0 failed")
    # with a bar: no per-chunk lines, one end line
    assert len(handler.lines) == 1 and handler.lines[0].startswith(
        "decode: done, 3 chunks, 1 cached, 66 videos ok, 0 failed"), handler.lines


def test_stage_progress_without_a_terminal_says_one_line_per_chunk():
    logger = logging.getLogger("test-terminal-lines")
    logger.propagate, logger.level, handler = False, logging.INFO, Lines()
    logger.addHandler(handler)
    progress = StageProgress("idt", {"0000-of-0002": {"videos": {"x": 0}}, "0001-of-0002": {"videos": {"y": 0}}},
                             logger, bar=False)
    progress.finish("0001-of-0002", "1 ok, 0 failed")
    progress.finish("0000-of-0002", "failed", say=False)
    progress.close("1 videos ok, 0 failed, 1 chunks failed")
    assert handler.lines[:2] == ["idt: 2 chunks, 2 videos", "idt: chunk 1/2 0001-of-0002: 1 ok, 0 failed"]
    assert len(handler.lines) == 3 and handler.lines[2].startswith("idt: done, 2 chunks, 1 videos ok")
    # a whole-dataset step says its end line only
    handler.lines.clear()
    one = StageProgress("fit_codebook", {"all": {"fingerprint": "f"}}, logger, bar=False)
    one.finish("all", "done")
    one.close("")
    assert len(handler.lines) == 1 and handler.lines[0].startswith("fit_codebook: done (")


def test_serve_keeps_dasks_start_and_stop_lines_off_the_terminal_of_its_flow_runs():
    """``idtprior serve`` sets SERVE_SETTINGS in its environment, which the flow runs it starts inherit: a process
    with it starts and stops a LocalCluster without one INFO line of the scheduler or the nannies; without it, the
    same process prints them (so the check can fail)."""
    from idtprior.terminal import SERVE_SETTINGS

    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from distributed import Client, LocalCluster\n"
            "with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c, "
            "Client(c) as cl:\n    print(cl.submit(sum, [1, 2]).result())\n")

    def stderr_of(env: dict) -> str:
        base = {k: v for k, v in os.environ.items() if k != "DASK_LOGGING__DISTRIBUTED"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**base, **env})
        assert out.returncode == 0 and out.stdout.strip() == "3", out.stderr[-2000:]
        return out.stderr

    dask_info = re.compile(r"INFO\W+distributed\.(scheduler|nanny|worker|core)\b")
    chatty = stderr_of({})
    assert len(dask_info.findall(chatty)) >= 5, chatty[-2000:]  # start, connections, close
    quiet = stderr_of(SERVE_SETTINGS)
    assert dask_info.findall(quiet) == [], quiet[-2000:]
