"""A real `prefect server start` subprocess and the API calls the drills make, as the UI makes them.

Everything talks to the server over HTTP (``ServerProcess.api``), as the UI does, so nothing here depends on the
in-process Prefect settings that the ``prefect_engine`` fixture of the other tests changes. Subprocesses get the
server through their environment (``ServerProcess.env``).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 120  # a cold `prefect server start` here takes 15-60 s (migrations, UI bundle copy)
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
FAULT = "decode:0001-of-0002:once"
"""The fault the session's workers carry (IDTPRIOR_FAULT): decode's chunk 1 of 2 fails once per workspace. Only a
workspace of 2 chunks meets it (the retry drill's); the other drills use other chunk counts."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return f"(no log {path})"


class Proc:
    """A subprocess in its own process group (the server and the runners start children), logging to a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], cwd: Path = REPO):
        self.args, self.log = args, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "ab")  # noqa: SIM115 - the process outlives this call; closed in stop()
        self.popen = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace_s: float = 20) -> None:
        """SIGTERM to the group this process leads, SIGKILL after ``grace_s``."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
            except ProcessLookupError:
                pass
        self._log_file.close()

    def __repr__(self) -> str:
        return f"Proc({' '.join(self.args)!r}, log={self.log})"


class ServerProcess:
    """A running `prefect server start`; ``api`` is an httpx client on its ``/api``."""

    def __init__(self, home: Path, port: int):
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/api"
        self.proc: Proc | None = None
        self.api = httpx.Client(base_url=self.api_url, timeout=30)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that talks to this server (and keeps its files in our PREFECT_HOME)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.home), PREFECT_API_URL=self.api_url, PREFECT_UI_API_URL=self.api_url,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO",
                   # runners and workers poll every 10 s by default: a drill would spend most of its time waiting
                   PREFECT_RUNNER_POLL_FREQUENCY="2", PREFECT_WORKER_QUERY_SECONDS="2",
                   PREFECT_WORKER_PREFETCH_SECONDS="5", PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def start(self) -> None:
        # The services these drills do not use are off: on sqlite and 2 busy cores their writes contend with the
        # runs' ("database is locked"). Kept: the event persister and the task run recorder (task run states).
        off = ("SCHEDULER", "LATE_RUNS", "TRIGGERS", "PAUSE_EXPIRATIONS", "FOREMAN", "REPOSSESSOR",
               "CANCELLATION_CLEANUP", "EVENT_LOGGER")
        env = self.env(**{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in off})
        self.proc = Proc([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                         self.home / "server.log", env)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"prefect server exited with {self.proc.popen.returncode}:\n{tail(self.proc.log)}")
            try:
                if self.api.get("/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.proc.stop()
        raise RuntimeError(f"prefect server on port {self.port}: no /api/health after {SERVER_START_TIMEOUT_S} s:\n"
                           f"{tail(self.proc.log)}")

    def stop(self) -> None:
        self.api.close()
        if self.proc is not None:
            self.proc.stop()

    # --- the API calls the drills make, as the UI makes them -------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """One API call; a 503 (sqlite busy: the server says retry) is retried as Prefect's own client does."""
        for attempt in range(6):
            r = self.api.request(method, path, json=body)
            if r.status_code != 503:
                return r
            time.sleep(0.5 * 2 ** attempt)
        return r

    def post(self, path: str, body: dict | None = None) -> dict | list:
        r = self._request("POST", path, body or {})
        if r.status_code >= 400:
            raise AssertionError(f"POST {path} {json.dumps(body)[:500]}: {r.status_code} {r.text[:2000]}")
        return r.json() if r.content else {}

    def get(self, path: str) -> dict | list:
        r = self._request("GET", path)
        if r.status_code >= 400:
            raise AssertionError(f"GET {path}: {r.status_code} {r.text[:2000]}")
        return r.json()

    def deployment(self, flow_name: str, name: str) -> dict:
        return self.get(f"/deployments/name/{flow_name}/{name}")

    def run_deployment_like_the_ui(self, deployment: dict, parameters: dict, name: str | None = None) -> dict:
        """POST /deployments/{id}/create_flow_run with the body the UI's custom run form sends (Prefect 3.9's v2 UI,
        ``deployment_._id.run-*.js``: name, work queue, empirical policy, a SCHEDULED state, tags, parameters)."""
        body = {"name": name, "work_queue_name": None,
                "empirical_policy": {"resuming": False, "max_retries": 0, "retry_delay_seconds": 0},
                "state": {"type": "SCHEDULED", "state_details": {"pause_reschedule": False, "deferred": False,
                                                                 "untrackable_result": False}},
                "tags": deployment.get("tags", []), "enforce_parameter_schema": deployment["enforce_parameter_schema"],
                "parameters": parameters}
        if name is None:
            del body["name"]
        return self.post(f"/deployments/{deployment['id']}/create_flow_run", body)

    def retry_like_the_ui(self, flow_run_id: str) -> dict:
        """What the UI's Retry button sends (v2 UI, the default of 3.9: ``flow-run._id-*.js``):
        POST /flow_runs/{id}/set_state {state: SCHEDULED 'AwaitingRetry', message 'Retry from the UI', force: true}."""
        return self.post(f"/flow_runs/{flow_run_id}/set_state",
                         {"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
                          "force": True})

    def flow_run(self, flow_run_id: str) -> dict:
        return self.get(f"/flow_runs/{flow_run_id}")

    def wait_flow_run(self, flow_run_id: str, timeout_s: float = 120, procs: list[Proc] = (),
                      after_states: int = 0) -> dict:
        """Poll until the run is in a terminal state (with more than ``after_states`` terminal states in its history
        when waiting for a retry to end); a dead runner process fails the wait at once with its log."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.flow_run(flow_run_id)
            if run["state_type"] in TERMINAL_STATES and run["run_count"] > after_states:
                return run
            for p in procs:
                if not p.alive():
                    raise AssertionError(f"{p} died ({p.popen.returncode}) while {run['name']} was "
                                         f"{run['state_name']}:\n{tail(p.log)}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.log}\n{tail(p.log, 40)}" for p in procs)
                raise AssertionError(f"flow run {run['name']} still {run['state_name']} after {timeout_s} s\n{logs}")
            time.sleep(0.5)

    def subflow_runs(self, parent_flow_run_id: str) -> list[dict]:
        """The flow runs started from inside ``parent`` (subflows and ``run_deployment(as_subflow=True)`` runs)."""
        task_runs = self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [parent_flow_run_id]}}, "limit": 200})
        ids = [t["id"] for t in task_runs]
        if not ids:
            return []
        return self.post("/flow_runs/filter", {"flow_runs": {"parent_task_run_id": {"any_": ids}}, "limit": 200})

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})

    def workers_of(self, flow_run_id: str) -> set[str]:
        """The workers that, by the server's events, submitted the flow run: the resource of each
        ``prefect.worker.submitted-flow-run`` event that names the run."""
        events = self.post("/events/filter", {"filter": {
            "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            "event": {"name": ["prefect.worker.submitted-flow-run"]},
            "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50})
        return {event["resource"]["prefect.resource.name"] for event in events["events"]}

    def logs(self, flow_run_id: str) -> str:
        rows = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200,
                                          "sort": "TIMESTAMP_ASC"})
        return "\n".join(r["message"] for r in rows)
