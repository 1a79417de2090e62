"""The client engine: one ``Connection`` to rank 0, the thread that owns it, and its futures.

Data flow (one ``Connection`` per executor, shared by its ``options()`` views)::

    caller thread                      connection thread                    rank 0
    submit(): pickle fn + args ──► outbox ──► Submit batches ──TCP──► scheduler
    Future (pending/running) ◄──── results: unpickle, set futures ◄──TCP── Results batches

The caller thread pickles (so a bad argument fails its own future at once); the connection
thread owns the socket (:mod:`colocate.wire.stream`; clients need no MPI). It sleeps in ``select``
on the socket and a wake-up pipe, so a client costs no CPU while it waits. ``submit`` waits
when the client has ``4 x max_inflight`` tasks outstanding (backpressure), except from inside a
future's callback, where waiting could deadlock.

Leases: when rank 0 leases this client a worker slot (``Lease``), the connection connects to
that worker's task port; a lone task that needs nothing but a core then goes there and back,
skipping rank 0 (:mod:`colocate.worker.lease`). When the lease is over (``LeaseOver``), tasks sent
there without a result never ran, and go to rank 0.

Object store: puts and the registry of the refs this client owns are the connection's
``store``, a :class:`colocate.store.clientside.StoreClient`; the connection thread sends what it
queues (``FreeRefs``, ``UsedAhead``). How a failed task becomes its future's exception:
:mod:`colocate.client.outcomes`.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from colocate import store
from colocate.client.outcomes import task_error, where
from colocate.errors import (
    AuthenticationError,
    BrokenWorld,
    SerializationError,
    ServerUnavailable,
)
from colocate.store.clientside import StoreClient
from colocate.wire import address as addr
from colocate.wire.bell import ring_up, ring_up_local
from colocate.wire.messages import (
    Bye,
    Cancel,
    FreeRefs,
    FunctionPickler,
    Lease,
    LeaseOver,
    Relayed,
    ResultMsg,
    Results,
    Status,
    StatusReply,
    StatusRequest,
    Submit,
    TaskInfo,
    TaskMsg,
    TaskOptions,
    UsedAhead,
    Welcome,
    dumps,
    dumps_plain_call,
    leasable,
    loads,
)
from colocate.wire.stream import Stream

log = logging.getLogger("colocate.client")

READ_SLICE = 0.05   # seconds a caller reading for its result sleeps between checks
IDLE_WAIT = 1.0     # seconds the connection thread sleeps at most before looking around
# ... and while a caller reads the sockets (read_until): it then sleeps away from them, and must
# watch them again soon after that caller is done, for a task sent later whose result nobody
# reads with result() (wait(), as_completed(), callbacks). Waking it at each such send instead
# cost 28 us per leased round trip (measured, A/B in turns); this wakes it 200 times a second
# while a caller waits in result() (~0.3 % of a core).
UNWATCHED_WAIT = 0.005
_DONE = frozenset((cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED, cf._base.FINISHED))
CANCEL_WAIT = 5.0   # seconds cancel() waits for rank 0 to say which tasks it dropped


class Future(cf.Future):
    """A ``concurrent.futures.Future`` that also tells where its task ran (``info``).

    A thread waiting in :meth:`result` or :meth:`exception` reads the connection's socket
    itself while no other thread does (:meth:`Connection.read_until`): a lone task's result
    then wakes one thread, not the connection thread and then the waiter.
    """

    info: TaskInfo | None = None
    _label = ""
    _id = -1                    # the task's id on this connection
    _refs: list | None = None   # Refs in the task's arguments, kept alive until it is done
    _conn: Connection | None = None   # while in flight

    def cancel(self) -> bool:
        """Cancel the call if it has not started; returns whether it is cancelled.

        A task already sent waits in rank 0's queue until a worker is free, although its
        future says ``running()``: it is asked back from rank 0 (one round trip), as a
        ``ProcessPoolExecutor`` takes back a call it has not yet handed to a process. One that
        has started (or was sent ahead to a worker, or to a leased one) goes on: ``False``.
        """
        if super().cancel():
            return True
        conn = self._conn
        if conn is None or self.done():
            return self.cancelled()
        conn.cancel_sent([self])
        return self.cancelled()

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._read_until_done(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._read_until_done(timeout))

    def _read_until_done(self, timeout: float | None) -> float | None:
        conn = self._conn
        if conn is None or self.done():
            return timeout
        return conn.read_until(self, timeout)

    def _end_cancelled(self) -> None:
        """Rank 0 dropped the task before it started: end as a future cancelled in time.

        ``concurrent.futures`` has no public way from running to cancelled; this does what
        ``cancel()`` and ``set_running_or_notify_cancel()`` do together for a pending future
        (state, waiters of ``wait``/``as_completed``, callbacks).
        """
        with self._condition:
            if self._state not in (cf._base.PENDING, cf._base.RUNNING):
                return
            self._state = cf._base.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()


class _LeaseLink:
    """The connection to a worker slot leased to this client, and the tasks sent over it."""

    __slots__ = ("lease", "rank", "stream", "fns", "sent")

    def __init__(self, lease: Lease, stream: Stream) -> None:
        self.lease = lease.lease
        self.rank = lease.rank
        self.stream = stream
        self.fns: set[bytes] = set()   # functions that worker has from us
        self.sent: dict[int, tuple[TaskMsg, bytes]] = {}   # id -> (task, its function's bytes)


class Connection:
    """One client connection to a server: the socket stream and the thread that owns it.

    Args:
        address: the server's address (from its address file).
        transport: how stored objects travel (config ``store.transport``).
        hot: seconds a caller waiting for its lone task's result polls the socket before it
            sleeps (config ``client.hot``).
    """

    def __init__(self, address: addr.Address, transport: str = "auto",
                 hot: float = 0.0005) -> None:
        self.address = address
        self.hot = hot   # seconds read_until polls hot before it sleeps (config client.hot)
        self.local_leases = True   # a lease's Unix socket is tried first (tests turn it off)
        try:
            sock = ring_up(address.host, address.bell_port,
                           {"token": address.token, "role": "client", "pid": os.getpid(),
                            "host": socket.gethostname()})
        except PermissionError as e:
            raise AuthenticationError(f"the server at {address.path} refused us: {e}") from None
        except OSError as e:
            raise ServerUnavailable(
                f"no server answers at {address.host}:{address.bell_port} (address file "
                f"{address.path}, written by pid {address.pid} on {address.server_host}): "
                f"{e}. {addr.unreachable_hint(address, socket.gethostname())}") from None
        self.stream = Stream(sock)
        welcome = self._await(Welcome, timeout=60.0)
        self.client_id = welcome.client_id
        self.slots = welcome.slots
        self.max_inflight = welcome.max_inflight
        self.pickle_fn = FunctionPickler()
        self.sent_fns: set[bytes] = set()
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()   # serializes writes to the stream
        self.room = threading.Condition(self.lock)
        self.outbox: deque[tuple[Future, TaskMsg]] = deque()
        self.inflight: dict[int, Future] = {}
        self.outstanding = 0
        self.ids = itertools.count()
        self.replies: deque[Any] = deque()
        self.reply_ready = threading.Condition(self.lock)
        self.control: deque[Any] = deque()
        self.broken: BaseException | None = None
        self.closing = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.wake_closed = False
        self.sleeping = False
        # Reading the socket: whoever holds recv_lock, the connection thread or a caller
        # waiting for a result (``reader``, its thread id). ``watching``: the connection
        # thread's next or current sleep includes the socket. ``expecting``: replies awaited.
        self.recv_lock = threading.Lock()
        self.reader = 0
        self.watching = True
        self.expecting = 0
        self.goodbye: str | None = None
        self.cancel_unanswered = False   # a cancel's round trip timed out once: never wait again
        self.lease: _LeaseLink | None = None
        self.world = store.world_id(address.token)
        from colocate.store.datalink import register_locator, register_world
        register_world(self.world, address.token, transport)
        self.store = StoreClient(self.world, self.request, self._wake,
                                 lambda: self.broken is None and not self.closing)
        locate = weakref.WeakMethod(self.store.locate)   # (the registry keeps nothing alive)
        register_locator(self.world, lambda oid: None if (m := locate()) is None else m(oid))
        self.thread = threading.Thread(target=self._run, name="colocate-connection", daemon=True)
        self.thread.start()

    # ----- caller side ---------------------------------------------------------------------------
    def submit(self, fn: Callable, args: tuple, kwargs: dict, opts: TaskOptions) -> Future:
        """Pickle and queue one task; returns its future (failed at once if pickling fails)."""
        fut = Future()
        fut._label = getattr(fn, "__qualname__", None) or repr(fn)
        try:
            fn_hash, fn_bytes = self.pickle_fn(fn)
        except Exception as e:
            fut.set_exception(SerializationError(
                f"cannot pickle the function {fut._label}: {type(e).__name__}: {e}",
                stage="function", side="client", task=fut._label))
            return fut
        try:
            payload, refs = dumps_plain_call(args, kwargs), []
            if payload is None:   # anything else: cloudpickle, watching for Refs
                with store.collecting() as refs:
                    payload = dumps((args, kwargs))
        except Exception as e:
            fut.set_exception(SerializationError(
                f"cannot pickle the arguments of {fut._label}: {type(e).__name__}: {e}",
                stage="arguments", side="client", task=fut._label))
            return fut
        with self.lock:
            if self.broken is not None:
                raise BrokenWorld(f"the colocate world is gone: {self.broken}")
            if self.closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if threading.get_ident() not in (self.thread.ident, self.reader):
                # (a callback runs in the thread that read its result: it must not wait)
                limit = 4 * self.max_inflight
                while self.outstanding >= limit and self.broken is None:
                    self.room.wait(1.0)
            # Nothing in flight (the latency-bound case): send from this thread, saving a thread
            # wake-up, and to the leased worker if there is one. Otherwise the connection
            # thread batches what accumulates.
            direct = not self.outbox and not self.inflight
            msg = TaskMsg(next(self.ids), fn_hash, None, payload, opts,
                          store.preferred_node(refs),
                          tuple(r.id for r in refs if r.world == self.world) if refs else ())
            link = self.lease if direct and self.lease is not None and leasable(msg) else None
            sent_fns = self.sent_fns if link is None else link.fns
            if fn_hash not in sent_fns:
                sent_fns.add(fn_hash)
                msg = msg._replace(fn_bytes=fn_bytes)
            if link is not None:
                link.sent[msg.id] = (msg, fn_bytes)
            fut._id = msg.id
            if refs:
                fut._refs = refs   # the objects stay alive while the task may read them
            self.outstanding += 1
            fut._conn = self
            sleeping = False
            if direct:
                fut.set_running_or_notify_cancel()
                self.inflight[msg.id] = fut
            else:
                self.outbox.append((fut, msg))
                # One wake-up per sleep: the submits that follow find the thread awake (a
                # write to the wake pipe costs tens of µs; one per task capped throughput).
                # (A direct send leaves the flag: the thread may sleep away from the socket
                # while a caller reads, and the next queued task must wake it.)
                sleeping, self.sleeping = self.sleeping, False
        if direct:
            stream = self.stream if link is None else link.stream
            with self.send_lock:
                stream.send(Submit([msg]))
                stuck = stream.pending
            if stuck:
                self._wake()   # the connection thread flushes when the socket is writable
        elif sleeping:
            self._wake()
        return fut

    def request(self, msg: Any, reply_type: type, timeout: float = 30.0,
                match: Callable[[Any], bool] | None = None) -> Any:
        """Send a control message and wait (bounded) for its reply (the first that ``match``es)."""
        with self.lock:
            self.control.append(msg)
            self.expecting += 1
        self._wake()
        deadline = time.monotonic() + timeout
        with self.lock:
            try:
                while True:
                    for i, r in enumerate(self.replies):
                        if isinstance(r, reply_type) and (match is None or match(r)):
                            del self.replies[i]
                            return r
                    if self.broken is not None:
                        raise BrokenWorld(f"the colocate world is gone: {self.broken}")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no {reply_type.__name__} from the server within "
                                           f"{timeout:g} s")
                    self.reply_ready.wait(left)
            finally:
                self.expecting -= 1

    def read_until(self, fut: Future, timeout: float | None) -> float | None:
        """Read the socket in this thread until ``fut``, the only task in flight, is done.

        Only if no other thread reads (among other tasks, the connection thread reads). Returns
        what is left of ``timeout``. Whatever arrives is handled as the connection thread would
        (other futures, replies); that thread leaves the socket alone meanwhile and is woken
        afterwards only if something is still awaited.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        # Only the latency-bound case: a batch is the connection thread's. (Read without the
        # lock, which that thread takes per batch: a stale answer costs one wake-up at most.)
        alone = len(self.inflight) == 1 and not self.outbox
        if alone and self.recv_lock.acquire(blocking=False):
            try:
                with self.lock:
                    self.reader = threading.get_ident()
                # Poll hot a moment first (client.hot), only for a task on the direct path
                # (its result usually comes within it, and a thread asleep in select takes
                # tens of µs to wake). Through rank 0 it takes longer, and spinning here would
                # take a core from rank 0 or the worker on a small machine.
                link = self.lease
                hot = self.hot if link is not None and fut._id in link.sent else 0.0
                hot_until = time.monotonic() + hot
                streams, link = self._streams(), self.lease
                # (fut._state read without its lock, as done() would under it: a poll)
                while (fut._state not in _DONE and not self.stream.closed
                       and self.goodbye is None):
                    now = time.monotonic()
                    left = READ_SLICE if deadline is None else min(READ_SLICE, deadline - now)
                    if left <= 0:
                        break
                    if now < hot_until:
                        left = 0.0
                    if self.lease is not link:   # taken or dropped meanwhile
                        streams, link = self._streams(), self.lease
                    try:
                        ready = select.select(streams, [], [], left)[0]
                    except (OSError, ValueError):   # closed by the connection thread
                        break
                    for stream in ready:
                        self._receive(stream)
            finally:
                with self.lock:
                    self.reader = 0
                    wake = not self.watching and (
                        self.inflight or self.expecting or self.closing or self.stream.closed
                        or self.goodbye is not None or self.stream.pending
                        or (self.lease is not None and self.lease.stream.pending))
                self.recv_lock.release()
            if wake:
                self._wake()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def send_control(self, msg: Any) -> None:
        """Send a control message that has no reply."""
        with self.lock:
            self.control.append(msg)
        self._wake()

    def cancel_queued(self) -> None:
        """Cancel tasks not yet sent, and take back from rank 0 those it has not started.

        Returns once rank 0 has answered (bounded by ``CANCEL_WAIT``): the futures it dropped
        are cancelled by then, as ``shutdown(cancel_futures=True)`` promises.
        """
        with self.lock:
            for fut, _ in self.outbox:
                fut.cancel()
            sent = list(self.inflight.values())
        self.cancel_sent(sent)

    def cancel_sent(self, futs: list[Future]) -> None:
        """Ask rank 0 to drop these sent tasks if they still wait in its queue; await its answer.

        Rank 0 answers a ``Cancel`` with a ``CANCELLED`` result for each task it dropped, on the
        same stream and before its reply to the ``StatusRequest`` sent right after: once that
        reply is here, every dropped task's future is cancelled. Skipped in the threads that
        read the socket (a callback there would wait for itself): those futures go on.
        """
        if threading.get_ident() in (self.thread.ident, self.reader):
            return
        with self.lock:
            if self.broken is not None or not self.thread.is_alive():
                return
            link = self.lease
            ids = [f._id for f in futs if f._conn is self and not f.done()
                   and (link is None or f._id not in link.sent)]
            if not ids:
                return
            self.control.append(Cancel(ids))
            if self.cancel_unanswered:   # rank 0 did not answer before: do not wait again
                self._wake()
                return
        try:
            self.request(StatusRequest(), StatusReply, CANCEL_WAIT)
        except TimeoutError:
            # The futures go on (a cancel not confirmed did not happen); rank 0 may still
            # drop them, which cancels them then.
            self.cancel_unanswered = True
        except BrokenWorld:
            pass

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Say goodbye (after in-flight tasks finish if ``wait``) and stop the thread."""
        self.store.ahead.close()
        with self.lock:
            self.closing = True
        self._wake()
        if wait:
            self.thread.join(timeout)
        if self.thread.is_alive() and not wait:
            return

    def hang_up(self) -> None:
        """End the connection now, without waiting for tasks (the process is exiting)."""
        try:
            self.stream.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._wake()

    def _wake(self) -> None:
        if self.wake_closed:
            return
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def _streams(self) -> list[Stream]:
        link = self.lease
        return [self.stream] if link is None else [self.stream, link.stream]

    # ----- connection thread ---------------------------------------------------------------------
    def _await(self, kind: type, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            select.select([self.stream], [], [], deadline - time.monotonic())
            got = self.stream.receive()
            if got:
                if isinstance(got[0], kind) and len(got) == 1:
                    return got[0]
                raise ServerUnavailable(f"unexpected first message from the server: {got[0]!r}")
            if self.stream.closed:
                raise ServerUnavailable("the server closed the connection while we connected")
        raise ServerUnavailable(f"the server did not welcome us within {timeout:g} s")

    def _run(self) -> None:
        try:
            while True:
                self._send_queued()
                with self.lock:
                    done = self.closing and not self.outbox and not self.inflight
                if done:
                    self._drop_lease()
                    with self.send_lock:
                        self.stream.send(Bye("client shutdown"))
                    self._flush(timeout=2.0)
                    break
                self._wait()
        except BaseException as e:   # noqa: BLE001 - every failure must reach the futures
            self._break(e if isinstance(e, BrokenWorld) else BrokenWorld(
                f"the connection thread failed: {type(e).__name__}: {e}"))
        finally:
            self._drop_lease()
            self.stream.close()
            self.wake_closed = True
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)

    def _wait(self) -> None:
        """Sleep until the server sends something, the caller queues work, or output drains."""
        with self.lock:
            if self.control or self.store.to_free or (
                    self.outbox and len(self.inflight) < self.max_inflight):
                return
            self.sleeping = True
            self.watching = self.reader == 0   # else a caller reads (see read_until)
        streams = self._streams()
        writers = [st for st in streams if st.pending]
        readers = [*streams, self.wake_r] if self.watching else [self.wake_r]
        try:
            ready, writable, _ = select.select(readers, writers, [],
                                               IDLE_WAIT if self.watching else UNWATCHED_WAIT)
        except (OSError, ValueError):   # a caller ended the lease and closed its stream
            ready, writable = [], []
        self.sleeping = False
        if writable:
            with self.send_lock:
                for st in writable:
                    st.flush()
        if self.wake_r in ready:
            try:
                os.read(self.wake_r, 4096)
            except BlockingIOError:
                pass
            ready.remove(self.wake_r)
        if ready and self.recv_lock.acquire(blocking=False):
            try:   # (if a caller holds it, that caller reads what came)
                for stream in ready:
                    self._receive(stream)
            finally:
                self.recv_lock.release()
        if self.goodbye is not None:
            raise BrokenWorld(f"the server said goodbye: {self.goodbye}")
        if self.stream.closed:
            raise BrokenWorld("the server closed the connection (it stopped or crashed)")

    def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.stream.pending and not self.stream.closed and time.monotonic() < deadline:
            select.select([], [self.stream], [], max(0.0, deadline - time.monotonic()))
            with self.send_lock:
                self.stream.flush()

    def _send_queued(self) -> None:
        with self.lock:
            control, self.control = list(self.control), deque()
            room = self.max_inflight - len(self.inflight)
            batch = []
            while self.outbox and room > 0:
                fut, msg = self.outbox.popleft()
                if not fut.set_running_or_notify_cancel():
                    self.outstanding -= 1
                    self.room.notify()
                    continue
                self.inflight[msg.id] = fut
                batch.append(msg)
                room -= 1
        freed = _drain(self.store.to_free)
        if freed:   # first: they make room for the puts that may follow
            control.insert(0, FreeRefs(freed))
        used = _drain(self.store.used_ahead)
        if used:
            control.insert(0, UsedAhead(used))
        with self.send_lock:
            for msg in control:
                self.stream.send(msg)
            if batch:
                self.stream.send(Submit(batch))

    def _receive(self, stream: Stream) -> None:
        if stream is not self.stream:
            self._receive_leased(stream)
            return
        for msg in stream.receive():
            if type(msg) is Results:
                self._complete(msg.results)
            elif type(msg) is Bye:
                self.goodbye = msg.reason   # the connection thread breaks the connection
                return
            elif type(msg) is Lease:
                self._take_lease(msg)
            else:
                with self.lock:
                    self.replies.append(msg)
                    self.reply_ready.notify_all()

    def client_status(self) -> dict:
        """This client's side of ``Executor.status()``: ``max_inflight`` and its ``lease``."""
        link = self.lease
        return {"max_inflight": self.max_inflight,
                "lease": None if link is None else {"id": link.lease, "rank": link.rank}}

    # ----- the leased worker ---------------------------------------------------------------------
    def _take_lease(self, offer: Lease) -> None:
        """Connect to the worker slot rank 0 leased us (at once: our next lone task goes there)."""
        self._drop_lease()
        hello = {"token": self.address.token, "role": "lease", "lease": offer.lease,
                 "pid": os.getpid()}
        sock = None
        if offer.path and self.local_leases:   # same machine: its Unix socket answers
            try:
                sock = ring_up_local(offer.path, hello)
            except OSError as e:   # another machine (or network namespace): over TCP
                log.debug("leased worker rank %d: no Unix socket here (%s); over TCP",
                          offer.rank, e)
        try:
            if sock is None:
                sock = ring_up(offer.host, offer.port, hello)
        except OSError as e:   # (rank 0 ends the lease when the slot is wanted elsewhere)
            log.info("could not reach leased worker rank %d at %s:%d: %s; tasks keep going "
                     "through rank 0", offer.rank, offer.host, offer.port, e)
            return
        with self.lock:
            self.lease = _LeaseLink(offer, Stream(sock))

    def _receive_leased(self, stream: Stream) -> None:
        link = self.lease
        if link is None or link.stream is not stream:
            return
        for msg in stream.receive():
            if type(msg) is Results:
                self._complete(msg.results)
            elif type(msg) is Relayed:   # their results come through rank 0
                for i in msg.ids:
                    link.sent.pop(i, None)
            elif type(msg) is LeaseOver:
                self._lease_over(link)
                return
        if stream.closed:   # without LeaseOver: the worker rank is gone
            self._lease_lost(link)

    def _detach(self, link: _LeaseLink) -> list[tuple[TaskMsg, bytes]]:
        """Forget ``link`` and close it; returns what was sent over it without a result."""
        with self.lock:
            if self.lease is link:
                self.lease = None
            sent = list(link.sent.values())
            link.sent.clear()
        link.stream.close()
        return sent

    def _lease_over(self, link: _LeaseLink) -> None:
        """The lease ended: what we sent without a result never ran; rank 0 runs it."""
        sent = self._detach(link)
        again = []
        with self.lock:
            for msg, fn_bytes in sent:
                if msg.fn_hash not in self.sent_fns:
                    self.sent_fns.add(msg.fn_hash)
                    msg = msg._replace(fn_bytes=fn_bytes)
                elif msg.fn_bytes is not None:
                    msg = msg._replace(fn_bytes=None)
                again.append(msg)
        if again:
            with self.send_lock:
                self.stream.send(Submit(again))
                stuck = self.stream.pending
            if stuck:
                self._wake()

    def _lease_lost(self, link: _LeaseLink) -> None:
        why = dumps(f"worker rank {link.rank}, leased to this client, closed the connection "
                    f"while the task ran (its process exited or the world is stopping); "
                    f"submit it again, or give it retries (a task with retries never goes "
                    f"to a leased worker, and rank 0 retries it)")
        self._complete([ResultMsg(msg.id, Status.LOST, why, None)
                        for msg, _ in self._detach(link)])

    def _drop_lease(self) -> None:
        with self.lock:
            link, self.lease = self.lease, None
        if link is not None:
            link.stream.close()

    def _complete(self, results: list[ResultMsg]) -> None:
        link = self.lease
        if link is not None and link.sent:
            for r in results:
                link.sent.pop(r.id, None)
        with self.lock:
            futs = [self.inflight.pop(r.id) for r in results]
            self.outstanding -= len(results)
            self.room.notify_all()
        for fut, res in zip(futs, results, strict=True):
            fut.info = res.info
            fut._conn = None
            try:
                self._settle(fut, res)
            finally:
                fut._refs = None   # only now: the result may hold the same refs

    def _settle(self, fut: Future, res: ResultMsg) -> None:
        try:
            if res.status == Status.CANCELLED:   # taken back from rank 0's queue: never ran
                fut._end_cancelled()
                return
            if res.status != Status.OK:
                fut.set_exception(task_error(fut._label, res, self.address.size))
                return
            # (store.adopting, inlined: a generator context manager costs ~1 µs a result)
            hooks = store._hooks
            outer = getattr(hooks, "adopter", None)
            hooks.adopter = self.store
            try:
                value = loads(res.payload)
            finally:
                hooks.adopter = outer
        except BaseException as e:   # noqa: BLE001 - even SystemExit must fail only this future
            fut.set_exception(SerializationError(
                f"cannot unpickle the result of {fut._label} in the client: "
                f"{type(e).__name__}: {e}", stage="result", side="client",
                task=fut._label, worker=where(res.info)))
            return
        fut.set_result(value)

    def _break(self, exc: BrokenWorld) -> None:
        with self.lock:
            self.broken = exc
            futs = list(self.inflight.values()) + [f for f, _ in self.outbox]
            self.inflight.clear()
            self.outbox.clear()
            self.outstanding = 0
            self.room.notify_all()
            self.reply_ready.notify_all()
        for fut in futs:
            if not fut.done():
                if fut.running() or fut.set_running_or_notify_cancel():
                    fut.set_exception(exc)


def _drain(items: deque) -> list:
    """Take everything from a deque that other threads append to without a lock."""
    out = []
    while items:
        out.append(items.popleft())
    return out
