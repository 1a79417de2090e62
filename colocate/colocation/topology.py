"""Topology: what this node has (cores, hyperthreads, NUMA domains, memory, GPUs).

Everything is read once by :meth:`Topology.probe`, with a fallback for each source that a
container or an unusual kernel may hide:

============  ===============================================  ===============================
what          source                                           fallback
============  ===============================================  ===============================
node name     ``co_location.node_name``, env COLOCATE_NODE_NAME  ``socket.gethostname()``
online        ``/sys/devices/system/cpu/online``               ``range(os.cpu_count())``
allowed       ``os.sched_getaffinity(0)``                      online
siblings      ``cpu*/topology/thread_siblings_list``           each core alone
NUMA          ``/sys/devices/system/node/node*/cpulist``       one domain 0 with every core
memory        psutil, capped by our memory cgroup's limit      psutil alone
GPUs          ``co_location.gpus``, CUDA_VISIBLE_DEVICES,      none
              ``nvidia-smi`` (3 s timeout)
============  ===============================================  ===============================

The node-name override lets tests on one machine pretend ranks live on different nodes:
give each rank a different ``COLOCATE_NODE_NAME``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

from colocate.colocation.cgroups import memory_limit_of_self
from colocate.colocation.cpulist import parse_cpulist
from colocate.errors import ConfigError

SYS_CPU = "/sys/devices/system/cpu"
SYS_NODE = "/sys/devices/system/node"
NVIDIA_SMI_TIMEOUT = 3.0  # seconds; a hung driver must not hang start-up


@dataclass(frozen=True)
class Gpu:
    """One GPU visible to this process.

    Attributes:
        id: the id to put in CUDA_VISIBLE_DEVICES (an index or a ``GPU-…`` UUID).
        name: model name when known (from nvidia-smi).
        memory: memory in bytes when known.
    """

    id: str
    name: str | None = None
    memory: int | None = None


@dataclass
class Topology:
    """This node's resources, as seen by this process.

    Attributes:
        node: node name (see the module docstring for the override).
        online: cores the kernel has online.
        allowed: cores this process may run on (its affinity: what srun / the batch system's
            cpuset gave it).
        siblings: core -> the hyperthreads sharing its physical core (itself included).
        numa: NUMA domain -> its cores.
        memory_total: bytes of memory usable here: physical memory, capped by the memory
            cgroup limit of this process (e.g. a Slurm job's ``--mem``).
        memory_available: bytes available now, within the same cap.
        gpus: GPUs visible to this process.
        sources: where each field came from, and any fallback taken.
    """

    node: str
    online: list[int]
    allowed: list[int]
    siblings: dict[int, list[int]]
    numa: dict[int, list[int]]
    memory_total: int
    memory_available: int
    gpus: list[Gpu] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def probe(cls, settings: Mapping | None = None) -> Topology:
        """Read this node's topology.

        Args:
            settings: the ``co_location`` section (``node_name``, ``gpus`` are used).

        Raises:
            ConfigError: ``gpus`` is neither a list of ids nor a comma-separated string.
        """
        settings = settings or {}
        sources: dict[str, str] = {}
        node = _node_name(settings, sources)
        online = _online(sources)
        try:
            allowed = sorted(os.sched_getaffinity(0))
            sources["allowed"] = "sched_getaffinity"
        except (AttributeError, OSError):
            allowed = list(online)
            sources["allowed"] = "online (no affinity API)"
        siblings = _siblings(online, sources)
        numa = _numa(online, sources)
        total, available = _memory(sources)
        gpus = _gpus(settings, sources)
        return cls(node, online, allowed, siblings, numa, total, available, gpus, sources)

    def numa_of(self, core: int) -> int:
        """NUMA domain of ``core`` (0 if unknown)."""
        return next((d for d, cores in self.numa.items() if core in cores), 0)

    def physical_cores(self, cores: list[int] | None = None) -> list[list[int]]:
        """Group ``cores`` (default: allowed) by physical core, hyperthreads together."""
        wanted = set(self.allowed if cores is None else cores)
        groups: dict[tuple[int, ...], list[int]] = {}
        for c in sorted(wanted):
            key = tuple(self.siblings.get(c, [c]))
            groups.setdefault(key, []).append(c)
        return list(groups.values())


def _node_name(settings: Mapping, sources: dict[str, str]) -> str:
    name = settings.get("node_name")
    if name:
        sources["node"] = "co_location.node_name"
        return str(name)
    name = os.environ.get("COLOCATE_NODE_NAME")
    if name:
        sources["node"] = "COLOCATE_NODE_NAME"
        return name
    sources["node"] = "hostname"
    return socket.gethostname()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _online(sources: dict[str, str]) -> list[int]:
    text = _read(f"{SYS_CPU}/online")
    if text:
        try:
            sources["online"] = f"{SYS_CPU}/online"
            return parse_cpulist(text)
        except ConfigError:
            pass
    sources["online"] = "os.cpu_count() (no sysfs)"
    return list(range(os.cpu_count() or 1))


def _siblings(online: list[int], sources: dict[str, str]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    missing = 0
    for c in online:
        text = _read(f"{SYS_CPU}/cpu{c}/topology/thread_siblings_list")
        try:
            out[c] = parse_cpulist(text) if text else [c]
        except ConfigError:
            out[c] = [c]
        missing += not text
    sources["siblings"] = "sysfs" if not missing else f"sysfs missing for {missing} cores: alone"
    return out


def _numa(online: list[int], sources: dict[str, str]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for path in glob.glob(f"{SYS_NODE}/node[0-9]*/cpulist"):
        node = int(os.path.basename(os.path.dirname(path))[4:])
        try:
            out[node] = parse_cpulist(_read(path) or "")
        except ConfigError:
            continue
    if not out:
        sources["numa"] = "no sysfs: one domain"
        return {0: list(online)}
    sources["numa"] = "sysfs"
    return dict(sorted(out.items()))


def _memory(sources: dict[str, str]) -> tuple[int, int]:
    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    limit, usage = memory_limit_of_self()
    if limit is not None and limit < total:
        total = limit
        available = min(available, max(0, limit - (usage or 0)))
        sources["memory"] = "psutil, capped by memory cgroup limit"
    else:
        sources["memory"] = "psutil"
    return total, available


def _gpus(settings: Mapping, sources: dict[str, str]) -> list[Gpu]:
    configured = settings.get("gpus")
    if configured is not None:
        sources["gpus"] = "co_location.gpus"
        if isinstance(configured, str):
            return [Gpu(g.strip()) for g in configured.split(",") if g.strip()]
        if isinstance(configured, (list, tuple)):
            return [Gpu(str(g)) for g in configured]
        raise ConfigError(
            f"found {configured!r}, expected a list of GPU ids like [0, 1] or '0,1'",
            key="co_location.gpus",
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        sources["gpus"] = "CUDA_VISIBLE_DEVICES"
        ids = [g.strip() for g in visible.split(",") if g.strip()]
        if ids and ids[0] in ("-1", "NoDevFiles"):
            return []
        return [Gpu(g) for g in ids]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        sources["gpus"] = "none (no CUDA_VISIBLE_DEVICES, no nvidia-smi)"
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        sources["gpus"] = f"none (nvidia-smi failed: {e})"
        return []
    sources["gpus"] = "nvidia-smi"
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits``.

    Memory is reported in MiB; lines that do not parse are skipped.
    """
    gpus: list[Gpu] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        mem = parts[-1].split()[0] if parts[-1] else ""
        memory = int(float(mem) * 2**20) if mem.replace(".", "", 1).isdigit() else None
        gpus.append(Gpu(parts[0], ", ".join(parts[1:-1]), memory))
    return gpus
