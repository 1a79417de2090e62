"""Moving stored objects: a worker rank's ``StoreServer`` and the client side of its data port.

Each worker rank holds its objects and serves them on a TCP *data port* of its own, so data never
passes through rank 0 (which only does the bookkeeping, see :mod:`colocate.rank0.scheduler`) nor
through MPI (clients are not MPI processes). A connection is authenticated with the world's
token, as on rank 0's socket (:func:`colocate.wire.bell.answer`), then carries requests, one at a
time:

=========  =========================================================  =========================
request    what follows / what the server does                        reply
=========  =========================================================  =========================
``put``    ``nbytes`` raw bytes, received straight into a segment     ``{ok, id, fd}``
``reserve``  nothing: a segment for the sender to fill through          ``{ok, id, fd}``
           ``/proc/PID/fd/N`` (same machine)
``commit`` nothing: the reserved segment becomes the object           ``{ok}`` (none if
                                                                      ``reply`` is false)
``get``    nothing                                                    ``{ok, meta, nbytes}`` +
                                                                      raw bytes
=========  =========================================================  =========================

Storage: an object of at least :data:`~colocate.store.SMALL` bytes is a *segment*, a ``memfd``
(anonymous shared memory owned by the worker rank: it disappears with the rank, so a crash leaks
nothing) that starts with a 64-byte header naming the object; smaller ones are ``bytes`` in the
rank's heap. On the same machine (same hostname and boot id) large objects skip the socket in
both directions: a put reserves a segment, fills it through ``/proc`` and commits it; a get or
an executor child opens the segment the same way and maps it (an executor child without a
copy), after checking that its header still names the object, so a stale ``Ref`` never reads
another object. Everything else streams raw buffers over TCP in chunks, received with
``recv_into`` (no pickling of data).

Freed segments are kept for reuse (up to ``store.pool`` bytes per worker rank, for at most
:data:`POOL_SECONDS`): fresh shared memory costs a page fault per 4 KiB page, about as much as
the copy itself, and reusing it makes repeated puts run at copy speed.

The server (:class:`colocate.store.server.StoreServer`) runs in threads of the worker rank, never
in its executor child: a crashing child costs no stored object. Nothing here touches MPI. This
module holds the wire format, the segments, and the side that asks: clients and executor
children (``put``, ``fetch``, ``keep_local``).
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from colocate import store
from colocate.errors import ObjectLost
from colocate.store import CHUNK, SMALL, Context, Ref, byte_view, check_out, decode
from colocate.wire.bell import ring_up
from colocate.wire.framing import recv_exactly
from colocate.wire.framing import recv_frame as recv_msg
from colocate.wire.framing import send_frame as send_msg
from colocate.wire.messages import StoreAddress

log = logging.getLogger("colocate.store")

SEGMENT_HEADER = struct.Struct("<8sQQ")   # magic, object id, nbytes
DATA_OFFSET = 64                          # data starts here in a segment (aligned for any dtype)
_MAGIC = b"colocate"
DATA_TIMEOUT = 120.0   # seconds a data connection may stall mid-request before it is given up
POOL_SECONDS = 10.0    # a freed segment unused for this long is released for good
HAVE_MEMFD = hasattr(os, "memfd_create")


def send_buffer(sock: socket.socket, view: memoryview) -> None:
    """Send a raw buffer in chunks."""
    for i in range(0, view.nbytes, CHUNK):
        sock.sendall(view[i:i + CHUNK])


# ----- identity and segments ---------------------------------------------------------------------
_machine: str | None = None


def machine_id() -> str:
    """``hostname/boot id``: equal values share a kernel, hence memfds and ``/proc``."""
    global _machine
    if _machine is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except OSError:
            boot = "?"
        _machine = f"{socket.gethostname()}/{boot}"
    return _machine


def map_segment(fd: int, size: int, writable: bool) -> mmap.mmap:
    """Map ``size`` bytes of a segment, its pages populated at once."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return mmap.mmap(fd, size, flags=flags, prot=prot)


def new_segment(size: int) -> int:
    """A new memfd of ``size`` bytes."""
    fd = os.memfd_create("colocate-object", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def label_segment(fd: int, oid: int, nbytes: int) -> None:
    """Write the header naming the object a segment holds (0: none)."""
    os.pwrite(fd, SEGMENT_HEADER.pack(_MAGIC, oid, nbytes), 0)


def open_segment(pid: int, fd: int, oid: int, nbytes: int, writable: bool = False
                 ) -> mmap.mmap:
    """Map another process's segment through ``/proc``, checking that it holds object ``oid``.

    Raises:
        OSError: it is gone, or the descriptor now names something else.
    """
    mine = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR if writable else os.O_RDONLY)
    try:
        head = os.pread(mine, SEGMENT_HEADER.size, 0)
        if len(head) < SEGMENT_HEADER.size or SEGMENT_HEADER.unpack(head) != (
                _MAGIC, oid, nbytes):
            raise FileNotFoundError(f"/proc/{pid}/fd/{fd} does not hold object {oid} now")
        return map_segment(mine, DATA_OFFSET + nbytes, writable)
    finally:
        os.close(mine)


# ----- client side: clients, executor children ----------------------------------------------------
_worlds: dict[str, tuple[str, str]] = {}      # world id -> (token, transport)
_pool: dict[tuple[str, int], list[socket.socket]] = {}
_pool_lock = threading.Lock()


def register_world(world: str, token: str, transport: str = "auto") -> None:
    """Remember a world's token (to open data connections) and its transport setting."""
    _worlds[world] = (token, transport)


def _token(world: str) -> str:
    try:
        return _worlds[world][0]
    except KeyError:
        raise ObjectLost(f"object of world {world}: this process is not connected to that world "
                         "(open an Executor on its address first)") from None


def _shm_ok(world: str, where: StoreAddress | None) -> bool:
    return (HAVE_MEMFD and where is not None and where.machine == machine_id()
            and _worlds.get(world, ("", "auto"))[1] != "tcp")


class _Link:
    """One pooled data connection, returned to the pool only after a clean request."""

    def __init__(self, where: StoreAddress, token: str) -> None:
        self.key = (where.host, where.port)
        with _pool_lock:
            idle = _pool.get(self.key)
            self.sock = idle.pop() if idle else None
        if self.sock is None:
            self.sock = ring_up(where.host, where.port, {"token": token, "role": "data",
                                                         "pid": os.getpid()}, timeout=30.0)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(DATA_TIMEOUT)
        self.clean = False

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self.clean:
            with _pool_lock:
                _pool.setdefault(self.key, []).append(self.sock)
        else:
            self.sock.close()


def _cannot_store(nbytes: int, rank: int, node: str, where: StoreAddress,
                  e: BaseException) -> ObjectLost:
    return ObjectLost(f"cannot store {nbytes} bytes with worker rank {rank} on {node} "
                      f"({where.host}:{where.port}): {type(e).__name__}: {e}")


def _lost(ref_text: str, rank: int, node: str, why: str) -> ObjectLost:
    return ObjectLost(f"{ref_text} held by worker rank {rank} on {node} cannot be read: {why}. "
                      "An object lives in the memory of its worker rank and is lost with it; "
                      "put it again")


class Reservation(NamedTuple):
    """A segment a worker rank set aside for this process to fill (same machine only)."""

    world: str
    where: StoreAddress
    rank: int
    node: str
    id: int
    fd: int
    nbytes: int
    mm: mmap.mmap          # the segment, mapped here (writable)


def can_reserve(world: str, where: StoreAddress | None, nbytes: int) -> bool:
    """Whether a put of ``nbytes`` to ``where`` goes through a reserved segment."""
    return nbytes >= SMALL and _shm_ok(world, where)


def reserve(world: str, where: StoreAddress, rank: int, node: str, oid: int | None,
            nbytes: int, gid: int | None = None) -> Reservation | None:
    """Ask the worker at ``where`` for a segment of ``nbytes`` to fill through ``/proc``.

    Returns ``None`` when its segments cannot be opened from here (e.g. another pid namespace):
    the caller streams the data instead.

    Raises:
        ObjectLost: the worker rank cannot be reached.
    """
    try:
        with (link := _Link(where, _token(world))) as sock:
            send_msg(sock, {"op": "reserve", "id": oid, "meta": None, "nbytes": nbytes,
                            "gid": gid})
            reply = recv_msg(sock)
            if not reply.get("ok"):
                raise OSError(reply.get("error", "refused"))
            res = _mapped(world, where, rank, node, reply["id"], reply["fd"], nbytes)
            if res is None:
                return None   # the link closes: a reservation the worker numbered goes with it
            link.clean = True
            return res
    except (OSError, EOFError) as e:
        raise _cannot_store(nbytes, rank, node, where, e) from None


def reserve_many(world: str, where: StoreAddress, rank: int, node: str, ids: list[int],
                 nbytes: int) -> list[Reservation]:
    """Segments of ``nbytes`` for the granted ``ids``, in one request (spares for later puts).

    Returns ``[]`` when they cannot be opened from here; the caller frees the ids then.

    Raises:
        ObjectLost: the worker rank cannot be reached.
    """
    try:
        with (link := _Link(where, _token(world))) as sock:
            send_msg(sock, {"op": "reserve", "ids": list(ids), "meta": None, "nbytes": nbytes,
                            "gid": None})
            reply = recv_msg(sock)
            if not reply.get("ok"):
                raise OSError(reply.get("error", "refused"))
            link.clean = True
    except (OSError, EOFError) as e:
        raise _cannot_store(nbytes, rank, node, where, e) from None
    out = [_mapped(world, where, rank, node, oid, fd, nbytes) for oid, fd in reply["segments"]]
    return [] if None in out else out


def _mapped(world: str, where: StoreAddress, rank: int, node: str, oid: int, fd: int,
            nbytes: int) -> Reservation | None:
    """The reservation of segment ``fd`` for ``oid``, mapped here, or None if it cannot be."""
    mm = _maps.get(where.pid, fd, oid, nbytes)
    return None if mm is None else Reservation(world, where, rank, node, oid, fd, nbytes, mm)


def fill(res: Reservation, view: memoryview) -> bool:
    """Copy ``view`` into the reserved segment; False if its worker rank is gone.

    The segment stays the reservation's until it is committed or dropped (only its owner does
    either), so the mapping made at reservation is used as it is, without checks on the way.
    """
    from colocate.store import copy_bytes
    try:
        os.kill(res.where.pid, 0)   # same machine: a dead worker rank's segment is nobody's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    with memoryview(res.mm) as dst:
        copy_bytes(dst[DATA_OFFSET:DATA_OFFSET + view.nbytes], view)
    return True


def send_commit(res: Reservation, meta: tuple, wait: bool = True) -> bool:
    """Make the filled segment the object ``res.id``.

    ``wait=False`` sends the commit without waiting for its answer: the segment's header names
    the object since its reservation, so readers on this machine find it at once, and the
    worker's data port waits for the commit before it answers a read of it. Returns False if
    the worker no longer held the reservation.

    Raises:
        ObjectLost: the worker rank cannot be reached.
    """
    try:
        with (link := _Link(res.where, _token(res.world))) as sock:
            send_msg(sock, {"op": "commit", "id": res.id, "meta": meta, "reply": wait})
            if wait and not recv_msg(sock).get("ok"):
                return False
            link.clean = True
    except (OSError, EOFError) as e:
        raise _cannot_store(res.nbytes, res.rank, res.node, res.where, e) from None
    return True


def put(world: str, where: StoreAddress, rank: int, node: str, oid: int | None, meta: tuple,
        view: memoryview, gid: int | None = None) -> tuple[int, int]:
    """Store a buffer with the worker at ``where``; returns ``(id, segment fd)`` there.

    Large buffers on the same machine are copied into a segment the server reserves; the rest
    streams over TCP.

    Raises:
        ObjectLost: the worker rank cannot be reached or refused the object.
    """
    nbytes = view.nbytes
    if can_reserve(world, where, nbytes):
        res = reserve(world, where, rank, node, oid, nbytes, gid)
        if res is not None and fill(res, view) and send_commit(res, meta):
            return res.id, res.fd
    token = _token(world)
    req = {"id": oid, "meta": meta, "nbytes": nbytes, "gid": gid}
    try:
        with (link := _Link(where, token)) as sock:
            send_msg(sock, {"op": "put", **req})
            send_buffer(sock, view)
            reply = recv_msg(sock)
            link.clean = True
    except (OSError, EOFError) as e:
        raise _cannot_store(nbytes, rank, node, where, e) from None
    if not reply.get("ok"):
        raise ObjectLost(f"worker rank {rank} on {node} refused the object: {reply.get('error')}")
    return reply["id"], reply["fd"]


class _MapCache:
    """Writable mappings of worker segments this client used lately, to use them again.

    Mapping a segment costs a page-table entry per 4 KiB page and unmapping a TLB flush, as
    much as copying it; and with the servers' pools, puts and gets keep meeting the same
    segments. Each use checks that ``/proc/PID/fd/N`` still names the mapped file (the worker
    rank lives and holds it) and that its header names the object. Bounded by bytes: a cached
    mapping keeps a segment's memory alive after its worker released it.
    """

    def __init__(self, limit: int = 512 * 1024 * 1024) -> None:
        self.limit = limit
        self.maps: dict[tuple[int, int], tuple[mmap.mmap, int]] = {}   # (pid, fd) -> (map, ino)
        self.lock = threading.Lock()

    def get(self, pid: int, fd: int, oid: int, nbytes: int) -> mmap.mmap | None:
        """A mapping of the segment holding ``oid``, or ``None`` if it cannot be opened."""
        key = (pid, fd)
        try:
            ino = os.stat(f"/proc/{pid}/fd/{fd}").st_ino
        except OSError:
            ino = None
        with self.lock:
            hit = self.maps.pop(key, None)
            if hit is not None and hit[1] == ino and len(hit[0]) >= DATA_OFFSET + nbytes and (
                    SEGMENT_HEADER.unpack_from(hit[0], 0) == (_MAGIC, oid, nbytes)):
                self.maps[key] = hit   # most recent last
                return hit[0]
        if ino is None:
            return None
        try:
            mine = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
        except OSError:
            return None
        try:
            st = os.fstat(mine)
            head = os.pread(mine, SEGMENT_HEADER.size, 0)
            if len(head) < SEGMENT_HEADER.size or SEGMENT_HEADER.unpack(head) != (
                    _MAGIC, oid, nbytes):
                return None
            mm = map_segment(mine, st.st_size, writable=True)
        finally:
            os.close(mine)
        if st.st_size - DATA_OFFSET > self.limit:
            return mm   # too big to keep: the caller's use only
        with self.lock:
            self.maps[key] = (mm, st.st_ino)
            total = sum(len(m) - DATA_OFFSET for m, _ in self.maps.values())
            while total > self.limit:
                old_key = next(iter(self.maps))
                old, _ = self.maps.pop(old_key)
                total -= len(old) - DATA_OFFSET
        return mm


_maps = _MapCache()


_locators: dict[str, Callable[[int], Any]] = {}   # world id -> asks rank 0 where an object is


def register_locator(world: str, locate: Callable[[int], Any]) -> None:
    """How this process asks rank 0 of ``world`` where an object is when its holder fails it.

    ``locate(id)`` returns an :class:`~colocate.wire.messages.ObjectWhere` or ``None`` (no answer).
    Clients register one; executor children have none (rank 0 checks their arguments at
    dispatch instead).
    """
    _locators[world] = locate


def fetch(ref: Ref, *, copy: bool = True, out: Any = None) -> Any:
    """Read the object ``ref`` names (see :meth:`colocate.store.Ref.get`).

    When its holder cannot serve it, rank 0 is asked (once) where it is: another holder (it
    was moved) is read instead, and ``ref`` points there from then on; an object rank 0 knows
    to be lost raises ``ObjectLost`` with rank 0's account of where it was and why it went.

    Args:
        copy: ``False`` maps a same-machine array read-only instead of copying (functions).
        out: an array to fill.

    Raises:
        ObjectLost: freed, or the worker rank is gone.
    """
    if store._relocated:   # (in an executor child: arguments moved off a worker that left)
        store.follow(ref)
    try:
        return _fetch(ref, copy, out)
    except ObjectLost:
        locate = _locators.get(ref.world)
        answer = None if ref._freed or locate is None else locate(ref.id)
        if answer is None:
            raise
        if answer.lost:
            raise ObjectLost(answer.lost) from None
        if (answer.rank, answer.where) == (ref.rank, ref.where):
            raise   # still where it was: the holder's own answer says what is wrong
        ref.rank, ref.node, ref.where, ref.fd = answer.rank, answer.node, answer.where, answer.fd
    return _fetch(ref, copy, out)


def _fetch(ref: Ref, copy: bool, out: Any) -> Any:
    if ref._freed:
        raise ObjectLost(f"object {ref.id} ({ref.describe()}) was freed by this client")
    if out is not None:
        check_out(ref.meta, out)
    if ref.fd >= 0 and _shm_ok(ref.world, ref.where):
        if ref.kind == "ndarray" and out is None and not copy:   # a function's argument
            try:
                mm = open_segment(ref.where.pid, ref.fd, ref.id, ref.nbytes)
            except OSError:
                pass   # gone or not ours to open: the data port says which, below
            else:
                return decode(ref.meta, mm, copy=False, offset=DATA_OFFSET)   # keeps mm alive
        else:
            mm = _maps.get(ref.where.pid, ref.fd, ref.id, ref.nbytes)
            if mm is not None:
                with memoryview(mm) as view:
                    return decode(ref.meta, view[DATA_OFFSET:DATA_OFFSET + ref.nbytes], out=out)
    return _fetch_stream(ref, out)


def _fetch_stream(ref: Ref, out: Any) -> Any:
    text = f"object {ref.id} ({ref.describe()})"
    if ref.where is None:
        raise _lost(text, ref.rank, ref.node, "no data address is known for it")
    try:
        with (link := _Link(ref.where, _token(ref.world))) as sock:
            send_msg(sock, {"op": "get", "id": ref.id})
            reply = recv_msg(sock)
            if not reply.get("ok"):
                link.clean = True
                raise _lost(text, ref.rank, ref.node, reply.get("error", "refused"))
            meta, nbytes = reply["meta"], reply["nbytes"]
            if meta[0] == "ndarray":
                from colocate.store import empty_like_meta
                dst = empty_like_meta(meta) if out is None else out
                recv_exactly(sock, byte_view(dst))
                value = dst
            else:
                buf = bytearray(nbytes)
                recv_exactly(sock, memoryview(buf))
                value = pickle.loads(buf)
            link.clean = True
            return value
    except (OSError, EOFError) as e:
        raise _lost(text, ref.rank, ref.node,
                    f"its worker rank does not answer at {ref.where.host}:{ref.where.port} "
                    f"({type(e).__name__}: {e})") from None


def keep_local(ctx: Context, value: Any) -> Ref:
    """Store ``value`` with this process's own worker rank, charged to the running task."""
    from colocate.store import encode
    meta, view = encode(value)
    oid, fd = put(ctx.world, ctx.where, ctx.rank, ctx.node, None, meta, view, gid=ctx.gid)
    return Ref(ctx.world, oid, ctx.node, ctx.rank, view.nbytes, meta, ctx.where, fd)
