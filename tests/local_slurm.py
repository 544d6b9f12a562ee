"""A one-node SLURM for the drills (``infra/slurm/local-slurm.sh``): started in a folder of its own under /tmp on free
ports, ``SLURM_CONF`` set while it runs, stopped by its pid files at the end; the test skips, saying why, where the
daemons cannot start."""

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "slurm" / "local-slurm.sh"


def free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld's and slurmd's)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("", port))
                b.bind(("", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports")


@contextmanager
def local_slurm() -> Iterator[Path]:
    """The cluster's folder (its slurm.conf, logs, state), with ``SLURM_CONF`` set for SLURM's commands."""
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "srun") if shutil.which(c) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the drills start munged as the munge user and SLURM's daemons as root: run them as root")
    folder = Path(tempfile.mkdtemp(prefix="idtprior-slurm-"))  # under /tmp: the munge user reaches its socket
    env = {**os.environ, "SLURM_PORT": str(free_port_pair())}
    up = subprocess.run([str(SCRIPT), "up", str(folder)], env=env, capture_output=True, text=True, timeout=120)
    if up.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"the one-node SLURM did not start: {(up.stdout + up.stderr)[-800:]}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(folder / "slurm.conf"))
            yield folder
    finally:
        subprocess.run([str(SCRIPT), "down", str(folder)], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def squeue() -> list[tuple[str, ...]]:
    """(job id, name, state) of every job in the queue."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]
