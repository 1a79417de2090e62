"""Co-location layer: find the cores the host job leaves idle and keep our work off its back.

Pure and OS-level code only (no MPI). Modules, from pure to effectful:

- :mod:`~colocate.colocation.cpulist`: parse and format Linux CPU lists ("0-3,8", "0-7:2").
- :mod:`~colocate.colocation.units`: memory sizes ("8GiB") and the function memory budget.
- :mod:`~colocate.colocation.topology`: this node's cores, hyperthreads, NUMA, memory, GPUs.
- :mod:`~colocate.colocation.spare`: which allowed cores are spare (explicit, all, host pids,
  host cgroup, or measured "auto" with Slurm hints).
- :mod:`~colocate.colocation.sandbox`: what an executor child applies to itself (pinning,
  SCHED_IDLE, thread-pool sizes, RLIMIT_AS).
- :mod:`~colocate.colocation.cgroups`: cgroup v1/v2 detection and one group per executor
  (cpuset, idle weight, quota, memory limit, freezer, OOM detection).
- :mod:`~colocate.colocation.guard`: the interference guard (host-load sampler, hysteresis
  policy, pause/resume actions).
- :mod:`~colocate.colocation.info`: the node report behind ``colocate info``.

Private helpers: ``_procstat`` (per-core and per-process CPU ticks from /proc) and
``_cgroupfs`` (cgroup mounts, membership, layout probes, file helpers).
"""

from colocate.colocation.cgroups import CgroupError, CgroupManager, Group
from colocate.colocation.cpulist import format_cpulist, parse_cpulist
from colocate.colocation.guard import (
    FreezerAction,
    Guard,
    GuardPolicy,
    HostLoadSampler,
    Pause,
    Resume,
    SignalAction,
    choose_action,
)
from colocate.colocation.info import collect, render
from colocate.colocation.sandbox import apply_sandbox, describe_self, thread_env
from colocate.colocation.spare import SpareCores, discover_spare_cores
from colocate.colocation.topology import Gpu, Topology
from colocate.colocation.units import parse_size, resolve_budget

__all__ = [
    "CgroupError", "CgroupManager", "FreezerAction", "Gpu", "Group", "Guard", "GuardPolicy",
    "HostLoadSampler", "Pause", "Resume", "SignalAction", "SpareCores", "Topology",
    "apply_sandbox", "choose_action", "collect", "describe_self", "discover_spare_cores",
    "format_cpulist", "parse_cpulist", "parse_size", "render", "resolve_budget", "thread_env",
]
