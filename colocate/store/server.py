"""A worker rank's store: its objects, its pool of freed segments, and the threads serving them.

The protocol, the segment layout and the transports are described in :mod:`colocate.store.datalink`;
this is the answering side. One thread accepts connections on the data port (authenticated with
the world's token, as rank 0's socket), one more per connection serves its requests. The
worker's main thread calls :meth:`StoreServer.drop` (rank 0 said ``DropObjects``),
:meth:`StoreServer.take_kept` (objects a task kept, reported with its outcome) and
:meth:`StoreServer.trim` (release pooled segments unused for a while), and, when its worker
leaves, :meth:`StoreServer.push` (copy an object to another worker, as a put would).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import NamedTuple

from colocate.store import SMALL
from colocate.store.datalink import (
    DATA_OFFSET,
    DATA_TIMEOUT,
    HAVE_MEMFD,
    POOL_SECONDS,
    label_segment,
    machine_id,
    map_segment,
    new_segment,
    recv_exactly,
    recv_msg,
    send_buffer,
    send_msg,
)
from colocate.wire.bell import answer, bind_address
from colocate.wire.messages import StoreAddress

log = logging.getLogger("colocate.store")


class _Entry(NamedTuple):
    meta: tuple
    nbytes: int
    fd: int           # segment, or -1 for an object kept in the heap
    data: bytes | bytearray | None


class StoreServer:
    """A worker rank's objects and the threads that serve them on its data port.

    Args:
        token: the world's token (data connections must present it).
        rank: this worker's rank (objects it creates itself get ids ending in it).
        host: the address to listen on (loopback for a one-node world).
        pool: bytes of freed segments kept for reuse.
    """

    def __init__(self, token: str, rank: int, host: str, pool: int = 0) -> None:
        self.token = token
        self.rank = rank
        self.listener = socket.create_server((bind_address(host), 0), backlog=64)
        self.address = StoreAddress(host, self.listener.getsockname()[1], machine_id(),
                                    os.getpid())
        self.objects: dict[int, _Entry] = {}
        # Segments handed out for a client to fill, by object id, until their commit. Shared by
        # all connections: a client that reserved ahead commits on whichever link it has.
        self.reserved: dict[int, tuple[dict, int]] = {}
        self.kept: dict[int, list[tuple[int, int]]] = {}   # gid -> objects its task kept
        self.pool_limit = pool
        self.pool: list[tuple[int, int, float]] = []        # (size, fd, freed at)
        self.lock = threading.Lock()
        self.registered = threading.Condition(self.lock)   # notified when an object is stored
        self._seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="colocate-store",
                                        daemon=True)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and release every object."""
        self._closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            entries = list(self.objects.values())
            entries += [_Entry({}, 0, fd, None) for _, fd in self.reserved.values()]
            self.objects.clear()
            self.reserved.clear()
            pooled, self.pool = self.pool, []
        for fd in [e.fd for e in entries if e.fd >= 0] + [fd for _, fd, _ in pooled]:
            os.close(fd)

    # ----- called by the worker's main thread ---------------------------------------------------
    def drop(self, ids: list[int]) -> int:
        """Release objects (unknown ids are ignored); returns the bytes released.

        A dropped id may still be a reservation: a client's spare it gave back unused, or a put
        whose commit (sent without waiting) is still on its way while the free, through rank 0,
        overtook it. Either way its segment goes now; a late commit finds nothing and is ignored.
        """
        freed = 0
        with self.lock:
            entries = [self.objects.pop(i, None) for i in ids]
            entries += [_Entry({}, 0, fd, None)
                        for _, fd in filter(None, (self.reserved.pop(i, None) for i in ids))]
        for e in entries:
            if e is not None:
                freed += e.nbytes
                if e.fd >= 0:
                    self._recycle(e.fd)
        self.trim()
        return freed

    def push(self, oid: int, where: StoreAddress, rank: int, node: str) -> int:
        """Copy object ``oid`` to the worker ``rank`` at ``where`` as a put; its fd there.

        Raises:
            LookupError: it is not held here.
            ObjectLost: the other worker cannot be reached or refused it.
        """
        from colocate.store import world_id
        from colocate.store.datalink import put, register_world
        with self.lock:
            entry = self.objects.get(oid)
            fd = os.dup(entry.fd) if entry is not None and entry.fd >= 0 else -1
        if entry is None:
            raise LookupError(f"object {oid} is not held here")
        world = world_id(self.token)
        register_world(world, self.token)
        if fd < 0:
            return put(world, where, rank, node, oid, entry.meta, memoryview(entry.data))[1]
        try:
            with map_segment(fd, DATA_OFFSET + entry.nbytes, writable=False) as mm, \
                    memoryview(mm) as view:
                return put(world, where, rank, node, oid, entry.meta, view[DATA_OFFSET:])[1]
        finally:
            os.close(fd)

    def trim(self, now: float | None = None) -> None:
        """Release pooled segments unused for :data:`POOL_SECONDS`."""
        now = time.monotonic() if now is None else now
        with self.lock:
            old = [fd for _, fd, t in self.pool if now - t > POOL_SECONDS]
            self.pool = [p for p in self.pool if now - p[2] <= POOL_SECONDS]
        for fd in old:
            os.close(fd)

    def take_kept(self, gid: int) -> tuple[tuple[int, int], ...]:
        """The objects the task ``gid`` kept (reported once, with its outcome)."""
        with self.lock:
            return tuple(self.kept.pop(gid, ()))

    def usage(self) -> dict:
        """Objects and bytes held now, and the pool."""
        with self.lock:
            return {"objects": len(self.objects),
                    "bytes": sum(e.nbytes for e in self.objects.values()),
                    "pooled": sum(size for size, _, _ in self.pool)}

    # ----- segments ------------------------------------------------------------------------------
    def _segment(self, oid: int, nbytes: int) -> int:
        """A segment for ``nbytes`` of data, from the pool if one fits, labelled ``oid``."""
        need = DATA_OFFSET + nbytes
        fd = -1
        with self.lock:
            best = None   # the smallest that fits, the most recently freed among equals
            for i, (size, _, _) in enumerate(self.pool):   # (its pages are likeliest in cache)
                if need <= size <= 2 * need and (best is None or size <= self.pool[best][0]):
                    best = i
            if best is not None:
                fd = self.pool.pop(best)[1]
        if fd < 0:
            fd = new_segment(need)
        label_segment(fd, oid, nbytes)
        return fd

    def _recycle(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        label_segment(fd, 0, 0)   # a stale Ref must not find its object here any more
        # Counted by data capacity, so a pool of N bytes can hold an N-byte object; the newest
        # segments stay, the oldest go.
        closing = []
        with self.lock:
            if size - DATA_OFFSET > self.pool_limit:
                closing.append(fd)
            else:
                self.pool.append((size, fd, time.monotonic()))
                total = sum(s - DATA_OFFSET for s, _, _ in self.pool)
                while total > self.pool_limit:
                    old_size, old_fd, _ = self.pool.pop(0)
                    total -= old_size - DATA_OFFSET
                    closing.append(old_fd)
        for f in closing:
            os.close(f)

    # ----- threads -------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        self.listener.settimeout(None)
        while not self._closed:
            try:
                sock, hello = answer(self.listener, self.token)
            except OSError:
                if self._closed:
                    return
                continue
            if sock is None:
                log.warning("store rank %d: %s", self.rank, hello)
                continue
            threading.Thread(target=self._serve, args=(sock,), name="colocate-store-conn",
                             daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Ids this connection's peer had us make (an executor child's keep()): recycled if it
        # breaks before the commit. Ids rank 0 granted to a client outlive any one connection
        # (a spare waits in the client for its put); rank 0 frees them if the client goes.
        reserved: set[int] = set()
        try:
            while True:
                try:
                    req = recv_msg(sock)
                except (EOFError, OSError):
                    return
                sock.settimeout(DATA_TIMEOUT)
                op = req.get("op")
                if op == "put":
                    self._put(sock, req)
                elif op == "reserve" and req.get("ids"):   # rank-0 ids, for spares
                    segments = [(oid, self._reserve({**req, "id": oid})) for oid in req["ids"]]
                    send_msg(sock, {"ok": True, "segments": segments})
                elif op == "reserve":
                    ours = req.get("id") is None
                    oid = self._new_id(req)
                    fd = self._reserve(req)
                    if ours:
                        reserved.add(oid)
                    send_msg(sock, {"ok": True, "id": oid, "fd": fd})
                elif op == "commit":
                    self._commit(sock, req["id"], req.get("meta"), req.get("reply", True))
                elif op == "get":
                    self._get(sock, req)
                else:
                    send_msg(sock, {"ok": False, "error": f"unknown request {op!r}"})
                sock.settimeout(None)
        except (OSError, EOFError) as e:
            log.info("store rank %d: a data connection failed: %s", self.rank, e)
        finally:
            sock.close()
            with self.lock:   # made here, never committed: the child is gone
                lost = [self.reserved.pop(i) for i in reserved if i in self.reserved]
            for _, fd in lost:
                self._recycle(fd)

    def _new_id(self, req: dict) -> int:
        if req.get("id") is not None:
            req["id"] = int(req["id"])
            return req["id"]
        with self.lock:
            self._seq += 1
            req["id"] = (self._seq << 16) | self.rank
        return req["id"]

    def _reserve(self, req: dict) -> int:
        """Set a segment aside for object ``req["id"]``, to be filled by the client; its fd."""
        oid = req["id"]
        fd = self._segment(oid, req["nbytes"])
        with self.lock:
            old = self.reserved.pop(oid, None)   # a retry supersedes it
            self.reserved[oid] = (req, fd)
        if old is not None:
            self._recycle(old[1])
        return fd

    def _commit(self, sock: socket.socket, oid: int, meta: tuple | None, reply: bool) -> None:
        """A reserved segment has been filled: it becomes the object."""
        with self.lock:
            got = self.reserved.pop(oid, None)
        if got is None:   # dropped before its commit arrived (see drop), or never reserved
            log.debug("store rank %d: commit of object %d, which is not reserved", self.rank, oid)
            if reply:
                send_msg(sock, {"ok": False, "error": f"object {oid} is not reserved"})
            return
        req, fd = got
        if meta is not None:
            req["meta"] = meta
        self._register(sock if reply else None, req, _Entry(req["meta"], req["nbytes"], fd, None))

    def _register(self, sock: socket.socket | None, req: dict, entry: _Entry) -> None:
        oid = req["id"]
        gid = req.get("gid")
        with self.lock:
            old = self.objects.pop(oid, None)
            unfilled = self.reserved.pop(oid, None)   # a put that streamed after all
            self.objects[oid] = entry
            if gid is not None:
                self.kept.setdefault(gid, []).append((oid, entry.nbytes))
            self.registered.notify_all()
        if old is not None and old.fd >= 0:
            self._recycle(old.fd)
        if unfilled is not None and unfilled[1] != entry.fd:
            self._recycle(unfilled[1])
        if sock is not None:
            send_msg(sock, {"ok": True, "id": oid, "fd": entry.fd})

    def _put(self, sock: socket.socket, req: dict) -> None:
        nbytes = req["nbytes"]
        oid = self._new_id(req)
        if nbytes >= SMALL and HAVE_MEMFD:
            fd = self._segment(oid, nbytes)
            try:
                with map_segment(fd, DATA_OFFSET + nbytes, writable=True) as mm, \
                        memoryview(mm) as view:
                    recv_exactly(sock, view[DATA_OFFSET:])
            except BaseException:
                self._recycle(fd)
                raise
            entry = _Entry(req["meta"], nbytes, fd, None)
        else:
            data = bytearray(nbytes)
            recv_exactly(sock, memoryview(data))
            entry = _Entry(req["meta"], nbytes, -1, data)
        self._register(sock, req, entry)

    def _get(self, sock: socket.socket, req: dict) -> None:
        oid = req["id"]
        with self.lock:
            # A put's commit may still be on its way on another connection: wait for it.
            self.registered.wait_for(lambda: oid in self.objects or oid not in self.reserved,
                                     DATA_TIMEOUT)
            entry = self.objects.get(oid)
            fd = os.dup(entry.fd) if entry is not None and entry.fd >= 0 else -1
        if entry is None:
            send_msg(sock, {"ok": False, "error": "not held here (freed, or never stored)"})
            return
        send_msg(sock, {"ok": True, "meta": entry.meta, "nbytes": entry.nbytes})
        if fd < 0:
            send_buffer(sock, memoryview(entry.data))
            return
        try:
            with map_segment(fd, DATA_OFFSET + entry.nbytes, writable=False) as mm, \
                    memoryview(mm) as view:
                send_buffer(sock, view[DATA_OFFSET:])
        finally:
            os.close(fd)
