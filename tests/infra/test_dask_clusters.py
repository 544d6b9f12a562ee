"""The Dask clusters a run can make: a LocalCluster that listens on the loopback only, and SLURM jobs through
dask-jobqueue (no SLURM here: the cluster object is built, its job script read, nothing submitted)."""

import re

import pytest

from idtprior.config import PipelineConfig, parse_config
from idtprior.config.base import ConfigError
from idtprior.config.compute import DaskConfig
from idtprior.runtime.dask import DASK_ADDRESS_ENV, dask_cluster, slurm_cluster


def test_the_local_cluster_and_its_workers_listen_on_the_loopback_only():
    from distributed import Client

    with dask_cluster(DaskConfig(n_workers=2)) as address:
        assert address.startswith("tcp://127.0.0.1:"), address
        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 2
            assert all(w.startswith("tcp://127.0.0.1:") for w in workers), list(workers)
            assert client.submit(sum, [1, 2, 3]).result() == 6
            # no statistical profiler: its stack sampling segfaulted workers decoding with PyAV (flows/dask_worker.py)
            callbacks = client.run(lambda dask_worker: sorted(dask_worker.periodic_callbacks))
            assert len(callbacks) == 2 and all("heartbeat" in c and "profile" not in c and "profile-cycle" not in c
                                               for c in callbacks.values()), callbacks
            http = client.run_on_scheduler(
                lambda dask_scheduler: [s.getsockname()[:2] for s in dask_scheduler.http_server._sockets.values()])
    # the scheduler's HTTP endpoints too, on a free port (not dask's fixed 8787, which a second run would find taken)
    assert http and all(host == "127.0.0.1" for host, _ in http), http
    with dask_cluster(DaskConfig(n_workers=1)) as first, dask_cluster(DaskConfig(n_workers=1)) as second:
        with Client(first) as a, Client(second) as b:
            ports = [c.scheduler_info()["services"]["dashboard"] for c in (a, b)]
    assert ports[0] != ports[1], ports


def test_a_threads_only_cluster_talks_in_memory_and_its_http_endpoints_stay_on_the_loopback():
    from distributed import Client

    with dask_cluster(DaskConfig(n_workers=1, processes=False)) as address:
        assert address.startswith("inproc://"), address  # no network port at all
        with Client(address) as client:
            assert client.submit(sum, [2, 3]).result() == 5
            http = client.run_on_scheduler(
                lambda dask_scheduler: [s.getsockname()[0] for s in dask_scheduler.http_server._sockets.values()])
    assert set(http) == {"127.0.0.1"}, http


def test_the_worker_preload_stops_the_profiler_of_a_worker_dask_configured_with_one():
    """A worker that preloads idtprior's set-up (the pipeline's LocalCluster and SLURM workers do) runs without the
    profiler that Dask's config gives it."""
    from distributed import Client, LocalCluster

    from idtprior.runtime.dask import WORKER_SETUP

    def profiling(dask_worker) -> list[str]:
        return [name for name in ("profile", "profile-cycle") if name in dask_worker.periodic_callbacks]

    for preload, want in (([], ["profile", "profile-cycle"]), ([WORKER_SETUP], [])):
        with LocalCluster(n_workers=1, processes=False, dashboard_address=None, preload=preload) as cluster, \
                Client(cluster) as client:
            assert list(client.run(profiling).values()) == [want]


def test_an_address_from_the_environment_is_used_when_the_run_names_none(monkeypatch):
    monkeypatch.setenv(DASK_ADDRESS_ENV, "tcp://dask-scheduler:8786")
    with dask_cluster(DaskConfig(n_workers=2)) as address:  # no cluster is started for it
        assert address == "tcp://dask-scheduler:8786"
    with dask_cluster(DaskConfig(address="tcp://10.0.0.5:8786")) as address:  # the config's wins
        assert address == "tcp://10.0.0.5:8786"
    with dask_cluster(DaskConfig(), "tcp://given:1") as address:  # and the run's argument over both
        assert address == "tcp://given:1"


def _sbatch(script: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_the_slurm_cluster_job_script_asks_for_the_configured_queue_cores_memory_and_time():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed (pip install 'idtprior[slurm]')")
    cfg = parse_config({"dask": {"cluster": "slurm", "slurm": {
        "queue": "cpu-long", "account": "videolab", "cores": 8, "processes": 4, "memory": "32GB",
        "walltime": "02:30:00", "jobs": 3, "job_extra_directives": ["--qos=normal", "--constraint=avx2"],
        "job_script_prologue": ["source /opt/idtprior/.venv/bin/activate"], "python": "/opt/idtprior/.venv/bin/python",
        "interface": "lo"}}}).dask
    with slurm_cluster(cfg.slurm) as cluster:
        script = cluster.job_script()
        address = cluster.scheduler_address
    directives = _sbatch(script)
    assert directives[:7] == ["-J idtprior-dask", "-p cpu-long", "-A videolab", "-n 1", "--cpus-per-task=8",
                              "--mem=30G", "-t 02:30:00"], directives  # 32 GB = 29.8 GiB, rounded up
    assert directives[7:] == ["--qos=normal", "--constraint=avx2"]
    body = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert body[0] == "source /opt/idtprior/.venv/bin/activate"
    worker = body[1].split()
    assert worker[:4] == ["/opt/idtprior/.venv/bin/python", "-m", "distributed.cli.dask_worker", address]
    opts = dict(zip(worker[4::2], worker[5::2]))
    # 8 cores over 4 processes: 2 threads each; the 32 GB split over the 4
    assert opts["--nworkers"] == "4" and opts["--nthreads"] == "2", worker
    assert opts["--memory-limit"] == "7.45GiB", worker
    assert opts["--interface"] == "lo"
    assert opts["--dashboard-address"] == "127.0.0.1:0"  # a worker's HTTP endpoints stay on its node
    assert opts["--preload"] == "idtprior.runtime.dask_worker"  # its set-up: no profiler, the heartbeat filter
    assert "--no-dashboard" in worker
    # with an interface named, the scheduler listens on it (lo here: 127.0.0.1), not on every interface
    assert address.startswith("tcp://127.0.0.1:"), address


def test_the_slurm_defaults_give_one_single_threaded_worker_per_core():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed (pip install 'idtprior[slurm]')")
    cfg = PipelineConfig().dask.slurm
    with slurm_cluster(cfg) as cluster:
        script = cluster.job_script()
        http = cluster.scheduler.http_server
        ports = {sock.getsockname()[:2] for sock in http._sockets.values()}
    directives = _sbatch(script)
    assert "--cpus-per-task=8" in directives and "--mem=15G" in directives and "-t 01:00:00" in directives
    assert not any(d.startswith("-p ") for d in directives)  # no queue set: the site's default partition
    worker = re.search(r"dask_worker (\S+) (.*)$", script, re.M)
    opts = worker.group(2).split()
    assert opts[opts.index("--nworkers") + 1] == "8" and opts[opts.index("--nthreads") + 1] == "1"
    # the scheduler's HTTP endpoints (dashboard, health, metrics) on the loopback
    assert {host for host, _ in ports} == {"127.0.0.1"}, ports


@pytest.mark.parametrize("slurm, words", [
    ({"memory": "lots"}, ["memory 'lots'"]),
    ({"cores": 4, "processes": 8}, ["processes 8 exceeds cores 4"]),
    ({"walltime": "1h"}, ["dask.slurm.walltime", "'1h'"]),
    ({"cores": 0}, ["dask.slurm.cores", "0"]),
    ({"queues": "gpu"}, ["unknown key 'dask.slurm.queues'"]),
])
def test_bad_slurm_settings_fail_at_load_time_naming_the_key_and_value(slurm, words):
    with pytest.raises(ConfigError) as e:
        parse_config({"dask": {"cluster": "slurm", "slurm": slurm}})
    for w in words:
        assert w in str(e.value), str(e.value)


def test_an_unknown_cluster_kind_is_refused():
    with pytest.raises(ConfigError, match="dask.cluster"):
        parse_config({"dask": {"cluster": "kubernetes"}})
