"""The client's side of the object store: puts, and the registry of the refs this client owns.

Runs in the client process. A :class:`colocate.client.connection.Connection` holds one
:class:`StoreClient` (``conn.store``); what the store client needs of the connection is narrow and
passed in: ``request`` (a round trip to rank 0), ``wake`` (the connection thread has something to
send), ``usable`` (may a request still be made) and the world's id. What the connection thread
needs of it: ``to_free`` and ``used_ahead`` (sent as ``FreeRefs`` and ``UsedAhead``), ``ahead``
(closed with the connection) and ``adopt_ref`` (results' refs become owned).

``put`` asks rank 0 where an object goes (``PutRequest``, answered by a ``PutReply``), then sends
the data to that worker's data port itself (:mod:`colocate.store.datalink`); on the worker's
machine it is copied into a segment reserved ahead (:mod:`colocate.store.putahead`). When the
last ``Ref`` of an object this client owns is gone, the connection thread tells rank 0
(``FreeRefs``). A read whose holder fails it asks rank 0 where the object is now, or why it is
gone (``WhereIs``, answered by an ``ObjectWhere``).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from colocate import store
from colocate.errors import BrokenWorld, StoreFull
from colocate.store.datalink import Reservation
from colocate.wire.messages import ObjectWhere, PutReply, PutRequest, WhereIs


class StoreClient:
    """Stored objects, as seen from a client connection (see the module docstring).

    Args:
        world: the world's id (:func:`colocate.store.world_id`).
        request: ``request(msg, reply_type, match=..., timeout=...)``, a round trip to rank 0
            that raises :class:`BrokenWorld` when the world is gone.
        wake: tell the connection thread that ``to_free`` or ``used_ahead`` has something.
        usable: whether a request may still be made (the connection is neither broken nor
            closing).
    """

    def __init__(self, world: str, request: Callable[..., Any], wake: Callable[[], None],
                 usable: Callable[[], bool]) -> None:
        from colocate.store.datalink import send_commit
        from colocate.store.putahead import PutAhead
        self.world = world
        self.request = request
        self._wake = wake
        self._usable = usable
        self.req_ids = itertools.count()
        self.refs: dict[int, weakref.ref] = {}   # objects this client owns: id -> live Ref
        self.refs_lock = threading.Lock()
        self.to_free: deque[int] = deque()       # appended by finalizers: no lock taken there
        self.used_ahead: deque[int] = deque()    # spares filled by puts, not yet told
        self.ahead = PutAhead(self._reserve_ahead, self.release,
                              lambda res, meta: send_commit(res, meta, wait=False))

    def put(self, obj: Any, node: str | None) -> store.Ref:
        """Store ``obj`` on a worker (see :meth:`Executor.put`).

        On the worker's machine the data is copied into a segment reserved for it, and the
        put-ahead thread (:mod:`colocate.store.putahead`) sends the commit; with a segment reserved
        ahead for this size, that copy is all the put waits for.
        """
        from colocate.store.datalink import fill, put
        meta, view = store.encode(obj)
        nbytes = view.nbytes
        res = self.ahead.take(node, nbytes)
        if res is not None:
            if fill(res, view):
                self.used_ahead.append(res.id)   # told to rank 0 with the next message
            else:   # its worker rank is gone: the ordinary way below says so, or works
                self.release(res.id)
                res = None
        if res is None:
            reply = self._grant(nbytes, node)
            try:
                res = self._reserve(reply, nbytes)
                if res is None or not fill(res, view):   # another machine (or a rank just lost)
                    oid, fd = put(self.world, reply.where, reply.rank, reply.node, reply.ref_id,
                                  meta, view)
                    return self._owned(store.Ref(self.world, oid, reply.node, reply.rank, nbytes,
                                                 meta, reply.where, fd))
            except BaseException:
                self.release(reply.ref_id)
                raise
        self.ahead.put_done(node, res, meta)   # commits, and reserves the next one ahead
        return self._owned(store.Ref(self.world, res.id, res.node, res.rank, nbytes, meta,
                                     res.where, res.fd))

    def _owned(self, ref: store.Ref) -> store.Ref:
        self.own(ref)
        return ref

    def _grant(self, nbytes: int, node: str | None, ahead: bool = False,
               count: int = 1) -> PutReply:
        """Ask rank 0 for an object id and room for ``nbytes`` (giving spares back if full)."""
        from colocate.store.datalink import machine_id
        while True:
            req = next(self.req_ids)
            reply = self.request(PutRequest(req, nbytes, node, machine_id(), ahead, count),
                                 PutReply,
                                 match=lambda r, req=req: r.req == req)
            if not (reply.error and reply.full and not ahead and self.ahead.give_back()):
                break   # granted, or refused with no spare left to give back (a spare itself
                # never makes room for one: the put-ahead thread would wait for itself)
        if reply.error:
            if reply.full:
                raise StoreFull(reply.error)
            raise ValueError(f"cannot put: {reply.error}")
        return reply

    def _reserve(self, reply: PutReply, nbytes: int) -> Reservation | None:
        """A segment for the granted object, if it can be filled from here (same machine)."""
        from colocate.store.datalink import can_reserve, reserve
        if not can_reserve(self.world, reply.where, nbytes):
            return None
        return reserve(self.world, reply.where, reply.rank, reply.node, reply.ref_id, nbytes)

    def _reserve_ahead(self, node: str | None, nbytes: int, count: int) -> list[Reservation]:
        """Up to ``count`` spares for the next puts of ``nbytes`` (the put-ahead thread's)."""
        from colocate.store.datalink import can_reserve, reserve_many
        reply = self._grant(nbytes, node, ahead=True, count=count)
        ids = [reply.ref_id, *reply.more]
        spares: list[Reservation] = []
        try:
            if can_reserve(self.world, reply.where, nbytes):
                spares = reserve_many(self.world, reply.where, reply.rank, reply.node, ids,
                                      nbytes)
        finally:
            if not spares:
                for oid in ids:
                    self.release(oid)
        return spares

    def locate(self, oid: int) -> ObjectWhere | None:
        """Ask rank 0 where object ``oid`` is now, or why it is gone (``None``: no answer).

        Only after its holder failed a read (:func:`colocate.store.datalink.fetch`): never on the
        common path.
        """
        if not self._usable():
            return None
        req = next(self.req_ids)
        try:
            return self.request(WhereIs(req, oid), ObjectWhere, timeout=10.0,
                                match=lambda r, req=req: r.req == req)
        except (BrokenWorld, TimeoutError):
            return None

    def own(self, ref: store.Ref) -> None:
        """Make this connection the owner of ``ref``: its object goes when ``ref`` does."""
        with self.refs_lock:
            self.refs[ref.id] = weakref.ref(ref)
        fin = weakref.finalize(ref, self.release, ref.id)
        fin.atexit = False   # at exit the server frees everything of a departing client
        ref._owner = fin

    def adopt_ref(self, fields: tuple) -> store.Ref:
        """A ``Ref`` unpickled from a result: the live owned one with its id, or a new owner."""
        if fields[0] == self.world:
            with self.refs_lock:
                known = self.refs.get(fields[1])
                ref = known() if known is not None else None
            if ref is not None:
                return ref
            ref = store.Ref(*fields)
            self.own(ref)
            return ref
        return store.Ref(*fields)

    def release(self, oid: int) -> None:
        """The last owned ``Ref`` of ``oid`` is gone: ask rank 0 to free it (never blocks).

        Runs in weakref finalizers, at any point of any thread: it takes no lock.
        """
        known = self.refs.get(oid)
        if known is not None and known() is None:
            self.refs.pop(oid, None)
        self.to_free.append(oid)
        self._wake()

    def free(self, ref: store.Ref) -> None:
        """Free ``ref``'s object now (see :meth:`Executor.free`)."""
        if ref._freed:
            return
        with self.refs_lock:
            known = self.refs.pop(ref.id, None)
        for r in (ref, known() if known is not None else None):
            if r is not None and r.world == self.world:
                r._freed = True
                if r._owner is not None:
                    r._owner.detach()
                    r._owner = None
        self.release(ref.id)
