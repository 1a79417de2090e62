"""The direct hot path, the executor child's side: leased clients' sockets, owned by the child.

A leased client's lone task used to cross four hand-overs (client -> worker rank -> child ->
worker rank -> client). The worker rank now hands the lease's connection to its child
(``SCM_RIGHTS`` over a Unix socket pair, :class:`~colocate.worker.childhandle.ChildHandle`), and
the child reads the tasks and writes the results itself: two hand-overs. The worker rank only
supervises, through a few words of memory shared with the child (:data:`SLOT`) and notes on the
child's pipe::

    client ══TCP══► child (reads Submit, runs, writes Results / Relayed) ══TCP══► client
                      │ SLOT: what runs now (lease, task id, start, timeout), counts
                      └ pipe notes: ("fn", hash, bytes) ("kept", ...) ("ended", lease)
    worker rank: timeouts and crashes (reads SLOT, kills, answers for the dead child),
                 EndLease -> ("end", lease) to the child, its ("ended") -> LeaseOver, LeaseEnded

Who writes the socket: only the child while it holds it; the worker rank only once the child has
said ``ended`` or has died. The state word says whether the dead child left the stream clean:

* ``IDLE``: no task, no partial input: the lease goes on with the next child.
* ``READING``: part of a task arrived: it never ran; the worker ends the lease (``LeaseOver``:
  the client sends it through rank 0).
* ``RUNNING``: the worker answers for the task (``CRASHED``, ``TIMEOUT``), as before.
* ``WRITING``: a result was being written: the stream may hold half a frame; the worker closes
  it (the client reports the task ``WorkerLost``) and ends the lease.

A task that kept objects is not answered here: its outcome goes to the worker rank (``kept``),
which reports it through rank 0 (``DirectDone``), and the child tells the client ``Relayed``.

After each task the child polls hot for ``executor.hot`` seconds (at SCHED_IDLE on a spare core
this costs the host nothing: the kernel hands the core over at once), then sleeps in ``select``.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
import time
from struct import pack_into

from colocate.wire.messages import Relayed, Status, Submit, Work, results_wire
from colocate.wire.stream import Stream

# The shared memory after the take-back counter (8 bytes at offset 0): state, lease, task id,
# start (monotonic, shared by every process), timeout (< 0: none), leased tasks ended OK / not
# (counted up by the child, read by the worker), and whether input was left over when a task
# started. Written by the child only; aligned 8-byte words, written whole, state last.
SLOT = struct.Struct("qqqddqqq")
SLOT_OFFSET = 8
SHARED_SIZE = SLOT_OFFSET + SLOT.size
IDLE, READING, RUNNING, WRITING = range(4)
_STATE, _LEASE, _CID, _STARTED, _TIMEOUT, _DONE, _FAILED, _DIRTY = (
    SLOT_OFFSET + 8 * i for i in range(8))
GID_BASE = -(1 << 40)   # gids of direct tasks: below the worker rank's (-1, -2, ...)


def read_slot(shared) -> tuple:
    """A consistent copy of the slot (re-read while the state changes under us)."""
    while True:
        got = SLOT.unpack_from(shared, SLOT_OFFSET)
        if struct.unpack_from("q", shared, _STATE)[0] == got[0]:
            return got


class _Held:
    """A lease connection this child holds."""

    __slots__ = ("lease", "stream", "timeout", "where")

    def __init__(self, lease: int, stream: Stream, timeout: float | None, where: tuple) -> None:
        self.lease = lease
        self.stream = stream
        self.timeout = timeout
        self.where = where


class Direct:
    """The child's leased connections, and running their tasks.

    Args:
        fds: the Unix socket the worker passes connections over.
        shared: the memory shared with the worker (take-back counter and :data:`SLOT`).
        out_fd: the pipe to the worker (notes).
        run: runs one :class:`Work` item, returns its outcome (``run_work`` with the cache).
        kept: returns whether the last task kept objects (and forgets it).
        cache: the child's function cache (hash -> function).
    """

    def __init__(self, fds: socket.socket, shared, out_fd: int, run, kept, cache: dict) -> None:
        self.fds = fds
        self.cache = cache
        self.shared = shared
        self.out_fd = out_fd
        self.run = run
        self.kept = kept
        self.held: dict[int, _Held] = {}
        self.known: set[bytes] = set()   # functions already told to the worker
        self.gids = 0
        self.done = self.failed = 0

    def streams(self) -> list[Stream]:
        """The connections it holds, to watch for tasks."""
        return [h.stream for h in self.held.values()]

    # ----- orders from the worker (frames on the work pipe) --------------------------------------
    def order(self, msg: dict, note) -> None:
        """``{"hand": lease, ...}`` (its socket waits on the fd socket) or ``{"end": lease}``."""
        if "hand" in msg:
            _, fds, _, _ = socket.recv_fds(self.fds, 1, 1)
            sock = socket.socket(fileno=fds[0])
            node, rank, cores = msg["where"]
            held = _Held(msg["hand"], Stream(sock), msg["timeout"], (node, rank, tuple(cores)))
            self.held[held.lease] = held
            for fn_hash, fn_bytes in msg.get("fns", {}).items():
                self.known.add(fn_hash)
                if fn_hash not in self.cache:
                    try:
                        self.cache[fn_hash] = pickle.loads(fn_bytes)
                    except BaseException:  # noqa: BLE001 - its call reports it, as BAD_INPUT
                        pass
            self._read(held)   # what came while it changed hands
        else:
            held = self.held.pop(msg["end"], None)
            if held is not None:
                held.stream.close()   # our descriptor only: the worker's copy stays open
            note(("ended", msg["end"]))

    # ----- tasks ---------------------------------------------------------------------------------
    def ready(self, readable: list) -> bool:
        """Read and run what the readable connections brought; returns whether there was any."""
        busy = False
        for held in list(self.held.values()):
            if held.stream in readable:
                busy = self._read(held) or busy
        return busy

    def _read(self, held: _Held) -> bool:
        msgs = held.stream.receive()
        self._set(_STATE, READING if held.stream._in else IDLE)
        for msg in msgs:
            if type(msg) is Submit:
                for task in msg.tasks:
                    self._task(held, task)
        if held.stream.closed:   # the client left: the worker sees its copy close too
            self.held.pop(held.lease, None)
            held.stream.close()
        return bool(msgs)

    def _task(self, held: _Held, task) -> None:
        if task.fn_bytes is not None and task.fn_hash not in self.known:
            self.known.add(task.fn_hash)   # so a next child has it (the worker keeps it)
            self._note(("fn", task.fn_hash, task.fn_bytes))
        timeout = task.options.timeout if task.options.timeout is not None else held.timeout
        self.gids += 1
        work = Work(GID_BASE - self.gids, task.fn_hash, task.fn_bytes, task.args, timeout, None)
        shared = self.shared
        struct.pack_into("qqdd", shared, _LEASE, held.lease, task.id, time.monotonic(),
                         -1.0 if timeout is None else timeout)
        pack_into("q", shared, _DIRTY, 1 if held.stream._in else 0)
        pack_into("q", shared, _STATE, RUNNING)
        out = self.run(work)
        pack_into("q", shared, _STATE, WRITING)
        node, rank, cores = held.where
        result = (task.id, int(out.status), out.payload,
                  (node, rank, cores, out.started, out.finished, 1))
        if self.kept():   # rank 0 records the objects, then delivers
            self._note(("kept", held.lease, work.gid, result))
            held.stream.send(Relayed([task.id]))
        else:
            held.stream.send(results_wire([result]))   # (as plain tuples: no named ones)
        while held.stream.pending and not held.stream.closed:
            select.select([], [held.stream], [], 1.0)
            held.stream.flush()
        if out.status == Status.OK:
            self.done += 1
            self._set(_DONE, self.done)
        else:
            self.failed += 1
            self._set(_FAILED, self.failed)
        self._set(_STATE, READING if held.stream._in else IDLE)

    def _set(self, offset: int, value: int) -> None:
        struct.pack_into("q", self.shared, offset, value)

    def _note(self, note: tuple) -> None:
        from colocate.wire.pipe import write_frame
        write_frame(self.out_fd, note)


def pass_fd(fds: socket.socket, fd: int) -> None:
    """The worker's side: send ``fd`` to the child (it reads it on the ``hand`` order)."""
    socket.send_fds(fds, [b"h"], [fd])


