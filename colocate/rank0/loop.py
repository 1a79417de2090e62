"""Rank 0's loop: turn MPI messages, bells and signals into scheduler events, and back.

Reads: ``WorkerHello``/``Done``/``Heartbeat``/``LeaseEnded``/``DirectDone`` from worker ranks
(MPI); ``Submit``/``Cancel``/``StatusRequest``/``StopRequest``/``PutRequest``/``FreeRefs``/``Bye``
and ``WhereIs`` (a read of an object failed: where is it, or why is it gone) from clients (their
streams); new connections on the listening socket; SIGTERM/SIGINT. Writes:
``Dispatch``/``KillRunning``/``TakeBack``/``DropObjects``/``StartLease``/``EndLease``/``Shutdown``
to workers (and ``MoveOut`` to a leaving joined worker that holds objects, answered by
``MovedOut``); ``Welcome``/``Results``/``PutReply``/``Lease``/``StatusReply``/``ObjectWhere``
/``Bye`` to clients; and
the address file. Stored objects' data never comes here: clients send it to the worker's data port
(:mod:`colocate.store.datalink`). Leased clients' lone tasks never come here either
(:mod:`colocate.worker.lease`).

Workers that join later over TCP (``colocate join``, :mod:`colocate.worker.joined`) send and get the
same messages on a stream of their own instead of MPI and a bell, and are known by ids from the
world's size up. They may say ``Leaving`` (answered with ``Shutdown``, after ``MoveOut`` has had it
copy its stored objects to other nodes where the budget allows); a joined worker whose
stream closes is lost like a worker rank whose bell closes, and the world goes on.

All decisions are the :class:`~colocate.rank0.scheduler.Scheduler`'s; this module only moves
messages. It sleeps in ``select`` on every bell when idle, so an idle server costs almost no CPU,
and wakes the peers it sends to by ringing their bells.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from colocate.colocation.sandbox import describe_sandbox
from colocate.rank0 import scheduler as S
from colocate.rank0.owner import OwnerWatch
from colocate.wire import mpi
from colocate.wire.address import Address
from colocate.wire.bell import Bell, answer
from colocate.wire.messages import (
    Bye,
    Cancel,
    DirectDone,
    Dispatch,
    Done,
    DropObjects,
    EndLease,
    FreeRefs,
    Heartbeat,
    Joined,
    KillRunning,
    Lease,
    LeaseEnded,
    Leaving,
    MovedOut,
    MoveOut,
    ObjectWhere,
    PauseCores,
    PutReply,
    PutRequest,
    Results,
    Shutdown,
    StartLease,
    StatusReply,
    StatusRequest,
    StopRequest,
    StoreAddress,
    Submit,
    TakeBack,
    UsedAhead,
    Welcome,
    WhereIs,
    WorkerHello,
)
from colocate.wire.stream import Stream
from colocate.world.idle import Backoff

log = logging.getLogger("colocate.server")


@dataclass
class _Client:
    id: int
    stream: Stream
    who: str
    owner: bool = False   # a connection of the process that owns this (local) world


class Server:
    """Rank 0 of a colocate world.

    Args:
        comm: the world communicator.
        cfg: the effective configuration.
        listener: the bell listening socket (already open).
        address: what goes into the address file (port name, bell address, token).
        worker_bells: ``{rank: Bell}`` for every worker rank, connected during set-up.
        expect_clients: stop once this many clients have connected and all have left.
        owner: the process that owns this world (``serve --owner``): stop as soon as it exits,
            or once it has connected and all its connections have closed.
    """

    def __init__(self, comm: Any, cfg: dict, listener: Any, address: Address,
                 worker_bells: dict[int, Bell], expect_clients: int | None = None,
                 owner: OwnerWatch | None = None) -> None:
        srv = cfg["server"]
        self.comm = comm
        self.cfg = cfg
        self.box = mpi.Mailbox(comm)
        self.listener = listener
        self.address = address
        self.worker_bells = worker_bells
        self.worker_contact = {rank: 0.0 for rank in worker_bells}
        self.stores: dict[int, StoreAddress | None] = {}
        self.task_ports: dict[int, tuple] = {}   # rank -> (host, port[, path])
        self.clients: dict[int, _Client] = {}
        self.next_client = 1
        self.backoff = Backoff.from_config(srv)
        self.sched = S.Scheduler(srv["prefetch"], srv["prefetch_below"],
                                 srv["heartbeat_timeout"], cfg["tasks"]["timeout"],
                                 cfg["client"]["leases"])
        self.heartbeat = srv["heartbeat"]
        self.drain_grace = srv["drain_grace"]
        self.max_inflight = cfg["client"]["max_inflight"]
        self.drain_deadline: float | None = None
        self.stop_now = False
        self.exiting = False
        self.signals = 0
        self.started = time.time()
        self.expect_clients = expect_clients
        self.clients_seen = 0
        self.owner = owner
        self.joined: dict[int, Stream] = {}          # joined worker id -> its stream
        self.joined_ids: dict[Stream, int] = {}
        self.next_joined = comm.Get_size()
        self.leaving: set[int] = set()                # joined workers that said Leaving
        self.leave_why: dict[int, str] = {}          # ... and why they left
        self.worker_job: dict[int, str] = {}          # joined worker -> its batch job's id
        self.pool = _Pool(cfg, address) if cfg["pool"]["max_jobs"] > 0 else None

    def await_workers(self, count: int, timeout: float) -> None:
        """Wait until ``count`` workers have introduced themselves (before the address is out).

        Raises:
            TimeoutError: some did not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.sched.slots + len(self.sched.lost) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count - self.sched.slots} worker rank(s) did not start "
                                   f"within {timeout:g} s; see their error output")
            if not self._poll_workers():
                time.sleep(0.001)

    # ----- signals -------------------------------------------------------------------------------
    def install_signal_handlers(self, received: Sequence[int] = ()) -> None:
        """SIGTERM and SIGINT drain; a second SIGINT stops at once.

        ``received``: signals that came during set-up, acted on now.
        """
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for signum in received:
            log.warning("%s came during set-up: draining now that the world is up",
                     signal.Signals(signum).name)
            self._on_signal(signum, None)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if signum == signal.SIGINT and self.signals > 1:
            self.stop_now = True
        elif self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.drain_grace

    # ----- loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until drained or stopped, then shut every worker down."""
        last_tick = last_view = time.monotonic()
        draining = False
        if self.owner is not None and self.owner.gone():
            self._owner_gone()
        try:
            while not self.exiting and not self.stop_now:
                if self.drain_deadline is not None and not draining:
                    draining = True
                    log.info("draining: no new tasks; running ones have %g s to finish",
                             self.drain_grace)
                    self._apply(S.DrainRequested())
                    continue
                if draining and time.monotonic() > self.drain_deadline:
                    self.drain_deadline = float("inf")
                    log.warning("drain grace period over: cutting off running tasks")
                    self._apply(S.DrainDeadline())
                busy = self._poll_workers()
                now = time.monotonic()
                if busy:
                    self.backoff.active(now)
                if self.pool is not None and now - last_view > POOL_VIEW:
                    last_view = now
                    self.pool.see(self.sched, self.worker_job, now)
                if now - last_tick > self.heartbeat:
                    last_tick = now
                    self._apply(S.Tick(now))
                    if self.owner is not None and self.owner.fd is None and self.owner.gone():
                        self._owner_gone()
                self._wait(self.backoff.delay(now))
        finally:
            self._shutdown()

    def _wait(self, delay: float) -> None:
        streams = [c.stream for c in self.clients.values()] + list(self.joined.values())
        readers = [self.listener, *self.worker_bells.values(), *streams]
        if self.owner is not None and self.owner.fd is not None:
            readers.append(self.owner)
        writers = [st for st in streams if st.pending]
        try:
            ready, writable, _ = select.select(readers, writers, [], delay)
        except InterruptedError:
            return
        if delay == 0.0 and not ready:
            os.sched_yield()
        for st in writable:
            st.flush()
        for fd in ready:
            if fd is self.listener:
                self._new_connection()
            elif isinstance(fd, Stream):
                if fd in self.joined_ids:
                    self._joined_input(fd)
                else:
                    self._client_input(fd)
            elif fd is self.owner:
                self._owner_gone()
            elif not fd.drain():
                self._bell_closed(fd)
            else:
                self.backoff.active()

    def _poll_workers(self) -> bool:
        got = self.box.poll()
        if got is None:
            return False
        now = time.monotonic()
        while got is not None:
            self._from_worker(got[0], got[1], now)
            got = self.box.poll()
        return True

    def _from_worker(self, rank: int, msg: Any, now: float) -> None:
        """One message from a worker rank (MPI) or a joined worker (its stream)."""
        self.worker_contact[rank] = now
        kind = type(msg)
        if kind is Done:
            self._apply(S.WorkerDone(rank, msg.outcomes, now))
        elif kind is Heartbeat:
            self._apply(S.HeardFrom(rank, now, msg.done, msg.failed))
        elif kind is LeaseEnded:
            self._apply(S.LeaseClosed(rank, msg.lease, msg.done, msg.failed))
        elif kind is DirectDone:
            self._apply(S.DirectReported(rank, msg.client, msg.result, msg.kept))
        elif kind is PauseCores:
            if rank in self.joined and msg.paused and rank not in self.leaving:
                log.info("joined worker %d paused (leaving or the host wants its core)", rank)
            else:
                log.info("worker rank %d %s by the guard", rank,
                         "paused (the host wants its core)" if msg.paused
                         else "resumed (the host left its core)")
            self._apply(S.WorkerPaused(rank, msg.paused))
        elif kind is WorkerHello:
            log.info("%s %d on %s: %s", "joined worker" if rank in self.joined else "worker rank",
                     rank, msg.node, describe_sandbox(msg.detail.get("sandbox"),
                                                      msg.detail.get("cgroup"),
                                                      msg.detail.get("guard")))
            self.stores[rank] = msg.store
            if rank in self.joined and msg.detail.get("job"):
                self.worker_job[rank] = str(msg.detail["job"])
            if msg.tasks is not None:
                self.task_ports[rank] = tuple(msg.tasks)
            self._apply(S.WorkerJoined(rank, msg.node, msg.cores, msg.memory_budget, now,
                                       msg.gpus, msg.store.machine if msg.store else "",
                                       msg.tasks is not None))
        elif kind is Leaving and rank in self.joined:
            log.info("joined worker %d is leaving: %s", rank, msg.reason)
            self.leaving.add(rank)
            self.leave_why[rank] = msg.reason
            self._apply(S.WorkerLeaving(rank))   # Shutdown at once, or after its objects moved
        elif kind is MovedOut and rank in self.leaving:
            log.info("joined worker %d moved %d object(s) to other workers%s", rank,
                     len(msg.done), f"; {len(msg.failed)} could not be" if msg.failed else "")
            self._apply(S.ObjectsMoved(rank, tuple((oid, fd, self.stores.get(to))
                                                   for oid, to, fd in msg.done),
                                       tuple(msg.failed)))
        else:
            log.error("worker %d sent an unexpected %s; ignored", rank, kind.__name__)

    def _joined_input(self, stream: Stream) -> None:
        rank = self.joined_ids[stream]
        self.backoff.active()
        now = time.monotonic()
        for msg in stream.receive():
            self._from_worker(rank, msg, now)
        if stream.closed and rank in self.joined:
            node = self.sched.workers[rank].node if rank in self.sched.workers else "?"
            why = (f"left ({self.leave_why.pop(rank, '')})" if rank in self.leaving else
                   "exited (its connection closed)")
            job = self.worker_job.get(rank)
            if job:
                why += f"; it ran in batch job {job}"

            self._forget_joined(rank)
            self._apply(S.WorkerGone(rank, f"joined worker {rank} on {node} {why}"))

    def _forget_joined(self, rank: int) -> None:
        stream = self.joined.pop(rank, None)
        if stream is not None:
            self.joined_ids.pop(stream, None)
            stream.close()

    def _client_input(self, stream: Stream) -> None:
        client = next((c for c in self.clients.values() if c.stream is stream), None)
        if client is None:
            return
        self.backoff.active()
        for msg in stream.receive():
            self._client_message(client, msg)
            if client.id not in self.clients:
                return
        if stream.closed:
            self._drop_client(client, "disconnected")

    def _client_message(self, client: _Client, msg: Any) -> None:
        kind = type(msg)
        if kind is Submit:
            self._apply(S.Submitted(client.id, msg.tasks))
            if self.pool is not None and self.pool.idle_queue():
                self.pool.see(self.sched, self.worker_job, time.monotonic())
                self.pool.wake()   # work after none queued: decide now, not at the next interval
        elif kind is Cancel:
            self._apply(S.CancelRequested(client.id, msg.ids))
        elif kind is PutRequest:
            self._apply(S.PutRequested(client.id, msg.req, msg.nbytes, msg.node, msg.near,
                                       msg.ahead, msg.count))
        elif kind is FreeRefs:
            self._apply(S.FreeRequested(client.id, msg.ids))
        elif kind is UsedAhead:
            self._apply(S.AheadUsed(client.id, msg.ids))
        elif kind is WhereIs:
            self._to_client(client, self._where_is(msg))
        elif kind is StatusRequest:
            self._to_client(client, StatusReply(self.status()))
        elif kind is StopRequest:
            log.info("stop requested by client %d (%s)", client.id, client.who)
            if msg.drain:
                if self.drain_deadline is None:
                    self.drain_deadline = time.monotonic() + self.drain_grace
            else:
                self.stop_now = True
        elif kind is Bye:
            self._drop_client(client, "said goodbye")
        else:
            log.error("client %d sent an unexpected %s; ignored", client.id, kind.__name__)

    def _where_is(self, msg: WhereIs) -> ObjectWhere:
        """Answer a client whose read of object ``msg.id`` failed: its holder now, or why not."""
        lost, obj = self.sched.where_is(msg.id)
        if obj is None or obj.ahead:
            return ObjectWhere(msg.req, msg.id, lost or f"object {msg.id} is not stored in this "
                               "world (it was freed, or never stored here)")
        fd, where = self.sched.moved.get(msg.id, (-1, self.stores.get(obj.rank)))
        return ObjectWhere(msg.req, msg.id, "", obj.rank, obj.node, where, fd)

    # ----- instructions --------------------------------------------------------------------------
    def _apply(self, event: S.Event) -> None:
        for ins in self.sched.handle(event):
            kind = type(ins)
            if kind is S.SendWork:
                self._to_worker(ins.rank, Dispatch(ins.work))
            elif kind is S.Deliver:
                client = self.clients.get(ins.client)
                if client is not None:
                    self._to_client(client, Results(ins.results))
            elif kind is S.CutOff:
                self._to_worker(ins.rank, KillRunning(int(ins.status)))
            elif kind is S.ReturnAhead:
                self._to_worker(ins.rank, TakeBack())
            elif kind is S.ForgetWorker:
                if ins.rank in self.leaving:
                    self.leaving.discard(ins.rank)
                    log.info("%s", ins.reason)
                else:
                    log.error("worker lost: %s", ins.reason)
                bell = self.worker_bells.pop(ins.rank, None)
                if bell is not None:
                    bell.close()
                self._forget_joined(ins.rank)
            elif kind is S.PutGranted:
                client = self.clients.get(ins.client)
                if client is not None:
                    self._to_client(client, PutReply(ins.req, ins.ref_id, ins.rank, ins.node,
                                                     self.stores.get(ins.rank), more=ins.more))
            elif kind is S.PutRefused:
                client = self.clients.get(ins.client)
                if client is not None:
                    self._to_client(client, PutReply(ins.req, 0, -1, "", None, ins.reason,
                                                     ins.full))
            elif kind is S.DiscardObjects:
                self._to_worker(ins.rank, DropObjects(ins.ids))
            elif kind is S.GrantLease:   # the worker first: it must know the lease when the
                self._to_worker(ins.rank, StartLease(ins.lease, ins.client, ins.timeout))
                client = self.clients.get(ins.client)   # client's tasks come
                if client is not None:
                    host, port, *path = self.task_ports[ins.rank]
                    self._to_client(client, Lease(ins.lease, ins.rank, host, port, *path[:1]))
            elif kind is S.CloseLease:
                self._to_worker(ins.rank, EndLease(ins.lease))
            elif kind is S.MoveObjects:
                self._to_worker(ins.rank, MoveOut([(oid, to, node, self.stores.get(to))
                                                   for oid, to, node in ins.moves]))
            elif kind is S.LetGo:
                self._to_worker(ins.rank, Shutdown())
            elif kind is S.Exit:
                log.info("drained: every task has finished")
                self.exiting = True

    def _to_worker(self, rank: int, msg: Any) -> None:
        stream = self.joined.get(rank)
        if stream is not None:   # a joined worker: its stream wakes it, no bell to ring
            stream.send(msg)
            return
        self.box.send(msg, rank)
        now = time.monotonic()
        if now - self.worker_contact.get(rank, 0.0) > self.backoff.hot:
            bell = self.worker_bells.get(rank)
            if bell is not None:
                bell.ring()
        self.worker_contact[rank] = now

    def _to_client(self, client: _Client, msg: Any) -> None:
        client.stream.send(msg)

    # ----- connections ---------------------------------------------------------------------------
    def _new_connection(self) -> None:
        try:
            sock, hello = answer(self.listener, self.address.token)
        except (BlockingIOError, InterruptedError):
            return
        if sock is None:
            log.warning("%s", hello)
            return
        if hello.get("role") == "join":
            self._accept_join(sock, hello)
            return
        if hello.get("role") != "client":
            log.warning("refused a %r connection after start-up", hello.get("role"))
            sock.close()
            return
        if self.drain_deadline is not None:
            sock.close()
            log.info("refused a client: the server is draining")
            return
        who = f"pid {hello.get('pid')} on {hello.get('host')}"
        owner = self.owner is not None and hello.get("pid") == self.owner.pid
        client = _Client(self.next_client, Stream(sock), who, owner)
        self.next_client += 1
        self.clients_seen += 1
        self.clients[client.id] = client
        self._apply(S.ClientJoined(client.id))
        limit = self.max_inflight or max(256, 64 * max(1, self.sched.slots))
        client.stream.send(Welcome(client.id, self.sched.slots, limit))
        log.info("client %d connected (%s)", client.id, who)

    def _accept_join(self, sock: Any, hello: dict) -> None:
        """A worker joins over TCP (``colocate join``): give it an id; its hello follows."""
        who = f"pid {hello.get('pid')} on {hello.get('host')}"
        stream = Stream(sock)
        if self.drain_deadline is not None or self.stop_now:
            stream.send(Bye("the world is draining: it takes no new workers"))
            _flush_blocking(stream, timeout=2.0)
            stream.close()
            log.info("refused a joining worker (%s): the server is draining", who)
            return
        rank = self.next_joined
        self.next_joined += 1
        self.joined[rank] = stream
        self.joined_ids[stream] = rank
        self.worker_contact[rank] = time.monotonic()
        stream.send(Joined(rank))
        log.info("worker %d joined over TCP (%s)", rank, who)

    def _bell_closed(self, bell: Bell) -> None:
        for rank, b in list(self.worker_bells.items()):
            if b is bell:
                self._apply(S.WorkerGone(rank, f"worker rank {rank} exited (its bell closed)"))
                return

    def _drop_client(self, client: _Client, why: str) -> None:
        self.clients.pop(client.id, None)
        self._apply(S.ClientLeft(client.id))
        client.stream.close()
        log.info("client %d %s", client.id, why)
        if (self.expect_clients is not None and self.clients_seen >= self.expect_clients
                and not self.clients):
            log.info("every embedded client has left: stopping")
            self.stop_now = True
        if client.owner and not any(c.owner for c in self.clients.values()):
            log.info("the owner of this world (pid %d) closed its connection: stopping",
                     self.owner.pid)
            self.stop_now = True

    def _owner_gone(self) -> None:
        """The process that started this world exited: no one is left to take results."""
        if not self.stop_now:
            log.warning("the owner of this world (pid %d) exited: stopping, running tasks are "
                        "cut off", self.owner.pid)
        self.stop_now = True

    def _shutdown(self) -> None:
        if self.pool is not None:
            self.pool.stop()
        for client in list(self.clients.values()):
            try:
                self._to_client(client, Bye("the server is stopping"))
                _flush_blocking(client.stream, timeout=2.0)
            finally:
                self._drop_client(client, "closed: the server is stopping")
        for rank in list(self.worker_bells):
            self._to_worker(rank, Shutdown())
        for rank, stream in list(self.joined.items()):
            stream.send(Shutdown())
            _flush_blocking(stream, timeout=2.0)
            self._forget_joined(rank)
        self.box.flush(timeout=5.0)

    # ----- reporting -----------------------------------------------------------------------------
    def status(self) -> dict:
        """What ``colocate status`` shows."""
        snap = self.sched.snapshot()
        snap.update({"uptime": time.time() - self.started, "clients_connected": len(self.clients),
                     "address": self.address.path})
        if self.pool is not None:
            snap["pool"] = self.pool.status()
        return snap


# Seconds between the views of queue and workers rank 0's loop hands the pool's thread: the
# thread decides on the latest, so a view older than this may delay a decision by as much; each
# costs a pass over the workers (microseconds per worker).
POOL_VIEW = 0.25


class _Pool:
    """Rank 0's pool of joined workers (:mod:`colocate.rank0.pool`), run in a thread of its own.

    The batch system's commands take tens of milliseconds to seconds; rank 0's loop must not
    wait for them. The loop hands over what the policy needs (:meth:`see`, every
    :data:`POOL_VIEW` seconds); the thread decides and acts every ``pool.interval`` seconds, and
    at once (:meth:`wake`) when tasks arrive while none was queued, so a backlog that appears
    does not wait out an interval. :meth:`stop` cancels every job of the pool when the world
    stops.
    """

    def __init__(self, cfg: dict, address: Address) -> None:
        import sys

        from colocate.rank0.pool.manager import PoolManager
        here = os.path.dirname(address.path) or "."
        command = [sys.executable, "-m", "colocate", "join", "--address", address.path]
        self.manager = PoolManager(cfg["pool"], f"colocate-pool-{address.token[:8]}", command,
                                   output=os.path.join(here, "colocate-pool-%j.out"))
        self.interval = float(cfg["pool"]["interval"])
        self.view: tuple | None = None
        self.rows: list[dict] = []
        self.idle_since: dict[int, float] = {}
        self.done = threading.Event()
        self.woken = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="colocate-pool", daemon=True)
        self.thread.start()

    def see(self, sched: S.Scheduler, worker_job: dict[int, str], now: float) -> None:
        """Record, from rank 0's loop, the queue, the free cores and the pool's workers."""
        from colocate.rank0.pool.manager import JobWorkers
        free = 0
        jobs: dict[str, list] = {}
        for rank, w in sched.workers.items():
            idle = not w.assigned and not w.lease
            if idle and not w.paused:
                free += len(w.cores)
            if idle:
                self.idle_since.setdefault(rank, now)
            else:
                self.idle_since.pop(rank, None)
            job = worker_job.get(rank)
            if job is not None:
                jobs.setdefault(job, []).append((len(w.cores), self.idle_since.get(rank), w.done))
        joined = {job: JobWorkers(sum(c for c, _, _ in ws),
                              None if any(i is None for _, i, _ in ws) else max(
                                  i for _, i, _ in ws),
                              sum(d for _, _, d in ws)) for job, ws in jobs.items()}
        self.view = (sched.queued(), free, joined)

    def idle_queue(self) -> bool:
        """Whether the last view handed over had no task queued (or there was none yet)."""
        return self.view is None or self.view[0] == 0

    def wake(self) -> None:
        """Decide now rather than at the end of the interval (from rank 0's loop)."""
        self.woken.set()

    def _loop(self) -> None:
        while not self.done.is_set():
            self.woken.wait(self.interval)   # bounded: a decision at least every interval
            self.woken.clear()
            view = self.view
            if view is None or self.done.is_set():
                continue
            try:
                self.manager.tick(*view)
                self.rows = self.manager.status(view[2])
            except Exception:   # the pool must never take rank 0 down
                log.exception("pool: a decision failed; trying again in %g s", self.interval)

    def status(self) -> list[dict]:
        """The pool's jobs as last listed, for ``colocate status``."""
        return list(self.rows)

    def stop(self) -> None:
        """Stop deciding and cancel every job of the pool."""
        self.done.set()
        self.woken.set()
        self.thread.join(timeout=60)
        cancelled = self.manager.stop()
        if cancelled:
            log.info("pool: cancelled job(s) %s: the world is stopping", ", ".join(cancelled))



def _flush_blocking(stream: Stream, timeout: float) -> None:
    """Push a stream's queued output out, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while stream.pending and not stream.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        select.select([], [stream], [], left)
        stream.flush()
