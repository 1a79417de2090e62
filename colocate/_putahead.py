"""Put-ahead: a client reserves the segment for its next put of the same size in the background.

A put on the worker's machine costs three waits on other processes (rank 0's budget check, the
worker's reservation of a segment, and the commit), about 0.6 ms on a loaded 2-core node, more
than copying 4 MiB. Programs put arrays of the same shape again and again (one per time step,
one per input file), so after a put of ``n`` bytes the client asks, in a thread of its own, for
one more: a granted id (budget charged on rank 0) with a segment reserved on the worker, mapped
here. The next put of exactly ``n`` bytes then only copies its data into that segment; the same
thread sends the commit (the segment's header names the object from its reservation, so tasks
and readers on the machine find it at once, and the worker's data port waits for the commit).

A spare holds budget while it waits, so it is given back (freed like an object) after
:data:`IDLE` seconds unused, at shutdown, and before a put that found its node full asks again.
At most :data:`MAX_SPARES` sizes are kept ahead. A spare whose worker rank died is found out when
its segment cannot be opened, and the put takes the ordinary path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .datalink import Reservation

log = logging.getLogger("colocate.client")

IDLE = 2.0        # seconds an unused spare may hold budget before it is given back
MAX_SPARES = 4    # sizes (node, bytes) kept ahead at once

Key = tuple[str | None, int]   # (node asked for, or None; bytes)


class PutAhead:
    """Spare reservations, one per recent put size, refilled by a thread of their own.

    Args:
        reserve: ``(node, nbytes) -> Reservation | None``; blocks; raises when refused.
        release: gives a spare's id back (as a freed object; never blocks).
        commit: ``(reservation, meta)``: tells its worker the segment is filled; blocks.
    """

    def __init__(self, reserve: Callable[[str | None, int], Reservation | None],
                 release: Callable[[int], None],
                 commit: Callable[[Reservation, tuple], None]) -> None:
        self._reserve = reserve
        self._release = release
        self._commit = commit
        self.commits: list[tuple[Reservation, tuple]] = []   # filled, commit not sent yet
        self.spares: dict[Key, tuple[Reservation, float]] = {}
        self.wanted: dict[Key, float] = {}   # sizes to keep ahead, by the time last asked for
        self.cond = threading.Condition()
        self.busy = False    # the thread is reserving one now
        self.closed = False
        self.thread: threading.Thread | None = None

    def take(self, node: str | None, nbytes: int) -> Reservation | None:
        """The spare for this size, if one is ready (it is the caller's then)."""
        with self.cond:
            got = self.spares.pop((node, nbytes), None)
        return None if got is None else got[0]

    def put_done(self, node: str | None, res: Reservation, meta: tuple) -> None:
        """``res`` is filled: send its commit, and keep a spare of its size ahead."""
        with self.cond:
            closed = self.closed
            if not closed:
                self.commits.append((res, meta))
        if closed:   # the thread is gone or going: commit here
            self._commit(res, meta)
            return
        with self.cond:
            self.wanted[(node, res.nbytes)] = time.monotonic()
            while len(self.wanted) > MAX_SPARES:
                self._forget(min(self.wanted, key=self.wanted.__getitem__))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="colocate-put-ahead",
                                               daemon=True)
                self.thread.start()
            self.cond.notify()

    def give_back(self, timeout: float = 10.0) -> int:
        """Release every spare (a node is full); returns how many there were.

        A reservation in progress holds budget too: it is waited for (up to ``timeout``).
        """
        with self.cond:
            self.wanted.clear()
            pending = self.busy   # once done, the thread releases it itself (no longer wanted)
            if threading.current_thread() is not self.thread:
                self.cond.wait_for(lambda: not self.busy, timeout)
            spares, self.spares = list(self.spares.values()), {}
        for res, _ in spares:
            self._release(res.id)
        return len(spares) + pending

    def close(self, timeout: float = 5.0) -> None:
        """Send the commits still queued, stop the thread and release the spares."""
        with self.cond:
            self.closed = True
            self.cond.notify()
            thread = self.thread
        if thread is not None:
            thread.join(timeout)
        self.give_back(timeout)

    def _forget(self, key: Key) -> None:
        """Stop keeping ``key`` ahead (lock held)."""
        self.wanted.pop(key, None)
        got = self.spares.pop(key, None)
        if got is not None:
            self._release(got[0].id)

    def _run(self) -> None:
        while True:
            with self.cond:
                commits, self.commits = self.commits, []
            for res, meta in commits:   # first: they complete puts that have returned
                try:
                    self._commit(res, meta)
                except Exception as e:   # noqa: BLE001 - its worker rank is gone: the Ref says so
                    log.warning("the commit of object %d failed: %s", res.id, e)
            with self.cond:
                if self.commits:
                    continue
                now = time.monotonic()
                for key in [k for k, t in self.wanted.items() if now - t > IDLE]:
                    self._forget(key)
                todo = next((k for k in self.wanted if k not in self.spares), None)
                if self.closed:
                    return
                if todo is None:
                    wait = min((t + IDLE - now for t in self.wanted.values()), default=None)
                    self.cond.wait(wait)
                    continue
                self.busy = True
            try:
                res = self._reserve(*todo)
            except Exception as e:   # noqa: BLE001 - a full node or a lost rank: no spare
                log.debug("no spare of %d bytes for node %s: %s", todo[1], todo[0], e)
                res = None
            with self.cond:
                self.busy = False
                self.cond.notify_all()
                if res is not None and todo in self.wanted and not self.closed:
                    self.spares[todo] = (res, time.monotonic())
                    continue
                self.wanted.pop(todo, None)   # refused or no longer wanted
            if res is not None:
                self._release(res.id)
