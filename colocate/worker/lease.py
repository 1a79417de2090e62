"""Leases, a worker rank's side: the task port where a leased client sends its lone tasks.

A client that waits for each task before sending the next pays for every hop, and through rank 0
a task crosses four processes twice. Rank 0 leases such a client a worker slot of its own (the
scheduler decides when, :mod:`colocate.rank0.scheduler`); the client's lone tasks then go client ->
executor child -> client on the connection this rank hands its child (the direct path, below),
and rank 0 only counts the slot as taken.

What keeps this as safe as the way through rank 0:

* A task is run only under a lease this rank was told of (``StartLease``) and not yet told to
  end (``EndLease``). Rank 0 ends leases as soon as anything else waits for a slot.
* ``LeaseOver`` is the last message on a lease's connection, sent once nothing of the lease runs:
  a task sent there without a result by then never ran, and the client sends it through rank 0.
* ``LeaseEnded`` tells rank 0 the slot is free, also only once nothing of the lease runs.
* Crashes, timeouts and cut-offs come out of the executor as outcomes like any other, and go to
  the client the same way. A task that kept objects is reported through rank 0
  (``DirectDone``), which records the objects before the client can free them.

The direct path (:mod:`colocate.child.direct`): once a connection's lease is known here, the
connection is handed to the executor child, which reads its tasks and answers them itself; this
rank stops reading it and writes to it only after the child let go (``ended``, after
``EndLease``) or died. Then it answers for the task that was running (``CRASHED``, ``TIMEOUT``:
:meth:`LeaseDesk.child_died`, from the slot the child shares) and hands the connection to the
next child, or ends the lease if the dead child left the stream unclean (part of a task read: it
never ran, ``LeaseOver``; part of a result written: the connection is closed, as a lost worker).
The invariants above hold unchanged: ``LeaseOver`` and ``LeaseEnded`` only once the child has
said it runs nothing more of the lease, or is dead.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from colocate.child.direct import READING, RUNNING, WRITING
from colocate.wire import bell
from colocate.wire.messages import (
    DirectDone,
    LeaseEnded,
    LeaseOver,
    Outcome,
    Relayed,
    ResultMsg,
    Results,
    StartLease,
    Status,
    Submit,
    TaskInfo,
    Work,
)
from colocate.wire.stream import Stream

log = logging.getLogger("colocate.worker")


@dataclass
class _Lease:
    client: int
    timeout: float | None
    running: int = 0      # its tasks in the executor now (sent by this rank)
    ending: bool = False  # EndLease came: it ends when nothing of it runs


@dataclass
class _Conn:
    stream: Stream
    lease: int
    over: bool = False    # LeaseOver sent: close once the output has drained
    handed: bool = False  # the executor child reads and answers it (the direct path)


@dataclass(frozen=True)
class _Running:
    conn: _Conn           # (its lease: conn.lease)
    cid: int              # the client's task id
    work: Work


class LeaseDesk:
    """A worker rank's task port and its leases.

    Args:
        token: the world's token (clients prove it in the handshake).
        host: the interface to listen on.
        where: ``(node, rank, cores)`` for the results' :class:`~colocate.wire.messages.TaskInfo`.
        send: sends a message to rank 0.
        catch_up: handles the messages rank 0 has sent so far (a client may connect before
            this rank has read its ``StartLease``).
    """

    def __init__(self, token: str, host: str, where: tuple[str, int, tuple[int, ...]],
                 send: Callable[[Any], None], catch_up: Callable[[], None]) -> None:
        self.token = token
        self.listener = bell.listen(host)
        self.address: tuple[str, int] = (host, self.listener.getsockname()[1])
        try:   # and for clients on this machine, a Unix socket (what WorkerHello.tasks says)
            self.local, self.local_path = bell.listen_local()
        except OSError as e:
            log.info("task port: no local Unix socket (%s); leased clients use TCP", e)
            self.local, self.local_path = None, ""
        self.listeners = [self.listener] if self.local is None else [self.listener, self.local]
        self.where = where
        self.send = send
        self.catch_up = catch_up
        self.leases: dict[int, _Lease] = {}
        self.conns: list[_Conn] = []
        self.running: dict[int, _Running] = {}
        self._gids = itertools.count(-1, -1)   # rank 0's are >= 0
        self.done = 0     # leased tasks ended OK / not, since rank 0 was last told (tally)
        self.failed = 0
        # The direct path: the executor child (None: inline, no direct path), the function
        # bytes it learnt from clients (for its successor), the counts of its slot already
        # tallied, and how to take the objects a task kept (the store's books).
        self.child: Any = None
        self.fns: dict[bytes, bytes] = {}
        self.counted = (0, 0)
        self.take_kept: Callable[[int], tuple] = lambda gid: ()

    # ----- for the worker's select ---------------------------------------------------------------
    def readers(self) -> list[Any]:
        """What to watch for reading: the task port and the open connections."""
        return [*self.listeners, *(c.stream for c in self.conns if not c.over and not c.handed)]

    def writers(self) -> list[Stream]:
        """Connections with output waiting for room."""
        return [c.stream for c in self.conns if c.stream.pending and not c.handed]

    def handed(self) -> bool:
        """Whether the executor child holds a leased connection (the worker watches it then)."""
        return any(c.handed for c in self.conns)

    def ready(self, readable: list[Any], writable: list[Any]) -> list[Work]:
        """Handle what ``select`` found (among other things); returns leased tasks to run now."""
        work: list[Work] = []
        for conn in self.conns:
            if conn.stream in writable:
                conn.stream.flush()
            if conn.stream in readable and not conn.over:
                work += self._read(conn)
        for listener in self.listeners:
            if listener in readable:
                self._accept(listener)
        if self.conns:
            self.conns = [c for c in self.conns if not self._gone(c)]
        return work

    # ----- orders from rank 0 --------------------------------------------------------------------
    def start(self, msg: StartLease) -> None:
        """Rank 0 leased a slot here: take the client's tasks under ``msg.lease``."""
        self.leases[msg.lease] = _Lease(msg.client, msg.timeout)
        for conn in self.conns:   # (a client may have connected before this rank knew)
            if conn.lease == msg.lease:
                self._hand(conn)

    def end(self, lease: int) -> None:
        """End ``lease`` now if nothing of it runs, else when its running task is done."""
        state = self.leases.get(lease)
        if state is None:   # never started here (or already over)
            self.send(LeaseEnded(lease))
            return
        state.ending = True
        if any(c.handed and c.lease == lease for c in self.conns):
            self.child.end(lease)   # the child says ("ended", lease): see noted()
        elif not state.running:
            self._finish(lease)

    # ----- outcomes ------------------------------------------------------------------------------
    def route(self, outcomes: list[Outcome]) -> tuple[list[Outcome], list[Work]]:
        """Send leased tasks' outcomes to their clients.

        Returns the other outcomes (for rank 0) and the leased work to run again (sent ahead
        to an executor that was restarted before it started).
        """
        rest: list[Outcome] = []
        again: list[Work] = []
        node, rank, cores = self.where
        for out in outcomes:
            run = self.running.get(out.gid)
            if run is None:
                rest.append(out)
                continue
            if out.status == Status.REQUEUE:
                again.append(run.work)
                continue
            del self.running[out.gid]
            lease = run.conn.lease
            state = self.leases[lease]
            info = TaskInfo(node, rank, cores, out.started, out.finished, 1)
            result = ResultMsg(run.cid, out.status, out.payload, info)
            listening = not run.conn.over and not run.conn.stream.closed
            if out.kept:   # rank 0 records the objects, then delivers
                self.send(DirectDone(state.client, result, out.kept))
                if listening:
                    run.conn.stream.send(Relayed([run.cid]))
            elif listening:
                run.conn.stream.send(Results([result]))
            state.running -= 1
            if out.status == Status.OK:
                self.done += 1
            else:
                self.failed += 1
            if state.ending and not state.running:
                self._finish(lease)
            elif not state.running:
                self._hand(run.conn)
        return rest, again

    def tally(self) -> tuple[int, int]:
        """Leased tasks that ended OK and not since the last call (rank 0 counts them)."""
        if self.child is not None and self.child.skip is not None:
            self._count(self.child.slot())
        counts = (self.done, self.failed)
        self.done = self.failed = 0
        return counts

    # ----- the direct path -----------------------------------------------------------------------
    def noted(self, notes: list[tuple]) -> None:
        """Handle the child's notes: functions it learnt, tasks that kept objects, leases let go."""
        for note in notes:
            kind = note[0]
            if kind == "fn":
                self.fns[note[1]] = note[2]
            elif kind == "kept":   # rank 0 records the objects, then delivers the result
                _, lease, gid, result = note
                state = self.leases.get(lease)
                kept = self.take_kept(gid)
                if state is not None:
                    res = ResultMsg(*result[:3], TaskInfo._make(result[3]))
                    self.send(DirectDone(state.client, res, kept))
            elif kind == "ended":
                lease = note[1]
                for conn in self.conns:
                    if conn.lease == lease:
                        conn.handed = False
                state = self.leases.get(lease)
                if state is not None and state.ending and not state.running:
                    self._finish(lease)

    def child_died(self, status: Status, payload: bytes) -> None:
        """The child died or was killed: answer for its leased task, take its connections back.

        Reads the slot the dead child left (``ChildHandle.last_slot``). Call after the restart;
        then :meth:`rehand` gives the connections that go on to the new child.
        """
        slot = self.child.last_slot
        if slot is None or not any(c.handed for c in self.conns):
            self.counted = (0, 0)
            return
        st, lease, cid, started, timeout, _, _, dirty = slot
        self._count(slot)
        self.counted = (0, 0)   # the next child counts from zero
        node, rank, cores = self.where
        for conn in self.conns:
            if not conn.handed:
                continue
            conn.handed = False
            ours = st in (RUNNING, WRITING) and lease == conn.lease
            state = self.leases.get(conn.lease)
            if ours and st == WRITING:   # half a result may be on the wire: cut it
                log.warning("lease %d: the executor died while writing a result; closing the "
                            "connection (the client reports the task lost)", conn.lease)
                conn.stream.close()
                self.failed += 1
                if state is not None:
                    del self.leases[conn.lease]
                    self.send(LeaseEnded(conn.lease, *self.tally()))
                continue
            if ours:
                now = time.time()
                begun = now - (time.monotonic() - started)
                conn.stream.send(Results([ResultMsg(cid, status, payload,
                                                    TaskInfo(node, rank, cores, begun, now, 1))]))
                self.failed += 1
            if state is not None and (state.ending or st == READING or (ours and dirty)):
                self._finish(conn.lease)   # what was read in part never ran: LeaseOver

    def rehand(self) -> None:
        """Give the new child the connections whose leases go on."""
        for conn in self.conns:
            self._hand(conn)

    def _hand(self, conn: _Conn) -> None:
        state = self.leases.get(conn.lease)
        if (self.child is None or self.child.proc is None or conn.handed or conn.over
                or conn.stream.closed or state is None or state.ending or state.running
                or conn.stream._in or conn.stream.pending):
            return   # (the worker reads it itself, as before)
        self.child.hand(conn.lease, conn.stream.sock, state.timeout, self.where, self.fns)
        conn.handed = True

    def _count(self, slot: tuple) -> None:
        done, failed = slot[5], slot[6]
        self.done += done - self.counted[0]
        self.failed += failed - self.counted[1]
        self.counted = (done, failed)

    def close(self) -> None:
        """Close the task port and every connection (the rank is stopping)."""
        for conn in self.conns:
            conn.stream.close()
        self.conns = []
        for listener in self.listeners:
            listener.close()

    # ----- inside --------------------------------------------------------------------------------
    def _accept(self, listener: Any) -> None:
        try:
            sock, hello = bell.answer(listener, self.token)
        except (BlockingIOError, InterruptedError):
            return
        if sock is None:
            log.warning("task port: %s", hello)
            return
        lease = hello.get("lease")
        if hello.get("role") != "lease" or not isinstance(lease, int):
            log.warning("task port: refused a %r connection", hello.get("role"))
            sock.close()
            return
        conn = _Conn(Stream(sock), lease)
        self.conns.append(conn)
        if lease not in self.leases:
            self.catch_up()   # its StartLease may be waiting in MPI
        self._hand(conn)

    def _read(self, conn: _Conn) -> list[Work]:
        work: list[Work] = []
        for msg in conn.stream.receive():
            if type(msg) is not Submit:
                log.error("task port: unexpected %s from a leased client", type(msg).__name__)
                continue
            state = self.leases.get(conn.lease)
            if state is None:
                self.catch_up()   # its StartLease may be waiting in MPI
                state = self.leases.get(conn.lease)
            if state is None:   # ended (or never ours): the client sends it through rank 0
                self._retire(conn)
                break
            if state.ending:    # it never runs; LeaseOver follows once the lease ends
                continue
            for task in msg.tasks:
                timeout = task.options.timeout if task.options.timeout is not None else (
                    state.timeout)
                w = Work(next(self._gids), task.fn_hash, task.fn_bytes, task.args, timeout, None)
                self.running[w.gid] = _Running(conn, task.id, w)
                state.running += 1
                work.append(w)
        return work

    def _finish(self, lease: int) -> None:
        del self.leases[lease]
        for conn in self.conns:
            if conn.lease == lease:
                self._retire(conn)
        self.send(LeaseEnded(lease, *self.tally()))

    def _retire(self, conn: _Conn) -> None:
        if not conn.over:
            conn.over = True
            conn.stream.send(LeaseOver(conn.lease))

    def _gone(self, conn: _Conn) -> bool:
        if conn.stream.closed or (conn.over and not conn.stream.pending):
            conn.stream.close()
            return True
        return False
