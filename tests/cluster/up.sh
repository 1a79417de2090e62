#!/usr/bin/env bash
# Bring up a virtual cluster of N nodes on this machine, with a Slurm over them.
#
#   sudo bash tests/cluster/up.sh [N]     # N = 2..4 (default 3); idempotent; prints the node names
#   bash tests/cluster/on.sh vnode2 CMD…  # run a command on a node
#   SLURM_CONF=$(bash tests/cluster/up.sh --conf) sinfo    # talk to its Slurm
#   sudo bash tests/cluster/down.sh       # stop and remove everything up.sh made
#
# Every node is a network namespace (`colocate-vnodeI`, address 10.77.0.(10+I) on eth0) joined
# by the bridge `clbr0` (10.77.0.1) in the root namespace, and every process started on it sees
# its own hostname (a UTS namespace per process tree: `on.sh` sets `vnodeI`). Lines between
# "# colocate-cluster begin/end" in /etc/hosts make every name resolve everywhere; down.sh removes
# them. On a node itself, its own name resolves first to 127.0.1.1, as on a Debian installation
# (/etc/netns/colocate-vnodeI/hosts, which `ip netns exec` mounts over /etc/hosts). One slurmctld (hostname `vctl`, on the bridge address, in the root network namespace) and
# one slurmd per node (in the node's namespaces, its own spool, pid and log files) share the
# machine's munged through its socket. Every node claims all of this machine's CPUs (CPUs= from
# `slurmd -C`): the nodes overlap on the same cores, so CPU ids are the same on every node as on
# a cluster of whole nodes, and the machine is oversubscribed N times.
#
# Partitions: "vc" (the default, for batch jobs) and "pool", preemptible by "vc"
# (PreemptMode=CANCEL, GraceTime=10 s) for pool jobs; scheduling passes every 1-2 s.
#
# Coexistence with the single-node Slurm of tests/slurm/setup-slurm.sh: this Slurm has its own
# configuration ($STATE/slurm.conf, reached only through SLURM_CONF), its own ports
# (SlurmctldPort 6917, SlurmdPort 6918), cluster name, state, spool, pid and log files, so both
# can run at once; neither script stops the other's daemons. munged is shared and left running.
#
# Exit status: 0 up (node names on stdout, one per line); 1 cannot (one line on stderr starting
# with "cluster: cannot", saying why: not root, no namespaces, packages missing, munged would not
# start); 2 failed (on stderr "cluster: failed ...": set up, but the Slurm daemons did not get
# idle; see the logs it names).
#
# Environment:
#   COLOCATE_CLUSTER_STATE  state directory (default /var/tmp/colocate-cluster)
#   COLOCATE_CLUSTER_WAIT   seconds to wait for the nodes to become idle (default 60)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cluster/common.sh
. "$HERE/common.sh"

if [[ ${1:-} == --conf ]]; then echo "$CONF"; exit 0; fi
N=${1:-3}
[[ $N =~ ^[2-4]$ ]] || cannot "N must be 2, 3 or 4, got '$N'"
WAIT=${COLOCATE_CLUSTER_WAIT:-60}
POOL_GRACE=10   # GraceTime of the preemptible partition "pool", seconds

[[ $(id -u) == 0 ]] || cannot "needs root (network namespaces, /etc/hosts, slurmd), running as $(id -un)"
for exe in ip unshare nsenter munge unmunge slurmctld slurmd sinfo srun sbatch scontrol; do
    command -v "$exe" >/dev/null || cannot "$exe not found: install iproute2, util-linux, \
munge, slurmd, slurmctld and slurm-client (bash .ci/run does)"
done

# ---- already up with N nodes? ---------------------------------------------------------------------
# (A cluster brought up by an older up.sh, without the preemptible partition, is brought up again.)
if [[ -f $STATE/nodes && $(cat "$STATE/nodes") == "$N" ]] && grep -q '^PartitionName=pool ' "$CONF" \
        && all_idle "$N" 3; then
    node_names "$N"
    exit 0
fi
bash "$HERE/down.sh" >/dev/null 2>&1 || true

# ---- munge (shared with the machine) ----------------------------------------------------------------
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged 2>/dev/null || true
    else
        munged --force 2>/dev/null || true
    fi
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 \
        || cannot "munged is not running and did not start (see /var/log/munge/munged.log)"
fi

# ---- network: a bridge, one namespace and veth pair per node ---------------------------------------
mkdir -p "$STATE"/{ctld,spool,log,run}
ip link add "$BRIDGE" type bridge 2>/dev/null || cannot "cannot create the bridge $BRIDGE \
(ip link add type bridge failed: no network namespaces or bridges allowed here?)"
ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in $(seq "$N"); do
    ns=$(netns_of "vnode$i")
    mkdir -p "$STATE/spool/vnode$i"
    ip netns add "$ns" 2>/dev/null || cannot "ip netns add $ns failed (network namespaces not allowed here?)"
    ip link add "clv$i" type veth peer name "clv${i}n" || cannot "cannot create a veth pair for vnode$i"
    ip link set "clv${i}n" netns "$ns"
    ip link set "clv$i" master "$BRIDGE"
    ip link set "clv$i" up
    ip -n "$ns" link set "clv${i}n" name eth0
    ip -n "$ns" addr add "$(addr_of "vnode$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done
unshare --uts true 2>/dev/null || cannot "unshare --uts failed (UTS namespaces not allowed here)"

# ---- /etc/hosts ---------------------------------------------------------------------------------------
{
    echo "$HOSTS_BEGIN"
    echo "$CTL_ADDR vctl"
    for i in $(seq "$N"); do echo "$(addr_of "vnode$i") vnode$i"; done
    echo "$HOSTS_END"
} >> /etc/hosts

# Each node's own view, as on a Debian installation: its own name first on 127.0.1.1, then the
# cluster's addresses. `ip netns exec` (on.sh) mounts /etc/netns/NS/hosts over /etc/hosts, for
# slurmd and every job step it starts. A process that binds to its own host name then gets a
# loopback address, which the other nodes cannot reach (colocate binds all interfaces then).
for i in $(seq "$N"); do
    mkdir -p "/etc/netns/$(netns_of "vnode$i")"
    {
        echo "127.0.0.1 localhost"
        echo "127.0.1.1 vnode$i"
        echo "$CTL_ADDR vctl"
        for j in $(seq "$N"); do echo "$(addr_of "vnode$j") vnode$j"; done
    } > "/etc/netns/$(netns_of "vnode$i")/hosts"
done

# ---- slurm.conf ---------------------------------------------------------------------------------------
# `slurmd -C` prints this machine's line, e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ...".
HW=$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -n1 | cut -d' ' -f2-) || true
[[ -n $HW ]] || cannot "slurmd -C printed no NodeName line"
HW=$(sed 's/RealMemory=[0-9]*/RealMemory=1024/' <<<"$HW")

write_conf() {  # write_conf TASK_PLUGIN
    {
        cat <<EOF
# Generated by colocate tests/cluster/up.sh: a virtual cluster of $N nodes. Safe to delete.
ClusterName=colocatevc
SlurmctldHost=vctl($CTL_ADDR)
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=$1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Scheduling passes every 2 s (main) and 1 s (backfill) instead of 60 s and 30 s: a job that was
# waiting for preempted pool jobs starts within ~2 s of their end, and tests and
# bench/idle_nodes.py measure colocate rather than Slurm's idle timers. A real site keeps its own.
SchedulerParameters=sched_interval=2,bf_interval=1
# "pool" is preemptible (colocate's pool jobs: tests/cluster/test_pool_cross_node.py,
# bench/idle_nodes.py): a job of the batch partition "vc" that needs its CPUs cancels its jobs
# after SIGTERM and GraceTime seconds.
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
# A lost node is noticed within ~10 s (the node-loss tests).
MessageTimeout=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
EOF
        for i in $(seq "$N"); do
            echo "NodeName=vnode$i NodeAddr=$(addr_of "vnode$i") $HW State=UNKNOWN"
        done
        echo "PartitionName=vc Nodes=vnode[1-$N] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10"
        echo "PartitionName=pool Nodes=vnode[1-$N] MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=CANCEL GraceTime=$POOL_GRACE"
    } > "$CONF"
    [[ -f $STATE/cgroup.conf ]] || echo "CgroupPlugin=autodetect" > "$STATE/cgroup.conf"
}

start_daemons() {  # start_daemons -> 0 when every node is idle within $WAIT s
    # -i: ignore job state saved by an earlier configuration.
    SLURM_CONF=$CONF unshare --uts sh -c 'hostname vctl && exec slurmctld -i' \
        || { echo "slurmctld did not start"; return 1; }
    for i in $(seq "$N"); do
        SLURM_CONF=$CONF bash "$HERE/on.sh" "vnode$i" slurmd \
            || { echo "slurmd on vnode$i did not start"; return 1; }
    done
    all_idle "$N" "$WAIT"
}

stop_daemons() {
    local pid
    for i in $(seq "$N"); do
        pid=$(cat "$STATE/run/slurmd-vnode$i.pid" 2>/dev/null || true)
        [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    done
    pid=$(cat "$STATE/run/slurmctld.pid" 2>/dev/null || true)
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        live_daemons || return 0
        sleep 0.1
    done
}

TASK_PLUGIN=task/affinity
write_conf "$TASK_PLUGIN"
if ! why=$(start_daemons); then
    stop_daemons
    write_conf task/none
    TASK_PLUGIN=task/none
    why=$(start_daemons) || broken "nodes not idle after ${WAIT}s ($why; states: \
$(SLURM_CONF=$CONF sinfo -h -N -o '%N=%T' 2>&1 | tr '\n' ' ')); see $STATE/log"
fi
# The TaskPlugin must bind: a step asked for CPU 0 only must see CPU 0 only.
if [[ $TASK_PLUGIN != task/none ]]; then
    got=$(SLURM_CONF=$CONF timeout 30 srun -N1 -n1 --cpu-bind=map_cpu:0 -t 1 \
        python3 -c 'import os; print(sorted(os.sched_getaffinity(0)))' 2>&1 | tail -n1 || true)
    if [[ $got != "[0]" ]]; then
        stop_daemons
        write_conf task/none
        why=$(start_daemons) || broken "nodes not idle with task/none ($why); see $STATE/log"
    fi
fi
echo "$N" > "$STATE/nodes"
node_names "$N"
