"""Put-ahead: a client reserves segments for its next puts of the same size in the background.

A put on the worker's machine costs three waits on other processes (rank 0's budget check, the
worker's reservation of a segment, and the commit), about 0.6 ms on a loaded 2-core node, more
than copying 4 MiB. Programs put arrays of the same shape again and again (one per time step,
one per input file), so after a put of ``n`` bytes the client asks, in a thread of its own, for
spares: granted ids (budget charged on rank 0, in one request) with segments reserved on the
worker (one request), mapped here. The next put of exactly ``n`` bytes then only copies its data
into a spare; the same thread sends the commit (the segment's header names the object from its
reservation, so tasks and readers on the machine find it at once, and the worker's data port
waits for the commit).

How many spares a size keeps starts at one and doubles each time a put finds none ready (puts
that follow each other faster than a refill), up to :data:`DEPTH` and :data:`HELD` bytes.

Spares hold budget while they wait, so they are given back (freed like objects) after
:data:`IDLE` seconds without a put of their size, at shutdown, and before a put that found its
node full asks again. At most :data:`SIZES` sizes are kept ahead, none above :data:`LARGEST`
bytes (there a second segment costs more than the waits it saves). A spare whose worker rank
died is found out when its segment cannot be opened, and the put takes the ordinary path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from colocate.store.datalink import Reservation

log = logging.getLogger("colocate.client")

IDLE = 2.0             # seconds without a put of its size before a size's spares go back
SIZES = 4              # sizes (node, bytes) kept ahead at once
DEPTH = 8              # spares one size may keep
HELD = 64 << 20        # bytes the spares of one size may hold (one spare at least)
LARGEST = 64 << 20     # bytes: above this the copy outweighs the waits a spare saves
TAKE_WAIT = 1.0        # seconds a put waits for a spare of its size already on its way

Key = tuple[str | None, int]   # (node asked for, or None; bytes)


class PutAhead:
    """Spare reservations for recent put sizes, refilled by a thread of their own.

    Args:
        reserve: ``(node, nbytes, count) -> [Reservation]`` (up to ``count``; may be empty);
            blocks; raises when refused.
        release: gives a spare's id back (as a freed object; never blocks).
        commit: ``(reservation, meta)``: tells its worker the segment is filled; blocks.
    """

    def __init__(self, reserve: Callable[[str | None, int, int], list[Reservation]],
                 release: Callable[[int], None],
                 commit: Callable[[Reservation, tuple], None]) -> None:
        self._reserve = reserve
        self._release = release
        self._commit = commit
        self.commits: list[tuple[Reservation, tuple]] = []   # filled, commit not sent yet
        self.spares: dict[Key, list[Reservation]] = {}
        self.wanted: dict[Key, float] = {}   # sizes kept ahead, by the time of their last put
        self.depth: dict[Key, int] = {}      # spares each size keeps
        self.cond = threading.Condition()
        self.busy: Key | None = None         # the size the thread is reserving now
        self.closed = False
        self.thread: threading.Thread | None = None

    def take(self, node: str | None, nbytes: int) -> Reservation | None:
        """A spare of this size (it is the caller's then), or ``None``.

        Spares of this size still on their way are waited for (up to :data:`TAKE_WAIT`): they
        are nearer than the waits of a put of its own, which would also double the work. Having
        to wait means puts come faster than refills: the size keeps more spares from then on.
        """
        key = (node, nbytes)
        with self.cond:
            if key in self.wanted and not self.spares.get(key):
                self.depth[key] = min(2 * self.depth.get(key, 1), DEPTH,
                                      max(1, HELD // max(1, nbytes)))
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.spares.get(key) or key not in self.wanted
                                   or self.closed, TAKE_WAIT)
            spares = self.spares.get(key)
            return spares.pop() if spares else None   # the newest: likeliest still in cache

    def put_done(self, node: str | None, res: Reservation, meta: tuple) -> None:
        """``res`` is filled: send its commit, and keep spares of its size ahead."""
        with self.cond:
            closed = self.closed
            if not closed:
                self.commits.append((res, meta))
                key = (node, res.nbytes)
                if res.nbytes <= LARGEST:
                    self.wanted[key] = time.monotonic()
                    self.depth.setdefault(key, 1)
                    while len(self.wanted) > SIZES:
                        self._forget(min(self.wanted, key=self.wanted.__getitem__))
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="colocate-put-ahead",
                                                   daemon=True)
                    self.thread.start()
                self.cond.notify_all()
        if closed:   # the thread is gone or going: commit here
            self._commit(res, meta)

    def give_back(self, timeout: float = 10.0) -> int:
        """Release every spare (a node is full); returns how many there were.

        A reservation in progress holds budget too: it is waited for (up to ``timeout``).
        """
        with self.cond:
            self.wanted.clear()
            self.cond.notify_all()
            pending = self.busy is not None   # once done, the thread releases it itself
            self.cond.wait_for(lambda: self.busy is None, timeout)
            spares = [r for rs in self.spares.values() for r in rs]
            self.spares = {}
        for res in spares:
            self._release(res.id)
        return len(spares) + pending

    def close(self, timeout: float = 5.0) -> None:
        """Send the commits still queued, stop the thread and release the spares."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            thread = self.thread
        if thread is not None:
            thread.join(timeout)
        self.give_back(timeout)

    def _forget(self, key: Key) -> None:
        """Stop keeping ``key`` ahead (lock held)."""
        self.wanted.pop(key, None)
        self.depth.pop(key, None)
        self.cond.notify_all()
        for res in self.spares.pop(key, []):
            self._release(res.id)

    def _next(self) -> tuple[Key, int] | None:
        """A size short of spares and how many it lacks (lock held)."""
        for key in self.wanted:
            lack = self.depth.get(key, 1) - len(self.spares.get(key, ()))
            if lack > 0:
                return key, lack
        return None

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
                if self.closed:
                    return
                todo = self._next()
                if todo is None:
                    wait = min((t + IDLE - now for t in self.wanted.values()), default=None)
                    self.cond.wait(wait)
                    continue
                (key, lack), self.busy = todo, todo[0]
            try:
                got = self._reserve(key[0], key[1], lack)
            except Exception as e:   # noqa: BLE001 - a full node or a lost rank: no spare
                log.debug("no spare of %d bytes for node %s: %s", key[1], key[0], e)
                got = []
            with self.cond:
                self.busy = None
                if got and key in self.wanted and not self.closed:
                    self.spares.setdefault(key, []).extend(got)
                    got = []
                elif not got:
                    self.wanted.pop(key, None)   # refused: asked again at the next put
                self.cond.notify_all()
            for res in got:   # no longer wanted
                self._release(res.id)
