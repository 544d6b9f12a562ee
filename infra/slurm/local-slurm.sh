#!/usr/bin/env bash
# A one-node SLURM on this machine, in a folder of its own: to try idtprior's SLURM path (dask.cluster: slurm,
# gpu-worker.sbatch, train-stage under srun) on a laptop or a CI machine, and for the drills in tests/infra/.
#
#   infra/slurm/local-slurm.sh up DIR      # munged, slurmctld and slurmd started; prints the line to source
#   source DIR/env.sh                      # SLURM_CONF for sbatch, squeue, srun, scancel, sinfo
#   infra/slurm/local-slurm.sh down DIR    # every daemon stopped by its pid file
#
# Needs Debian's slurm-wlm and munge (`apt-get install -y slurm-wlm munge`). As root, munged runs as the munge user
# and the SLURM daemons as root (SlurmUser); as another user, all of them run as that user. Ports: SLURM_PORT
# (slurmctld, default 6817) and SLURM_PORT+1 (slurmd). This host is the controller and the one node, with its CPUs and
# a RealMemory of 3/4 of its memory; the partition "debug" is the default. Nothing outside DIR is written.
set -euo pipefail

usage() { echo "usage: $0 up|down|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
port=${SLURM_PORT:-6817}

need() { command -v "$1" >/dev/null 2>&1 || { echo "$0: $1 not found (apt-get install -y slurm-wlm munge)" >&2; exit 3; }; }

stop_pid() {  # stop the daemon whose pid is in $1, waiting up to 10 s, then SIGKILL
    local file=$1 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

down() {
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munge/munged.pid"
}

up() {
    need munged; need slurmctld; need slurmd; need sinfo
    down  # a previous run's daemons in this folder
    local me host cpus mem_mb user
    me=$(id -un)
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)
    mkdir -p "$dir/munge" "$dir/munge-socket" "$dir/state" "$dir/spool" "$dir/log"

    # munge: its own key, seed, log and pid file in DIR/munge (private), its socket in DIR/munge-socket (open)
    user=$me
    [ "$(id -u)" = 0 ] && user=munge
    [ -s "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none
    chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"; chmod 755 "$dir/munge-socket"
    if [ "$user" != "$me" ]; then
        chown -R "$user" "$dir/munge" "$dir/munge-socket"
        chmod 755 "$dir"  # the munge user reaches its folder
        runuser -u "$user" -- munged --key-file="$dir/munge/munge.key" --socket="$dir/munge-socket/munge.socket" \
            --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munge.seed"
    else
        munged --key-file="$dir/munge/munge.key" --socket="$dir/munge-socket/munge.socket" \
            --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munge.seed"
    fi

    cat > "$dir/slurm.conf" <<EOF
ClusterName=idtprior-local
SlurmctldHost=$host
SlurmUser=$me
SlurmdUser=$me
AuthType=auth/munge
AuthInfo=socket=$dir/munge-socket/munge.socket
CredType=cred/munge
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    printf 'export SLURM_CONF=%s\n' "$dir/slurm.conf" > "$dir/env.sh"
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 100); do  # the node idle within seconds
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "SLURM up in $dir: source $dir/env.sh"
            return 0
        fi
        sleep 0.2
    done
    echo "$0: the node did not come up; logs in $dir/log" >&2
    tail -5 "$dir"/log/*.log >&2 || true
    down
    exit 1
}

case $cmd in
    up) up ;;
    down) down; echo "SLURM down in $dir" ;;
    status) SLURM_CONF="$dir/slurm.conf" sinfo ;;
    *) usage ;;
esac
