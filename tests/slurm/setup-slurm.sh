#!/usr/bin/env bash
# Start a single-node Slurm on this machine, for the `slurm` tests and for trying the launchers.
#
#   sudo bash tests/slurm/setup-slurm.sh      # idempotent; prints "slurm ready: ..." on success
#   bash tests/slurm/stop-slurm.sh [--all]    # stops slurmd and slurmctld (--all: munged too)
#
# Installs Debian's slurmd + slurmctld + slurm-client + munge (and stress-ng, a host program for the
# tests) when missing, writes /etc/slurm/slurm.conf for this one node from `slurmd -C`, starts
# munged, slurmctld and slurmd directly (no systemd needed) and waits, bounded, for the node to be
# idle. Exit status: 0 ready, 1 cannot (the reason is printed on stderr, one line starting with
# "setup-slurm: cannot").
#
# Environment:
#   COLOCATE_SLURM_STATE    state, spool and log directory (default /var/tmp/colocate-slurm)
#   COLOCATE_SLURM_TASK     TaskPlugin to try first (default task/affinity; falls back to task/none)
#   COLOCATE_SLURM_WAIT     seconds to wait for the node to become idle (default 30)
#
# Partitions: "debug" (the default) and "pool", preemptible by "debug" (PreemptMode=CANCEL,
# GraceTime=10): for the pool tests.
set -euo pipefail
# This Slurm is the default one (/etc/slurm/slurm.conf): never the virtual cluster's SLURM_CONF.
unset SLURM_CONF

STATE=${COLOCATE_SLURM_STATE:-/var/tmp/colocate-slurm}
TASK_PLUGIN=${COLOCATE_SLURM_TASK:-task/affinity}
WAIT=${COLOCATE_SLURM_WAIT:-30}
POOL_GRACE=10   # GraceTime of the preemptible partition "pool", seconds
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
PACKAGES=(slurmd slurmctld slurm-client munge stress-ng)

say() { echo "setup-slurm: $*"; }
cannot() { echo "setup-slurm: cannot start Slurm: $*" >&2; exit 1; }

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1; }

# Whether this Slurm's daemon NAME (slurmd, slurmctld) runs, by its pid file: the virtual cluster
# of tests/cluster/up.sh runs daemons of the same names beside it, which are not ours.
running() { local pid; pid=$(cat "$STATE/$1.pid" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

wait_idle() {  # wait_idle SECONDS -> 0 when the node is idle (or allocated/mixed: it's up)
    local deadline=$((SECONDS + $1)) state
    while ((SECONDS < deadline)); do
        state=$(node_state || true)
        case $state in
            idle|idle~|mixed|allocated|completing) return 0 ;;
        esac
        sleep 0.5
    done
    return 1
}

[[ $(id -u) == 0 ]] || cannot "needs root (to install packages and run slurmd), running as $(id -un)"

# Already running (a previous run of this script, or a Slurm the machine had) with the
# preemptible partition? Then done.
if command -v sinfo >/dev/null && [[ -f $CONF ]] && grep -q '^PartitionName=pool ' "$CONF" \
        && running slurmctld && running slurmd && wait_idle 5; then
    say "slurm ready: already running, node $(sinfo -h -N -o '%N %T %c' | head -n1)"
    exit 0
fi

# ---- packages ---------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
    say "installing ${missing[*]}"
    # Debian's maintainer scripts would try to start the daemons: forbid it during the install.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    ok=1
    apt-get update -qq >/dev/null || ok=0
    ((ok)) && { apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || ok=0; }
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    ((ok)) || cannot "apt-get install ${missing[*]} failed (no package mirror reachable?)"
fi
for exe in munged slurmctld slurmd sinfo srun sbatch; do
    command -v "$exe" >/dev/null || cannot "$exe not found after installing ${PACKAGES[*]}"
done

# ---- munge --------------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    # A stale munged from an earlier, broken start: stop it by its pid file, then start afresh.
    old=$(cat /run/munge/munged.pid 2>/dev/null || true)
    [[ -n $old ]] && kill "$old" 2>/dev/null || true
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged || cannot "munged did not start (see /var/log/munge/munged.log)"
    else
        munged --force || cannot "munged did not start (see /var/log/munge/munged.log)"
    fi
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null | unmunge >/dev/null 2>&1 || cannot "munge credentials do not round-trip"
fi

# ---- slurm.conf ---------------------------------------------------------------------------------
NODE=$(hostname -s)
# `slurmd -C` prints this node's line, e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ...".
NODE_LINE=$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -n1) || true
[[ -n $NODE_LINE ]] || cannot "slurmd -C printed no NodeName line"
mkdir -p "$STATE"/{ctld,spool,log} "$CONF_DIR"

write_conf() {  # write_conf TASK_PLUGIN
    cat > "$CONF" <<EOF
# Generated by colocate tests/slurm/setup-slurm.sh: a single-node Slurm for tests. Safe to delete.
ClusterName=colocate
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# linuxproc tracks processes by parent pid: works without cgroup delegation or systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=$1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Keep finished jobs visible to scontrol for 10 minutes (no accounting database here).
MinJobAge=600
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
$NODE_LINE State=UNKNOWN
# "pool" is preemptible (colocate's pool jobs, tests/integration/test_pool_slurm.py): a job of
# "debug" that needs its CPUs cancels its jobs after SIGTERM and GraceTime seconds.
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10
PartitionName=pool Nodes=$NODE MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=CANCEL GraceTime=$POOL_GRACE
EOF
    # Some Debian builds read cgroup.conf even with proctrack/linuxproc; keep it harmless.
    [[ -f $CONF_DIR/cgroup.conf ]] || echo "CgroupPlugin=autodetect" > "$CONF_DIR/cgroup.conf"
}

stop_daemons() {
    local p pid
    for p in slurmd slurmctld; do
        pid=$(cat "$STATE/$p.pid" 2>/dev/null || true)
        [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        running slurmd || running slurmctld || return 0
        sleep 0.1
    done
}

start_daemons() {  # start_daemons -> 0 when the node is idle within $WAIT s
    # -i: ignore saved job state from an earlier configuration.
    slurmctld -i || return 1
    slurmd || return 1
    wait_idle "$WAIT"
}

# A node that was DOWN/DRAINED in an earlier run comes back with ReturnToService=2, but a stale
# daemon from a previous configuration would keep the old one: restart cleanly.
stop_daemons
write_conf "$TASK_PLUGIN"
if ! start_daemons; then
    say "node not idle with TaskPlugin=$TASK_PLUGIN (state: $(node_state || echo none)); trying task/none"
    stop_daemons
    write_conf task/none
    start_daemons || cannot "node $NODE not idle after ${WAIT}s (state: $(node_state || echo none)); \
see $STATE/log/slurmctld.log and $STATE/log/slurmd.log"
    TASK_PLUGIN=task/none
fi

# The TaskPlugin must actually bind: a one-task step asked for core 0 only must see core 0 only.
if [[ $TASK_PLUGIN != task/none ]]; then
    got=$(timeout 30 srun -N1 -n1 --cpu-bind=map_cpu:0 -t 1 \
        python3 -c 'import os; print(sorted(os.sched_getaffinity(0)))' 2>&1 | tail -n1 || true)
    if [[ $got != "[0]" ]]; then
        say "TaskPlugin=$TASK_PLUGIN did not bind (srun --cpu-bind=map_cpu:0 saw $got); using task/none"
        stop_daemons
        write_conf task/none
        start_daemons || cannot "node $NODE not idle with task/none; see $STATE/log"
        TASK_PLUGIN=task/none
    fi
fi

say "slurm ready: node $(sinfo -h -N -o '%N %T cpus=%c' | head -n1), TaskPlugin=$TASK_PLUGIN, logs in $STATE/log"
