"""Fixtures of the operations drills: a REAL `prefect server start` on a free port with its own PREFECT_HOME (a
temporary folder, sqlite), shared by every test of the session (its start is the slow part); and `idtprior serve` /
`prefect worker start` subprocesses against it, with their logs in files (helpers in ``server_process``).
"""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import BIN, FAULT, REPO, Proc, ServerProcess, free_port, tail


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


WORK_POOLS = ("idtprior-cpu", "idtprior-gpu")


def copy_of_repo(dest: Path) -> Path:
    """The working tree as a clone would hold it: tracked and untracked-but-not-ignored files (no .venv, no
    workspaces), symlinks kept as links."""
    import shutil

    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if not src.exists() and not src.is_symlink():  # deleted in the working tree, not yet in git
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)
    return dest


def run_cli(server: ServerProcess, commands: list[list[str]], cwd: Path, log: Path, timeout_s: float = 240) -> None:
    """Run `prefect ...` commands against the server, at once (each pays Prefect's import, seconds here); an error
    shows the failing one's output. Every output goes to ``log``."""
    procs = [(args, subprocess.Popen(args, cwd=cwd, env=server.env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)) for args in commands]
    failed = []
    for args, proc in procs:
        out, _ = proc.communicate(timeout=timeout_s)
        with open(log, "a") as f:
            f.write(f"$ {' '.join(args)}\n{out}\n")
        if proc.returncode != 0:
            failed.append(f"{' '.join(args)} (in {cwd}) exited {proc.returncode}:\n{out[-4000:]}")
    if failed:
        raise AssertionError("\n".join(failed))


@pytest.fixture(scope="session")
def work_pools(prefect_server, tmp_path_factory) -> tuple[str, ...]:
    """The two process pools, made as a user makes them: `prefect work-pool create NAME --type process`."""
    log = tmp_path_factory.mktemp("pools") / "work-pool-create.log"
    run_cli(prefect_server, [[str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"]
                             for pool in WORK_POOLS], REPO, log)
    return WORK_POOLS


@pytest.fixture(scope="session")
def deployed(prefect_server, work_pools, tmp_path_factory) -> Path:
    """The deployments of infra/prefect.yaml on the server, as a user makes them from a clone: `prefect deploy --all
    --prefect-file infra/prefect.yaml` in the clone's root, after the pools exist. Returns the clone (where the
    workers' runs execute: the deployments' working directory)."""
    clone = copy_of_repo(tmp_path_factory.mktemp("clone"))
    run_cli(prefect_server, [[str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
                              "infra/prefect.yaml"]], clone, clone.parent / "deploy.log")
    return clone


@pytest.fixture(scope="session")
def pool_workers(prefect_server, work_pools, tmp_path_factory, request) -> Iterator[dict[str, Proc]]:
    """One `prefect worker start --type process` per pool (idtprior-cpu, idtprior-gpu), for the session, with the
    drill's fault armed (``FAULT``), and the deployments of ``deployed`` (made while the workers start)."""
    logs = tmp_path_factory.mktemp("workers")
    workers = {pool: Proc([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                           "--name", f"{pool}-worker"], logs / f"{pool}.log",
                          prefect_server.env(IDTPRIOR_FAULT=FAULT), cwd=logs)
               for pool in work_pools}
    try:
        request.getfixturevalue("deployed")
        deadline = time.monotonic() + 120
        for pool, proc in workers.items():
            while not prefect_server.post(f"/work_pools/{pool}/workers/filter", {}):
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"worker of {pool} not online:\n{tail(proc.log)}")
                time.sleep(0.5)
        yield workers
    finally:
        for proc in workers.values():
            proc.stop()
