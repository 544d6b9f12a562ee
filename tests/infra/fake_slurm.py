"""Stand-ins for SLURM's ``sbatch``, ``squeue``, ``sacct`` and ``srun`` on one machine (there is no SLURM here),
written as executables into a folder for PATH.

They do what the real commands do that the training launcher relies on, and no more: ``sbatch --parsable SCRIPT``
reads the script's ``#SBATCH --key=value`` lines, starts ``bash SCRIPT`` in the background in ``--chdir`` with its
output in ``--output`` (``%j``: the job id) and the batch environment SLURM gives (``SLURM_JOB_ID``,
``SLURM_JOB_NAME``, ``SLURM_NNODES``, ``SLURM_NTASKS_PER_NODE``, ``SLURM_NTASKS``, ``SLURM_NODELIST``), and prints
the job id; ``squeue --noheader --jobs ID --format %T`` prints RUNNING while the job runs, nothing after;
``sacct`` prints COMPLETED or FAILED from the script's exit status; ``srun`` starts one process per task, all on this
machine, numbered as SLURM numbers them across nodes (``SLURM_PROCID`` the task index, ``SLURM_NODEID`` and
``SLURM_LOCALID`` its node and its index on the node, ``--ntasks-per-node`` tasks a node), waits for them, and with
``--kill-on-bad-exit=1`` kills the rest when one fails. Every call is logged to ``calls.log`` in the state folder
(one JSON line: the command, its arguments, the names of the SLURM_* variables it was given).
"""

import sys
from pathlib import Path

_COMMON = '''#!{python}
import json, os, re, signal, subprocess, sys, time
from pathlib import Path
STATE = Path({state!r})
with open(STATE / "calls.log", "a") as f:
    f.write(json.dumps({{"cmd": Path(sys.argv[0]).name, "args": sys.argv[1:],
                        "slurm_env": sorted(k for k in os.environ if k.startswith("SLURM_"))}}) + "\\n")
'''

_SBATCH = '''
script = Path(sys.argv[-1])
d = dict(re.findall(r"^#SBATCH --([\\w-]+)=(.*)$", script.read_text(), re.M))
counter = STATE / "next-job"
job = int(counter.read_text()) if counter.exists() else 7000 + os.getpid() % 1000
counter.write_text(str(job + 1))
job = str(job)
nodes, per_node = int(d.get("nodes", 1)), int(d.get("ntasks-per-node", 1))
env = dict(os.environ, SLURM_JOB_ID=job, SLURM_JOB_NAME=d.get("job-name", "sbatch"), SLURM_NNODES=str(nodes),
           SLURM_NTASKS_PER_NODE=str(per_node), SLURM_NTASKS=str(nodes * per_node), SLURM_NODELIST="localhost",
           SLURM_SUBMIT_DIR=os.getcwd())
out = open(d.get("output", "slurm-%j.out").replace("%j", job), "w")
rc = STATE / f"{{job}}.rc"
subprocess.Popen(["bash", "-c", 'bash "$0"; echo $? > "$1"', str(script), str(rc)], cwd=d.get("chdir", os.getcwd()),
                 env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
print(job)
'''

_SQUEUE = '''
job = sys.argv[sys.argv.index("--jobs") + 1]
if (STATE / "next-job").exists() and not (STATE / f"{{job}}.rc").exists():
    print("RUNNING")
'''

_SACCT = '''
job = sys.argv[sys.argv.index("--jobs") + 1]
rc = STATE / f"{{job}}.rc"
if rc.exists():
    print("COMPLETED" if rc.read_text().strip() == "0" else "FAILED")
'''

_SRUN = '''
args = sys.argv[1:]
kill_on_bad_exit = "--kill-on-bad-exit=1" in args
first = next(i for i, a in enumerate(args) if not a.startswith("-"))  # srun's options, then the command
cmd = args[first:]
n = int(os.environ.get("SLURM_NTASKS", "1"))
per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", n))
procs = [subprocess.Popen(cmd, env=dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i % per_node),
                                        SLURM_NODEID=str(i // per_node), SLURM_STEP_NUM_TASKS=str(n)))
         for i in range(n)]
codes = [None] * n
while None in codes:
    for i, p in enumerate(procs):
        if codes[i] is None:
            codes[i] = p.poll()
    if kill_on_bad_exit and any(c not in (None, 0) for c in codes):
        for p in procs:
            if p.poll() is None:
                p.kill()
    time.sleep(0.2)
sys.exit(max(abs(c) for c in codes))
'''


def install_fake_slurm(bin_dir: Path, state_dir: Path) -> Path:
    """Write the four stand-ins into ``bin_dir`` (their state into ``state_dir``); returns ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, body in {"sbatch": _SBATCH, "squeue": _SQUEUE, "sacct": _SACCT, "srun": _SRUN}.items():
        path = bin_dir / name
        path.write_text(_COMMON.format(python=sys.executable, state=str(state_dir)) + body.format())
        path.chmod(0o755)
    return bin_dir
