"""The scheduler's vocabulary: events it takes in and instructions it gives out.

Small frozen dataclasses, no behaviour: :mod:`colocate.scheduler` decides, the server loop
(:mod:`colocate.server`) turns events from sockets and MPI into these and carries the
instructions out.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Outcome, ResultMsg, Status, TaskMsg, Work


# ----- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientJoined:
    client: int


@dataclass(frozen=True, slots=True)
class ClientLeft:
    client: int


@dataclass(frozen=True, slots=True)
class Submitted:
    client: int
    tasks: list[TaskMsg]


@dataclass(frozen=True, slots=True)
class CancelRequested:
    client: int
    ids: list[int]


@dataclass(frozen=True, slots=True)
class WorkerJoined:
    rank: int
    node: str
    cores: tuple[int, ...]
    memory_budget: int
    now: float = 0.0
    gpus: tuple[str, ...] = ()   # the node's GPU inventory
    machine: str = ""            # its store's machine id (same kernel as a client: shared memory)
    leases: bool = False         # it has a task port: clients may lease it


@dataclass(frozen=True, slots=True)
class PutRequested:
    client: int
    req: int
    nbytes: int
    node: str | None = None
    near: str = ""               # the client's machine id
    ahead: bool = False          # a spare for a later put, until AheadUsed
    count: int = 1               # spares wanted at once (ahead only; as many as fit)


@dataclass(frozen=True, slots=True)
class FreeRequested:
    client: int
    ids: list[int]


@dataclass(frozen=True, slots=True)
class AheadUsed:
    client: int
    ids: list[int]


@dataclass(frozen=True, slots=True)
class WorkerDone:
    rank: int
    outcomes: list[Outcome]
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class HeardFrom:
    rank: int
    now: float
    done: int = 0     # leased tasks it ran since it last said, that ended OK
    failed: int = 0   # ... and that did not


@dataclass(frozen=True, slots=True)
class WorkerLost:
    rank: int
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerPaused:
    rank: int
    paused: bool


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class LeaseEnded:
    """The worker ended ``lease``: nothing sent under it runs any more."""

    rank: int
    lease: int
    done: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class DirectDone:
    """A leased task ended and kept objects: record them, then deliver its result."""

    rank: int
    client: int
    result: ResultMsg
    kept: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class DrainRequested:
    pass


@dataclass(frozen=True, slots=True)
class DrainDeadline:
    pass


# ----- instructions ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendWork:
    rank: int
    work: list[Work]


@dataclass(frozen=True, slots=True)
class Deliver:
    client: int
    results: list[ResultMsg]


@dataclass(frozen=True, slots=True)
class CutOff:
    """Kill the running task of ``rank``, reporting ``status``; return the rest unstarted."""

    rank: int
    status: Status


@dataclass(frozen=True, slots=True)
class ReturnAhead:
    """Have ``rank`` return the tasks sent ahead to it that have not started (a drain)."""

    rank: int


@dataclass(frozen=True, slots=True)
class ForgetWorker:
    """The rank is lost: stop talking to it."""

    rank: int
    reason: str


@dataclass(frozen=True, slots=True)
class Exit:
    """Drained: nothing is queued or running any more."""


@dataclass(frozen=True, slots=True)
class PutGranted:
    """Tell the client to send object ``ref_id`` to ``rank`` (its bytes are reserved there)."""

    client: int
    req: int
    ref_id: int
    rank: int
    node: str
    more: tuple[int, ...] = ()   # further ids of the same size, same place (count > 1)


@dataclass(frozen=True, slots=True)
class PutRefused:
    client: int
    req: int
    reason: str
    full: bool     # for lack of budget (as opposed to a bad request)


@dataclass(frozen=True, slots=True)
class GrantLease:
    """Give ``client`` a lease on worker ``rank``: tell the worker first, then the client."""

    client: int
    rank: int
    lease: int
    timeout: float | None   # the default task timeout, applied by the worker


@dataclass(frozen=True, slots=True)
class EndLease:
    """Tell ``rank`` to end ``lease`` (the worker answers with LeaseEnded)."""

    rank: int
    lease: int


@dataclass(frozen=True, slots=True)
class DropObjects:
    """Tell ``rank`` to release objects."""

    rank: int
    ids: list[int]


Event = (ClientJoined | ClientLeft | Submitted | CancelRequested | WorkerJoined | WorkerDone
         | HeardFrom | WorkerLost | WorkerPaused | Tick | DrainRequested | DrainDeadline
         | PutRequested | FreeRequested | AheadUsed | LeaseEnded | DirectDone)
Instruction = (SendWork | Deliver | CutOff | ForgetWorker | Exit | PutGranted | PutRefused
               | DropObjects | GrantLease | EndLease | ReturnAhead)
