"""The one framing of colocate's byte links: a pickle behind its length (8 bytes, little-endian).

Used by every process: the TCP streams between clients, joined workers and rank 0
(:mod:`colocate.wire.stream`), the pipes between a worker and its executor child
(:mod:`colocate.wire.pipe`), and the requests on a worker's data port
(:mod:`colocate.store.datalink`). The links differ only in how they wait (non-blocking queues and
reads on the server side, blocking calls where the process has nothing else to do); the bytes on
the wire are the same.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

HEADER = struct.Struct("<Q")
RECV_LIMIT = 8 << 20   # bytes asked of the kernel per socket read of a large frame


def append_frame(out: bytearray, obj: Any) -> None:
    """Append ``obj``, pickled, with its length header to ``out`` (no copy of the pickle)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out += HEADER.pack(len(data))
    out += data


def frame(obj: Any) -> bytes:
    """One pickled object with its length header."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def split_frames(buf: bytearray) -> list[Any]:
    """Take every whole frame off the front of ``buf`` and return the objects, oldest first.

    A partial last frame stays in ``buf`` for the bytes still to come.
    """
    out = []
    start = 0
    size = HEADER.size
    while len(buf) - start >= size:
        end = start + size + HEADER.unpack_from(buf, start)[0]
        if end > len(buf):
            break
        with memoryview(buf) as view:
            out.append(pickle.loads(view[start + size:end]))
        start = end
    if start:
        del buf[:start]
    return out


def send_frame(sock: socket.socket, obj: Any) -> None:
    """Send one frame on a blocking socket."""
    sock.sendall(frame(obj))


def recv_frame(sock: socket.socket) -> Any:
    """Receive one frame from a blocking socket; ``EOFError`` if the peer closed."""
    head = bytearray(HEADER.size)
    recv_exactly(sock, memoryview(head))
    data = bytearray(HEADER.unpack(head)[0])
    recv_exactly(sock, memoryview(data))
    return pickle.loads(data)


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from a blocking socket; ``EOFError`` if the peer closes first."""
    got, n = 0, view.nbytes
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, RECV_LIMIT))
        if k == 0:
            raise EOFError("the peer closed the connection")
        got += k
