"""Leases, a worker rank's side: the task port where a leased client sends its lone tasks.

A client that waits for each task before sending the next pays for every hop, and through rank 0
a task crosses four processes twice. Rank 0 leases such a client a worker slot of its own (the
scheduler decides when, :mod:`colocate.rank0.scheduler`); the client's lone tasks then go client ->
worker rank -> executor -> worker rank -> client, and rank 0 only counts the slot as taken.

What keeps this as safe as the way through rank 0:

* A task is run only under a lease this rank was told of (``StartLease``) and not yet told to
  end (``EndLease``). Rank 0 ends leases as soon as anything else waits for a slot.
* ``LeaseOver`` is the last message on a lease's connection, sent once nothing of the lease runs:
  a task sent there without a result by then never ran, and the client sends it through rank 0.
* ``LeaseEnded`` tells rank 0 the slot is free, also only once nothing of the lease runs.
* Crashes, timeouts and cut-offs come out of the executor as outcomes like any other, and go to
  the client the same way. A task that kept objects is reported through rank 0
  (``DirectDone``), which records the objects before the client can free them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    running: int = 0      # its tasks in the executor now
    ending: bool = False  # EndLease came: it ends when nothing of it runs


@dataclass
class _Conn:
    stream: Stream
    lease: int
    over: bool = False    # LeaseOver sent: close once the output has drained


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
        self.where = where
        self.send = send
        self.catch_up = catch_up
        self.leases: dict[int, _Lease] = {}
        self.conns: list[_Conn] = []
        self.running: dict[int, _Running] = {}
        self._gids = itertools.count(-1, -1)   # rank 0's are >= 0
        self.done = 0     # leased tasks ended OK / not, since rank 0 was last told (tally)
        self.failed = 0

    # ----- for the worker's select ---------------------------------------------------------------
    def readers(self) -> list[Any]:
        """What to watch for reading: the task port and the open connections."""
        return [self.listener, *(c.stream for c in self.conns if not c.over)]

    def writers(self) -> list[Stream]:
        """Connections with output waiting for room."""
        return [c.stream for c in self.conns if c.stream.pending]

    def ready(self, readable: list[Any], writable: list[Any]) -> list[Work]:
        """Handle what ``select`` found (among other things); returns leased tasks to run now."""
        work: list[Work] = []
        for conn in self.conns:
            if conn.stream in writable:
                conn.stream.flush()
            if conn.stream in readable and not conn.over:
                work += self._read(conn)
        if self.listener in readable:
            self._accept()
        if self.conns:
            self.conns = [c for c in self.conns if not self._gone(c)]
        return work

    # ----- orders from rank 0 --------------------------------------------------------------------
    def start(self, msg: StartLease) -> None:
        """Rank 0 leased a slot here: take the client's tasks under ``msg.lease``."""
        self.leases[msg.lease] = _Lease(msg.client, msg.timeout)

    def end(self, lease: int) -> None:
        """End ``lease`` now if nothing of it runs, else when its running task is done."""
        state = self.leases.get(lease)
        if state is None:   # never started here (or already over)
            self.send(LeaseEnded(lease))
            return
        state.ending = True
        if not state.running:
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
        return rest, again

    def tally(self) -> tuple[int, int]:
        """Leased tasks that ended OK and not since the last call (rank 0 counts them)."""
        counts = (self.done, self.failed)
        self.done = self.failed = 0
        return counts

    def close(self) -> None:
        """Close the task port and every connection (the rank is stopping)."""
        for conn in self.conns:
            conn.stream.close()
        self.conns = []
        self.listener.close()

    # ----- inside --------------------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            sock, hello = bell.answer(self.listener, self.token)
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
        self.conns.append(_Conn(Stream(sock), lease))

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
