#!/usr/bin/env bash
# Stop the virtual cluster of tests/cluster/up.sh and remove everything it added: every process
# in a node's network namespace (its slurmd, job steps, test programs), the slurmctld (by its pid
# file), the namespaces and their /etc/netns/colocate-vnode* files, the bridge and veth pairs, the
# /etc/hosts lines. Leaves munged, the packages and the single-node Slurm of
# tests/slurm/setup-slurm.sh alone. Idempotent.
#
#   sudo bash tests/cluster/down.sh
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cluster/common.sh
. "$HERE/common.sh"

[[ $(id -u) == 0 ]] || cannot "stop the cluster: needs root, running as $(id -un)"

kill_pids() {  # kill_pids PID... : TERM, then KILL after 3 s
    (($#)) || return 0
    kill "$@" 2>/dev/null
    for _ in $(seq 30); do
        local alive=0 p
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null
    return 0
}

for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^colocate-vnode' || true); do
    # shellcheck disable=SC2046  # one pid per word
    kill_pids $(ip netns pids "$ns" 2>/dev/null)
    ip netns del "$ns" 2>/dev/null
done
pid=$(cat "$STATE/run/slurmctld.pid" 2>/dev/null || true)
[[ -n $pid ]] && kill_pids "$pid"
rm -f "$STATE"/run/*.pid "$STATE/nodes"
rm -rf /etc/netns/colocate-vnode[1-4]
ip link del "$BRIDGE" 2>/dev/null
for i in 1 2 3 4; do ip link del "clv$i" 2>/dev/null; done
if grep -qF "$HOSTS_BEGIN" /etc/hosts; then
    # /etc/hosts may be a bind mount: rewrite it in place, never replace the file.
    kept=$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {skip = 1; next}
        skip && $0 == e {skip = 0; next} !skip' /etc/hosts)
    printf '%s\n' "$kept" > /etc/hosts
fi
echo "cluster: down"
