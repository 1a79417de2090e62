"""A worker rank's handle on its executor child: start, feed, watch, kill, restart.

The worker rank never runs user code (unless ``executor.isolation`` is ``inline``). It keeps one
warm child per slot, writes it batches of work, and reads back outcomes. When the child dies the
handle says how (exit code or signal, or an out-of-memory kill seen in its cgroup) and a new
child is started at once, so the world keeps serving.

The rank's ends of both pipes are non-blocking, so nothing the child does (computing for an
hour, writing a large result) can stall the rank: work the pipe cannot take yet waits in
:attr:`ChildHandle.outbox` and is written by the rank's loop as the pipe drains
(:meth:`~ChildHandle.flush`), and outcomes are read as they arrive, a partial one kept until
its rest comes. The pipes are enlarged where the kernel allows, so a usual batch goes in one
write.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from typing import Any

from colocate.child.direct import SHARED_SIZE, pass_fd, read_slot
from colocate.wire.messages import Outcome, Status, Work, dumps
from colocate.wire.pipe import FrameReader, enlarge_pipe, frame

log = logging.getLogger("colocate.worker")

# Environment variables that would make a child believe it is an MPI process of our world.
_MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPICH_", "I_MPI_", "UCX_",
                     "FI_", "SLURM_STEP_", "COLOCATE_CHILD")
START_TIMEOUT = 60.0   # seconds a new child has to say it is ready
# The take-back counter the worker shares with its child (a memfd): the child skips every task
# of a batch numbered at or below it. One aligned 8-byte word: written and read whole.
SKIP = struct.Struct("q")


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for an executor child: ours without MPI's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_ENV_PREFIXES)}
    env["COLOCATE_CHILD"] = "1"
    env.update(extra or {})
    return env


class ChildDied(Exception):
    """The executor child ended; ``status`` and ``payload`` describe how, for the running task."""

    def __init__(self, status: Status, payload: bytes, detail: str) -> None:
        self.status = status
        self.payload = payload
        super().__init__(detail)


class ChildHandle:
    """One warm executor child and the work it holds, oldest (running) first.

    Args:
        settings: sandbox settings for the child (``cores``, ``priority``, ``threads``,
            ``memory_limit``), passed to :func:`colocate.colocation.sandbox.apply_sandbox`.
        cgroup: an optional cgroup group the child is put in (memory limit, freezer).
        env: extra environment for the child, kept out of its command line (which anyone can
            read): e.g. the store context with the world's token.
    """

    def __init__(self, settings: dict[str, Any], cgroup: Any = None,
                 env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.cgroup = cgroup
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.held: deque[tuple[Work, float]] = deque()   # (work, time sent or started)
        self.outbox: deque[memoryview] = deque()   # frames for the child not yet in its pipe
        self.reader: FrameReader | None = None
        self.known: set[bytes] = set()
        self.sandbox: dict = {}
        self.restarts = 0
        self.batches = 0   # frames of work sent to this child
        self.skip: mmap.mmap | None = None   # shared with the child: see take_back(), slot()
        self.fds: socket.socket | None = None   # leased connections go to the child over it
        self.notes: list[tuple] = []   # the child's notes on leased connections (collect)
        self.last_slot: tuple | None = None   # slot() of the last child, read once it died

    # ----- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start a fresh child and wait (bounded) until it is ready."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        for fd in (to_child_w, from_child_w):
            enlarge_pipe(fd)
        skip_fd = os.memfd_create("colocate-take-back")
        os.ftruncate(skip_fd, SHARED_SIZE)
        self.skip = mmap.mmap(skip_fd, SHARED_SIZE)
        self.batches = 0
        self.notes = []
        self.fds, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "colocate.child", str(to_child_r), str(from_child_w),
             json.dumps(self.settings), str(skip_fd), str(theirs.fileno())],
            pass_fds=(to_child_r, from_child_w, skip_fd, theirs.fileno()),
            env=child_environment({**(self.settings.get("env") or {}), **self.env}),
            stdin=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        os.close(skip_fd)
        theirs.close()
        self.to_child, self.from_child = to_child_w, from_child_r
        os.set_blocking(to_child_w, False)
        os.set_blocking(from_child_r, False)
        self.outbox.clear()
        self.reader = FrameReader(from_child_r)
        self.known = set()
        if self.cgroup is not None:
            self.cgroup.add(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            frames, closed = self.reader.drain()
            if frames:
                break
            if closed:
                code = self.proc.wait(timeout=5)
                raise RuntimeError(f"the executor child exited at start with code {code}; "
                                   "see its error output above")
            if not self.wait_readable(deadline - time.monotonic()):
                self.kill()
                raise RuntimeError(f"the executor child did not start within {START_TIMEOUT:g} s")
        self.sandbox = frames[0].get("sandbox", {})

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return None if self.proc is None else self.proc.pid

    def kill(self) -> int | None:
        """Kill the child (SIGKILL) and reap it; returns its exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if self.cgroup is not None:
            self.cgroup.thaw()   # a frozen process cannot die
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = proc.wait(timeout=10)
        self.outbox.clear()
        # The direct path's slot as the child left it (the worker answers for what ran).
        self.last_slot = read_slot(self.skip) if self.skip is not None else None
        if self.skip is not None:
            self.skip.close()
            self.skip = None
        if self.fds is not None:
            self.fds.close()
            self.fds = None
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        return code

    def restart(self) -> None:
        """Replace a dead or killed child with a fresh one."""
        self.kill()
        self.restarts += 1
        self.start()

    # ----- work ----------------------------------------------------------------------------------
    def send(self, work: list[Work], fn_store: dict[bytes, bytes]) -> None:
        """Hand ``work`` to the child, with function bytes only where the child lacks them.

        Never blocks: what the pipe cannot take now waits in :attr:`outbox`.
        """
        now = time.monotonic()
        items = []
        for w in work:
            if w.fn_hash in self.known:
                if w.fn_bytes is not None:
                    w = w._replace(fn_bytes=None)
            else:
                if w.fn_bytes is None:
                    w = w._replace(fn_bytes=fn_store[w.fn_hash])
                self.known.add(w.fn_hash)
            items.append(tuple(w))
            self.held.append((w, now))
        self.outbox.append(memoryview(frame(items)))
        self.batches += 1
        self.flush()

    def hand(self, lease: int, sock: socket.socket, timeout: float | None, where: tuple,
             fns: dict[bytes, bytes]) -> None:
        """Give the child a leased client's connection (we keep our descriptor, unread)."""
        pass_fd(self.fds, sock.fileno())
        self.outbox.append(memoryview(frame({"hand": lease, "timeout": timeout,
                                             "where": list(where), "fns": fns})))
        self.flush()

    def end(self, lease: int) -> None:
        """Ask the child to let go of a lease's connection; it notes ``("ended", lease)``."""
        self.outbox.append(memoryview(frame({"end": lease})))
        self.flush()

    def slot(self) -> tuple:
        """The direct path's slot (:data:`colocate.child.direct.SLOT`), read consistently."""
        return read_slot(self.skip)

    def take_back(self) -> int:
        """Have the child skip all work sent so far that it has not started; returns how much.

        The child checks a counter shared with it (:data:`SKIP`) before it starts each task: a
        task of a batch at or below it comes back at once as a ``REQUEUE`` outcome, without
        running. So the running task finishes, and the rest follow it back unstarted, with no
        race (a task is either started or skipped, never both). Work sent later runs as usual.
        """
        if self.skip is None or len(self.held) <= 1:
            return 0
        SKIP.pack_into(self.skip, 0, self.batches)
        return len(self.held) - 1

    def flush(self) -> None:
        """Write queued work until the pipe is full (call when it is writable); never blocks.

        If the child has died, the work is dropped: it is still held, and the death (end of
        file on the child's output, which the loop watches) accounts for it.
        """
        outbox = self.outbox
        while outbox:
            head = outbox[0]
            try:
                n = os.write(self.to_child, head)
            except BlockingIOError:
                return
            except OSError:   # EPIPE: the child is gone
                outbox.clear()
                return
            if n < len(head):   # the pipe is full
                outbox[0] = head[n:]
                return
            outbox.popleft()

    @property
    def writing(self) -> bool:
        """Whether work waits for room in the pipe: the loop then waits for it to be writable."""
        return bool(self.outbox)

    @property
    def busy(self) -> bool:
        """Whether the child holds work."""
        return bool(self.held)

    def deadline(self) -> float | None:
        """Monotonic time at which the running task times out, if it has a timeout."""
        if not self.held:
            return None
        work, since = self.held[0]
        return None if work.timeout is None else since + work.timeout

    def wait_readable(self, timeout: float) -> bool:
        """Block (using no CPU) until the child has written something, or ``timeout`` passes."""
        ready, _, _ = select.select([self.from_child], [], [], max(0.0, timeout))
        return bool(ready)

    def collect(self) -> tuple[list[Outcome], ChildDied | None]:
        """Read every outcome the child has written (call when readable; never blocks).

        Returns the outcomes (none if only part of one has arrived yet) and, if the child has
        died, how: outcomes it wrote before dying are never lost, and the death is charged to
        the task that was running.
        """
        try:
            frames, closed = self.reader.drain()
        except OSError:
            frames, closed = [], True
        notes = [f for f in frames if type(f[0]) is str]
        if notes:
            self.notes += notes
            frames = [f for f in frames if type(f[0]) is not str]
        outcomes = [Outcome._make(f) for f in frames]   # the status stays a plain int
        died = self._death() if closed else None
        for out in outcomes:
            if self.held and self.held[0][0].gid == out.gid:
                self.held.popleft()
        if outcomes and self.held:   # the next held task started when the last one finished
            work, since = self.held[0]
            self.held[0] = (work, max(since, time.monotonic()))
        return outcomes, died

    def cut_off(self, status: Status, payload: bytes) -> list[Outcome]:
        """Kill the child; the running task ends with ``status``, the rest go back unstarted."""
        outcomes = self._drop_held(status, payload)
        self.restart()
        return outcomes

    def fail_held(self, died: ChildDied) -> list[Outcome]:
        """After a death: outcomes for the held work, then a fresh child."""
        outcomes = self._drop_held(died.status, died.payload)
        self.restart()
        return outcomes

    def _drop_held(self, status: Status, payload: bytes) -> list[Outcome]:
        now = time.time()
        outcomes = []
        for i, (work, since) in enumerate(self.held):
            if i == 0:
                started = now - (time.monotonic() - since)
                outcomes.append(Outcome(work.gid, status, payload, started, now))
            else:
                outcomes.append(Outcome(work.gid, Status.REQUEUE, b"", 0.0, 0.0))
        self.held.clear()
        return outcomes

    def _death(self) -> ChildDied:
        proc = self.proc
        code = proc.wait(timeout=10) if proc is not None else None
        if self.cgroup is not None and self.cgroup.oom_killed():
            limit = self.held[0][0].memory if self.held else None
            return ChildDied(Status.MEMORY, dumps(limit),
                             f"executor child {proc.pid} was killed for exceeding its memory")
        how = f"exit code {code}"
        if code is not None and code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
        return ChildDied(Status.CRASHED, dumps(code),
                         f"executor child {proc.pid if proc else '?'} died with {how}")
