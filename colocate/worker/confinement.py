"""How a worker rank confines its executor: cgroup, per-task memory limit, interference guard.

One :class:`Confinement` per worker rank. It owns the rank's cgroup group (when the node lets us
write one: cpuset = the rank's cores, widened for a task that asks for several; idle CPU weight;
a memory limit set per task), and the
guard that samples the host's use of those cores and pauses the executor (freezer, else
SIGSTOP) while the host wants them back. Everything degrades: no cgroup means affinity and
priority only (said once in the log and in ``colocate info``); no guard when pinning is off
(there is no core of ours to watch).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from colocate.colocation.cgroups import CgroupManager
from colocate.colocation.guard import FreezerAction, Guard, SignalAction, choose_action

log = logging.getLogger("colocate.worker")

# Memory an executor needs for itself (interpreter, cloudpickle, numpy) on top of a task's own.
EXECUTOR_BASELINE = 128 << 20


class Confinement:
    """The controls of one worker rank's executor.

    Args:
        cfg: the effective configuration.
        rank: this worker rank (names its cgroup).
        cores: the rank's cores.
        budget: the node's memory budget for functions, in bytes.
        on_pause: called with ``True``/``False`` when the guard pauses/resumes the executor.
        peers: the world's other processes on this node (rank 0, other worker ranks, the
            launcher's proxy), whose CPU time the guard must not count as the host's.
    """

    def __init__(self, cfg: dict, rank: int, cores: list[int], budget: int,
                 on_pause: Callable[[bool], None], peers: Sequence[int] = ()) -> None:
        co = cfg["co_location"]
        self.cores = list(cores)
        self.pinning = co["pinning"]
        self.budget = budget
        self.on_pause = on_pause
        self.peers = list(peers)   # the world's other processes on this node: not the host
        self.child_pid: Callable[[], int | None] = lambda: None
        self.paused_since: float | None = None
        self.paused_total = 0.0
        self.manager = CgroupManager.detect(co["cgroups"], root_name="colocate")
        self.group = None
        if self.manager.available:
            stale = self.manager.cleanup_stale()
            if stale:
                log.info("rank %d: removed %d cgroup(s) left by dead colocate processes on this "
                         "node", rank, len(stale))
            try:
                # The cpuset must match the pinning: joining a cpuset resets affinity.
                self.group = self.manager.create(
                    f"rank{rank}", cpus=list(cores) if co["pinning"] else None,
                    cpu_weight_idle=co["priority"] == "idle")
            except Exception as e:   # a refused write must not stop the world
                log.warning("rank %d: no cgroup for the executor (%s); going on with affinity "
                            "and priority only", rank, e)
        else:
            log.info("rank %d: cgroups not used: %s", rank, self.manager.reason)
        self.memory = self.group is not None and "memory" in self.manager.controllers
        self.guard = None
        gcfg = cfg["guard"]
        if gcfg["enabled"] and co["pinning"]:
            freezer = self.group is not None and "freezer" in self.manager.controllers
            action, note = choose_action(gcfg["action"], freezer)
            if note:
                log.info("rank %d: guard: %s", rank, note)
            act = FreezerAction(lambda core: self.group) if action == "freeze" else (
                SignalAction(lambda core: [p for p in (self.child_pid(),) if p]))
            self.guard = Guard.from_settings(gcfg, cores, self._own_pids,
                                             self._paused(act.pause, True),
                                             self._paused(act.resume, False))
            self.action = action
        self.next_sample = time.monotonic()

    def _own_pids(self) -> list[int]:
        return [p for p in (os.getpid(), self.child_pid(), *self.peers) if p]

    def _paused(self, act: Callable[[int], None], paused: bool) -> Callable[[int], None]:
        def apply(core: int) -> None:
            act(core)
            now = time.monotonic()
            if paused:
                self.paused_since = now
            elif self.paused_since is not None:
                self.paused_total += now - self.paused_since
                self.paused_since = None
            self.on_pause(paused)
        return apply

    def limit_memory(self, task_memory: int | None) -> None:
        """Set the executor's memory limit for the work it holds (cgroup only)."""
        if not self.memory:
            return
        limit = (task_memory or self.budget) + EXECUTOR_BASELINE
        if limit != self.group.memory_bytes:
            try:
                self.group.set_memory(limit)
            except Exception as e:
                log.warning("could not set the executor's memory limit to %d bytes: %s", limit, e)

    def widen(self, pid: int, cores: tuple[int, ...]) -> None:
        """Give the executor ``cores`` (a multi-core task), or back its own with ``()``."""
        cores = list(cores) or self.cores
        if self.group is not None and self.group.cpus is not None:
            try:
                self.group.set_cpus(cores)
            except Exception as e:
                log.warning("could not set the executor's cpuset to %s: %s", cores, e)
        if self.pinning:
            for tid in _threads(pid):
                try:
                    os.sched_setaffinity(tid, cores)
                except OSError:
                    pass   # a thread that just ended

    def tick(self, now: float) -> float:
        """Run the guard if it is due; returns the seconds until it is due again."""
        if self.guard is None:
            return float("inf")
        if now >= self.next_sample:
            self.guard.step()
            self.next_sample = now + self.guard.interval
        return self.next_sample - now

    def describe(self) -> dict:
        """What is in force, for the server log and ``colocate status``."""
        return {"cgroup": self.group.describe() if self.group is not None
                else f"none ({self.manager.reason})",
                "guard": None if self.guard is None else self.action}

    def close(self) -> None:
        """Resume anything paused and remove the cgroup."""
        if self.guard is not None:
            self.guard.stop()
        self.manager.close()


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]
