"""Length-prefixed pickle frames over a pipe, between a worker rank and its executor child."""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_HEADER = struct.Struct("<Q")


def write_frame(fd: int, obj: Any) -> None:
    """Write one pickled object to ``fd`` (blocking until all of it is written)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_exact(fd: int, n: int) -> bytes | None:
    """Read exactly ``n`` bytes; ``None`` on end of file."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Any:
    """Read one object written by :func:`write_frame`; raises ``EOFError`` at end of file."""
    header = read_exact(fd, _HEADER.size)
    if header is None:
        raise EOFError
    data = read_exact(fd, _HEADER.unpack(header)[0])
    if data is None:
        raise EOFError
    return pickle.loads(data)
