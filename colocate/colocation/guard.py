"""Interference guard: pause executors on a spare core while the host job wants that core.

Three parts, from pure to effectful:

- :class:`GuardPolicy` (pure): per core, host busy fraction in, :class:`Pause` /
  :class:`Resume` decisions out. Pause as soon as the host uses more than ``pause_above`` of
  the core (the host's speed comes first); resume only after the host has stayed below
  ``resume_below`` for ``hold`` seconds. The gap between the thresholds and the hold keep it
  from flapping: at most one pause/resume cycle per ``hold``.
- :class:`HostLoadSampler`: per spare core, the fraction of time used by processes that are
  not ours: the core's busy ticks from ``/proc/stat`` minus the ticks of our own processes
  attributed to that core (see :class:`colocate.colocation._procstat.OwnUsage` for the
  approximation). A SCHED_IDLE executor yields to the host at once, so while the host runs
  the executor's share is small and the host's shows up nearly whole; while the executor is
  paused the host's is measured alone.
- :class:`Guard`: sampler + policy + actions (``pause(core)``, ``resume(core)`` callbacks),
  stepped by the caller's loop (:meth:`Guard.step`) or by its own thread
  (:meth:`Guard.start`). Decisions are logged on the ``colocate.guard`` logger.

Settings (section ``guard``):

==============  =======  =========================================================
key             default  meaning
==============  =======  =========================================================
enabled         true     run the guard at all
interval        0.1      seconds between samples (1 tick = 10 ms: shorter is noisy)
pause_above     0.5      pause a core's executor when the host uses more than this
resume_below    0.2      resume when the host stays below this ...
hold            1.0      ... for this many seconds
action          freeze   ``freeze`` (cgroup freezer) or ``stop`` (SIGSTOP/SIGCONT);
                         ``freeze`` falls back to ``stop`` without a freezer
==============  =======  =========================================================
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from colocate.colocation._procstat import OwnUsage, read_core_times
from colocate.errors import ConfigError

log = logging.getLogger("colocate.guard")

ACTIONS = ("freeze", "stop")


@dataclass(frozen=True)
class Pause:
    """Pause the executors on ``core``: the host wants it."""

    core: int


@dataclass(frozen=True)
class Resume:
    """Resume the executors on ``core``: the host has left it."""

    core: int


Decision = Pause | Resume


class GuardPolicy:
    """Hysteresis with a quiet time: decide when to pause and resume each core.

    Args:
        pause_above: host busy fraction above which a running core is paused at once.
        resume_below: host busy fraction below which a paused core counts as quiet.
        hold: seconds a paused core must stay quiet before it is resumed.

    Raises:
        ConfigError: unless ``0 <= resume_below < pause_above <= 1`` and ``hold >= 0``.
    """

    def __init__(self, pause_above: float = 0.5, resume_below: float = 0.2, hold: float = 1.0):
        if not 0 <= resume_below < pause_above <= 1:
            raise ConfigError(
                f"found pause_above={pause_above}, resume_below={resume_below}; expected "
                "0 <= resume_below < pause_above <= 1 (the gap prevents flapping)",
                key="guard.pause_above/resume_below",
            )
        if hold < 0:
            raise ConfigError(f"found {hold}, expected seconds >= 0", key="guard.hold")
        self.pause_above = pause_above
        self.resume_below = resume_below
        self.hold = hold
        self._paused: set[int] = set()
        self._quiet_since: dict[int, float] = {}

    @property
    def paused(self) -> frozenset[int]:
        """Cores currently paused."""
        return frozenset(self._paused)

    def decide(self, now: float, host_busy: Mapping[int, float]) -> list[Decision]:
        """Return the decisions for one sample, in core order.

        Args:
            now: a monotonic time in seconds.
            host_busy: core -> fraction of the core used by the host (cores absent keep their
                state).
        """
        out: list[Decision] = []
        for core in sorted(host_busy):
            busy = host_busy[core]
            if core not in self._paused:
                if busy > self.pause_above:
                    self._paused.add(core)
                    out.append(Pause(core))
            elif busy < self.resume_below:
                since = self._quiet_since.setdefault(core, now)
                if now - since >= self.hold:
                    self._paused.discard(core)
                    del self._quiet_since[core]
                    out.append(Resume(core))
            else:
                self._quiet_since.pop(core, None)
        return out

    def release_all(self) -> list[Resume]:
        """Forget every pause and return the resumes to apply (used when the guard stops)."""
        out = [Resume(c) for c in sorted(self._paused)]
        self._paused.clear()
        self._quiet_since.clear()
        return out


class HostLoadSampler:
    """Measure, per core, the fraction of time used by processes other than ours.

    The first interval starts when the sampler is created; each :meth:`sample` returns the
    fractions since the previous one. Cost per sample: one read of ``/proc/stat`` plus one
    ``sched_getaffinity`` and one ``/proc/<pid>/stat`` read per own process pinned to one core.

    Args:
        cores: the spare cores to watch.
        own_pids_fn: returns the pids whose CPU time is ours (executor children, worker ranks);
            called at every sample, so it may change. Children of those pids are not added
            automatically: list them (e.g. with :func:`process_tree`) if functions spawn
            processes.
    """

    def __init__(self, cores: Iterable[int], own_pids_fn: Callable[[], Iterable[int]] = tuple):
        self.cores = sorted(cores)
        self._own_pids_fn = own_pids_fn
        self._own = OwnUsage(self.cores)
        self._own.update(own_pids_fn())
        self._prev = read_core_times()
        self._last: dict[int, float] = {}

    def sample(self) -> dict[int, float]:
        """Host busy fraction per watched core since the previous sample (0.0 to 1.0).

        A core with no tick elapsed (samples too close together) repeats its last value.
        """
        now = read_core_times()
        own = self._own.update(self._own_pids_fn())
        out: dict[int, float] = {}
        for c in self.cores:
            if c not in now or c not in self._prev:
                continue
            total = now[c].total - self._prev[c].total
            if total <= 0:
                out[c] = self._last.get(c, 0.0)
                continue
            busy = now[c].busy - self._prev[c].busy - own.get(c, 0)
            out[c] = min(1.0, max(0.0, busy / total))
        self._prev = now
        self._last = out
        return out


def process_tree(pids: Iterable[int]) -> list[int]:
    """``pids`` and all their living descendants (costs a scan of the process table)."""
    import psutil

    out: set[int] = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out.add(pid)
            out.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            continue
    return sorted(out)


class Guard:
    """Tie a sampler, a policy and the pause/resume actions together.

    Args:
        sampler: gives host busy fractions per core (a :class:`HostLoadSampler`).
        policy: decides (a :class:`GuardPolicy`).
        pause: called with a core to pause its executors.
        resume: called with a core to resume them.
        interval: seconds between samples when run by :meth:`start`.
        clock: monotonic clock (injectable for tests).

    An action that raises is logged and the policy keeps its decision: the next change of
    state tries again.
    """

    def __init__(self, sampler: HostLoadSampler, policy: GuardPolicy,
                 pause: Callable[[int], None], resume: Callable[[int], None], *,
                 interval: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.sampler = sampler
        self.policy = policy
        self._pause = pause
        self._resume = resume
        self.interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_sample: dict[int, float] = {}

    @classmethod
    def from_settings(cls, settings: Mapping, cores: Iterable[int],
                      own_pids_fn: Callable[[], Iterable[int]], pause: Callable[[int], None],
                      resume: Callable[[int], None]) -> Guard:
        """Build a guard from the ``guard`` settings section (see the module docstring).

        Raises:
            ConfigError: a knob is out of range.
        """
        interval = float(settings.get("interval", 0.1))
        if not 0.01 <= interval <= 60:
            raise ConfigError(f"found {interval}, expected seconds in [0.01, 60]",
                              key="guard.interval")
        policy = GuardPolicy(float(settings.get("pause_above", 0.5)),
                             float(settings.get("resume_below", 0.2)),
                             float(settings.get("hold", 1.0)))
        return cls(HostLoadSampler(cores, own_pids_fn), policy, pause, resume,
                   interval=interval)

    @property
    def paused(self) -> frozenset[int]:
        """Cores whose executors are paused now."""
        return self.policy.paused

    def step(self) -> list[Decision]:
        """Sample once, decide, act; return the decisions taken."""
        busy = self.sampler.sample()
        self.last_sample = busy
        decisions = self.policy.decide(self._clock(), busy)
        for d in decisions:
            self._apply(d, busy.get(d.core))
        return decisions

    def start(self) -> None:
        """Run :meth:`step` every ``interval`` seconds in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="colocate-guard", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (if any) and resume every paused core, so nothing stays paused."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for d in self.policy.release_all():
            self._apply(d, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
            except Exception:  # a failed sample must not end the guard
                log.exception("guard step failed")

    def _apply(self, d: Decision, busy: float | None) -> None:
        verb = "pause" if isinstance(d, Pause) else "resume"
        share = f"{busy:.0%}" if busy is not None else "n/a"
        try:
            (self._pause if isinstance(d, Pause) else self._resume)(d.core)
        except Exception as e:
            log.warning("guard: %s core %d failed: %s", verb, d.core, e)
            return
        log.info("guard: %s core %d (host uses %s of it)", verb, d.core, share)


class SignalAction:
    """Pause with SIGSTOP and resume with SIGCONT the processes that run on a core.

    Works everywhere; the process sees the stop only as lost time (a parent waiting on it
    with ``waitpid(WUNTRACED)`` would see it, ``subprocess`` does not ask).

    Args:
        pids_for_core: core -> pids to signal (e.g. the executor child on that core).
    """

    def __init__(self, pids_for_core: Callable[[int], Iterable[int]]):
        self._pids_for_core = pids_for_core

    def pause(self, core: int) -> None:
        """Send SIGSTOP to the core's processes (ones already gone are skipped)."""
        self._signal(core, signal.SIGSTOP)

    def resume(self, core: int) -> None:
        """Send SIGCONT to the core's processes."""
        self._signal(core, signal.SIGCONT)

    def _signal(self, core: int, sig: int) -> None:
        for pid in self._pids_for_core(core):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue


class FreezerAction:
    """Pause and resume with the cgroup freezer of the core's executor group.

    Args:
        group_for_core: core -> the :class:`colocate.colocation.cgroups.Group` of its
            executor, or ``None`` when it has none.
    """

    def __init__(self, group_for_core: Callable[[int], object | None]):
        self._group_for_core = group_for_core

    def pause(self, core: int) -> None:
        """Freeze the core's group (without waiting: the guard must not block)."""
        group = self._group_for_core(core)
        if group is not None:
            group.freeze(wait=False)  # type: ignore[attr-defined]

    def resume(self, core: int) -> None:
        """Thaw the core's group."""
        group = self._group_for_core(core)
        if group is not None:
            group.thaw(wait=False)  # type: ignore[attr-defined]


def choose_action(setting: str, freezer_available: bool) -> tuple[str, str]:
    """Resolve ``guard.action`` against what the node offers.

    Returns:
        (action, note): ``"freeze"`` or ``"stop"``, and a note for the log when the setting
        could not be honoured.

    Raises:
        ConfigError: ``setting`` is not ``"freeze"`` or ``"stop"``.
    """
    if setting not in ACTIONS:
        raise ConfigError(f"found {setting!r}, expected one of {', '.join(ACTIONS)}",
                          key="guard.action")
    if setting == "freeze" and not freezer_available:
        return "stop", "no cgroup freezer: pausing with SIGSTOP/SIGCONT instead"
    return setting, ""
