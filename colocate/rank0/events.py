"""The scheduler's vocabulary: events it takes in and instructions it gives out.

Small frozen dataclasses, no behaviour: :mod:`colocate.rank0.scheduler` decides, the server loop
(:mod:`colocate.rank0.loop`) turns events from sockets and MPI into these and carries the
instructions out.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from colocate.wire.messages import Outcome, ResultMsg, Status, TaskMsg, Work


def _record(cls: type) -> type:
    """``@dataclass(frozen=True, slots=True)``, with an ``__init__`` about a third cheaper.

    The dataclass's own frozen ``__init__`` goes through ``object.__setattr__`` per field; this
    one sets the slots through their descriptors. Rank 0 builds several of these per task, so it
    shows in the decisions per second (``bench/scheduler.py``). Fields, defaults, equality,
    ``repr`` and immutability are the dataclass's.
    """
    cls = dataclass(frozen=True, slots=True)(cls)
    names = [f.name for f in fields(cls)]
    scope: dict[str, object] = {}
    params = []
    for f in fields(cls):
        scope[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is not MISSING:
            scope[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        else:
            params.append(f.name)
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names) or "    pass\n"
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", scope)   # noqa: S102
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls


# ----- events ------------------------------------------------------------------------------------
@_record
class ClientJoined:
    client: int


@_record
class ClientLeft:
    client: int


@_record
class Submitted:
    client: int
    tasks: list[TaskMsg]


@_record
class CancelRequested:
    client: int
    ids: list[int]


@_record
class WorkerJoined:
    rank: int
    node: str
    cores: tuple[int, ...]
    memory_budget: int
    now: float = 0.0
    gpus: tuple[str, ...] = ()   # the node's GPU inventory
    machine: str = ""            # its store's machine id (same kernel as a client: shared memory)
    leases: bool = False         # it has a task port: clients may lease it


@_record
class PutRequested:
    client: int
    req: int
    nbytes: int
    node: str | None = None
    near: str = ""               # the client's machine id
    ahead: bool = False          # a spare for a later put, until AheadUsed
    count: int = 1               # spares wanted at once (ahead only; as many as fit)


@_record
class FreeRequested:
    client: int
    ids: list[int]


@_record
class AheadUsed:
    client: int
    ids: list[int]


@_record
class WorkerDone:
    rank: int
    outcomes: list[Outcome]
    now: float = 0.0


@_record
class HeardFrom:
    rank: int
    now: float
    done: int = 0     # leased tasks it ran since it last said, that ended OK
    failed: int = 0   # ... and that did not


@_record
class WorkerGone:
    rank: int
    reason: str


@_record
class WorkerPaused:
    rank: int
    paused: bool


@_record
class Tick:
    now: float


@_record
class LeaseClosed:
    """The worker ended ``lease``: nothing sent under it runs any more."""

    rank: int
    lease: int
    done: int = 0
    failed: int = 0


@_record
class DirectReported:
    """A leased task ended and kept objects: record them, then deliver its result."""

    rank: int
    client: int
    result: ResultMsg
    kept: tuple[tuple[int, int], ...]


@_record
class DrainRequested:
    pass


@_record
class DrainDeadline:
    pass


# ----- instructions ------------------------------------------------------------------------------
@_record
class SendWork:
    rank: int
    work: list[Work]


@_record
class Deliver:
    client: int
    results: list[ResultMsg]


@_record
class CutOff:
    """Kill the running task of ``rank``, reporting ``status``; return the rest unstarted."""

    rank: int
    status: Status


@_record
class ReturnAhead:
    """Have ``rank`` return the tasks sent ahead to it that have not started (a drain)."""

    rank: int


@_record
class ForgetWorker:
    """The rank is lost: stop talking to it."""

    rank: int
    reason: str


@_record
class Exit:
    """Drained: nothing is queued or running any more."""


@_record
class PutGranted:
    """Tell the client to send object ``ref_id`` to ``rank`` (its bytes are reserved there)."""

    client: int
    req: int
    ref_id: int
    rank: int
    node: str
    more: tuple[int, ...] = ()   # further ids of the same size, same place (count > 1)


@_record
class PutRefused:
    client: int
    req: int
    reason: str
    full: bool     # for lack of budget (as opposed to a bad request)


@_record
class GrantLease:
    """Give ``client`` a lease on worker ``rank``: tell the worker first, then the client."""

    client: int
    rank: int
    lease: int
    timeout: float | None   # the default task timeout, applied by the worker


@_record
class CloseLease:
    """Tell ``rank`` to end ``lease`` (the worker answers with LeaseClosed)."""

    rank: int
    lease: int


@_record
class DiscardObjects:
    """Tell ``rank`` to release objects."""

    rank: int
    ids: list[int]


@_record
class WorkerLeaving:
    """A joined worker gave back or finished all it had and is leaving (``Leaving``)."""

    rank: int


@_record
class ObjectsMoved:
    """The leaving ``rank`` copied its objects.

    ``done``: ``(id, fd, where)`` at each new holder; ``failed``: ``(id, why)``.
    """

    rank: int
    done: tuple
    failed: tuple


@_record
class MoveObjects:
    """Have the leaving ``rank`` copy objects to other workers: ``(id, rank, node)`` each."""

    rank: int
    moves: tuple


@_record
class LetGo:
    """The leaving ``rank`` may go (``Shutdown``): nothing of it is left to move."""

    rank: int


Event = (ClientJoined | ClientLeft | Submitted | CancelRequested | WorkerJoined | WorkerDone
         | HeardFrom | WorkerGone | WorkerPaused | Tick | DrainRequested | DrainDeadline
         | WorkerLeaving | ObjectsMoved
         | PutRequested | FreeRequested | AheadUsed | LeaseClosed | DirectReported)
Instruction = (SendWork | Deliver | CutOff | ForgetWorker | Exit | PutGranted | PutRefused
               | DiscardObjects | GrantLease | CloseLease | ReturnAhead | MoveObjects | LetGo)
