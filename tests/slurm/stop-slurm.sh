#!/usr/bin/env bash
# Stop the single-node Slurm started by tests/slurm/setup-slurm.sh (slurmd, slurmctld, munged),
# each by the pid in its pid file. Leaves the packages and /etc/slurm/slurm.conf in place.
set -uo pipefail
STATE=${COLOCATE_SLURM_STATE:-/var/tmp/colocate-slurm}

stop() {  # stop NAME PIDFILE
    local pid
    pid=$(cat "$2" 2>/dev/null) || { echo "stop-slurm: $1 not running (no $2)"; return 0; }
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null
            echo "stop-slurm: $1 (pid $pid) killed after 5 s"
        else
            echo "stop-slurm: $1 (pid $pid) stopped"
        fi
    else
        echo "stop-slurm: $1 (pid $pid) was not running"
    fi
    rm -f "$2"
}

stop slurmd "$STATE/slurmd.pid"
stop slurmctld "$STATE/slurmctld.pid"
if [[ ${1:-} == --all ]]; then
    stop munged /run/munge/munged.pid
fi
