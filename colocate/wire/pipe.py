"""Length-prefixed pickle frames over a pipe, between a worker rank and its executor child.

The child writes with :func:`write_frame` (blocking: it has nothing else to do) and reads with a
blocking :class:`FrameReader`. The worker rank must never block on its child, so it keeps its
ends non-blocking: it queues what it sends (:func:`frame`, written as the pipe takes it) and
reads whatever has arrived with :meth:`FrameReader.drain`.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from colocate.wire.framing import frame, split_frames

__all__ = ["PIPE_SIZE", "READ_CHUNK", "FrameReader", "enlarge_pipe", "frame", "write_frame"]

# Reads land in one reused buffer of READ_CHUNK bytes: ``os.read(fd, n)`` allocates n bytes per
# call, and a large n is an mmap/munmap pair, which in an MPI rank may also feed the MPI
# library's memory hooks (see :mod:`colocate.wire.stream`). A frame larger than this takes several
# reads, each a small cost next to copying and unpickling it.
READ_CHUNK = 1 << 18
PIPE_SIZE = 1 << 20     # a pipe this large takes any usual batch in one write (Linux default:
                        # 64 KiB; unprivileged processes may go up to fs.pipe-max-size, 1 MiB)


def write_frame(fd: int, obj: Any) -> None:
    """Write one pickled object to ``fd`` (blocking until all of it is written)."""
    view = memoryview(frame(obj))
    while view:
        n = os.write(fd, view)
        view = view[n:]


def enlarge_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Ask for a larger pipe buffer; best effort (fewer writes and wake-ups per large frame)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (AttributeError, OSError):
        pass   # not Linux, or over the user's pipe quota: the default size works, only slower


class FrameReader:
    """Reassembles frames from a pipe, reading all it holds (up to READ_CHUNK) per system call.

    Frames may arrive split across reads, several in one read, or (the common case) one per
    read; partial bytes wait in a buffer for the rest.
    """

    __slots__ = ("fd", "_buf", "_chunk")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._chunk = bytearray(READ_CHUNK)

    def next(self) -> list[Any]:
        """Block until at least one whole frame is here; return every whole frame (blocking fd).

        Raises:
            EOFError: the writer closed its end (a partial last frame is dropped).
        """
        frames: list[Any] = []
        while not frames:
            if not self._read():
                raise EOFError
            frames = self._split()
        return frames

    def drain(self) -> tuple[list[Any], bool]:
        """Read what the pipe holds now, without waiting (non-blocking fd).

        Returns the whole frames read, oldest first, and whether the writer has closed its end
        (then every frame it wrote before closing is among them, or was returned earlier).
        """
        frames: list[Any] = []
        while True:
            try:
                k = self._read()
            except BlockingIOError:
                return frames, False
            if not k:
                return frames, True
            frames += self._split()
            if k < READ_CHUNK:   # this read emptied the pipe: spare the one that would say so
                return frames, False

    def _read(self) -> int:
        k = os.readv(self.fd, [self._chunk])
        with memoryview(self._chunk) as view:
            self._buf += view[:k]
        return k

    def _split(self) -> list[Any]:
        return split_frames(self._buf)
