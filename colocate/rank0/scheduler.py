"""Rank 0's scheduler: a pure state machine (events in, instructions out; no MPI, no clock).

The server loop turns MPI messages and timers into events, calls :meth:`Scheduler.handle`, and
carries out the instructions it returns. Everything here is deterministic, so the tests drive it
event by event and compare the exact instruction lists.

What it keeps:
  * a FIFO queue per client, served round-robin so one client cannot starve another;
  * per worker rank: the tasks sent to it in order (the first is running, the rest were sent
    ahead), the functions it has cached, its node and cores;
  * per function: a moving average of its run time, which decides whether tasks are sent ahead;
  * per node: the memory reserved by running tasks against the node's budget for functions;
  * the object store's books (``books``, a :class:`colocate.rank0.objects.StoreBook` it holds):
    which worker rank holds each object, for which client, and its size, counted against the
    same per-node budget (the data never passes through here).

Decisions it makes: placement (warm worker first, then least loaded; a task asking for k cores or
for GPUs runs alone on an idle worker while k-1 other idle workers of its node lend their cores,
and takes GPUs from its node's inventory), retries (crashes, timeouts,
memory kills and lost workers while ``retries`` last; raised exceptions only when listed in
``retry_on``), the drain, declaring silent workers lost, and where a ``put`` goes (the asked
node, else the client's own machine when it has room, else the node with the most room; there
the worker holding the fewest bytes). A task whose arguments hold refs prefers the node that
holds most of their bytes. Placement looks workers up in indexes kept as events arrive
(``_index``, a :class:`colocate.rank0.placement.Placement` it holds, which also places the tasks
that run alone), never by a scan of every worker: a decision costs O(log W).

Who owns what: the scheduler owns the workers, tasks, queues, functions, run times, GPUs and
each node's budget and reservations; it tells the placement indexes of every change that
matters to them, and they answer where a task goes. The books own the store's records and read
the workers, clients, budgets and reservations; their event methods return the instruction to
send, and the objects to discard collect in ``books.drops``, which the scheduler sends after
each event. The lease records own who leases which worker and who is earning a lease, and write
only the workers' lease fields; they too return the instruction to send.

Leases (a client that sends one task at a time, alone in the world, gets a worker slot of its
own) are decided by ``leases``, a :class:`colocate.rank0.leases.Leases` it holds: the scheduler
tells it of submissions, pauses, departures and the drain, and sends what it answers.

Its events and instructions are defined in :mod:`colocate.rank0.events` and re-exported here.
"""

from __future__ import annotations

from collections import deque

from colocate.rank0.events import (  # noqa: F401  (the server reads them as scheduler.X)
    AheadUsed,
    CancelRequested,
    ClientJoined,
    ClientLeft,
    CloseLease,
    CutOff,
    Deliver,
    DirectReported,
    DiscardObjects,
    DrainDeadline,
    DrainRequested,
    Event,
    Exit,
    ForgetWorker,
    FreeRequested,
    GrantLease,
    HeardFrom,
    Instruction,
    LeaseClosed,
    LetGo,
    MoveObjects,
    ObjectsMoved,
    PutGranted,
    PutRefused,
    PutRequested,
    ReturnAhead,
    SendWork,
    Submitted,
    Tick,
    WorkerDone,
    WorkerGone,
    WorkerJoined,
    WorkerLeaving,
    WorkerPaused,
)
from colocate.rank0.leases import Leases
from colocate.rank0.objects import StoreBook, _Object
from colocate.rank0.placement import Placement
from colocate.rank0.records import TaskRecord, WorkerRecord
from colocate.wire.messages import (
    RETRYABLE,
    Outcome,
    ResultMsg,
    Status,
    TaskInfo,
    TaskMsg,
    Work,
    dumps,
)

EWMA = 0.2   # weight of the newest run time in a function's average
AHEAD_SECONDS = 0.02   # a worker holds at most about this much of a short function's work

_OK, _RAISED, _REQUEUE = Status.OK, Status.RAISED, Status.REQUEUE
_new = tuple.__new__   # (builds a NamedTuple without the Python frame of its __new__)


class Scheduler:
    """Queues, placement, retries and the drain for one colocate world.

    Args:
        prefetch: how many tasks of a short function a worker may hold at once, at most: fewer
            when they add up to more than :data:`AHEAD_SECONDS` of its mean run time.
        prefetch_below: a function is short when its mean run time is below this (seconds).
        heartbeat_timeout: seconds of silence after which a worker is declared lost.
        default_timeout: the task timeout used when a task sets none.
        leases: whether clients may lease worker slots (config ``client.leases``).
    """

    def __init__(self, prefetch: int = 256, prefetch_below: float = 0.005,
                 heartbeat_timeout: float = 30.0, default_timeout: float | None = None,
                 leases: bool = False) -> None:
        self.prefetch = max(1, prefetch)
        self.prefetch_below = prefetch_below
        self.heartbeat_timeout = heartbeat_timeout
        self.default_timeout = default_timeout
        self.workers: dict[int, WorkerRecord] = {}
        self.lost: dict[int, str] = {}
        self.tasks: dict[int, TaskRecord] = {}
        self.queues: dict[int, deque[TaskRecord]] = {}
        self.turn: deque[int] = deque()           # clients with queued tasks, round-robin
        self.fns: dict[bytes, bytes] = {}          # function registry: hash -> pickled function
        self.mean_runtime: dict[bytes, float] = {}
        self.node_budget: dict[str, int] = {}
        self.node_reserved: dict[str, int] = {}
        self.node_gpus: dict[str, tuple[str, ...]] = {}
        self.gpus_free: dict[str, list[str]] = {}
        self.free_gpus = 0   # GPUs free in the whole world (a quick refusal of GPU tasks)
        self.draining = False
        self.retried = 0
        self._next_gid = 0
        self._out: list[Instruction] = []
        self._deliveries: dict[int, list[ResultMsg]] = {}
        self._returning: list[TaskRecord] = []
        room_changed: set[str] = set()   # (nodes whose free memory may have changed)
        self.books = StoreBook(self.workers, self.queues, self.node_budget, self.node_reserved,
                               room_changed)
        self._drops = self.books.drops   # (the same dict: read after every event, cleared)
        self._index = Placement(self.books.room, self.gpus_free, room_changed)
        self.leases = Leases(leases, self.workers, self._index, default_timeout)
        self._limits: tuple[int, int, int] | None = None   # most cores, GPUs, budget of a node
        self._handlers: dict[type, object] = {}   # event type -> its _on_ method

    # ----- entry point ---------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event and return what the server loop must do, in order."""
        method = self._handlers.get(type(event))
        if method is None:
            method = self._handlers[type(event)] = getattr(type(self),
                                                           "_on_" + type(event).__name__)
        method(self, event)
        # (each step below is skipped when it has nothing to do: this runs for every event)
        if self._returning:
            for task in reversed(self._returning):   # back to the front, in their old order
                queue = self.queues[task.client]
                if not queue:
                    self.turn.append(task.client)
                queue.appendleft(task)
            self._returning = []
        if self.turn:
            self._dispatch()
        if self.leases.due is not None:
            said = self.leases.grant(waiting=bool(self.turn))
            if said is not None:
                self._out.append(said)
        if self._drops:
            for rank, ids in self._drops.items():
                self._out.append(DiscardObjects(rank, ids))
            self._drops.clear()
        if self._deliveries:
            for client, results in self._deliveries.items():
                self._out.append(Deliver(client, results))
            self._deliveries = {}
        if self.draining and not self.tasks and not any(w.assigned or w.lease
                                                        for w in self.workers.values()):
            self._out.append(Exit())
        out, self._out = self._out, []
        return out

    @property
    def slots(self) -> int:
        """Worker slots currently serving."""
        return len(self.workers)

    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return sum(len(q) for q in self.queues.values())

    # ----- events --------------------------------------------------------------------------------
    def _on_ClientJoined(self, ev: ClientJoined) -> None:
        self.queues.setdefault(ev.client, deque())

    def _on_ClientLeft(self, ev: ClientLeft) -> None:
        said = self.leases.client_left(ev.client)
        if said is not None:
            self._out.append(said)
        self.books.client_left(ev.client)
        for task in self.queues.pop(ev.client, ()):
            del self.tasks[task.gid]
        if ev.client in self.turn:
            self.turn.remove(ev.client)
        for task in self.tasks.values():   # running ones finish; their results are dropped
            if task.client == ev.client:
                task.client = None

    def _on_Submitted(self, ev: Submitted) -> None:
        queue = self.queues.get(ev.client)
        if queue is None:
            return
        was_empty = not queue
        leases = self.leases
        lone = leases.submitted(ev.client, ev.tasks, busy=bool(self.tasks))
        for msg in ev.tasks:
            if msg.fn_bytes is not None:
                self.fns.setdefault(msg.fn_hash, msg.fn_bytes)
            if self.draining:   # sent before the client heard of the drain: it never runs
                self._deliver(ev.client, ResultMsg(msg.id, Status.INTERRUPTED,
                                                   dumps("the server is draining"), None))
                continue
            reason = self._cannot_run(msg)
            if reason:
                self._deliver(ev.client, ResultMsg(msg.id, Status.REJECTED, dumps(reason), None))
                continue
            task = TaskRecord(self._next_gid, ev.client, msg)
            self._next_gid += 1
            self.tasks[task.gid] = task
            queue.append(task)
            if lone and leases.earned(ev.client):
                leases.due = task
        if was_empty and queue:
            self.turn.append(ev.client)

    def _on_CancelRequested(self, ev: CancelRequested) -> None:
        queue = self.queues.get(ev.client)
        if not queue:
            return
        wanted = set(ev.ids)
        keep = deque()
        for task in queue:
            if task.cid in wanted:
                del self.tasks[task.gid]
                self._deliver(ev.client, ResultMsg(task.cid, Status.CANCELLED, b"", None))
            else:
                keep.append(task)
        self.queues[ev.client] = keep
        if not keep and ev.client in self.turn:
            self.turn.remove(ev.client)

    def _on_WorkerJoined(self, ev: WorkerJoined) -> None:
        old = self.workers.get(ev.rank)
        if old is not None:   # (it keeps its place in the join order)
            self._index.leave(old)
        worker = self.workers[ev.rank] = WorkerRecord(ev.rank, ev.node, tuple(ev.cores), ev.now,
                                                 machine=ev.machine, leases=ev.leases)
        self.node_budget[ev.node] = ev.memory_budget
        self.node_reserved.setdefault(ev.node, 0)
        self.books.add_node(ev.node)
        if ev.node not in self.node_gpus:
            self.node_gpus[ev.node] = tuple(ev.gpus)
            self.gpus_free[ev.node] = list(ev.gpus)
            self.free_gpus += len(ev.gpus)
        self._index.join(worker, bool(self.node_gpus[ev.node]),
                         None if old is None else old.seq)
        self._limits = None

    def _on_HeardFrom(self, ev: HeardFrom) -> None:
        worker = self.workers.get(ev.rank)
        if worker is not None:
            worker.last_seen = ev.now
            worker.done += ev.done
            worker.failed += ev.failed

    def _on_WorkerPaused(self, ev: WorkerPaused) -> None:
        worker = self.workers.get(ev.rank)
        if worker is not None:
            worker.paused = ev.paused
            self._index.refile(worker)
            if ev.paused:
                self._end_lease(worker)

    def _on_WorkerDone(self, ev: WorkerDone) -> None:
        worker = self.workers.get(ev.rank)
        if worker is None:
            return
        if ev.now > worker.last_seen:
            worker.last_seen = ev.now
        assigned = worker.assigned
        means = self.mean_runtime
        for out in ev.outcomes:   # (the hot path of every decision: plain outcomes inlined)
            task = assigned.pop(out.gid, None)
            if out.kept:
                owner = task.client if task is not None and out.status == _OK else None
                self.books.kept(worker, owner, out.kept)
            if task is None:
                continue
            cores = task.cores or worker.cores
            if task.helpers or task.gpus or task.opts.memory:
                self._release(worker, task)
            else:
                task.rank = None
            status = out.status
            if status == _REQUEUE:
                self._requeue(task)
                continue
            task.attempts += 1
            if status == _OK or status == _RAISED:
                took = out.finished - out.started
                if took < 0.0:
                    took = 0.0
                old = means.get(task.fn_hash)
                means[task.fn_hash] = took if old is None else old + EWMA * (took - old)
            if status != _OK:
                if self._should_retry(task, out):
                    self.retried += 1
                    self._requeue(task)
                    continue
                worker.failed += 1
            else:
                worker.done += 1
            del self.tasks[task.gid]
            if task.client is not None:
                result = _new(ResultMsg, (task.cid, status, out.payload, _new(TaskInfo, (
                    worker.node, worker.rank, cores, out.started, out.finished, task.attempts))))
                results = self._deliveries.get(task.client)
                if results is None:
                    self._deliveries[task.client] = [result]
                else:
                    results.append(result)
        self._index.refile(worker)

    def _on_WorkerGone(self, ev: WorkerGone) -> None:
        worker = self.workers.pop(ev.rank, None)
        if worker is None:
            return
        self.lost[ev.rank] = ev.reason
        self._out.append(ForgetWorker(ev.rank, ev.reason))
        self._index.leave(worker)
        self._limits = None
        self.leases.worker_lost(worker)
        self.books.lose(ev.rank, ev.reason)
        self._index.room_changed.add(worker.node)
        served = self.tasks.get(worker.lent_to) if worker.lent_to is not None else None
        if served is not None and worker in served.helpers:   # it was lending its cores
            served.helpers.remove(worker)
        for i, task in enumerate(list(worker.assigned.values())):
            self._release(worker, task)
            if i > 0:   # sent ahead, never started
                self._requeue(task)
                continue
            task.attempts += 1
            out = Outcome(task.gid, Status.LOST, dumps(ev.reason), 0.0, 0.0)
            if self._should_retry(task, out):
                self.retried += 1
                self._requeue(task)
            else:
                info = TaskInfo(worker.node, worker.rank, worker.cores, 0.0, 0.0, task.attempts)
                self._finish(task, ResultMsg(task.cid, Status.LOST, out.payload, info))
        if not self.workers:
            self._fail_queued(Status.LOST, "no worker rank is left in the world")

    def _on_Tick(self, ev: Tick) -> None:
        for worker in list(self.workers.values()):
            silent = ev.now - worker.last_seen
            if silent > self.heartbeat_timeout:
                self._on_WorkerGone(WorkerGone(
                    worker.rank, f"rank {worker.rank} on {worker.node} was silent for "
                    f"{silent:.0f} s (heartbeat_timeout {self.heartbeat_timeout:g} s)"))

    def _on_DrainRequested(self, ev: DrainRequested) -> None:
        self.draining = True
        self._fail_queued(Status.INTERRUPTED, "the server is draining")
        for worker in self.workers.values():
            self._end_lease(worker)
            if len(worker.assigned) > 1:   # sent ahead: back unstarted (REQUEUE), not run here
                self._out.append(ReturnAhead(worker.rank))

    def _on_DrainDeadline(self, ev: DrainDeadline) -> None:
        for worker in self.workers.values():
            if worker.assigned or worker.lease:
                self._out.append(CutOff(worker.rank, Status.INTERRUPTED))

    # ----- the object store: the books decide, the scheduler sends ----------------------------
    def _on_PutRequested(self, ev: PutRequested) -> None:
        self._out.append(self.books.put(ev, self.draining))

    def _on_FreeRequested(self, ev: FreeRequested) -> None:
        self.books.free(ev.ids)

    def _on_AheadUsed(self, ev: AheadUsed) -> None:
        self.books.ahead_used(ev.client, ev.ids)

    def _on_WorkerLeaving(self, ev: WorkerLeaving) -> None:
        said = self.books.leaving(ev.rank)
        if said is not None:
            self._out.append(said)

    def _on_ObjectsMoved(self, ev: ObjectsMoved) -> None:
        said = self.books.objects_moved(ev)
        if said is not None:
            self._out.append(said)

    # read views of the books, for rank 0's loop (``WhereIs``) and the tests
    @property
    def objects(self) -> dict[int, _Object]:
        """The stored objects by id (the books' record; read it, never change it)."""
        return self.books.objects

    @property
    def held(self) -> dict[int, dict[int, None]]:
        """The ids of the objects each rank holds (the books' record)."""
        return self.books.held

    @property
    def gone(self) -> dict:
        """Lost object id -> where it was and why (the books' record)."""
        return self.books.gone

    @property
    def moved(self) -> dict[int, tuple]:
        """Moved object id -> ``(fd, where)`` at its new holder (the books' record)."""
        return self.books.moved

    def where_is(self, oid: int) -> tuple[str, _Object | None]:
        """Why object ``oid`` is lost, or its record: :meth:`StoreBook.where_is`."""
        return self.books.where_is(oid)

    def lost_argument(self, refs: tuple[int, ...]) -> str | None:
        """Why a task naming ``refs`` cannot run: :meth:`StoreBook.lost_argument`."""
        return self.books.lost_argument(refs)

    # ----- leases: the lease records decide, the scheduler sends -------------------------------
    def _on_LeaseClosed(self, ev: LeaseClosed) -> None:
        worker = self.leases.closed(ev, self.queues)
        if worker is not None:
            worker.done += ev.done
            worker.failed += ev.failed

    def _on_DirectReported(self, ev: DirectReported) -> None:
        worker = self.workers.get(ev.rank)
        if worker is None:
            return
        known = ev.client in self.queues
        ok = ev.result.status == Status.OK
        self.books.kept(worker, ev.client if known and ok else None, ev.kept)
        if known:
            self._deliver(ev.client, ev.result)

    def _end_lease(self, worker: WorkerRecord, wanted: bool = False) -> None:
        """Ask the worker to end its lease; ``wanted``: because other work waits for the slot."""
        said = self.leases.end(worker, wanted)
        if said is not None:
            self._out.append(said)

    # ----- placement -----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        if self.draining or not self.workers or not self.turn:
            return
        batches: dict[int, list[Work]] = {}
        blocked = 0
        turn, queues, index, books = self.turn, self.queues, self._index, self.books
        gone, moved = books.gone, books.moved   # (never rebound: read here per task with refs)
        last_fn, depth = None, 1   # (the send-ahead depth of the last function placed)
        while turn and blocked < len(turn):
            client = turn[0]
            queue = queues[client]
            task = queue[0]
            if task.refs and gone:
                lost = books.lost_argument(task.refs)
                if lost is not None:   # it can only fail: with ObjectLost, never sent
                    queue.popleft()
                    if not queue:
                        turn.popleft()
                    blocked = 0
                    self._finish(task, ResultMsg(task.cid, Status.NO_OBJECT, dumps(lost), None))
                    continue
            opts = task.opts
            fn = task.fn_hash
            if opts.cores > 1 or opts.gpus:
                placed = (None if opts.gpus > self.free_gpus   # (the common refusal: no GPU)
                          else index.exclusive(task))
                worker = None if placed is None else placed[0]
            else:   # (what _place does, inlined: the hot path of every decision)
                placed = None
                if fn is not last_fn:
                    last_fn, depth = fn, self._depth(fn)
                worker = index.best(fn, depth, task.prefer, opts.memory)
            if worker is None:       # head of this client's queue does not fit now: next client
                turn.rotate(-1)
                blocked += 1
                continue
            blocked = 0
            queue.popleft()
            turn.rotate(-1)
            if not queue:
                turn.pop()   # (the client just rotated to the end)
            task.rank = worker.rank
            worker.assigned[task.gid] = task
            if opts.memory:
                self.node_reserved[worker.node] += opts.memory
                index.room_changed.add(worker.node)
            if placed is not None:
                self._take(task, *placed)
            fn_bytes = None
            if fn not in worker.fns:
                fn_bytes = self.fns[fn]
                worker.fns.add(fn)
                index.warmed(worker, fn)
            index.refile(worker)
            timeout = opts.timeout if opts.timeout is not None else self.default_timeout
            work = _new(Work, (task.gid, fn, fn_bytes, task.args, timeout, opts.memory,
                               task.cores, task.gpus,
                               books.relocations(task.refs) if task.refs and moved else ()))
            batch = batches.get(worker.rank)
            if batch is None:
                batches[worker.rank] = [work]
            else:
                batch.append(work)
        for rank, work in batches.items():
            self._out.append(SendWork(rank, work))
        if self.turn and self.leases.held:   # something waits: leased slots come back
            self._out += self.leases.give_way()

    def _take(self, task: TaskRecord, worker: WorkerRecord, helpers: list[WorkerRecord],
              gpus: list[str]) -> None:
        """Give a task that runs alone its lent cores and GPUs."""
        task.helpers = helpers
        task.cores = ()
        if helpers:
            refile = self._index.refile
            cores = list(worker.cores)
            for h in helpers:
                h.lent_to = task.gid
                refile(h)
                cores += h.cores
            cores.sort()
            task.cores = tuple(cores)
        task.gpus = tuple(gpus)
        if gpus:
            self.free_gpus -= len(gpus)
            for g in gpus:
                self.gpus_free[worker.node].remove(g)
            self._index.changed.add(worker.node)

    def _depth(self, fn: bytes) -> int:
        """How many tasks of ``fn`` a worker may hold: 1, or more when it is short (send-ahead)."""
        mean = self.mean_runtime.get(fn)
        if mean is not None and mean < self.prefetch_below:   # short: send some ahead, up to
            return max(1, min(self.prefetch, round(AHEAD_SECONDS / max(mean, 1e-6))))   # ~20 ms
        return 1

    def _cannot_run(self, msg: TaskMsg) -> str:
        """Why no node of this world could ever run the task ("" if one could)."""
        if msg.fn_hash not in self.fns:
            return "the function was never sent to this server (client protocol error)"
        opts = msg.options
        if not self.workers or (opts.cores <= 1 and not opts.gpus and not opts.memory):
            return ""   # (any worker can run it: the common case, checked per task)
        if self._limits is None:   # (recounted after a worker joins or is lost)
            per_node: dict[str, int] = {}
            for w in self.workers.values():
                per_node[w.node] = per_node.get(w.node, 0) + len(w.cores)
            self._limits = (max(per_node.values()),
                            max((len(g) for g in self.node_gpus.values()), default=0),
                            max(self.node_budget.values()))
        most_cores, most_gpus, budget = self._limits
        if opts.cores > most_cores:
            return (f"the task asks for {opts.cores} cores, but the most any node offers is "
                    f"{most_cores} (its worker ranks' spare cores); ask for fewer cores or "
                    f"start more worker ranks per node")
        if opts.gpus > most_gpus:
            return (f"the task asks for {opts.gpus} GPU(s), but the most any node has is "
                    f"{most_gpus}; check `colocate info` or co_location.gpus")
        if opts.memory and opts.memory > budget:
            return (f"the task asks for {opts.memory} bytes of memory, but the largest "
                    f"node budget for functions is {budget} bytes; ask for less or raise "
                    f"co_location.memory_budget")
        return ""

    # ----- helpers -------------------------------------------------------------------------------
    def _should_retry(self, task: TaskRecord, out: Outcome) -> bool:
        if self.draining or task.attempts > task.opts.retries:
            return False
        if out.status in RETRYABLE:
            return True
        return out.status == Status.RAISED and bool(out.exc_type) and (
            out.exc_type in task.opts.retry_on)

    def _release(self, worker: WorkerRecord, task: TaskRecord) -> None:
        task.rank = None
        if task.opts.memory:
            self.node_reserved[worker.node] -= task.opts.memory
            self._index.room_changed.add(worker.node)
        if task.helpers:
            refile = self._index.refile
            for h in task.helpers:
                h.lent_to = None
                refile(h)
            task.helpers = ()
        if task.gpus:   # back in inventory order, so GPU ids come out predictably
            free = self.gpus_free[worker.node] + list(task.gpus)
            self.gpus_free[worker.node] = [g for g in self.node_gpus[worker.node] if g in free]
            self.free_gpus += len(task.gpus)
            task.gpus = ()
            self._index.changed.add(worker.node)

    def _requeue(self, task: TaskRecord) -> None:
        if task.client is None:
            del self.tasks[task.gid]
            return
        if self.draining:
            self._finish(task, ResultMsg(task.cid, Status.INTERRUPTED,
                                         dumps("the server is draining"), None))
            return
        self._returning.append(task)

    def _finish(self, task: TaskRecord, result: ResultMsg) -> None:
        del self.tasks[task.gid]
        if task.client is not None:
            self._deliver(task.client, result)

    def _deliver(self, client: int, result: ResultMsg) -> None:
        self._deliveries.setdefault(client, []).append(result)

    def _fail_queued(self, status: Status, reason: str) -> None:
        payload = dumps(reason)
        for client, queue in self.queues.items():
            for task in queue:
                del self.tasks[task.gid]
                self._deliver(client, ResultMsg(task.cid, status, payload, None))
            queue.clear()
        self.turn.clear()

    # ----- reporting -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """A plain-data view for ``colocate status``."""
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: w.rank):
            current = next(iter(w.assigned.values()), None)
            workers.append({
                "rank": w.rank, "node": w.node, "cores": list(w.cores),
                "state": "paused" if w.paused else "lent" if w.lent_to is not None else (
                    "busy" if w.assigned else "leased" if w.lease else "idle"),
                "leased_to": w.lease_client,
                "current": None if current is None else current.gid,
                "ahead": max(0, len(w.assigned) - 1), "done": w.done, "failed": w.failed,
                "stored": w.stored,
            })
        per_node: dict[str, dict] = {
            n: {"objects": 0, "bytes": self.books.node_stored.get(n, 0), "ahead": 0,
                "budget": self.node_budget[n], "reserved": self.node_reserved.get(n, 0)}
            for n in self.node_budget}
        for obj in self.books.objects.values():
            if obj.ahead:   # held for a client's next put: budget, not yet an object
                per_node[obj.node]["ahead"] += obj.nbytes
                per_node[obj.node]["bytes"] -= obj.nbytes
            else:
                per_node[obj.node]["objects"] += 1
        return {
            "workers": workers, "lost": dict(self.lost), "queued": self.queued(),
            "running": sum(1 for w in self.workers.values() if w.assigned),
            "clients": len(self.queues), "retried": self.retried, "draining": self.draining,
            "leases": len(self.leases.held),
            "node_budget": dict(self.node_budget), "node_reserved": dict(self.node_reserved),
            "store": {"objects": sum(p["objects"] for p in per_node.values()),
                      "bytes": sum(p["bytes"] for p in per_node.values()),
                      "ahead": sum(p["ahead"] for p in per_node.values()),
                      "lost": self.books.objects_lost, "nodes": per_node},
        }
