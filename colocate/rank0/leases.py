"""Rank 0's leases: which client holds a worker slot of its own, and which client is earning one.

:class:`Leases` is an object the scheduler holds (``Scheduler.leases``), not part of it, in the
way of the store's books. It owns the lease records: ``held`` (client -> the rank it leases),
``lone`` (lone tasks in a row per client), ``after`` (how many lone tasks a client needs) and the
task whose worker a lease is due on (``due``). It reads the scheduler's ``workers`` and writes only
their lease fields, and it tells the placement indexes when a worker's lease changes
(``index.refile``). Its event methods return the instruction to carry out, if any; the scheduler
sends it.

The rule: a client that sends one task at a time, alone in the world, gets a worker slot of its
own after :data:`LEASE_AFTER` such tasks; its lone tasks then go straight to that worker and back
(:mod:`colocate.worker.lease`), and the scheduler only counts the slot as taken. The lease ends
(the worker finishes what runs and says so, ``LeaseClosed``) as soon as anything else waits for a
slot, the worker is paused, the client leaves, or the server drains. A client whose lease had to
give way waits for twice as many lone tasks before the next one (up to :data:`LEASE_AFTER_MAX`),
so clients that take turns on too few workers stop trading leases back and forth.
"""

from __future__ import annotations

from collections.abc import Container

from colocate.rank0.events import CloseLease, GrantLease, LeaseClosed
from colocate.rank0.placement import Placement
from colocate.rank0.records import TaskRecord, WorkerRecord
from colocate.wire.messages import TaskMsg, leasable

LEASE_AFTER = 2        # lone tasks in a row after which a client gets a lease ...
LEASE_AFTER_MAX = 1024  # ... doubled, up to this, each time its lease gives way to other work


class Leases:
    """The lease records of one world, and the decisions to grant and to end a lease.

    Args:
        enabled: whether clients may lease worker slots (config ``client.leases``).
        workers: the scheduler's worker records (read; only their lease fields are written).
        index: the scheduler's placement indexes, told of every lease granted or closed.
        default_timeout: the task timeout a lease's tasks get when they set none.
    """

    def __init__(self, enabled: bool, workers: dict[int, WorkerRecord], index: Placement,
                 default_timeout: float | None) -> None:
        self.enabled = enabled
        self.workers = workers
        self.index = index
        self.default_timeout = default_timeout
        self.held: dict[int, int] = {}    # client -> rank of its lease
        self.lone: dict[int, int] = {}    # client -> lone tasks in a row
        self.after: dict[int, int] = {}   # client -> lone tasks it needs for a lease
        self.due: TaskRecord | None = None   # the lone task whose worker may be leased now
        self._next = 1

    def submitted(self, client: int, tasks: list[TaskMsg], busy: bool) -> bool:
        """Count a client's submission; whether it is a lone task.

        ``busy``: other tasks are in the world (then it is not lone).
        """
        lone = (self.enabled and len(tasks) == 1 and not busy and client not in self.held
                and leasable(tasks[0]))
        self.lone[client] = self.lone.get(client, 0) + 1 if lone else 0
        return lone

    def earned(self, client: int) -> bool:
        """Whether the client's lone tasks in a row have earned it a lease."""
        return self.lone[client] >= self.after.get(client, LEASE_AFTER)

    def grant(self, waiting: bool) -> GrantLease | None:
        """Lease the worker that got the ``due`` task to its client, if it is free for it.

        ``waiting``: other tasks wait for a slot (then no lease is granted).
        """
        task, self.due = self.due, None
        if task is None or task.rank is None or task.client is None or waiting:
            return None
        worker = self.workers[task.rank]
        if not worker.leases or worker.lease or len(worker.assigned) != 1:
            return None
        worker.lease, worker.lease_client = self._next, task.client
        self._next += 1
        self.index.refile(worker)
        self.held[task.client] = worker.rank
        return GrantLease(task.client, worker.rank, worker.lease, self.default_timeout)

    def end(self, worker: WorkerRecord, wanted: bool = False) -> CloseLease | None:
        """Ask the worker to end its lease; ``wanted``: because other work waits for the slot."""
        if worker.lease and not worker.lease_ending:
            worker.lease_ending = True
            worker.lease_wanted = wanted
            return CloseLease(worker.rank, worker.lease)
        return None

    def give_way(self) -> list[CloseLease]:
        """End every lease because other work waits for a slot (the earliest joined first)."""
        ends = []
        for worker in sorted((self.workers[r] for r in self.held.values()), key=lambda w: w.seq):
            said = self.end(worker, wanted=True)
            if said is not None:
                ends.append(said)
        return ends

    def closed(self, ev: LeaseClosed, clients: Container[int]) -> WorkerRecord | None:
        """The worker ended its lease: free the slot; the worker, or None for a stale notice.

        ``clients``: the clients still in the world (one whose lease gave way needs twice as many
        lone tasks for the next).
        """
        worker = self.workers.get(ev.rank)
        if worker is None or worker.lease != ev.lease:
            return None
        client = worker.lease_client
        self.held.pop(client, None)
        self.lone.pop(client, None)
        if worker.lease_wanted and client in clients:
            self.after[client] = min(2 * self.after.get(client, LEASE_AFTER), LEASE_AFTER_MAX)
        worker.lease, worker.lease_client = 0, None
        worker.lease_ending = worker.lease_wanted = False
        self.index.refile(worker)
        return worker

    def client_left(self, client: int) -> CloseLease | None:
        """Forget the client's count and end its lease."""
        self.lone.pop(client, None)
        self.after.pop(client, None)
        rank = self.held.get(client)
        return None if rank is None else self.end(self.workers[rank])

    def worker_lost(self, worker: WorkerRecord) -> None:
        """A leased worker is gone (its client sees the connection close and fails what it sent)."""
        if worker.lease:
            self.held.pop(worker.lease_client, None)
