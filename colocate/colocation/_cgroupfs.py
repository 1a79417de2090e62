"""Cgroup filesystem: mounts, this process's cgroups, layout probes and small file helpers.

The low half of :mod:`colocate.colocation.cgroups`: everything that reads the layout without
creating anything. Helpers here are public to that module only.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass

from colocate.errors import ColocateError

V1_CONTROLLERS = ("cpu", "cpuset", "memory", "freezer")
V2_CONTROLLERS = ("cpu", "cpuset", "memory")
UNLIMITED = 1 << 62  # v1 reports "no limit" as a huge page-aligned number near 2**63.


class CgroupError(ColocateError, OSError):
    """The kernel refused a cgroup operation (create, write a limit, move a process, remove).

    The message names the file, the value and the kernel's reason. Typical causes: the cores
    asked for are outside the parent's cpuset, a memory limit below the group's current usage,
    or a cgroup tree that is not writable (run with ``co_location.cgroups: off`` to go on
    without cgroups).
    """


@dataclass(frozen=True)
class Mount:
    """A cgroup filesystem mount: where, which subtree (``root``), version and controllers."""

    path: str
    root: str
    version: int
    controllers: frozenset[str]


def read_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """List cgroup v1 and v2 mounts from ``/proc/self/mountinfo`` (empty if unreadable)."""
    mounts: list[Mount] = []
    try:
        with open(mountinfo) as f:
            lines = f.readlines()
    except OSError:
        return mounts
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, superopts = rfields[0], rfields[2].split(",")
        path = fields[4].replace("\\040", " ")
        if fstype == "cgroup2":
            ctrl = read(os.path.join(path, "cgroup.controllers")) or ""
            mounts.append(Mount(path, fields[3], 2, frozenset(ctrl.split())))
        elif fstype == "cgroup":
            names = frozenset(o for o in superopts if o in V1_CONTROLLERS or o == "cpuacct")
            if names:
                mounts.append(Mount(path, fields[3], 1, names))
    return mounts


def read_membership(path: str = "/proc/self/cgroup") -> dict[str, str]:
    """Map controller -> cgroup path of this process; the v2 path is under the key ``""``."""
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, cgpath = parts
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = cgpath
    return out


def cgroup_dir(mount: Mount, cgpath: str) -> str:
    """Directory of cgroup ``cgpath`` in ``mount`` (the mount point if it is not visible).

    In a container the mount may show only a subtree (``mount.root``), or a cgroup namespace
    may make ``cgpath`` relative; both are handled, and a path that does not exist falls back
    to the mount point, which is then this process's cgroup as far as it can see.
    """
    rel = cgpath
    if mount.root not in ("/", "") and (cgpath + "/").startswith(mount.root.rstrip("/") + "/"):
        rel = cgpath[len(mount.root.rstrip("/")) :]
    path = os.path.normpath(os.path.join(mount.path, rel.lstrip("/")))
    return path if os.path.isdir(path) else mount.path


def memory_limit_of_self() -> tuple[int | None, int | None]:
    """Return (limit, usage) in bytes of this process's memory cgroup, ``None`` if unlimited.

    v2: the smallest ``memory.max`` from our cgroup up to the mount root, and
    ``memory.current`` minus ``inactive_file`` (reclaimable cache). v1: the
    ``hierarchical_memory_limit`` from ``memory.stat`` and ``memory.usage_in_bytes`` minus
    ``total_inactive_file``. This is how a Slurm job's ``--mem`` shows up inside the job.
    """
    mounts, member = read_mounts(), read_membership()
    v1 = next((m for m in mounts if m.version == 1 and "memory" in m.controllers), None)
    if v1 is not None and "memory" in member:
        d = cgroup_dir(v1, member["memory"])
        stat = read_kv(os.path.join(d, "memory.stat"))
        limit = stat.get("hierarchical_memory_limit") or read_int(
            os.path.join(d, "memory.limit_in_bytes")
        )
        usage = read_int(os.path.join(d, "memory.usage_in_bytes"))
        if usage is not None:
            usage = max(0, usage - stat.get("total_inactive_file", 0))
        return (limit if limit and limit < UNLIMITED else None), usage
    v2 = next((m for m in mounts if m.version == 2 and "memory" in m.controllers), None)
    if v2 is not None and "" in member:
        d = cgroup_dir(v2, member[""])
        limit = None
        p = d
        while p.startswith(v2.path):
            value = read_int(os.path.join(p, "memory.max"))
            if value is not None and (limit is None or value < limit):
                limit = value
            if p == v2.path:
                break
            p = os.path.dirname(p)
        usage = read_int(os.path.join(d, "memory.current"))
        if usage is not None:
            usage = max(0, usage - read_kv(os.path.join(d, "memory.stat")).get("inactive_file", 0))
        return limit, usage
    return None, None


# -- probing -------------------------------------------------------------------------------


def probe_v2(mounts: list[Mount], member: dict[str, str],
              base: str | None) -> tuple[dict[str, str], str]:
    mount = next((m for m in mounts if m.version == 2), None)
    if mount is None:
        return {}, "no cgroup2 filesystem mounted"
    if not mount.controllers & set(V2_CONTROLLERS):
        return {}, (f"the cgroup2 mount {mount.path} has no cpu, cpuset or memory controller "
                    "(hybrid layout: the controllers are on v1 mounts)")
    d = cgroup_dir(mount, base if base is not None else member.get("", "/"))
    offered = set((read(os.path.join(d, "cgroup.controllers")) or "").split())
    usable = [c for c in V2_CONTROLLERS if c in offered]
    if not usable:
        return {}, (f"{d} offers none of {', '.join(V2_CONTROLLERS)} in cgroup.controllers: "
                    "ask for a delegated subtree with them enabled")
    if not (os.access(d, os.W_OK) and os.access(os.path.join(d, "cgroup.subtree_control"),
                                                 os.W_OK)):
        return {}, (f"{d} is not writable by uid {os.getuid()}: no delegated subtree "
                    "(e.g. systemd-run --scope -p Delegate=yes, or Slurm's cgroup/v2 plugin)")
    enabled = set((read(os.path.join(d, "cgroup.subtree_control")) or "").split())
    if d != mount.path and procs(d) and not set(usable) <= enabled:
        return {}, (f"{d} holds processes ({len(procs(d))}), so controllers cannot be enabled "
                    "for its children (cgroup v2 no-internal-process rule): start colocate in "
                    "a cgroup whose parent is delegated, or pass a base cgroup")
    bases = {"": d, **{c: d for c in usable}}
    if os.path.exists(os.path.join(d, "cgroup.freeze")) or kernel_at_least(5, 2):
        bases["freezer"] = d
    return bases, f"cgroup v2 at {d} ({', '.join(sorted(c for c in bases if c))})"


def probe_v1(mounts: list[Mount], member: dict[str, str],
              base: str | None) -> tuple[dict[str, str], str]:
    bases: dict[str, str] = {}
    problems: list[str] = []
    for ctrl in V1_CONTROLLERS:
        mount = next((m for m in mounts if m.version == 1 and ctrl in m.controllers), None)
        if mount is None:
            problems.append(f"{ctrl} not mounted")
            continue
        d = cgroup_dir(mount, base if base is not None else member.get(ctrl, "/"))
        if not os.access(d, os.W_OK):
            problems.append(f"{d} not writable by uid {os.getuid()}")
            continue
        bases[ctrl] = d
    if not bases:
        return {}, "; ".join(problems) or "no cgroup v1 hierarchy found"
    why = f"cgroup v1 ({', '.join(sorted(bases))})"
    return bases, why + (f"; unusable: {'; '.join(problems)}" if problems else "")


def enable_v2(path: str, controllers: list[str]) -> None:
    control = os.path.join(path, "cgroup.subtree_control")
    enabled = set((read(control) or "").split())
    for c in controllers:
        if c not in enabled:
            write(control, f"+{c}")


def inherit_cpuset(path: str, cpus: bool = True) -> None:
    """Give a new v1 cpuset the parent's mems (and cpus): empty ones refuse every task."""
    parent = os.path.dirname(path)
    names = ("cpuset.cpus", "cpuset.mems") if cpus else ("cpuset.mems",)
    for name in names:
        if not (read(os.path.join(path, name)) or "").strip():
            write(os.path.join(path, name), (read(os.path.join(parent, name)) or "").strip())


def cpus_file(v1: bool, effective: bool) -> str:
    if v1:
        return "cpuset.effective_cpus" if effective else "cpuset.cpus"
    return "cpuset.cpus.effective" if effective else "cpuset.cpus"


def kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


# -- small file helpers --------------------------------------------------------------------


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = (read(path) or "").strip()
    if text == "max":
        return None
    return int(text) if text.isdigit() else None


def read_kv(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise CgroupError(f"writing {value!r} to {path} failed: {e.strerror}") from e


def try_write(path: str, value: str) -> bool:
    try:
        write(path, value)
        return True
    except CgroupError:
        return False


def procs(path: str) -> list[int]:
    return [int(x) for x in (read(os.path.join(path, "cgroup.procs")) or "").split()]


def thaw_dir(path: str) -> bool:
    """Thaw a frozen group directory (v1 ``freezer.state`` or v2 ``cgroup.freeze``).

    Returns whether it was frozen (and a thaw was asked for).
    """
    state = (read(os.path.join(path, "freezer.state")) or "").strip()
    if state in ("FROZEN", "FREEZING"):
        return try_write(os.path.join(path, "freezer.state"), "THAWED")
    if (read(os.path.join(path, "cgroup.freeze")) or "").strip() == "1":
        return try_write(os.path.join(path, "cgroup.freeze"), "0")
    return False


def subdirs(path: str) -> list[str]:
    try:
        return [os.path.join(path, e.name) for e in os.scandir(path) if e.is_dir()]
    except OSError:
        return []


def rmdir_quiet(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
