"""Shared fixtures: real videos written with PyAV, and a real Prefect engine (temporary server) for flow tests."""

import os
from pathlib import Path

import pytest
from ci_skips import pytest_runtest_makereport  # noqa: F401 - the hook: under CI=true, a skip for what we install fails

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED_DATA = Path(os.environ.get("IDTPRIOR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" /
                                  "data")).resolve()


@pytest.fixture(scope="session")
def prefect_engine(tmp_path_factory):
    """A real Prefect engine against a temporary server, results in a temporary folder.

    Flow-run heartbeats are off in this process: Prefect's heartbeat thread sleeps in 1 s steps and every flow run's
    end joins it, so each flow run (a pipeline, each of its stages) ended up to a second late: a two-stage pipeline's
    rerun took 3.11 s with them, 0.89 s without (``benchmarks/flow_heartbeat.py``). They are the server's liveness signal of a run, which no test here reads;
    runs in other processes (the CLI and worker drills, the server tests) keep Prefect's default."""
    from prefect.settings import (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_LOCAL_STORAGE_PATH,
                                  PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings)
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(results), PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
                                 PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@pytest.fixture
def one_thread():
    """torch on one thread for the test: multi-threaded CPU kernels sum in a varying order, so one thread makes two
    computations comparable bit for bit (and keeps the test machine's 2 shared cores free)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def write_video(tmp_path):
    """Write frames to a real video file: ``write_video(name, frames, codec=..., fps=...) -> Path``."""
    from idtprior.video.io import write_video as _write

    def make(name: str, frames, codec: str = "libx264", fps: float = 25.0, options=None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, frames, fps=fps, codec=codec, options=options)
        return path

    return make


_LEAK_CHECKED_ENV = ("IDTPRIOR_VERIFY", "IDTPRIOR_FAULT", "IDTPRIOR_RETRY_DELAYS")


@pytest.fixture(autouse=True)
def no_leaked_environment():
    """A test leaves the process as it found it: the variables that change how idtprior reads and retries (a test
    that sets one for good would change what every later test checks), checked after each test."""
    before = {name: os.environ.get(name) for name in _LEAK_CHECKED_ENV}
    yield
    after = {name: os.environ.get(name) for name in _LEAK_CHECKED_ENV}
    assert after == before, f"the test left the environment changed: {before} -> {after}"


@pytest.fixture(autouse=True, scope="module")
def no_leaked_torch_threads():
    """A module leaves torch's thread count as it found it (a fixture that sets one thread for good would make every
    later module's CPU training slower and its timings meaningless); checked when the module ends."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if before is not None and torch is not None:
        assert torch.get_num_threads() == before, f"the module left torch on {torch.get_num_threads()} threads, " \
                                                  f"not {before}"
