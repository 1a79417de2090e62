"""When the pool grows and shrinks: a pure function of what rank 0 sees, with a reason per decision.

:func:`decide` takes a :class:`View` (the time, tasks queued for a core, free cores in the world,
the pool's jobs, the idle nodes the batch system reports) and a :class:`Policy` (the ``pool:``
section of the configuration), and returns :class:`SubmitJob` and :class:`CancelJob` decisions. It
does no I/O and reads no clock, so every rule is tested by exact decisions. The rules, in order:

1. **A job pending too long is cancelled** (``pending_timeout``): the batch system found no hole
   for it, and a job that starts long after the work that asked for it is waste.
2. **A job whose workers sat idle too long is cancelled** (``idle_timeout``) while no task is
   queued, the longest idle first, never below ``min_jobs`` live jobs.
3. **The pool grows** to ``min_jobs`` live jobs, and beyond while the queue is longer than
   ``grow_above`` tasks per core that is free or expected (from pending jobs). Growth for work
   goes only into nodes the batch system reports idle, when it reports them; growth to
   ``min_jobs`` may wait in the queue. At most ``max_pending`` jobs wait in the queue at once,
   and no more than ``max_jobs`` jobs are alive (ending ones included) at any time.
4. **Jobs wait ahead** (``ahead``): while tasks are queued beyond what free cores take
   (``grow_above`` per free core), up to ``ahead`` jobs are kept pending in the batch queue even
   when no node is idle, within ``max_pending`` and ``max_jobs``, so a node that falls idle is
   taken at the batch system's next scheduling pass. While no task is queued, pending jobs
   beyond ``min_jobs`` are cancelled, the newest first (rule 1 cancels them after
   ``pending_timeout`` anyway, and the world's stop cancels every job).

A pool with ``max_jobs: 0`` (the default) never submits anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from colocate.errors import ConfigError

PENDING, RUNNING, ENDING = "pending", "running", "ending"
STATES = (PENDING, RUNNING, ENDING)


@dataclass(frozen=True)
class Policy:
    """The ``pool:`` settings that decisions depend on (see ``defaults.yaml``)."""

    min_jobs: int = 0
    max_jobs: int = 0
    max_pending: int = 1
    ahead: int = 1
    nodes_per_job: int = 1
    cores_per_node: int = 0       # 0: learn from joined workers (1 until one has joined)
    grow_above: float = 1.0
    idle_timeout: float = 120.0
    pending_timeout: float = 600.0

    def __post_init__(self) -> None:
        for name in ("min_jobs", "max_jobs", "cores_per_node", "ahead"):
            _check_int(name, getattr(self, name), 0)
        for name in ("max_pending", "nodes_per_job"):
            _check_int(name, getattr(self, name), 1)
        for name in ("grow_above", "idle_timeout", "pending_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"expected a number > 0, found {value!r}", key=f"pool.{name}")
        if self.min_jobs > self.max_jobs:
            raise ConfigError(
                f"min_jobs {self.min_jobs} is more than max_jobs {self.max_jobs}; expected "
                "min_jobs <= max_jobs: raise pool.max_jobs or lower pool.min_jobs",
                key="pool.min_jobs")
        if self.max_jobs and self.ahead > self.max_jobs:
            raise ConfigError(
                f"ahead {self.ahead} is more than max_jobs {self.max_jobs}; expected "
                "ahead <= max_jobs (jobs kept pending count as jobs of the pool): lower "
                "pool.ahead or raise pool.max_jobs", key="pool.ahead")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Policy:
        """The policy of a configuration's ``pool`` section (other keys there are ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in section.items() if k in names})


def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"expected an integer >= {least}, found {value!r}", key=f"pool.{name}")


@dataclass(frozen=True)
class Job:
    """One of the pool's batch jobs, as rank 0 last saw it.

    Attributes:
        id: the batch system's job id.
        state: ``pending`` (queued), ``running``, or ``ending`` (cancelled, preempted or past its
            time: its workers are leaving).
        submitted: when the pool submitted it (the clock of :attr:`View.now`).
        idle_since: since when all of its workers have had no task; ``None`` while any is busy or
            none has joined yet.
        cores: cores its joined workers brought (0 until one joins).
    """

    id: str
    state: str
    submitted: float
    idle_since: float | None = None
    cores: int = 0

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"job {self.id}: expected a state in {STATES}, found {self.state!r}")


@dataclass(frozen=True)
class View:
    """What rank 0 sees when it decides.

    Attributes:
        now: the time, on the clock of :attr:`Job.submitted`.
        queued: tasks waiting for a core.
        free_cores: cores of the world's workers (ranks and joined) that run no task.
        jobs: the pool's jobs that the batch system still lists.
        idle_nodes: nodes the batch system reports idle where pool jobs may go; ``None`` when it
            cannot say.
    """

    now: float
    queued: int
    free_cores: int
    jobs: tuple[Job, ...] = field(default_factory=tuple)
    idle_nodes: int | None = None


@dataclass(frozen=True)
class SubmitJob:
    """SubmitJob ``count`` more jobs of the pool's template."""

    count: int
    reason: str


@dataclass(frozen=True)
class CancelJob:
    """CancelJob the job ``job``."""

    job: str
    reason: str


Decision = SubmitJob | CancelJob


def decide(view: View, policy: Policy) -> list[Decision]:
    """The pool's decisions for ``view``, cancellations first; see the module's rules."""
    if policy.max_jobs == 0:
        return []
    decisions: list[Decision] = []
    gone: set[str] = set()
    for job in view.jobs:
        waited = view.now - job.submitted
        if job.state == PENDING and waited >= policy.pending_timeout:
            decisions.append(CancelJob(job.id, f"pending for {waited:.0f} s, more than "
                                            f"pool.pending_timeout {policy.pending_timeout:g} s"))
            gone.add(job.id)
    live = [j for j in view.jobs if j.id not in gone and j.state != ENDING]
    if view.queued == 0:
        idle = sorted((j for j in live if j.state == RUNNING and j.idle_since is not None
                       and view.now - j.idle_since >= policy.idle_timeout),
                      key=lambda j: (j.idle_since, j.id))
        for job in idle[:max(0, len(live) - policy.min_jobs)]:
            decisions.append(CancelJob(job.id, f"idle for {view.now - job.idle_since:.0f} s "
                                            f"(pool.idle_timeout {policy.idle_timeout:g} s) and "
                                            "no task queued"))
            gone.add(job.id)
        live = [j for j in live if j.id not in gone]
        if policy.ahead:
            waiting = sorted((j for j in live if j.state == PENDING),
                             key=lambda j: (-j.submitted, j.id))
            for job in waiting[:max(0, len(live) - policy.min_jobs)]:
                decisions.append(CancelJob(job.id, "pending and no task queued (pool.ahead "
                                                f"{policy.ahead} keeps jobs ahead only for "
                                                "queued tasks)"))
                gone.add(job.id)
            live = [j for j in live if j.id not in gone]
    submit = _grow(view, policy, live, alive=sum(j.id not in gone for j in view.jobs))
    if submit is not None:
        decisions.append(submit)
    return decisions


def _grow(view: View, policy: Policy, live: list[Job], alive: int) -> SubmitJob | None:
    room = policy.max_jobs - alive
    pending = sum(j.state == PENDING for j in live)
    slots = min(room, policy.max_pending - pending)
    if slots <= 0:
        return None
    to_minimum = policy.min_jobs - len(live)
    if to_minimum > 0:
        count = min(to_minimum, slots)
        return SubmitJob(count, f"{len(live)} live job(s), pool.min_jobs {policy.min_jobs}: "
                             f"{count} job(s){_limits(policy, room, pending)}")
    per_job = policy.nodes_per_job * _cores_per_node(policy, live)
    expected = pending * per_job
    covered = policy.grow_above * (view.free_cores + expected)
    ahead = 0
    if view.queued > policy.grow_above * view.free_cores:
        ahead = min(max(0, policy.ahead - pending), slots)
    if view.queued <= covered:
        return _ahead(view, policy, ahead, room, pending)
    want = math.ceil((view.queued / policy.grow_above - view.free_cores - expected) / per_job)
    count = min(want, slots)
    fits = ""
    if view.idle_nodes is not None:
        count = min(count, view.idle_nodes // policy.nodes_per_job)
        fits = f"; {view.idle_nodes} idle node(s)"
        if count <= 0:
            return _ahead(view, policy, ahead, room, pending)
    if count < ahead:
        return _ahead(view, policy, ahead, room, pending)
    return SubmitJob(count, f"{view.queued} task(s) queued, {view.free_cores} free core(s) and "
                         f"{expected} expected from pending jobs (pool.grow_above "
                         f"{policy.grow_above:g} per core): {count} job(s) of "
                         f"{policy.nodes_per_job} node(s){fits}{_limits(policy, room, pending)}")


def _ahead(view: View, policy: Policy, count: int, room: int, pending: int) -> SubmitJob | None:
    """Jobs to keep pending ahead for queued tasks (rule 4), or ``None``."""
    if count <= 0:
        return None
    return SubmitJob(count, f"{view.queued} task(s) queued, {view.free_cores} free core(s): "
                         f"{count} job(s) to wait ahead in the batch queue (pool.ahead "
                         f"{policy.ahead}){_limits(policy, room, pending)}")


def _cores_per_node(policy: Policy, live: list[Job]) -> int:
    """Cores a node of a new job is expected to bring: the setting, else what joined ones did."""
    if policy.cores_per_node:
        return policy.cores_per_node
    joined = [j.cores for j in live if j.cores]
    return max(1, sum(joined) // (len(joined) * policy.nodes_per_job)) if joined else 1


def _limits(policy: Policy, room: int, pending: int) -> str:
    return (f"; {pending} of pool.max_pending {policy.max_pending} pending, "
            f"{room} of pool.max_jobs {policy.max_jobs} left")
