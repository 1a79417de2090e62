"""Rank 0's records of tasks and worker slots, as the scheduler and its placement keep them.

Plain data, held by :class:`colocate.rank0.scheduler.Scheduler` (``tasks``, ``workers``): the
scheduler fills and changes them; the placement indexes (:mod:`colocate.rank0.placement`) file
workers by their ``level`` and ``pools`` fields, which only they write; the store's books
(:mod:`colocate.rank0.objects`) keep each worker's ``stored`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from colocate.wire.messages import TaskMsg, TaskOptions


class TaskRecord:
    """A task rank 0 holds: its ids, function, options, attempts and where it runs."""

    __slots__ = ("gid", "client", "cid", "fn_hash", "args", "opts", "attempts", "rank",
                 "helpers", "cores", "gpus", "prefer", "refs")

    def __init__(self, gid: int, client: int | None, msg: TaskMsg) -> None:
        self.gid = gid
        self.client = client
        self.cid = msg.id
        self.fn_hash = msg.fn_hash
        self.args = msg.args
        self.opts: TaskOptions = msg.options
        self.attempts = 0
        self.rank: int | None = None
        self.helpers: list[WorkerRecord] | tuple = ()   # workers lending their cores to this task
        self.cores: tuple[int, ...] = ()
        self.gpus: tuple[str, ...] = ()
        self.prefer: str | None = msg.prefer
        self.refs: tuple[int, ...] = msg.refs


@dataclass(slots=True)
class WorkerRecord:
    """A worker slot rank 0 serves: its node and cores, tasks, cached functions, lease."""

    rank: int
    node: str
    cores: tuple[int, ...]
    last_seen: float
    assigned: dict[int, TaskRecord] = field(default_factory=dict)   # in dispatch order
    fns: set[bytes] = field(default_factory=set)
    paused: bool = False
    lent_to: int | None = None    # gid of the multi-core task this worker's cores serve
    done: int = 0
    failed: int = 0
    machine: str = ""
    stored: int = 0               # bytes of objects this rank holds
    leases: bool = False          # it has a task port (can be leased)
    lease: int = 0                # the lease a client holds on it (0: none)
    lease_client: int | None = None
    lease_ending: bool = False    # CloseLease sent, LeaseClosed not yet back
    lease_wanted: bool = False    # ... because other work waited for the slot
    seq: int = 0                  # join order (ties in placement go to the earlier)
    level: int = -1               # the load it is filed under in the placement indexes (-1: not)
    pools: tuple = ()             # the placement indexes it is filed in (_placement._Levels)
