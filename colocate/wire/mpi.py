"""The MPI layer: the only module that imports ``mpi4py.MPI``.

It offers what the loops need and nothing more: non-blocking sends that never wait on a slow
peer, a probe that returns at once, and node grouping. Clients do not use MPI at all (see
:mod:`colocate.wire.stream`). Every blocking MPI call here is one whose peer is known to be present.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import mpi4py

mpi4py.rc.recv_mprobe = True
from mpi4py import MPI  # noqa: E402  (rc must be set before the import initializes MPI)

from colocate.wire.messages import from_wire, to_wire  # noqa: E402

ANY_SOURCE = MPI.ANY_SOURCE
# Error classes of a fault-tolerant MPI (ULFM: Open MPI's ``mpiexec --with-ft ulfm``) when a
# peer has died. Other MPIs end the whole job instead, and never raise these.
_PEER_DIED = {c for c in (getattr(MPI, "ERR_PROC_FAILED", None),
                          getattr(MPI, "ERR_PROC_FAILED_PENDING", None)) if c is not None}


def world() -> tuple[Any, int, int]:
    """Return ``(COMM_WORLD, rank, size)``."""
    comm = MPI.COMM_WORLD
    return comm, comm.Get_rank(), comm.Get_size()


def processor_name() -> str:
    """The node name MPI reports (``COLOCATE_NODE_NAME`` overrides it, for tests)."""
    return os.environ.get("COLOCATE_NODE_NAME") or MPI.Get_processor_name()


def allgather(comm: Any, obj: Any) -> list[Any]:
    """Gather one object from every rank on every rank."""
    return comm.allgather(obj)


def is_under_mpiexec() -> bool:
    """Whether this process was started by an MPI launcher (so COMM_WORLD is a real world)."""
    return MPI.COMM_WORLD.Get_size() > 1 or any(
        k in os.environ for k in ("PMI_RANK", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"))


class Mailbox:
    """Non-blocking sends and receives on one communicator.

    Sends are ``isend``: the caller never waits for the peer to receive. Their requests are kept
    until complete so the buffers stay alive; :meth:`flush` waits for them with a bound.
    """

    __slots__ = ("comm", "_pending", "_status")

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self._pending: list[Any] = []
        self._status = MPI.Status()

    def send(self, obj: Any, dest: int) -> None:
        """Queue ``obj`` for ``dest`` and return at once (dropped if ``dest`` has died)."""
        try:
            self._pending.append(self.comm.isend(to_wire(obj), dest))
        except MPI.Exception as e:
            if e.Get_error_class() not in _PEER_DIED:
                raise
            self._acknowledge()
        if len(self._pending) >= 64:
            self._pending = [r for r in self._pending if not _done(r)]

    def poll(self) -> tuple[int, Any] | None:
        """Return ``(source, message)`` if one has arrived, else ``None``, without waiting.

        Under a fault-tolerant MPI a dead peer makes a wildcard probe fail; the failure is
        acknowledged (so the next probe works again) and ``None`` returned: the loops learn of
        the death from the peer's bell, which closed with it.
        """
        try:
            msg = self.comm.improbe(ANY_SOURCE, 0, self._status)
        except MPI.Exception as e:
            if e.Get_error_class() not in _PEER_DIED:
                raise
            self._acknowledge()
            return None
        if msg is None:
            return None
        return self._status.Get_source(), from_wire(msg.recv())

    def _acknowledge(self) -> None:
        self.comm.Ack_failed()
        self._pending = [r for r in self._pending if not _done(r)]

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds for queued sends to complete; True if all did."""
        deadline = time.monotonic() + timeout
        while self._pending:
            self._pending = [r for r in self._pending if not _done(r)]
            if not self._pending:
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def cancel_pending(self) -> None:
        """Give up on sends that will never complete (their peer is gone)."""
        for req in self._pending:
            try:
                req.Cancel()
            except MPI.Exception:
                pass
        self._pending = []


def _done(req: Any) -> bool:
    """Whether a send request has completed, or failed because its peer died."""
    try:
        return req.Test()
    except MPI.Exception as e:
        if e.Get_error_class() not in _PEER_DIED:
            raise
        return True


def host_address(bind: str) -> str:
    """The address the doorbell listens on: ``bind``, or this node's name for ``auto``."""
    return socket.gethostname() if bind == "auto" else bind


def abort(code: int = 1) -> None:
    """Abort the whole MPI job (unhandled errors must not leave ranks hung)."""
    MPI.COMM_WORLD.Abort(code)
