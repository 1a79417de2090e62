"""The object store's public face: ``Ref`` handles, ``keep()``, and how values become bytes.

Data stays in the memory of worker ranks (their spare memory, counted in the node's budget for
functions) and only small ``Ref`` handles travel with tasks::

    client                        rank 0 (scheduler)               worker rank (StoreServer)
    ex.put(a) ── PutRequest ─────► budget check, choose node/rank
              ◄─ PutReply(id, rank, data port) ─┘
              ── raw buffer: shared memory (same machine) or TCP ──► memfd segment / heap bytes
    Ref ◄────── (id, node, rank, size, dtype/shape, where)
    submit(f, ref) ── Ref inside the pickled args ──► ... ──► executor child: maps the segment
                                                              read-only, calls f(array)
    drop the last Ref / ex.free ── FreeRefs ──► rank 0 ── DropObjects ──► worker closes it

A put of a size the client just put skips both waits: the segment was reserved ahead, the copy
is all the put does (:mod:`colocate.store.putahead`).

What lives here (no sockets, no MPI): the :class:`Ref` class and its ownership rules, the codec
(:func:`encode`/:func:`decode`: numpy arrays as raw bytes with dtype, shape and order; anything
else pickled), :func:`keep` for functions, the argument resolution done by executor children,
and the thread-local hooks the client uses while pickling (which refs a task carries) and
unpickling (which refs it now owns). The transfers are in :mod:`colocate.store.datalink`.

Ownership: the ``Ref`` returned by ``put`` (or a ``Ref`` a task returned, once unpickled by the
client) *owns* its object: when the last reference to it in the client is gone, or at
``ex.free(ref)``, the object is released; when the client disconnects, all its objects are.
Copies that travel in task arguments, or that are unpickled anywhere else, only borrow. A task's
future keeps the refs of its arguments alive until it is done.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from colocate.wire.messages import StoreAddress

SMALL = 256 * 1024   # objects below this stay in the worker's heap and always travel over TCP
CHUNK = 8 << 20      # bytes per copy or socket call for large buffers
CONTEXT_ENV = "_COLOCATE_STORE"   # the store context an executor child inherits (not a setting)

_hooks = threading.local()   # .collect: list of Refs being pickled; .adopter: owning connection


class Ref:
    """A handle on an object held in a worker rank's memory; returned by ``Executor.put``.

    Small and picklable: pass it to ``submit``/``map`` and the function receives the object
    (top-level positional and keyword arguments; a ``Ref`` nested deeper stays a ``Ref``, whose
    :meth:`get` works inside functions too). Objects are immutable: functions receive numpy
    arrays read-only, mapped without a copy when they run on the node that holds them.

    Attributes:
        id: the object's number in its world.
        node: the node holding it; ``rank``: the worker rank holding it.
        nbytes: its size in bytes as stored.
        kind: ``"ndarray"`` (raw buffer, with ``dtype`` and ``shape``) or ``"pickle"``.
    """

    __slots__ = ("world", "id", "node", "rank", "nbytes", "meta", "where", "fd",
                 "_owner", "_freed", "__weakref__")

    def __init__(self, world: str, id: int, node: str, rank: int, nbytes: int, meta: tuple,
                 where: StoreAddress | None, fd: int = -1) -> None:
        self.world = world
        self.id = id
        self.node = node
        self.rank = rank
        self.nbytes = nbytes
        self.meta = meta
        self.where = where
        self.fd = fd        # the segment's descriptor in the worker rank (-1: held in its heap)
        self._owner: Any = None
        self._freed = False

    @property
    def kind(self) -> str:
        """``"ndarray"`` or ``"pickle"``."""
        return self.meta[0]

    @property
    def dtype(self) -> Any:
        """The array's dtype (``None`` for a pickled object)."""
        return self.meta[1] if self.meta[0] == "ndarray" else None

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The array's shape (``None`` for a pickled object)."""
        return self.meta[2] if self.meta[0] == "ndarray" else None

    def get(self, out: Any = None) -> Any:
        """Fetch the object: a new, writable array (or ``out``, filled) or the unpickled value.

        Args:
            out: an existing C- or F-contiguous array of the same dtype and shape to fill
                instead of allocating a new one (arrays only).

        Raises:
            ObjectLost: the object was freed, or the worker rank holding it is gone.
            ValueError: ``out`` does not match.
        """
        from colocate.store.datalink import fetch
        return fetch(self, out=out)

    def describe(self) -> str:
        """E.g. ``float64 array (1000, 1000), 7.6 MiB``."""
        if self.kind == "ndarray":
            what = f"{self.dtype} array {tuple(self.shape)}"
        else:
            what = f"pickled {self.meta[1]}"
        return f"{what}, {human_size(self.nbytes)}"

    def __repr__(self) -> str:
        return f"<Ref {self.id}: {self.describe()} on rank {self.rank} of {self.node}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and (self.world, self.id) == (other.world, other.id)

    def __hash__(self) -> int:
        return hash((self.world, self.id))

    def __reduce__(self) -> tuple:
        collect = getattr(_hooks, "collect", None)
        if collect is not None:
            collect.append(self)
        return (_rebuild, (self.world, self.id, self.node, self.rank, self.nbytes, self.meta,
                           self.where, self.fd))


def _rebuild(*fields: Any) -> Ref:
    adopter = getattr(_hooks, "adopter", None)
    if adopter is not None:
        return adopter.adopt_ref(fields)
    return Ref(*fields)


@contextmanager
def collecting() -> Iterator[list[Ref]]:
    """Within the block, every ``Ref`` pickled by this thread is appended to the yielded list."""
    outer = getattr(_hooks, "collect", None)
    found: list[Ref] = []
    _hooks.collect = found
    try:
        yield found
    finally:
        _hooks.collect = outer


@contextmanager
def adopting(owner: Any) -> Iterator[None]:
    """Within the block, refs unpickled by this thread are owned by ``owner.adopt_ref``."""
    outer = getattr(_hooks, "adopter", None)
    _hooks.adopter = owner
    try:
        yield
    finally:
        _hooks.adopter = outer


def preferred_node(refs: list[Ref]) -> str | None:
    """The node holding most bytes of ``refs`` (ties: the first seen), or ``None``."""
    weight: dict[str, int] = {}
    for ref in refs:
        weight[ref.node] = weight.get(ref.node, 0) + ref.nbytes + 1
    return max(weight, key=weight.__getitem__) if weight else None


def world_id(token: str) -> str:
    """A short public name of a world, derived from its secret token."""
    import hashlib
    return hashlib.blake2b(token.encode(), digest_size=6).hexdigest()


def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


TRANSPORTS = ("auto", "tcp")


def check_transport(value: Any) -> str:
    """Validate ``store.transport``.

    Raises:
        ConfigError: it is not one of :data:`TRANSPORTS`.
    """
    if value not in TRANSPORTS:
        from colocate.errors import ConfigError
        raise ConfigError(f"found {value!r}, expected one of {', '.join(TRANSPORTS)}",
                          key="store.transport")
    return value


# ----- codec -------------------------------------------------------------------------------------
def encode(obj: Any) -> tuple[tuple, memoryview]:
    """Turn ``obj`` into ``(meta, bytes view)`` for storing.

    A numpy array (exactly ``ndarray``, without Python objects inside) travels as its raw
    buffer: C- or F-contiguous arrays without a copy, others after one contiguous copy.
    Anything else (object arrays, subclasses, plain Python objects) is pickled with cloudpickle.
    """
    np = _numpy_if_loaded()
    if np is not None and type(obj) is np.ndarray and not obj.dtype.hasobject:
        if obj.flags.c_contiguous:
            arr, order = obj, "C"
        elif obj.flags.f_contiguous:
            arr, order = obj, "F"
        else:
            arr, order = np.ascontiguousarray(obj), "C"
        return ("ndarray", arr.dtype, tuple(arr.shape), order), byte_view(arr)
    from colocate.wire.messages import dumps
    return ("pickle", type(obj).__qualname__), memoryview(dumps(obj))


def byte_view(arr: Any) -> memoryview:
    """A flat ``uint8`` memoryview of a contiguous array's buffer (no copy)."""
    import numpy as np
    flat = arr.reshape(-1, order="A") if arr.ndim != 1 else arr
    if flat.size == 0:
        return memoryview(b"")
    return memoryview(flat.view(np.uint8))


def empty_like_meta(meta: tuple) -> Any:
    """A new uninitialized array for an ``ndarray`` meta."""
    import numpy as np
    _, dtype, shape, order = meta
    return np.empty(shape, dtype=dtype, order=order)


def check_out(meta: tuple, out: Any) -> None:
    """Check that ``out`` can receive an object described by ``meta``.

    Raises:
        ValueError: it is not an array of the same dtype and shape, contiguous and writable.
    """
    import numpy as np
    if meta[0] != "ndarray":
        raise ValueError(f"out= is for arrays; the object is a pickled {meta[1]}")
    _, dtype, shape, order = meta
    if not isinstance(out, np.ndarray) or out.dtype != dtype or tuple(out.shape) != shape:
        raise ValueError(f"out= must be an array of dtype {dtype} and shape {shape}, found "
                         f"{getattr(out, 'dtype', type(out).__name__)} "
                         f"{getattr(out, 'shape', '')}")
    if not out.flags.writeable or not (out.flags.c_contiguous if order == "C"
                                       else out.flags.f_contiguous):
        raise ValueError(f"out= must be writable and {order}-contiguous")


def decode(meta: tuple, buf: Any, *, copy: bool = True, out: Any = None, offset: int = 0
           ) -> Any:
    """Rebuild an object from ``meta`` and its stored bytes ``buf``.

    Args:
        copy: for arrays, return a private writable copy; ``False`` returns a read-only view on
            ``buf`` (zero copy; it keeps ``buf`` alive).
        out: an array to copy into (see :func:`check_out`).
        offset: where the data starts in ``buf``.
    """
    if meta[0] == "pickle":
        import pickle
        return pickle.loads(memoryview(buf)[offset:] if offset else buf)
    import numpy as np
    _, dtype, shape, order = meta
    count = 1
    for n in shape:
        count *= n
    src = (np.frombuffer(buf, dtype=dtype, count=count, offset=offset) if count
           else np.empty(0, dtype=dtype))
    src = src.reshape(shape, order=order)
    if out is None and not copy:
        src.flags.writeable = False
        return src
    dst = empty_like_meta(meta) if out is None else out
    copy_bytes(byte_view(dst), byte_view(src))
    return dst


def copy_bytes(dst: memoryview, src: memoryview) -> None:
    """``dst[:] = src`` in chunks (numpy copies release the GIL; memoryview ones need not)."""
    import numpy as np
    n = src.nbytes
    if n == 0:
        return
    d = np.frombuffer(dst, dtype=np.uint8)
    s = np.frombuffer(src, dtype=np.uint8)
    for i in range(0, n, CHUNK):
        d[i:i + CHUNK] = s[i:i + CHUNK]


def _numpy_if_loaded() -> Any:
    import sys
    return sys.modules.get("numpy")


# ----- inside functions --------------------------------------------------------------------------
class Context:
    """What an executor child (or an inline worker) knows of its worker rank's store."""

    __slots__ = ("world", "token", "node", "rank", "where", "transport", "gid", "kept")

    def __init__(self, world: str, token: str, node: str, rank: int, where: StoreAddress,
                 transport: str = "auto") -> None:
        self.world = world
        self.token = token
        self.node = node
        self.rank = rank
        self.where = where
        self.transport = transport
        self.gid: int | None = None    # the task running now (keep() charges its objects to it)
        self.kept = 0                  # keep() calls so far (the direct path asks: any new?)

    def to_env(self) -> str:
        """Serialized for the child's environment (readable by its owner only)."""
        return json.dumps({"world": self.world, "token": self.token, "node": self.node,
                           "rank": self.rank, "where": list(self.where),
                           "transport": self.transport})

    @classmethod
    def from_env(cls, text: str) -> Context:
        """The inverse of :meth:`to_env`."""
        d = json.loads(text)
        return cls(d["world"], d["token"], d["node"], d["rank"], StoreAddress(*d["where"]),
                   d.get("transport", "auto"))


_context: Context | None = None


def set_context(ctx: Context | None) -> None:
    """Install the store context of this process (executor child or inline worker)."""
    global _context
    _context = ctx
    if ctx is not None:
        from colocate.store.datalink import register_world
        register_world(ctx.world, ctx.token, ctx.transport)


def context_from_environment() -> None:
    """In an executor child: take the context from the environment (and remove it there)."""
    text = os.environ.pop(CONTEXT_ENV, None)
    if text:
        set_context(Context.from_env(text))


def keep(value: Any) -> Ref:
    """Store ``value`` in the memory of the worker running this function; return its ``Ref``.

    Return the ``Ref`` (or put it in the result) to keep a large result remote: the client gets
    the small handle, owns the object like one it put, and can pass it to later tasks, which
    then read it in place. The object counts against its node's budget once the task ends.

    Raises:
        RuntimeError: called outside a function running on a colocate worker.
    """
    ctx = _context
    if ctx is None or ctx.gid is None:
        raise RuntimeError("colocate.keep() stores a value from inside a function running on a "
                           "colocate worker; in the client, use ex.put(value)")
    from colocate.store.datalink import keep_local
    ctx.kept += 1
    return keep_local(ctx, value)


_relocated: dict[int, tuple] = {}   # object id -> (rank, node, where, fd): moved since put


def relocate(moved: tuple) -> None:
    """Note objects rank 0 says were moved (``Work.moved``: ``(id, rank, node, where, fd)``).

    Their ``Ref`` s still name the worker that left; reads of them go to the new holder.
    """
    for oid, rank, node, where, fd in moved:
        _relocated[oid] = (rank, node, where, fd)


def follow(ref: Ref) -> None:
    """Point ``ref`` at its object's new holder, if it was moved (see :func:`relocate`)."""
    moved = _relocated.get(ref.id)
    if moved is not None:
        ref.rank, ref.node, ref.where, ref.fd = moved


def resolve(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Replace top-level ``Ref`` arguments by their objects (arrays as read-only views)."""
    if Ref not in map(type, args) and (not kwargs or Ref not in map(type, kwargs.values())):
        return args, kwargs
    from colocate.store.datalink import fetch
    args = tuple(fetch(a, copy=False) if type(a) is Ref else a for a in args)
    kwargs = {k: fetch(v, copy=False) if type(v) is Ref else v for k, v in kwargs.items()}
    return args, kwargs
