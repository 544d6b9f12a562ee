"""Where the work runs: the Dask cluster (local, an address, or SLURM jobs) of the CPU stages."""

from typing import Literal

from pydantic import Field, model_validator

from idtprior.config.base import Section


class SlurmConfig(Section):
    """``dask.cluster: slurm``: Dask workers as SLURM batch jobs (dask-jobqueue's ``SLURMCluster``), one job per
    ``cores`` cores; the scheduler runs in the flow's process and the jobs connect back to it."""

    queue: str | None = Field(None, description="partition (sbatch -p); None: the site's default")
    account: str | None = Field(None, description="account charged (sbatch -A)")
    cores: int = Field(8, ge=1, le=4096, description="cores per job")
    processes: int | None = Field(None, ge=1, le=4096, description="Dask worker processes per job, sharing its cores "
                                  "(None: one per core, single-threaded, like the LocalCluster's)")
    memory: str = Field("16GB", description="memory per job, split among its processes (e.g. 16GB, 64GiB)")
    walltime: str = Field("01:00:00", pattern=r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$",
                          description="time limit per job (sbatch -t), [D-]HH:MM[:SS]")
    jobs: int = Field(2, ge=1, le=100_000, description="jobs submitted while the stage runs")
    job_extra_directives: tuple[str, ...] = Field((), description="more #SBATCH lines, e.g. ['--qos=normal']")
    job_script_prologue: tuple[str, ...] = Field((), description="shell lines run before the worker starts, e.g. "
                                                 "['source /opt/idtprior/.venv/bin/activate']")
    python: str | None = Field(None, description="python on the compute nodes (None: the flow's own interpreter)")
    interface: str | None = Field(None, description="network interface the scheduler and workers listen on, e.g. "
                                  "ib0 (None: the scheduler listens on every interface of its host)")
    local_directory: str | None = Field(None, description="worker scratch folder on the compute node, e.g. $TMPDIR")
    log_directory: str | None = Field(None, description="folder for the jobs' stdout/stderr (None: sbatch's default)")
    dashboard_address: str = Field("127.0.0.1:8787", description="the scheduler's HTTP endpoints (the dashboard "
                                   "where bokeh is installed, health, metrics); 127.0.0.1 keeps them off the network")

    @model_validator(mode="after")
    def _check_memory(self):
        from dask.utils import parse_bytes

        try:
            parse_bytes(self.memory)
        except ValueError as e:
            raise ValueError(f"memory {self.memory!r} is not a size like 16GB or 64GiB") from e
        if self.processes is not None and self.processes > self.cores:
            raise ValueError(f"processes {self.processes} exceeds cores {self.cores}: each process needs a core")
        return self


class DaskConfig(Section):
    """Where per-video work inside a chunk runs."""

    address: str | None = Field(None, description="existing scheduler, e.g. tcp://host:8786; None: a new cluster "
                                "(below)")
    cluster: Literal["local", "slurm"] = Field("local", description="the cluster made when no address is given: a "
                                               "LocalCluster on this machine or SLURM jobs (section slurm)")
    n_workers: int = Field(2, ge=0, le=4096, description="LocalCluster workers; 0: run in the flow process")
    threads_per_worker: int = Field(1, ge=1, le=256)
    processes: bool = True
    host: str = Field("127.0.0.1", description="LocalCluster of processes: the address its scheduler and workers "
                      "listen on; 127.0.0.1 keeps them off the network (threads, processes: false, talk in memory)")
    slurm: SlurmConfig = SlurmConfig()
