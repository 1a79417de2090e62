#!/usr/bin/env bash
# Run a command on a node of the virtual cluster (tests/cluster/up.sh):
#
#   bash tests/cluster/on.sh vnode2 hostname            # -> vnode2
#   bash tests/cluster/on.sh vnode1 env SLURM_CONF=... sbatch ...
#
# The command runs in the node's network namespace (its address, its eth0, its loopback) and in
# a UTS namespace of its own whose hostname is the node's name, with this environment
# (PYTHONPATH, SLURM_CONF, ...). Exit status: the command's, or 1 (on stderr: why) when there is
# no such node.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cluster/common.sh
. "$HERE/common.sh"

(($# >= 2)) || { echo "usage: on.sh NODE COMMAND [ARGS...]" >&2; exit 1; }
node=$1
shift
addr_of "$node" >/dev/null || exit 1
ns=$(netns_of "$node")
[[ -e /run/netns/$ns ]] || { echo "cluster: node $node is not up (no network namespace $ns; \
run tests/cluster/up.sh)" >&2; exit 1; }
# `ip netns exec` gives the command a mount namespace with the node's own /sys (so MPI's UCX
# sees the node's network interfaces, not the machine's: with the machine's, its addresses
# fail to unpack at random), without the cgroup file systems; mount them again from pid 1's
# table (slurmd and colocate use them).
# UCX takes the nodes for one machine (one boot id) and would carry MPI between them in shared
# memory; over TCP it crosses their network as between real nodes. (Set UCX_TLS to override.)
export UCX_TLS=${UCX_TLS:-self,tcp}
# shellcheck disable=SC2016  # $0 and $@ belong to the inner shell
exec ip netns exec "$ns" unshare --uts sh -c '
    grep -E "^[^ ]+ /sys/fs/cgroup[^ ]* (tmpfs|cgroup|cgroup2) " /proc/1/mounts |
    while read -r dev dir type opts _; do
        mkdir -p "$dir" && mount -t "$type" -o "$opts" "$dev" "$dir" || exit 1
    done || { echo "cluster: cannot mount the cgroup file systems on $0" >&2; exit 1; }
    hostname "$0" && exec "$@"' "$node" "$@"
