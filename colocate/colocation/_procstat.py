"""Per-core and per-process CPU time from /proc, in clock ticks, for load sampling.

Used by spare-core discovery ("auto") and by the interference guard. Everything here is a
cheap read of a few small /proc files; a full sample for a 128-core node and a handful of
executor processes costs well under a millisecond of CPU.

Units: ``/proc/stat`` per-cpu counters and ``/proc/<pid>/stat`` utime/stime are both in
``USER_HZ`` ticks (``os.sysconf("SC_CLK_TCK")``, 100 on Linux), so they can be subtracted from
each other directly. One tick is 10 ms, which bounds the resolution of a 100 ms sample to
about 10 % of a core.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CoreTimes:
    """Cumulative ticks of one core: ``busy`` (user, nice, system, irq, softirq) and ``total``.

    ``total`` also counts idle, iowait and steal. Steal (time the hypervisor gave to another
    guest) is neither ours nor the host job's, so it is left out of ``busy``.
    """

    busy: int
    total: int


def read_core_times(path: str = "/proc/stat") -> dict[int, CoreTimes]:
    """Read cumulative per-core busy and total ticks from ``/proc/stat``.

    Offline cores have no line and are absent from the result.
    """
    out: dict[int, CoreTimes] = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *fields = line.split()
            if not name[3:].isdigit():
                continue
            v = [int(x) for x in fields[:8]] + [0] * (8 - min(len(fields), 8))
            user, nice, system, idle, iowait, irq, softirq, steal = v
            busy = user + nice + system + irq + softirq
            out[int(name[3:])] = CoreTimes(busy, busy + idle + iowait + steal)
    return out


@dataclass(frozen=True)
class TaskTicks:
    """CPU ticks used by one process or thread, and where it last ran.

    Attributes:
        ticks: utime + stime, all threads of the process (or the one thread).
        cpu: the core it last ran on (field 39 of ``/proc/<pid>/stat``).
        start: start time in ticks after boot; (pid, start) identifies a process across pid
            reuse.
    """

    ticks: int
    cpu: int
    start: int


def read_task_ticks(path: str) -> TaskTicks | None:
    """Read ``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat``; ``None`` if it is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime=14, stime=15, starttime=22, processor=39.
    return TaskTicks(
        ticks=int(fields[11]) + int(fields[12]), cpu=int(fields[36]), start=int(fields[19])
    )


def uptime_ticks(path: str = "/proc/uptime") -> int:
    """Seconds since boot, in ticks (comparable with :attr:`TaskTicks.start`)."""
    with open(path) as f:
        return int(float(f.read().split()[0]) * CLK_TCK)


def thread_ids(pid: int) -> list[int]:
    """Thread ids of a process (empty if it is gone)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (FileNotFoundError, ProcessLookupError):
        return []


def affinity(pid: int) -> set[int] | None:
    """CPU affinity of a process or thread, or ``None`` if it is gone or not ours to read."""
    try:
        return os.sched_getaffinity(pid)
    except (ProcessLookupError, PermissionError, OSError):
        return None


def busy_fractions(
    before: dict[int, CoreTimes], after: dict[int, CoreTimes], cores: Iterable[int]
) -> dict[int, float]:
    """Fraction of each core's time spent busy between two readings (cores missing: skipped)."""
    out: dict[int, float] = {}
    for c in cores:
        if c in before and c in after:
            total = after[c].total - before[c].total
            if total > 0:
                out[c] = min(1.0, max(0.0, (after[c].busy - before[c].busy) / total))
    return out


class OwnUsage:
    """Attribute the CPU ticks of our own processes to the cores they ran on.

    Call :meth:`update` once per sample with our pids; it returns, per core, the ticks our
    processes used since the previous call. The attribution is an approximation, chosen to cost
    one or two small file reads per process:

    - a process pinned to one core (an executor child, the common case) is read once
      (``/proc/<pid>/stat``) and all its ticks are charged to that core;
    - a process allowed on several of the watched cores is read per thread
      (``/proc/<pid>/task/<tid>/stat``) and each thread's ticks are charged to the core it
      last ran on, which is exact for pinned threads and close for threads that stay put;
    - a process (or thread) first seen in this interval is charged all its ticks only if it
      started after the previous sample, otherwise nothing (its earlier time is unknown);
    - a process that exits between two samples loses its last interval, so for one sample its
      time looks like host load. Executors exit rarely, and the guard's hysteresis absorbs one
      noisy sample.
    """

    def __init__(self, cores: Iterable[int]):
        self.cores = frozenset(cores)
        self._last: dict[tuple[int, int], int] = {}  # (pid or tid, start) -> ticks
        self._last_uptime = uptime_ticks()

    def update(self, pids: Iterable[int]) -> dict[int, int]:
        """Return ticks used per watched core by ``pids`` since the previous call."""
        now = uptime_ticks()
        per_core: dict[int, int] = {}
        seen: dict[tuple[int, int], int] = {}

        def charge(key_id: int, t: TaskTicks, core: int) -> None:
            key = (key_id, t.start)
            seen[key] = t.ticks
            if key in self._last:
                delta = t.ticks - self._last[key]
            elif t.start >= self._last_uptime:
                delta = t.ticks
            else:
                delta = 0
            if core in self.cores and delta > 0:
                per_core[core] = per_core.get(core, 0) + delta

        for pid in set(pids):
            aff = affinity(pid)
            if not aff or not aff & self.cores:
                continue
            if len(aff) == 1:
                t = read_task_ticks(f"/proc/{pid}/stat")
                if t is not None:
                    charge(pid, t, next(iter(aff)))
                continue
            for tid in thread_ids(pid):
                t = read_task_ticks(f"/proc/{pid}/task/{tid}/stat")
                if t is not None:
                    charge(tid, t, t.cpu)
        self._last = seen
        self._last_uptime = now
        return per_core
