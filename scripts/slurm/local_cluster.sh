#!/usr/bin/env bash
# A single-host SLURM cluster for tests and CI: its own munged, slurmctld and slurmd, all state under
# $CUTIE_SLURM_DIR (default /tmp/cutie-slurm), nothing written to /etc. The node has this machine's real CPU
# count and memory (slurmd -C) and accepts `srun -N1 -n2`.
#
#   eval "$(bash scripts/slurm/local_cluster.sh start)"   # installs slurm-wlm/munge (apt-get) if missing; prints
#                                                          # `export SLURM_CONF=...` for the client commands
#   bash scripts/slurm/local_cluster.sh status             # exit 0 when the node accepts jobs
#   bash scripts/slurm/local_cluster.sh stop               # cancels jobs, stops the daemons, removes the state
#
# Exit codes of start: 0 up; 77 the packages are missing and cannot be installed; 1 any other failure.
# Needs root (SlurmUser=root keeps it to one user); proctrack/linuxproc and task/none need no cgroups.
set -euo pipefail

dir="${CUTIE_SLURM_DIR:-/tmp/cutie-slurm}"
conf="$dir/slurm.conf"
host="$(hostname -s)"
# Ports off the defaults (6817/6818) so a real cluster's daemons on this machine are never contacted.
ctld_port="${CUTIE_SLURM_CTLD_PORT:-16817}"
d_port="${CUTIE_SLURM_D_PORT:-16818}"

log() { echo "local_cluster: $*" >&2; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        log "slurmctld/slurmd/munged missing and apt-get as root unavailable: install slurm-wlm and munge"
        return 77
    fi
    log "installing slurm-wlm and munge (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >&2; then
        log "apt-get could not install slurm-wlm and munge"
        return 77
    fi
}

write_config() {
    mkdir -p "$dir"/{ctld,d,munge,log}
    chmod 700 "$dir/munge"
    # A fresh key for this cluster only; munged insists that nobody else can read it.
    [ -s "$dir/munge/munge.key" ] || head -c 1024 /dev/urandom >"$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    local node
    node="$(slurmd -C | head -n 1)"  # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
    cat >"$conf" <<EOF
ClusterName=cutie-local
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=300
$node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_ready() {
    SLURM_CONF="$conf" sinfo -h -n "$host" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}

start() {
    install_packages || return $?
    if running "$dir/slurmctld.pid" && node_ready; then
        log "already running ($conf)"
        echo "export SLURM_CONF=$conf"
        return 0
    fi
    write_config
    running "$dir/munged.pid" || munged --force --socket="$dir/munge/munge.socket" \
        --key-file="$dir/munge/munge.key" --pid-file="$dir/munged.pid" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed"
    export SLURM_CONF="$conf"
    running "$dir/slurmctld.pid" || slurmctld -i -f "$conf"  # -i: ignore state a crashed earlier run left
    running "$dir/slurmd.pid" || slurmd -f "$conf"
    for _ in $(seq 60); do
        if node_ready; then
            log "node $host up ($conf)"
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.5
    done
    log "the node did not come up within 30 s; logs in $dir/log:"
    tail -n 20 "$dir"/log/*.log >&2 || true
    return 1
}

stop() {
    if [ -f "$conf" ] && running "$dir/slurmctld.pid"; then
        SLURM_CONF="$conf" scancel --full --user="$(id -un)" 2>/dev/null || true
        # Jobs' tasks belong to slurmstepd, not the daemons: wait for them to end before stopping the daemons.
        for _ in $(seq 20); do
            [ -z "$(SLURM_CONF="$conf" squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    local pidfile pid
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        running "$pidfile" || continue
        pid="$(cat "$pidfile")"
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    done
    rm -rf "$dir"
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) [ -f "$conf" ] && node_ready ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
