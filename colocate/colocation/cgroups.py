"""Cgroups: detect the layout (v2, v1, hybrid) and manage one cgroup per executor child.

Layouts, and what colocate does with each:

- **v2, unified** (``cgroup2`` mount with controllers in ``cgroup.controllers``): groups are
  created under the cgroup this process lives in, which must be writable (a *delegated*
  subtree, as systemd's ``Delegate=yes`` or Slurm's cgroup/v2 plugin give). The v2
  "no internal processes" rule means that cgroup must hold no processes once controllers are
  enabled for its children; if it does, v2 is reported unavailable with that reason.
  Knobs: ``cpu.idle=1`` (or ``cpu.weight=1``), ``cpu.max``, ``cpuset.cpus``, ``memory.max``,
  ``memory.swap.max=0``, ``cgroup.freeze``.
- **v1** (one mount per controller, e.g. ``/sys/fs/cgroup/memory``): groups are created in each
  writable hierarchy among cpu, cpuset, memory and freezer, under this process's cgroup in that
  hierarchy. Knobs: ``cpu.shares=2`` (+ ``cpu.idle=1`` where the kernel has it),
  ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, ``cpuset.cpus`` + ``cpuset.mems`` (copied from the
  parent: a v1 cpuset with empty mems accepts no tasks), ``memory.limit_in_bytes`` (+
  ``memory.memsw.limit_in_bytes`` so the limit cannot be dodged by swapping),
  ``freezer.state``.
- **hybrid** (v1 controllers plus a ``cgroup2`` mount without controllers, as on systemd hosts
  in legacy mode): v2 is unusable, v1 is used.

CPU weight is relative among the entities of one run queue, so the host's processes compete
with our per-process group, not with the executor's leaf: both levels are made idle, not only
the leaf (an idle leaf under a default-weight parent still took half of a core
the host wanted, measured with ``bench/interference.py``).

Nothing is left behind: groups live under ``<base>/<root_name>-<hostname>-<pid>/`` (``pid`` of
the process that owns the :class:`CgroupManager`), :meth:`CgroupManager.close` removes them
(it is also run at interpreter exit), and :meth:`CgroupManager.cleanup_stale` removes the
empty leftovers of colocate processes that died without closing.

Layout reading and probing live in :mod:`colocate.colocation._cgroupfs`.

Attaching a process to a v1 cpuset (or v2 ``cpuset.cpus``) resets its CPU affinity to the
group's cores: add the executor to its group *before* it pins itself, or give the group the
same cores.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import socket
import time

from colocate.colocation import _cgroupfs as fs
from colocate.colocation._cgroupfs import (
    UNLIMITED,
    V1_CONTROLLERS,
    V2_CONTROLLERS,
    CgroupError,
    Mount,
    cgroup_dir,
    memory_limit_of_self,
    read_membership,
    read_mounts,
)
from colocate.colocation.cpulist import format_cpulist, parse_cpulist
from colocate.errors import ConfigError

MODES = ("auto", "v1", "v2", "off")
CFS_PERIOD_US = 100_000  # 100 ms: the kernel default; quotas are expressed against it.


class CgroupManager:
    """Create, track and remove the cgroups of this process's executor children.

    Get one with :meth:`detect`; check :attr:`available` (and :attr:`reason` when not) and
    :attr:`controllers` (which of cpu, cpuset, memory, freezer can be used). Not thread-safe,
    except :meth:`Group.freeze` / :meth:`Group.thaw`, which are single writes.

    Attributes:
        available: whether :meth:`create` can be used.
        reason: why cgroups are unavailable, or which layout is used; say it once in the log.
        version: 1, 2 or ``None``.
        controllers: the usable controllers (``"freezer"`` stands for ``cgroup.freeze`` on v2).
    """

    def __init__(self, *, version: int | None, reason: str, bases: dict[str, str] | None = None,
                 root_name: str = "colocate"):
        self.version = version
        self.reason = reason
        self._bases = dict(bases or {})  # controller -> base directory (v2: one, key "")
        self.root_name = root_name
        self.controllers = frozenset(c for c in self._bases if c)
        self.available = version is not None and bool(self._bases)
        self._parents: list[str] | None = None
        self._groups: dict[str, Group] = {}
        self._atexit = False

    @classmethod
    def detect(cls, mode: str = "auto", root_name: str = "colocate", *,
               base: str | None = None) -> CgroupManager:
        """Detect which cgroup layout is usable. Creates nothing.

        Args:
            mode: ``"auto"`` (v2 if usable, else v1), ``"v1"``, ``"v2"`` or ``"off"``.
            root_name: directory under the base that holds colocate's groups.
            base: cgroup path (relative to the hierarchy root, e.g. ``"/colocate.slice"``) to
                create groups under instead of this process's own cgroup.

        Raises:
            ConfigError: ``mode`` is not one of the four.
        """
        if mode not in MODES:
            raise ConfigError(
                f"found {mode!r}, expected one of {', '.join(MODES)}", key="co_location.cgroups"
            )
        if mode == "off":
            return cls(version=None, reason="disabled (co_location.cgroups: off)")
        mounts, member = read_mounts(), read_membership()
        reasons: list[str] = []
        if mode in ("auto", "v2"):
            bases, why = fs.probe_v2(mounts, member, base)
            if bases:
                return cls(version=2, reason=why, bases=bases, root_name=root_name)
            reasons.append(f"v2: {why}")
        if mode in ("auto", "v1"):
            bases, why = fs.probe_v1(mounts, member, base)
            if bases:
                return cls(version=1, reason=why, bases=bases, root_name=root_name)
            reasons.append(f"v1: {why}")
        return cls(version=None, reason="; ".join(reasons), root_name=root_name)

    # -- groups ----------------------------------------------------------------------------

    def create(self, name: str, cpus: list[int] | None = None, memory_bytes: int | None = None,
               cpu_weight_idle: bool = True, cpu_quota: float | None = None) -> Group:
        """Create (or re-create) the group ``name`` with the given limits.

        Args:
            name: a plain directory name, unique within this manager (e.g. ``"core3"``).
            cpus: cores the group may use (cpuset); ``None`` keeps the parent's.
            memory_bytes: hard memory limit (no swap beyond it); ``None`` for no limit.
            cpu_weight_idle: give the group the lowest CPU weight (v2 ``cpu.idle``, v1
                ``cpu.shares=2`` and ``cpu.idle``), so the host job's processes always win.
            cpu_quota: cap in cores (0.5 = half a core) via CFS bandwidth; ``None`` for none.

        Limits whose controller is not in :attr:`controllers` are skipped and listed under
        ``"skipped"`` in :meth:`Group.describe`; check :attr:`controllers` first if a limit is
        essential (e.g. fall back to ``RLIMIT_AS`` for memory).

        Raises:
            CgroupError: the manager is unavailable, or the kernel refused a directory or value.
            ValueError: ``name`` is not a plain name.
        """
        if not self.available:
            raise CgroupError(f"cgroups are not available: {self.reason}")
        if not name or "/" in name or name.startswith((".", "cgroup")):
            raise ValueError(f"group name {name!r}: expected a plain directory name like 'core3'")
        if name in self._groups:
            self._groups.pop(name).remove()
        parents = self._ensure_parents()
        paths = {c: os.path.join(parents[c], name) for c in parents}
        group = Group(self, name, paths, home=dict(self._bases))
        self._groups[name] = group
        try:
            group._setup(cpus, memory_bytes, cpu_weight_idle, cpu_quota)
        except BaseException:
            self._groups.pop(name, None)
            group.remove()
            raise
        return group

    def groups(self) -> list[Group]:
        """The groups created and not yet removed."""
        return list(self._groups.values())

    def close(self) -> None:
        """Remove every group (moving stragglers out) and the per-process parent. Idempotent."""
        for g in list(self._groups.values()):
            with contextlib.suppress(CgroupError):
                g.remove()
        self._groups.clear()
        if self._parents:
            for d in fs.unique(self._parents.values()):
                fs.rmdir_quiet(d)
            self._parents = None
        if self._atexit:
            atexit.unregister(self.close)
            self._atexit = False

    def __enter__(self) -> CgroupManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cleanup_stale(self, timeout: float = 2.0) -> list[str]:
        """Remove the groups of colocate processes on this host that died without cleaning up.

        Looks at ``<base>/<root_name>-<hostname>-<pid>`` for this host's name and pids that no
        longer exist. A process still inside is the executor child of a rank that was killed
        while the guard held its group frozen: it got its parent-death signal, which a v1 freezer
        holds until the group thaws. Such groups are thawed (the orphan dies; up to ``timeout``
        seconds are waited for it), then every group without a process is removed, then the
        parent. Groups whose processes stay are left (and absent from the returned list).

        Returns:
            The directories removed.
        """
        removed: list[str] = []
        if not self.available:
            return removed
        host = socket.gethostname()
        prefix = f"{self.root_name}-"
        stale: list[str] = []
        for base in fs.unique(self._bases.values()):
            try:
                entries = [e for e in os.listdir(base) if e.startswith(prefix)]
            except OSError:
                continue
            for entry in entries:
                owner, _, pid = entry[len(prefix):].rpartition("-")
                if owner == host and pid.isdigit() and not fs.pid_alive(int(pid)):
                    stale.append(os.path.join(base, entry))
        held = [g for parent in stale for g in fs.subdirs(parent) if fs.procs(g)]
        if [g for g in held if fs.thaw_dir(g)]:
            deadline = time.monotonic() + timeout
            while any(fs.procs(g) for g in held) and time.monotonic() < deadline:
                time.sleep(0.02)
        for parent in stale:
            for child in fs.subdirs(parent):
                if not fs.procs(child) and fs.rmdir_quiet(child):
                    removed.append(child)
            if fs.rmdir_quiet(parent):
                removed.append(parent)
        return removed

    def describe(self) -> dict:
        """Layout, usable controllers, reason and live groups, for logs and ``colocate info``."""
        return {
            "available": self.available,
            "version": self.version,
            "reason": self.reason,
            "controllers": sorted(self.controllers),
            "groups": [g.describe() for g in self._groups.values()],
        }

    def _ensure_parents(self) -> dict[str, str]:
        if self._parents is not None:
            return self._parents
        # One top-level group per process, not a shared <root_name>/ parent: CPU weight and
        # cpu.idle act between siblings, so a shared parent would carry one world's priority
        # over to every other world on the node.
        own = f"{self.root_name}-{socket.gethostname()}-{os.getpid()}"
        parents: dict[str, str] = {}
        if self.version == 2:
            # The base must pass the controllers down before our group can use them.
            fs.enable_v2(self._bases[""], [c for c in V2_CONTROLLERS if c in self.controllers])
        for ctrl, base in self._bases.items():
            parent = os.path.join(base, own)
            if parent not in parents.values():
                self._mkdir(parent, ctrl)
            parents[ctrl] = parent
        self._parents = parents
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        return parents

    def _mkdir(self, path: str, ctrl: str) -> None:
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError(f"creating cgroup {path} failed: {e.strerror}") from e
        if self.version == 1 and ctrl == "cpuset":
            fs.inherit_cpuset(path)
        if self.version == 2:
            fs.enable_v2(path, [c for c in V2_CONTROLLERS if c in self.controllers])


def _make_cpu_idle(d: str, v1: bool) -> None:
    """Give the group ``d`` the lowest CPU weight: ``cpu.idle=1``, else the smallest weight."""
    if (fs.read(os.path.join(d, "cpu.idle")) or "").strip() == "1":
        return   # already (another rank's group shares the level); shares cannot change now
    if v1:
        fs.write(os.path.join(d, "cpu.shares"), "2")
        fs.try_write(os.path.join(d, "cpu.idle"), "1")  # after shares: idle blocks it
    elif not fs.try_write(os.path.join(d, "cpu.idle"), "1"):
        fs.write(os.path.join(d, "cpu.weight"), "1")


class Group:
    """One cgroup (one directory per v1 hierarchy, or one v2 directory) for an executor.

    Created by :meth:`CgroupManager.create`; removed by :meth:`remove` (idempotent).
    """

    def __init__(self, manager: CgroupManager, name: str, paths: dict[str, str],
                 home: dict[str, str]):
        self.manager = manager
        self.name = name
        self.version = manager.version
        self._paths = paths  # controller -> directory ("" for v2)
        self._home = home  # where stragglers go on remove (v1)
        self._dirs = fs.unique(paths.values())
        self.cpus: list[int] | None = None
        self.memory_bytes: int | None = None
        self.idle = False
        self.quota: float | None = None
        self.skipped: list[str] = []
        self.removed = False
        self._oom_base = 0

    # -- setup -----------------------------------------------------------------------------

    def _setup(self, cpus: list[int] | None, memory_bytes: int | None, idle: bool,
               quota: float | None) -> None:
        ctrls = self.manager.controllers
        for d in self._dirs:
            try:
                os.mkdir(d)
            except FileExistsError:
                pass
            except OSError as e:
                raise CgroupError(f"creating cgroup {d} failed: {e.strerror}") from e
        v1 = self.version == 1
        if "cpuset" in ctrls:
            d = self._dir("cpuset")
            parent = os.path.dirname(d)
            parent_cpus = fs.read(os.path.join(parent, fs.cpus_file(v1, effective=True)))
            if not (parent_cpus or "").strip():
                parent_cpus = fs.read(os.path.join(parent, "cpuset.cpus"))
            if cpus is not None:
                wanted = parse_cpulist(cpus)
                have = parse_cpulist(parent_cpus or "")
                if have and not set(wanted) <= set(have):
                    raise CgroupError(
                        f"cpuset {format_cpulist(wanted)} for group {self.name!r} is not within "
                        f"the parent's cores {format_cpulist(have)} ({os.path.dirname(d)})"
                    )
                fs.write(os.path.join(d, "cpuset.cpus"), format_cpulist(wanted))
                self.cpus = wanted
            if v1:
                fs.inherit_cpuset(d, cpus=cpus is None)
        elif cpus is not None:
            self.skipped.append("cpuset")
        if "cpu" in ctrls:
            d = self._dir("cpu")
            if idle:
                # SCHED_IDLE and weights only rank entities of one run queue: the host's
                # processes compete with our per-process group, not with this leaf. Both
                # levels are made idle, or the host would share its cores half and half.
                for level in (os.path.dirname(d), d):
                    _make_cpu_idle(level, v1)
                self.idle = True
            if quota is not None:
                us = max(1000, int(quota * CFS_PERIOD_US))
                if v1:
                    fs.write(os.path.join(d, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
                    fs.write(os.path.join(d, "cpu.cfs_quota_us"), str(us))
                else:
                    fs.write(os.path.join(d, "cpu.max"), f"{us} {CFS_PERIOD_US}")
                self.quota = quota
        elif idle or quota is not None:
            self.skipped.append("cpu")
        if "memory" in ctrls:
            self._oom_base = self._oom_count()
            if memory_bytes is not None:
                self.set_memory(memory_bytes)
            if not v1:
                fs.try_write(os.path.join(self._dir("memory"), "memory.swap.max"), "0")
        elif memory_bytes is not None:
            self.skipped.append("memory")

    # -- operations ------------------------------------------------------------------------

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the group.

        Raises:
            CgroupError: the process does not exist or the kernel refused the move.
        """
        for d in self._dirs:
            fs.write(os.path.join(d, "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        """Processes in the group now."""
        return fs.procs(self._dirs[0]) if self._dirs and not self.removed else []

    def set_cpus(self, cpus: list[int]) -> None:
        """Change the group's cpuset (a task that asks for several cores widens it).

        Raises:
            CgroupError: no cpuset controller, or the kernel refused the cores.
        """
        if "cpuset" not in self.manager.controllers:
            raise CgroupError(f"no cpuset controller for group {self.name!r}")
        fs.write(os.path.join(self._dir("cpuset"), "cpuset.cpus"), format_cpulist(cpus))
        self.cpus = list(cpus)

    def set_memory(self, memory_bytes: int) -> None:
        """Set the hard memory limit (v1 also caps memory+swap, so swap cannot extend it).

        Raises:
            CgroupError: no memory controller, or the kernel refused (e.g. a limit below the
                current usage on v1 answers "Device or resource busy").
        """
        if "memory" not in self.manager.controllers:
            raise CgroupError(f"no memory controller for group {self.name!r}: "
                              f"{self.manager.reason}")
        d = self._dir("memory")
        if self.version == 2:
            fs.write(os.path.join(d, "memory.max"), str(memory_bytes))
        else:
            limit = os.path.join(d, "memory.limit_in_bytes")
            memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
            # memsw must stay >= limit at every step: raise memsw first when growing.
            current = fs.read_int(limit) or 0
            order = [memsw, limit] if memory_bytes > current else [limit, memsw]
            for path in order:
                if path == memsw and not os.path.exists(memsw):
                    continue
                fs.write(path, str(memory_bytes))
        self.memory_bytes = memory_bytes

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this group since it was created.

        v2 and v1 on kernels >= 4.13 count kills (``memory.events`` / ``memory.oom_control``
        ``oom_kill``) and compare with the count at creation. Older v1 kernels have no counter:
        then a failed charge (``memory.failcnt`` > 0) with the peak usage at the limit is taken
        as a kill; pair it with the process's exit by SIGKILL to be sure.
        """
        if "memory" not in self.manager.controllers or self.removed:
            return False
        count = self._oom_count()
        if count is not None:
            return count > (self._oom_base or 0)
        d = self._dir("memory")
        failcnt = fs.read_int(os.path.join(d, "memory.failcnt")) or 0
        peak = fs.read_int(os.path.join(d, "memory.max_usage_in_bytes")) or 0
        limit = fs.read_int(os.path.join(d, "memory.limit_in_bytes")) or UNLIMITED
        return failcnt > 0 and peak >= limit - (1 << 20)

    def freeze(self, wait: bool = True, timeout: float = 2.0) -> None:
        """Stop every process of the group (they keep their memory; no signal is seen).

        Args:
            wait: wait until the kernel reports the group frozen.
            timeout: bound on that wait, in seconds.

        Raises:
            CgroupError: no freezer, or the group did not freeze within ``timeout``.
        """
        self._set_frozen(True, wait, timeout)

    def thaw(self, wait: bool = True, timeout: float = 2.0) -> None:
        """Let the group's processes run again (see :meth:`freeze`).

        A no-op without a freezer or after :meth:`remove`: nothing can be frozen then, so
        callers may thaw unconditionally (e.g. before killing a process).
        """
        if "freezer" not in self.manager.controllers or self.removed:
            return
        self._set_frozen(False, wait, timeout)

    @property
    def frozen(self) -> bool:
        """Whether the kernel reports the group fully frozen."""
        if "freezer" not in self.manager.controllers or self.removed:
            return False
        d = self._dir("freezer")
        if self.version == 1:
            return (fs.read(os.path.join(d, "freezer.state")) or "").strip() == "FROZEN"
        return fs.read_kv(os.path.join(d, "cgroup.events")).get("frozen") == 1

    def remove(self) -> None:
        """Thaw, move (v1) or kill (v2) the processes still inside, and delete the group.

        v1 moves stragglers back to this process's own cgroup in each hierarchy. v2 cannot
        (the parents hold controllers, so by the no-internal-process rule they may not hold
        processes): stragglers are killed, with ``cgroup.kill`` where the kernel has it.
        Idempotent; a group already gone is fine.

        Raises:
            CgroupError: a directory could not be removed within 2 s.
        """
        if self.removed:
            return
        if "freezer" in self.manager.controllers:
            with contextlib.suppress(CgroupError, OSError):
                self._set_frozen(False, True, 1.0)
        for d in self._dirs:
            if not os.path.isdir(d):
                continue
            if self.version == 1:
                home = next(self._home[c] for c, p in self._paths.items() if p == d)
                for pid in fs.procs(d):
                    fs.try_write(os.path.join(home, "cgroup.procs"), str(pid))
            else:
                if fs.procs(d) and not fs.try_write(os.path.join(d, "cgroup.kill"), "1"):
                    for pid in fs.procs(d):
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(
                            f"removing cgroup {d} failed: {e.strerror}; processes left: "
                            f"{fs.procs(d)}"
                        ) from e
                    time.sleep(0.01)  # exiting processes leave the group within milliseconds
        self.removed = True
        self.manager._groups.pop(self.name, None)

    def describe(self) -> dict:
        """What the group is and holds, for logs and ``colocate info``."""
        return {
            "name": self.name,
            "version": self.version,
            "paths": list(self._dirs),
            "cpus": format_cpulist(self.cpus) if self.cpus is not None else None,
            "memory_bytes": self.memory_bytes,
            "idle": self.idle,
            "cpu_quota": self.quota,
            "frozen": self.frozen,
            "pids": self.pids(),
            "skipped": list(self.skipped),
            "removed": self.removed,
        }

    def _dir(self, ctrl: str) -> str:
        return self._paths["" if self.version == 2 else ctrl]

    def _oom_count(self) -> int | None:
        d = self._dir("memory")
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return fs.read_kv(os.path.join(d, name)).get("oom_kill")

    def _set_frozen(self, frozen: bool, wait: bool, timeout: float) -> None:
        if "freezer" not in self.manager.controllers:
            raise CgroupError(f"no freezer for group {self.name!r} ({self.manager.reason}); "
                              "use guard action 'stop'")
        d = self._dir("freezer")
        if self.version == 1:
            fs.write(os.path.join(d, "freezer.state"), "FROZEN" if frozen else "THAWED")
        else:
            fs.write(os.path.join(d, "cgroup.freeze"), "1" if frozen else "0")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while self.frozen != frozen:
            if time.monotonic() > deadline:
                raise CgroupError(f"group {self.name!r} not {'frozen' if frozen else 'thawed'} "
                                  f"after {timeout} s ({d})")
            time.sleep(0.002)


__all__ = [
    "CFS_PERIOD_US", "MODES", "UNLIMITED", "V1_CONTROLLERS", "V2_CONTROLLERS", "CgroupError",
    "CgroupManager", "Group", "Mount", "cgroup_dir", "memory_limit_of_self", "read_membership",
    "read_mounts",
]
