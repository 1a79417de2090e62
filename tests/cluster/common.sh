# Shared by up.sh, down.sh and on.sh (sourced, not run): names, addresses and small checks.
# shellcheck shell=bash

STATE=${COLOCATE_CLUSTER_STATE:-/var/tmp/colocate-cluster}
CONF=$STATE/slurm.conf
BRIDGE=clbr0
CTL_ADDR=10.77.0.1
HOSTS_BEGIN="# colocate-cluster begin (tests/cluster/up.sh; down.sh removes these lines)"
HOSTS_END="# colocate-cluster end"

cannot() { echo "cluster: cannot $*" >&2; exit 1; }        # this machine does not allow it
broken() { echo "cluster: failed: $*" >&2; exit 2; }       # set up, but it did not come up

netns_of() { echo "colocate-$1"; }           # netns_of vnode2 -> colocate-vnode2

addr_of() {                                   # addr_of vnode2 -> 10.77.0.12
    [[ $1 =~ ^vnode([1-9])$ ]] || { echo "cluster: no such node '$1' (vnode1..vnode4)" >&2; return 1; }
    echo "10.77.0.$((10 + BASH_REMATCH[1]))"
}

node_names() { local i; for i in $(seq "$1"); do echo "vnode$i"; done; }

all_idle() {  # all_idle N SECONDS -> 0 once sinfo lists N nodes, all idle (in "vc", which has them all)
    local deadline=$((SECONDS + $2)) states
    while ((SECONDS < deadline)); do
        states=$(SLURM_CONF=$CONF timeout 10 sinfo -h -N -p vc -o '%T' 2>/dev/null | sort | uniq -c \
            | awk '{print $1, $2}') || true
        [[ $states == "$1 idle" ]] && return 0
        sleep 0.5
    done
    return 1
}

live_daemons() {  # 0 if a slurmd or the slurmctld of this cluster still runs
    local f pid
    for f in "$STATE"/run/*.pid; do
        [[ -e $f ]] || continue
        pid=$(cat "$f" 2>/dev/null) || continue
        [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}
