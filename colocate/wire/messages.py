"""Wire records, serialization, the function cache key, and remote tracebacks (no MPI here).

Every message that crosses a process boundary is a small ``NamedTuple`` (easy to read); the four
that every task crosses are pickled as plain tuples (:func:`to_wire`), ten times cheaper. Task
payloads travel as opaque ``bytes`` made by cloudpickle on the client and unpickled only in the
executor: rank 0 and the worker ranks relay them without looking inside.

Flow of one task::

    client   TaskMsg(id, fn_hash, fn_bytes|None, args_bytes, opts) ──► rank 0
    rank 0   Work(gid, fn_hash, fn_bytes|None, args_bytes, timeout, cores, memory) ──► worker
    worker   the same Work items, batched, over a pipe ──► executor child
    child    Outcome(gid, status, payload, started, finished, exc_type) ──► worker ──► rank 0
    rank 0   ResultMsg(id, status, payload, TaskInfo) ──► client

Object store (:mod:`colocate.store`): only the bookkeeping passes through rank 0; the data moves
between the client (or an executor child) and the worker rank's data port directly::

    client   PutRequest(req, nbytes, node) ──► rank 0 ──► PutReply(req, ref_id, rank, StoreAddress)
    client   raw buffer ──TCP or shared memory──► worker rank (its StoreServer)
    client   FreeRefs(ids) ──► rank 0 ──► DropObjects(ids) ──► worker rank
    client   UsedAhead(ids): objects granted ahead (PutRequest.ahead) now hold data ──► rank 0
    worker   Outcome.kept: objects a task kept with ``colocate.keep`` ──► rank 0 (owner: its client)

Leases (:mod:`colocate.worker.lease`): a client that sends one task at a time gets a worker slot of
its own, and its lone tasks go straight to that worker rank and back (two processes fewer on the
way)::

    rank 0   StartLease(lease, client) ──► worker;  Lease(lease, rank, host, port) ──► client
    client   Submit([one TaskMsg]) ──TCP──► worker  ──►  Results ──TCP──► client
    worker   DirectDone(client, result, kept): a leased task that kept objects ──► rank 0 ──► client
             (and Relayed([id]) ──► client: that result comes the other way)
    rank 0   EndLease(lease) ──► worker ──► LeaseOver ──► client;  LeaseEnded ──► rank 0
"""

from __future__ import annotations

import hashlib
import pickle
import traceback
import weakref
from enum import IntEnum
from typing import Any, NamedTuple

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL
# The wire format's version, checked in every handshake (colocate.wire.bell): a client or worker of
# another colocate version is refused with a message instead of misreading messages. Raise it
# whenever a message changes.
WIRE_VERSION = 3


class Status(IntEnum):
    """How a task attempt ended."""

    OK = 0            # payload: pickled return value
    RAISED = 1        # payload: pickled (exception, traceback text)
    CRASHED = 2       # payload: pickled exit code (negative: signal)
    TIMEOUT = 3       # payload: pickled timeout in seconds
    MEMORY = 4        # payload: pickled memory limit in bytes (or None)
    BAD_INPUT = 5     # function or arguments could not be unpickled in the executor
    BAD_RESULT = 6    # the return value could not be pickled in the executor
    REQUEUE = 7       # sent ahead but never started (its executor was restarted)
    INTERRUPTED = 8   # cut off by a drain or shutdown
    LOST = 9          # its worker rank stopped answering
    CANCELLED = 10    # dropped from the queue on request
    REJECTED = 11     # can never run here (asks more than any node has)
    NO_OBJECT = 12    # an argument's object is lost (its holder went away): ObjectLost


# Outcomes after which a task is tried again while it has retries left.
RETRYABLE = frozenset({Status.CRASHED, Status.TIMEOUT, Status.MEMORY, Status.LOST})


class TaskOptions(NamedTuple):
    """Per-task settings; ``None`` fields take the server's defaults."""

    timeout: float | None = None
    retries: int = 0
    cores: int = 1
    memory: int | None = None
    gpus: int = 0
    retry_on: tuple[str, ...] = ()   # qualified names of exception types worth retrying


class TaskInfo(NamedTuple):
    """Where and when a task ran; ``future.info`` once the future is done."""

    node: str
    rank: int
    cores: tuple[int, ...]
    started: float
    finished: float
    attempts: int

    def where(self) -> str:
        """Describe the place, e.g. ``rank 2 on node01, cores [3]``."""
        return f"rank {self.rank} on {self.node}, cores {list(self.cores)}"


# ----- client <-> rank 0 ----------------------------------------------------------------------
class Hello(NamedTuple):
    token: str
    pid: int
    host: str


class Welcome(NamedTuple):
    client_id: int
    slots: int            # worker slots in the world now
    max_inflight: int     # server-side cap on this client's tasks in flight


class Refused(NamedTuple):
    reason: str


class TaskMsg(NamedTuple):
    id: int
    fn_hash: bytes
    fn_bytes: bytes | None   # sent once per (client, function)
    args: bytes
    options: TaskOptions
    prefer: str | None = None   # node holding most of the task's argument Refs (by bytes)
    refs: tuple[int, ...] = ()  # ids of the objects its arguments name (checked at dispatch)


class Submit(NamedTuple):
    tasks: list[TaskMsg]


class Cancel(NamedTuple):
    ids: list[int]


class ResultMsg(NamedTuple):
    id: int
    status: int
    payload: bytes
    info: TaskInfo | None


class Results(NamedTuple):
    results: list[ResultMsg]


class StatusRequest(NamedTuple):
    pass


class StatusReply(NamedTuple):
    status: dict


class StopRequest(NamedTuple):
    drain: bool = True


class Bye(NamedTuple):
    reason: str = ""


class StoreAddress(NamedTuple):
    """Where a worker rank serves its objects: its data port, machine identity and pid."""

    host: str
    port: int
    machine: str    # hostname and boot id: same value = same kernel, shared memory possible
    pid: int


class PutRequest(NamedTuple):
    req: int
    nbytes: int
    node: str | None      # None: the scheduler chooses
    near: str = ""        # the client's machine id, preferred when it has room
    ahead: bool = False   # a spare for a later put (colocate.store.putahead) until UsedAhead
    count: int = 1        # spares wanted at once (ahead only): as many as fit are granted


class PutReply(NamedTuple):
    req: int
    ref_id: int
    rank: int
    node: str
    where: StoreAddress | None
    error: str = ""       # set when refused
    full: bool = False    # refused for lack of budget (StoreFull) rather than a bad request
    more: tuple[int, ...] = ()   # further ids granted at once (PutRequest.count), same place


class FreeRefs(NamedTuple):
    ids: list[int]


class UsedAhead(NamedTuple):
    ids: list[int]        # spares granted ahead that puts have filled


class WhereIs(NamedTuple):
    """Client to rank 0: where is object ``id`` now? Sent only when its holder failed a read."""

    req: int
    id: int


class ObjectWhere(NamedTuple):
    """Rank 0's answer to ``WhereIs``: its holder now, or why it is gone (``lost``)."""

    req: int
    id: int
    lost: str = ""        # set: the object is gone, and this says where it was and why
    rank: int = -1        # else its holder (another one if it was moved)
    node: str = ""
    where: StoreAddress | None = None
    fd: int = -1


# ----- rank 0 <-> worker ranks, worker <-> executor child -----------------------------------------
class Work(NamedTuple):
    gid: int
    fn_hash: bytes
    fn_bytes: bytes | None
    args: bytes
    timeout: float | None
    memory: int | None
    cores: tuple[int, ...] = ()   # a multi-core task's cores (its own plus lent ones); () = own
    gpus: tuple[str, ...] = ()    # GPU ids for CUDA_VISIBLE_DEVICES
    moved: tuple = ()             # (id, rank, node, where, fd) of argument objects moved since
    #                               their Ref was made (colocate.store.relocate)


class Dispatch(NamedTuple):
    work: list[Work]


class Outcome(NamedTuple):
    gid: int
    status: int
    payload: bytes
    started: float
    finished: float
    exc_type: str = ""     # qualified name of a raised exception, for retry_on
    kept: tuple[tuple[int, int], ...] = ()   # (ref_id, nbytes) stored by colocate.keep()


class Done(NamedTuple):
    outcomes: list[Outcome]


class WorkerHello(NamedTuple):
    rank: int
    node: str
    cores: tuple[int, ...]
    memory_budget: int
    detail: dict
    gpus: tuple[str, ...] = ()    # the node's GPU inventory
    store: StoreAddress | None = None
    # its task port for leased clients: (host, port, the name of its local Unix socket or "")
    tasks: tuple[str, int, str] | None = None


class Heartbeat(NamedTuple):
    done: int = 0     # leased tasks that ended OK since the last report
    failed: int = 0   # ... and that did not


class KillRunning(NamedTuple):
    status: int          # what to report for the task cut off (INTERRUPTED, TIMEOUT)


class TakeBack(NamedTuple):
    """Rank 0 to a worker (at a drain): return the work sent ahead that has not started.

    The executor child skips it, so each such task comes back as a ``REQUEUE`` outcome as soon
    as the running one ends (or is cut off); nothing new is started on this worker.
    """


class PauseCores(NamedTuple):
    paused: bool


class Shutdown(NamedTuple):
    pass


class Joined(NamedTuple):
    """Rank 0 to a worker that joined over TCP (``colocate join``): the id it is known by."""

    rank: int


class Leaving(NamedTuple):
    """A joined worker to rank 0: it has given back or finished all it had, and is leaving.

    It paused itself first (``PauseCores``), so rank 0 has stopped sending it work. Rank 0
    answers ``Shutdown``; since the link keeps order, any work rank 0 sent before that reaches
    the worker first and comes back unstarted (``REQUEUE``), so nothing is lost or run twice.
    """

    reason: str = ""


class DropObjects(NamedTuple):
    ids: list[int]


class MoveOut(NamedTuple):
    """Rank 0 to a leaving joined worker: copy these objects to their new holders first.

    ``moves``: ``(id, rank, node, where)`` each. The worker sends each with the data path of a
    put, answers ``MovedOut``, and rank 0 then says ``Shutdown``.
    """

    moves: list[tuple]


class MovedOut(NamedTuple):
    """A leaving worker to rank 0: ``done`` ``(id, rank, fd)``, ``failed`` ``(id, why)``."""

    done: list[tuple]
    failed: list[tuple]


# ----- leases (colocate.worker.lease) -------------------------------------------------------------
class Lease(NamedTuple):
    """Rank 0 to a client: send your lone tasks to worker ``rank`` at ``host:port``.

    ``path``: the worker's Unix socket (abstract namespace), tried first: it answers a client on
    the same machine only; any other falls back to ``host:port``.
    """

    lease: int
    rank: int
    host: str
    port: int
    path: str = ""


class StartLease(NamedTuple):
    """Rank 0 to a worker: take tasks from ``client`` under ``lease`` (default ``timeout``)."""

    lease: int
    client: int
    timeout: float | None


class EndLease(NamedTuple):
    """Rank 0 to a worker: end ``lease`` once its running task is done."""

    lease: int


class LeaseEnded(NamedTuple):
    """A worker to rank 0: ``lease`` is over and nothing of it runs."""

    lease: int
    done: int = 0     # leased tasks that ended OK since the last report
    failed: int = 0


class LeaseOver(NamedTuple):
    """A worker to its leased client, last on the connection: it runs nothing more sent there."""

    lease: int


class Relayed(NamedTuple):
    """A worker to its leased client: these tasks' results come through rank 0 (DirectDone)."""

    ids: list[int]


class DirectDone(NamedTuple):
    """A worker to rank 0: a leased task's result that kept objects (rank 0 records, delivers)."""

    client: int
    result: ResultMsg
    kept: tuple[tuple[int, int], ...]


def leasable(msg: TaskMsg) -> bool:
    """Whether a task may go straight to a leased worker: one core and nothing else to place."""
    opts = msg.options
    return (opts.retries == 0 and opts.cores <= 1 and not opts.gpus and not opts.memory
            and not opts.retry_on and msg.prefer is None)


# ----- the wire form of the per-task messages ----------------------------------------------------
# Pickling a NamedTuple costs about ten times a plain tuple's (the class is looked up by name
# and rebuilt through Python code: Submit 13 + 9 µs to pickle and unpickle, as plain tuples
# 1.2 + 1.3 µs). The four messages every task crosses go as tagged plain tuples (statuses as
# plain ints); the others, rare, as themselves. Both links (:mod:`colocate.wire.stream`, the MPI
# mailbox) apply :func:`to_wire` before pickling and :func:`from_wire` after unpickling.
_SUBMIT, _RESULTS, _DISPATCH, _DONE = range(4)
_task_msg, _options, _result_msg, _info = (TaskMsg._make, TaskOptions._make, ResultMsg._make,
                                           TaskInfo._make)
_work, _outcome = Work._make, Outcome._make


def to_wire(msg: Any) -> Any:
    """``msg`` in the form it is pickled in (see :func:`from_wire`)."""
    kind = type(msg)
    if kind is Submit:
        return (_SUBMIT, [(*t[:4], tuple(t.options), *t[5:]) for t in msg.tasks])
    if kind is Results:
        return (_RESULTS, [(r.id, int(r.status), r.payload,
                            None if r.info is None else tuple(r.info)) for r in msg.results])
    if kind is Dispatch:
        return (_DISPATCH, [tuple(w) for w in msg.work])
    if kind is Done:
        return (_DONE, [(o[0], int(o[1]), *o[2:]) for o in msg.outcomes])
    return msg


def results_wire(results: list[tuple]) -> tuple:
    """``Results`` in its wire form, from plain ``(id, status, payload, info)`` tuples.

    For a sender that never built the named tuples (the executor child's direct path):
    ``from_wire`` gives the same :class:`Results` as ``to_wire(Results(...))`` would have.
    """
    return (_RESULTS, results)


def from_wire(obj: Any) -> Any:
    """The message :func:`to_wire` made ``obj`` from."""
    if type(obj) is not tuple:   # (a NamedTuple's type is its own class)
        return obj
    tag, items = obj
    if tag == _SUBMIT:
        return Submit([_task_msg((*t[:4], _options(t[4]), *t[5:])) for t in items])
    if tag == _RESULTS:
        return Results([_result_msg((*r[:3], None if r[3] is None else _info(r[3])))
                        for r in items])
    if tag == _DISPATCH:
        return Dispatch([_work(w) for w in items])
    return Done([_outcome(o) for o in items])


# ----- serialization ------------------------------------------------------------------------------
# Values the standard pickler handles exactly as cloudpickle does: results and calls that
# carry only these skip cloudpickle's Python-level pickler (~25 µs a call, a fifth of a
# client's time per no-op task).
_PLAIN = frozenset((int, float, str, bytes, bool, type(None), complex))


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with cloudpickle (functions and lambdas by value where needed)."""
    if type(obj) in _PLAIN:
        return pickle.dumps(obj, protocol=PROTOCOL)
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


loads = pickle.loads


def dumps_plain_call(args: tuple, kwargs: dict) -> bytes | None:
    """``(args, kwargs)`` pickled with the C pickler if every value is a plain scalar, else None."""
    plain = _PLAIN
    for a in args:
        if type(a) not in plain:
            return None
    for v in kwargs.values():
        if type(v) not in plain:
            return None
    return pickle.dumps((args, kwargs), protocol=PROTOCOL)


def fn_key(data: bytes) -> bytes:
    """Content hash of a pickled function: the key of the warm-function caches."""
    return hashlib.blake2b(data, digest_size=16).digest()


class FunctionPickler:
    """Pickles functions once per function object and remembers their content hash.

    Module-level functions pickle by reference (cheap); closures and lambdas by value. The cache
    is weak, so it never keeps a function alive.
    """

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[Any, tuple[bytes, bytes]] = (
            weakref.WeakKeyDictionary())

    def __call__(self, fn: Any) -> tuple[bytes, bytes]:
        """Return ``(hash, pickled bytes)`` for ``fn``."""
        try:
            return self._cache[fn]
        except (KeyError, TypeError):
            pass
        data = dumps(fn)
        entry = (fn_key(data), data)
        try:
            self._cache[fn] = entry
        except TypeError:   # not weak-referenceable (e.g. some builtins): just don't cache
            pass
        return entry


def dump_exception(exc: BaseException) -> bytes:
    """Pickle an exception with its formatted traceback; fall back to a stand-in if needed.

    The stand-in keeps the type name and message, so nothing the user needs is lost when the
    exception itself cannot be pickled (e.g. it holds a lock).
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = dumps((exc, tb))
        pickle.loads(data)   # some exceptions pickle but cannot be rebuilt
        return data
    except Exception:
        stand_in = RemoteError(f"{qualname(type(exc))}: {exc}")
        return dumps((stand_in, tb))


def qualname(cls: type) -> str:
    """``module.QualName`` of a class, as used by ``retry_on``."""
    mod = cls.__module__
    return cls.__qualname__ if mod == "builtins" else f"{mod}.{cls.__qualname__}"


class RemoteError(Exception):
    """Stands in for a remote exception that could not be pickled; the message keeps its type."""


class RemoteTraceback(Exception):
    """Carries the formatted remote traceback; attached as ``__cause__`` of remote errors."""

    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def with_remote_traceback(exc: BaseException, tb: str, where: str) -> BaseException:
    """Attach the remote traceback, headed by where it ran, as the exception's cause."""
    exc.__cause__ = RemoteTraceback(f'\n"""\nTraceback from {where}:\n{tb}"""')
    return exc
