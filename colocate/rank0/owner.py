"""Rank 0's watch on the process that owns a local world: the world must not outlive it.

``Executor()`` outside ``mpiexec`` starts a local world and passes its own pid (and start time)
as ``colocate serve --owner PID:START``. Rank 0 then stops the world as soon as that process is
gone, by whatever path it went: a clean exit, SIGKILL, the out-of-memory killer, ``os._exit``, a
SIGTERM without a handler. Nothing has to reach the world from the owner for that.

On Linux (5.3 and later) the watch is a pidfd, which becomes readable when the process exits:
rank 0 sleeps on it in the same ``select`` as on its sockets, so the watch costs nothing. Where
there is no pidfd, :meth:`OwnerWatch.gone` checks the pid at most every ``POLL`` seconds.

The start time guards against a reused pid: a process that has the owner's pid but started at
another time is not the owner, which is then gone already.
"""

from __future__ import annotations

import os
import time

import psutil

POLL = 0.5   # seconds between checks of the pid where there is no pidfd


def parse(text: str) -> tuple[int, float | None]:
    """``PID`` or ``PID:START`` (the start time as psutil reports it) from ``--owner``.

    Raises:
        ValueError: not of that form.
    """
    pid, _, start = text.partition(":")
    try:
        owner = int(pid)
        started = float(start) if start else None
    except ValueError:
        owner = 0
    if owner <= 0:
        raise ValueError(f"--owner {text!r}: expected PID or PID:START, a positive process id "
                         "and its start time (Executor() passes both)")
    return owner, started


def describe(pid: int) -> str:
    """``PID:START`` for this ``pid``, to pass as ``--owner``."""
    return f"{pid}:{psutil.Process(pid).create_time()!r}"


class OwnerWatch:
    """Tells rank 0 when the owner process is gone.

    Args:
        pid: the owner's pid.
        started: its start time (``psutil.Process.create_time()``), or ``None`` to trust the pid.
    """

    def __init__(self, pid: int, started: float | None = None) -> None:
        self.pid = pid
        self.started = started
        self.fd: int | None = None
        self._last_check = 0.0
        self._gone = False
        try:
            self.fd = os.pidfd_open(pid)   # before the check: the pid cannot be reused after
        except ProcessLookupError:
            self._gone = True
        except (AttributeError, OSError):
            self.fd = None                 # no pidfd here: poll the pid instead
        if not self._gone and not self._is_owner():
            self._gone = True

    def fileno(self) -> int:
        """The pidfd, for ``select`` (only when :attr:`fd` is set)."""
        assert self.fd is not None
        return self.fd

    def gone(self) -> bool:
        """Whether the owner has exited (cheap: call it on every loop)."""
        if self._gone:
            return True
        if self.fd is not None:
            import select
            ready, _, _ = select.select([self.fd], [], [], 0)
            self._gone = bool(ready)
        else:
            now = time.monotonic()
            if now - self._last_check >= POLL:
                self._last_check = now
                self._gone = not self._is_owner()
        return self._gone

    def close(self) -> None:
        """Release the pidfd."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _is_owner(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return self.started is None or abs(proc.create_time() - self.started) < 0.05
        except psutil.Error:
            return False
