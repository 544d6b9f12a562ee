"""Fixtures of the operations drills: a REAL `prefect server start` on a free port with its own PREFECT_HOME (a
temporary folder, sqlite), shared by every test of the session (its start is the slow part); and `idtprior serve` /
`prefect worker start` subprocesses against it, with their logs in files (helpers in ``server_process``).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import BIN, REPO, Proc, ServerProcess, free_port


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One real `prefect server start` for the whole session (its start is the slow part)."""
    server = ServerProcess(tmp_path_factory.mktemp("prefect-home"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server_env(prefect_server, monkeypatch):
    """PREFECT_API_URL (and PREFECT_HOME) of the real server for this test, its subprocesses and its in-process
    Prefect client."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    for key, value in prefect_server.env().items():
        if key.startswith("PREFECT_"):
            monkeypatch.setenv(key, value)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: str(prefect_server.home)}):
        yield prefect_server


@pytest.fixture
def start_process(prefect_server, tmp_path) -> Iterator:
    """``start_process(name, args, **env) -> Proc``: a subprocess against the server, log in tmp_path/<name>.log,
    stopped at the end of the test."""
    procs: list[Proc] = []

    def start(name: str, args: list[str], cwd: Path = REPO, **env: str) -> Proc:
        proc = Proc(args, tmp_path / f"{name}.log", prefect_server.env(**env), cwd=cwd)
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.stop()


@pytest.fixture
def idtprior_serve(start_process):
    """``idtprior_serve(**env) -> Proc``: `idtprior serve` (every deployment, in one process) with extra env."""

    def start(**env: str) -> Proc:
        return start_process("idtprior-serve", [str(BIN / "idtprior"), "serve"], **env)

    return start


@pytest.fixture
def prefect_worker(start_process):
    """``prefect_worker(pool, **env) -> Proc``: `prefect worker start --pool POOL --type process`."""

    def start(pool: str, **env: str) -> Proc:
        return start_process(f"worker-{pool}", [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type",
                                                "process", "--name", f"{pool}-worker"], **env)

    return start
