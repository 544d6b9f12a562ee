"""infra/compose.yaml and infra/docker/: their structure, since no container runtime runs them here.

The file is read as compose reads it (YAML merge keys, ``${VAR:-default}`` / ``${VAR:?error}`` interpolation from an
environment), then checked: the services and their wiring, the work pools, the GPU reservation, health checks,
volumes, ports bound to the loopback, secrets taken only from the environment, every Prefect setting named by a real
setting of the installed Prefect, and every command line parsed by the real CLI it calls (Prefect's, dask's)."""

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SECRETS = {"POSTGRES_PASSWORD": "pg-secret-1", "PREFECT_SERVER_API_AUTH_STRING": "admin:ui-secret-2"}
LONG_RUNNING = ("postgres", "prefect-server", "cpu-worker", "gpu-worker", "dask-scheduler", "dask-worker")
DATA_SERVICES = ("cpu-worker", "gpu-worker", "dask-worker")  # they read videos and write the workspace

_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution over a parsed document: ``${X}``, ``${X:-default}``, ``${X:?error}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        have = env.get(name)
        if op in (":-", "-"):
            return have if have or (op == "-" and name in env) else arg
        if op in (":?", "?"):
            if not have:
                raise KeyError(f"${{{name}}} is required: {arg}")
            return have
        return have or ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, SECRETS)


def services(compose) -> dict[str, dict]:
    return compose["services"]


def test_the_services_are_all_there_and_each_long_running_one_is_health_checked(compose):
    svc = services(compose)
    assert set(LONG_RUNNING) <= set(svc), sorted(svc)
    for name in LONG_RUNNING:
        check = svc[name].get("healthcheck", {}).get("test")
        assert check and check[0] in ("CMD", "CMD-SHELL"), (name, check)
        assert svc[name].get("restart") == "unless-stopped", name
    # every "wait until healthy" points at a service that has a health check
    for name, s in svc.items():
        for dep, cond in (s.get("depends_on") or {}).items():
            assert dep in svc, (name, dep)
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in svc[dep], (name, dep)


def test_the_server_runs_on_postgresql_with_the_auth_string_from_the_environment(compose):
    from sqlalchemy.engine import make_url

    server = services(compose)["prefect-server"]
    env = server["environment"]
    url = make_url(env["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    assert (url.drivername, url.host, url.port, url.database) == ("postgresql+asyncpg", "postgres", 5432, "prefect")
    pg = services(compose)["postgres"]["environment"]
    assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"]) == \
        ("prefect", SECRETS["POSTGRES_PASSWORD"])
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == SECRETS["PREFECT_SERVER_API_AUTH_STRING"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services(compose)["postgres"]["healthcheck"]["test"])
    # the health route Prefect leaves open to probes without the auth string
    assert "http://127.0.0.1:4200/api/health" in " ".join(server["healthcheck"]["test"])


def test_secrets_come_only_from_the_environment_and_compose_refuses_to_start_without_them(raw):
    text = (INFRA / "compose.yaml").read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (name, uses)  # required, never a default
        with pytest.raises(KeyError, match=name):
            interpolate(raw, {k: v for k, v in SECRETS.items() if k != name})
    example = (INFRA / "env.example").read_text()
    assert set(SECRETS) <= set(re.findall(r"^(\w+)=", example, re.M))
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "infra/.env (the secrets) is not ignored by git"


def test_workers_serve_the_two_pools_and_reach_the_server_with_the_auth_string(compose):
    svc = services(compose)
    pools = {}
    for name in ("cpu-worker", "gpu-worker"):
        cmd = svc[name]["command"]
        assert cmd[:3] == ["prefect", "worker", "start"], cmd
        opts = dict(zip(cmd[3::2], cmd[4::2]))
        assert opts["--type"] == "process"
        pools[name] = opts["--pool"]
        env = svc[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["PREFECT_API_AUTH_STRING"] == SECRETS["PREFECT_SERVER_API_AUTH_STRING"]
        assert env["IDTPRIOR_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
        assert svc[name]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert pools == {"cpu-worker": "idtprior-cpu", "gpu-worker": "idtprior-gpu"}
    assert svc["deploy"]["environment"]["PREFECT_API_AUTH_STRING"] == SECRETS["PREFECT_SERVER_API_AUTH_STRING"]


def test_the_pools_of_infra_prefect_yaml_are_the_ones_compose_serves(compose):
    path = INFRA / "prefect.yaml"
    if not path.exists():
        pytest.skip("infra/prefect.yaml not written yet")
    doc = yaml.safe_load(path.read_text())
    named = {d["work_pool"]["name"] for d in doc.get("deployments", []) if (d.get("work_pool") or {}).get("name")}
    served = {services(compose)[w]["command"][services(compose)[w]["command"].index("--pool") + 1]
              for w in ("cpu-worker", "gpu-worker")}
    assert named and named <= served, (named, served)
    assert services(compose)["deploy"]["command"] == ["sh", "infra/docker/deploy.sh"]


def test_the_gpu_worker_reserves_the_gpus_and_runs_the_cuda_image(compose):
    gpu = services(compose)["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu["build"]["dockerfile"] == "infra/docker/Dockerfile.cuda"
    assert int(re.match(r"(\d+)gb$", gpu["shm_size"]).group(1)) >= 8  # DataLoader workers share clips via /dev/shm
    for name in ("prefect-server", "cpu-worker", "dask-scheduler", "dask-worker", "deploy"):
        assert services(compose)[name]["build"]["dockerfile"] == "infra/docker/Dockerfile.cpu", name
        assert "deploy" not in services(compose)[name] or "resources" not in services(compose)[name]["deploy"]
    for s in services(compose).values():
        if "build" in s:
            assert (INFRA / s["build"]["context"] / s["build"]["dockerfile"]).resolve().is_file()


def test_the_dask_scheduler_and_workers_are_wired_and_the_workers_share_the_workspace_volume(compose):
    svc = services(compose)
    sched, worker = svc["dask-scheduler"]["command"], svc["dask-worker"]["command"]
    assert sched[:2] == ["dask", "scheduler"] and sched[sched.index("--port") + 1] == "8786"
    assert worker[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert worker[worker.index("--nthreads") + 1] == "1"
    assert int(svc["dask-worker"]["deploy"]["replicas"]) == 2
    from idtprior.runtime.dask import DASK_ADDRESS_ENV

    assert DASK_ADDRESS_ENV == "IDTPRIOR_DASK_ADDRESS"
    assert "workspace" in compose["volumes"] and "postgres" in compose["volumes"]
    for name in DATA_SERVICES:  # one volume at one path: records and Dask tasks pass paths, not data
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc[name]["volumes"]}
        assert mounts["/workspace"] == "workspace", (name, mounts)
        assert svc[name]["volumes"][1].endswith(":/data/videos:ro"), name
    assert svc["postgres"]["volumes"] == ["postgres:/var/lib/postgresql/data"]


def test_every_published_port_binds_the_loopback_unless_told_otherwise(raw, compose):
    published = {name: s.get("ports", []) for name, s in services(compose).items()}
    assert published["prefect-server"] == ["127.0.0.1:4200:4200"]
    assert published["dask-scheduler"] == ["127.0.0.1:8787:8787"]  # HTTP only; the scheduler port is not published
    assert all(not published[n] for n in ("postgres", "cpu-worker", "gpu-worker", "dask-worker", "deploy"))
    for ports in published.values():
        for p in ports:
            assert p.count(":") == 2 and p.startswith("127.0.0.1:"), p  # never a bare "4200:4200" (every address)
    told = interpolate(raw, {**SECRETS, "IDTPRIOR_BIND_ADDRESS": "10.1.2.3"})
    assert told["services"]["prefect-server"]["ports"] == ["10.1.2.3:4200:4200"]
    # what listens inside the containers' own loopback: the workers' health routes
    for name in ("cpu-worker", "gpu-worker"):
        assert services(compose)[name]["environment"]["PREFECT_WORKER_WEBSERVER_HOST"] == "127.0.0.1"


def test_every_prefect_setting_named_is_a_setting_of_the_installed_prefect_and_reads_back(compose, monkeypatch):
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    valid = _get_valid_setting_names(Settings)
    read_back = {"PREFECT_SERVER_API_AUTH_STRING": lambda s: s.server.api.auth_string,
                 "PREFECT_API_AUTH_STRING": lambda s: s.api.auth_string,
                 "PREFECT_SERVER_DATABASE_CONNECTION_URL": lambda s: s.server.database.connection_url,
                 "PREFECT_API_URL": lambda s: s.api.url, "PREFECT_UI_API_URL": lambda s: s.server.ui.api_url,
                 "PREFECT_WORKER_WEBSERVER_HOST": lambda s: s.worker.webserver.host}
    seen = set()
    for name, s in services(compose).items():
        env = s.get("environment") or {}
        for key in env:
            if key.startswith("PREFECT_"):
                assert key in valid, f"{name}: {key} is not a setting of prefect"
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, str(value))
            settings = Settings()
            for key, get in read_back.items():
                if key in env:
                    got = get(settings)
                    got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
                    assert str(got) == str(env[key]), (name, key)
                    seen.add(key)
    assert seen == set(read_back)


def _prefect_argv(cmd: list[str]) -> list[str]:
    return [t for t in cmd[1:] if t not in ("--no-prompt", "--prompt")]  # session flags, parsed by the root app


def _prefect_calls_of_deploy_script() -> list[list[str]]:
    """The ``prefect`` command lines of infra/docker/deploy.sh, the pool loop unrolled."""
    text = (INFRA / "docker" / "deploy.sh").read_text()
    pools = re.search(r"^for pool in (.+); do$", text, re.M).group(1).split()
    calls = []
    for line in text.splitlines():
        line = line.strip().removeprefix("exec ")
        for pool in pools if "$pool" in line else [None]:
            for part in re.split(r"\|\||&&", line.replace("$pool", pool or "")):
                argv = shlex.split(part.split(">")[0])
                if argv[:1] == ["prefect"]:
                    calls.append(argv)
    return calls


def test_the_deploy_step_creates_both_pools_then_deploys_infra_prefect_yaml():
    import prefect.cli  # noqa: F401 - registers the subcommands
    from prefect.cli._app import _app

    parsed = []
    for argv in _prefect_calls_of_deploy_script():
        command, bound, _ = _app.parse_args(_prefect_argv(argv))
        parsed.append((command.__name__, dict(bound.arguments)))
    assert parsed == [
        ("inspect", {"name": "idtprior-cpu"}), ("create", {"name": "idtprior-cpu", "type": "process"}),
        ("inspect", {"name": "idtprior-gpu"}), ("create", {"name": "idtprior-gpu", "type": "process"}),
        ("deploy", {"deploy_all": True, "prefect_file": Path("infra/prefect.yaml")})]
    assert subprocess.run(["sh", "-n", str(INFRA / "docker" / "deploy.sh")]).returncode == 0


def test_every_command_line_parses_with_the_installed_clis(compose):
    import prefect.cli  # noqa: F401 - registers the subcommands
    from distributed.cli.dask_scheduler import main as dask_scheduler
    from distributed.cli.dask_worker import main as dask_worker
    from prefect.cli._app import _app

    parsed = {}
    for name, s in services(compose).items():
        cmd = s.get("command")
        if not cmd:
            continue
        if cmd[0] == "prefect":
            command, bound, _ = _app.parse_args(_prefect_argv(cmd))
            parsed[name] = dict(bound.arguments)
        elif cmd[:2] == ["dask", "scheduler"]:
            parsed[name] = dask_scheduler.make_context("dask scheduler", cmd[2:]).params
        elif cmd[:2] == ["dask", "worker"]:
            parsed[name] = dask_worker.make_context("dask worker", cmd[2:]).params
    assert parsed["cpu-worker"]["work_pool_name"] == "idtprior-cpu"
    assert parsed["gpu-worker"]["work_pool_name"] == "idtprior-gpu" and parsed["gpu-worker"]["limit"] == 1
    assert parsed["gpu-worker"]["with_healthcheck"] and parsed["cpu-worker"]["with_healthcheck"]
    assert parsed["prefect-server"] == {"host": "0.0.0.0", "port": 4200}
    assert parsed["dask-scheduler"]["port"] == "8786"  # dask takes it as text
    assert parsed["dask-worker"]["nthreads"] == 1 and parsed["dask-worker"]["dashboard_address"] == "127.0.0.1:8789"
    assert parsed["dask-worker"]["dashboard"] is False


def _dockerfile(name: str) -> str:
    return (INFRA / "docker" / name).read_text()


def _extras(text: str) -> set[str]:
    m = re.search(r'pip install -e "\.\[([\w,-]+)\]"', text)
    assert m, "the project is not installed"
    return set(m.group(1).split(","))


def test_the_dockerfiles_install_the_project_with_the_right_torch_build():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    makefile_torch = re.search(r'"torch==([\d.]+)"', (ROOT / "Makefile").read_text()).group(1)
    cpu, cuda = _dockerfile("Dockerfile.cpu"), _dockerfile("Dockerfile.cuda")

    assert re.search(r"^FROM python:3\.11", cpu, re.M)
    assert re.search(r"^FROM nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu24\.04", cuda, re.M)
    for text in (cpu, cuda):
        assert re.search(r"^ARG TORCH_VERSION=(\S+)", text, re.M).group(1) == makefile_torch
        assert "slurm" in _extras(text) and _extras(text) <= extras
        assert "--no-deps" in text and '["tool"]["idtprior"]["no-deps"]' in text  # the detector's model files
        assert re.search(r"^USER idtprior", text, re.M) and "--uid 1000" in text  # one uid on the shared volume
        assert re.search(r'^ENTRYPOINT \["tini", "--"\]', text, re.M)
        # torch is installed (and checked) before the project, so the project's torch range cannot pull another build
        assert text.index('"torch==${TORCH_VERSION}"') < text.index('pip install -e')
        for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
            for part in src.split():
                assert (ROOT / part).exists(), part
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    assert "torch.version.cuda" in cpu and "expected a CPU build" in cpu
    assert "/whl/cpu" not in cuda and "expected a CUDA build" in cuda
    assert {"gpu", "maskrcnn"} <= _extras(cuda)
    assert "torchvision" in cuda.split('"torch==${TORCH_VERSION}"')[1].split("\n")[0]  # same index, same command
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        ignored = (INFRA / "docker" / f"{name}.dockerignore").read_text().split()
        assert {".venv", ".git"} <= set(ignored)
