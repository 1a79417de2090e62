"""Framed pickles over a TCP socket: the link between a client and rank 0.

Clients are usually plain Python processes, not members of the MPI job, so their link is a
socket rather than an MPI dynamic connection (``MPI_Comm_connect`` from several singleton clients
is unreliable: with the MPICH 5.0.2 wheel's UCX netmod, rank 0's messages to every client after
the first are lost; see the README). The socket was opened and authenticated by the bell
handshake; it carries length-prefixed pickles both ways (per-task messages as plain tuples, see
:func:`colocate.wire.messages.to_wire`). Sends never block: what the kernel does not take now waits
in an output buffer until the socket is writable.
"""

from __future__ import annotations

import pickle
import socket
from typing import Any

from colocate.wire.framing import HEADER, append_frame, split_frames
from colocate.wire.messages import from_wire, to_wire

READ_CHUNK = 1 << 20


class Stream:
    """A non-blocking framed connection.

    Call :meth:`send` to queue an object, :meth:`flush` when the socket is writable (or after a
    send), and :meth:`receive` when it is readable. ``closed`` turns true at end of file.
    """

    __slots__ = ("sock", "_out", "_in", "_chunk", "closed", "_fd")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:   # (a same-node lease's link may be a Unix socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._fd = sock.fileno()
        self._out = bytearray()
        self._in = bytearray()
        # Reads land in this buffer, reused: ``sock.recv(READ_CHUNK)`` would allocate (and free)
        # a 1 MiB object per call, i.e. an mmap/munmap pair, and under the MPICH wheel's UCX
        # netmod every such pair costs rank 0 memory that is never given back (UCX's memory
        # hooks record each event): about 250 bytes per read, so per task.
        self._chunk: bytearray | None = None
        self.closed = False

    def fileno(self) -> int:
        """The socket's descriptor, for ``select``."""
        return self._fd

    @property
    def pending(self) -> bool:
        """Whether queued output is waiting for the socket to become writable."""
        return bool(self._out)

    def send(self, obj: Any) -> None:
        """Queue one object and push as much as the socket takes now.

        With nothing queued (the usual case) the frame goes out in one ``send`` from a bytes
        object, and only what the kernel did not take is queued.
        """
        if self._out or self.closed:
            append_frame(self._out, to_wire(obj))
            self.flush()
            return
        data = pickle.dumps(to_wire(obj), protocol=pickle.HIGHEST_PROTOCOL)
        data = HEADER.pack(len(data)) + data
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.closed = True
            self._out += data
            return
        if n < len(data):
            self._out += memoryview(data)[n:]

    def flush(self) -> None:
        """Write queued output until the socket would block."""
        while self._out and not self.closed:
            try:
                n = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True
                return
            del self._out[:n]

    def receive(self) -> list[Any]:
        """Read what has arrived and return the complete objects in it."""
        if self._chunk is None:
            self._chunk = bytearray(READ_CHUNK)
        chunk = self._chunk
        while True:
            try:
                k = self.sock.recv_into(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.closed = True
                break
            if not k:
                self.closed = True
                break
            if k < READ_CHUNK and not self._in:   # whole frames, usually: read in place
                return [from_wire(obj) for obj in self._take(chunk, k)]
            with memoryview(chunk) as view:
                self._in += view[:k]
            if k < READ_CHUNK:
                break
        return [from_wire(obj) for obj in split_frames(self._in)]

    def _take(self, chunk: bytearray, k: int) -> list[Any]:
        """The whole frames in ``chunk[:k]``; a partial last one is kept in ``_in``."""
        out = []
        start, size = 0, HEADER.size
        with memoryview(chunk) as view:
            while k - start >= size:
                end = start + size + HEADER.unpack_from(chunk, start)[0]
                if end > k:
                    break
                out.append(pickle.loads(view[start + size:end]))
                start = end
            if start < k:
                self._in += view[start:k]
        return out

    def close(self) -> None:
        """Close the socket."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
