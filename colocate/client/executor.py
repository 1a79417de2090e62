"""The public client: ``Executor``, a ``concurrent.futures.Executor`` backed by a colocate world.

The wire side (one :class:`~colocate.client.connection.Connection` per executor, shared by its
``options()`` views, and the data flow) lives in :mod:`colocate.client.connection`; the local world
that ``Executor()`` starts outside ``mpiexec`` in :mod:`colocate.client.localworld`.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from colocate import store
from colocate.client.connection import Connection, Future
from colocate.client.localworld import LocalWorld
from colocate.errors import ConfigError
from colocate.wire import address as addr
from colocate.wire.messages import StatusReply, StatusRequest, StopRequest, TaskOptions

log = logging.getLogger("colocate.client")

__all__ = ["Executor", "Future"]


class Executor(cf.Executor):
    """Run Python callables on a colocate world, with ``concurrent.futures`` semantics.

    Args:
        max_workers: workers of a local world started by this executor (default: one per
            spare core, at least 1). Ignored, and must be ``None``, with ``address``.
        address: the address file of a running ``colocate serve`` (or env ``COLOCATE_ADDRESS``).
            Without one (and outside ``mpiexec``), a local world is started and stopped with the
            executor.
        config: a configuration file for a local world.

    Raises:
        ValueError: ``max_workers`` is not a positive integer.
        ServerUnavailable, AuthenticationError: no server at the address, or it refused us.
    """

    def __init__(self, max_workers: int | None = None, *, address: str | os.PathLike | None = None,
                 config: str | None = None, _conn: Connection | None = None,
                 _options: TaskOptions | None = None) -> None:
        self._options = _options or TaskOptions()
        self._shutdown = False
        if _conn is not None:
            self._conn, self._world, self._owner = _conn, None, False
            return
        if max_workers is not None and (not isinstance(max_workers, int)
                                        or isinstance(max_workers, bool) or max_workers <= 0):
            raise ValueError(f"max_workers must be greater than 0, found {max_workers!r}: pass "
                             "a number of workers, or None for one per spare core")
        from colocate import config as configuration
        cfg = configuration.load(config)
        transport = store.check_transport(cfg["store"]["transport"])
        self._options = TaskOptions(cfg["tasks"]["timeout"], cfg["tasks"]["retries"],
                                    cfg["tasks"]["cores"], _size(cfg["tasks"]["memory"]),
                                    cfg["tasks"]["gpus"])
        address = address or os.environ.get("COLOCATE_ADDRESS")
        self._world = None
        if address is None:
            if _launched_by_mpi():
                raise ConfigError(
                    "Executor() without an address inside an MPI job of several ranks: use "
                    "`with colocate.embed(comm, workers=K) as ex:` to serve from some of this "
                    "job's ranks, or pass address= (or COLOCATE_ADDRESS) to reach a running "
                    "`colocate serve`")
            if max_workers is None:
                max_workers = _default_workers()
            self._world = LocalWorld(max_workers, config, cfg["client"]["start_timeout"])
            address = self._world.path
        elif max_workers is not None:
            raise ValueError("max_workers applies to a local world; a running server at "
                             f"{os.fspath(address)!r} has its own workers")
        where = address if isinstance(address, addr.Address) else addr.read(address)
        try:
            self._conn = Connection(where, transport, cfg["client"]["hot"])
        except BaseException:
            if self._world is not None:
                self._world.stop()
            raise
        if self._world is not None:
            self._world.hang_up = self._conn.hang_up
        self._owner = True
        # Collected without shutdown(): what shutdown(wait=False) does, so nothing is left
        # running (in-flight tasks finish, then the connection and a world of ours end). At
        # interpreter exit the local world's own exit hook does it instead.
        self._finalizer = weakref.finalize(self, _shut_down, self._conn, self._world, False)
        self._finalizer.atexit = False

    # ----- concurrent.futures API ----------------------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; returns a :class:`Future`."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if not callable(fn):
            raise TypeError(f"submit() expects a callable, found {type(fn).__name__}")
        return self._conn.submit(fn, args, kwargs, self._options)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator:
        """Like ``concurrent.futures.Executor.map``, consuming the inputs lazily.

        At most ``buffersize`` chunks (default: enough to keep every worker busy) are in flight;
        more are submitted as results are consumed. ``chunksize`` groups calls into one task.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or > 0")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        end = None if timeout is None else timeout + time.monotonic()
        ahead = buffersize or max(2 * self._conn.max_inflight // chunksize, 2)
        calls = zip(*iterables)  # noqa: B905 - map stops at the shortest input, as the standard one
        if chunksize == 1:
            source = (self.submit(fn, *args) for args in calls)
        else:
            chunks = iter(lambda: list(itertools.islice(calls, chunksize)), [])
            source = (self.submit(_run_chunk, fn, chunk) for chunk in chunks)
        window = deque(itertools.islice(source, ahead))
        conn = self._conn

        def results() -> Iterator:
            # No local name outlives a yield holding a result already handed out (bpo-14406):
            # the caller alone decides how long it lives.
            try:
                while window:
                    left = None if end is None else end - time.monotonic()
                    if chunksize == 1:
                        yield _result(window, left, source)
                    else:
                        chunk = _result(window, left, source)
                        chunk.reverse()
                        while chunk:
                            yield chunk.pop()
            finally:
                # Timed out, failed or abandoned: the calls not started never run.
                for fut in window:
                    super(Future, fut).cancel()   # the unsent ones, at no cost
                conn.cancel_sent([fut for fut in window if not fut.done()])
                window.clear()
        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; with ``wait``, return when every task has finished."""
        if self._shutdown:
            return
        self._shutdown = True
        if not self._owner:
            return
        self._finalizer.detach()
        try:
            if cancel_futures:
                self._conn.cancel_queued()
        finally:
            _shut_down(self._conn, self._world, wait)

    # ----- colocate extensions -------------------------------------------------------------------
    def options(self, *, timeout: float | None = ..., retries: int = ..., cores: int = ...,
                memory: int | str | None = ..., gpus: int = ...,
                retry_on: Iterable[type[BaseException] | str] = ...) -> Executor:
        """A view of this executor whose tasks carry other options (same connection).

        Options never collide with the function's own keyword arguments::

            ex.options(timeout=5, retries=2).submit(simulate, timeout=30)

        Raises:
            ValueError: an option has a value out of range.
        """
        changes: dict[str, Any] = {}
        if timeout is not ...:
            if timeout is not None and not (isinstance(timeout, (int, float))
                                            and not isinstance(timeout, bool) and timeout > 0):
                raise ValueError(f"timeout must be a positive number of seconds or None, "
                                 f"found {timeout!r}")
            changes["timeout"] = None if timeout is None else float(timeout)
        for name, value, low in (("retries", retries, 0), ("cores", cores, 1), ("gpus", gpus, 0)):
            if value is not ...:
                if not isinstance(value, int) or isinstance(value, bool) or value < low:
                    raise ValueError(f"{name} must be an integer >= {low}, found {value!r}")
                changes[name] = value
        if memory is not ...:
            changes["memory"] = _size(memory)
        if retry_on is not ...:
            from colocate.wire.messages import qualname
            changes["retry_on"] = tuple(r if isinstance(r, str) else qualname(r)
                                        for r in retry_on)
        view = Executor(_conn=self._conn, _options=self._options._replace(**changes))
        view._parent = self   # the connection lives while a view does
        return view

    @property
    def max_workers(self) -> int:
        """Worker slots of the world when we connected."""
        return self._conn.slots

    @property
    def world(self) -> LocalWorld | None:
        """The local world this executor started (``Executor()`` without ``address``), or None.

        Its ``path`` is the world's address file (other clients can connect with
        ``Executor(address=ex.world.path)``), ``dir`` the private directory holding it,
        ``proc`` the ``mpiexec`` process, ``processes()`` every live process of the world and
        ``tail()`` the end of its output. None for a world reached by ``address`` and for the
        views of :meth:`with_options`; the world stops with this executor.
        """
        return self._world

    @property
    def thread(self) -> threading.Thread:
        """The connection's engine thread (named ``colocate-connection``).

        It sends, receives and batches for this executor (and its views), and ends at
        :meth:`shutdown` or when the executor is collected. Exposed for tests and diagnostics,
        e.g. to check that nothing is left running; never join or drive it.
        """
        return self._conn.thread

    def status(self, timeout: float = 30.0) -> dict:
        """The server's view: workers, their state and counts, the queue; and this client's.

        The server's keys are what ``colocate status --json`` prints (``workers``, ``queued``,
        ``running``, ``leases``, ``store``, ...). ``client`` is this client's side:

        - ``max_inflight``: the tasks the server lets this client keep in flight there (the
          world's ``client.max_inflight``; when that is 0, 64 per worker slot, at least 256).
          Past 4 times as many outstanding, :meth:`submit` waits (backpressure).
        - ``lease``: the worker slot leased to this client, ``{"id": ..., "rank": ...}``, to
          which its lone tasks go directly; ``None`` while it holds none.
        """
        status = self._conn.request(StatusRequest(), StatusReply, timeout).status
        status["client"] = self._conn.client_status()
        return status

    # ----- object store --------------------------------------------------------------------------
    def put(self, obj: Any, node: str | None = None) -> store.Ref:
        """Store ``obj`` in the memory of a worker rank; returns a small, picklable ``Ref``.

        A numpy array travels as its raw buffer (no pickling): through shared memory when the
        worker is on this machine, else over TCP in chunks. Anything else is pickled. The
        object counts against its node's memory budget for functions
        (``co_location.memory_budget``), which running tasks' ``memory`` reservations share.
        It lives while the returned ``Ref`` (or a ``Ref`` a task returned to this client) is
        alive here, until :meth:`free`, or until this client disconnects.

        Args:
            obj: an array or any picklable object.
            node: the node to hold it (a name as in ``status()`` or ``future.info.node``);
                default: this client's own node when a worker there has room, else the node
                with the most room.

        Raises:
            StoreFull: it does not fit the node's budget (the message names the node, the
                size, the budget and what uses it).
            ValueError: ``node`` names no node of the world.
            ObjectLost: the chosen worker rank could not be reached.
        """
        if self._shutdown:
            raise RuntimeError("cannot put after shutdown")
        return self._conn.store.put(obj, node)

    def get(self, ref: store.Ref, out: Any = None) -> Any:
        """Fetch a stored object; the same as ``ref.get(out)``.

        Returns a new writable array (or fills ``out``, an array of the same dtype and shape),
        or the unpickled object.

        Raises:
            ObjectLost: it was freed, or its worker rank is gone.
        """
        if not isinstance(ref, store.Ref):
            raise TypeError(f"get() expects a Ref, found {type(ref).__name__}")
        return ref.get(out)

    def free(self, ref: store.Ref) -> None:
        """Release a stored object now, without waiting for its ``Ref`` to be collected.

        Tasks already submitted with it keep it alive until they are done; reading it
        afterwards raises ``ObjectLost``. Freeing twice does nothing.
        """
        if not isinstance(ref, store.Ref):
            raise TypeError(f"free() expects a Ref, found {type(ref).__name__}")
        self._conn.store.free(ref)

    def cancel_pending(self) -> None:
        """Take back this executor's tasks that have not started; running ones go on.

        Tasks not sent yet, and those still waiting in rank 0's queue, are cancelled (their
        futures' ``cancelled()`` is true when this returns). Unlike
        ``shutdown(cancel_futures=True)`` the executor stays usable.
        """
        self._conn.cancel_queued()

    def stop_server(self, drain: bool = True) -> None:
        """Ask the server to stop (after draining running tasks if ``drain``)."""
        self._conn.send_control(StopRequest(drain))


def _shut_down(conn: Connection, world: LocalWorld | None, wait: bool) -> None:
    """Close ``conn`` (after its in-flight tasks with ``wait``) and stop a world of ours."""
    try:
        conn.close(wait=wait)
    finally:
        # Whatever happened to the connection, a world of ours must stop (it also stops by
        # itself once our connection closes, or this process exits: colocate.rank0.owner).
        if world is not None:
            if wait:
                _stop_world(conn, world)
            else:
                threading.Thread(target=_stop_world, args=(conn, world), daemon=True).start()


def _stop_world(conn: Connection, world: LocalWorld) -> None:
    try:
        conn.thread.join()
    finally:
        world.stop()


def _launched_by_mpi() -> bool:
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def _result(window: deque, timeout: float | None, source: Iterator) -> Any:
    """The result of the oldest future of ``window``, which is then replaced by the next call.

    Nothing here keeps the future (which holds the result) once it is returned.
    """
    fut = window[0]
    try:
        value = fut.result(timeout)
    finally:
        if fut.done():
            window.popleft()
        del fut
    nxt = next(source, None)
    if nxt is not None:
        window.append(nxt)
    return value


def _run_chunk(fn: Callable, chunk: list[tuple]) -> list:
    return [fn(*args) for args in chunk]


def _size(value: Any) -> int | None:
    if value is None:
        return None
    from colocate.colocation.units import parse_size
    return parse_size(value)


def _default_workers() -> int:
    from colocate.colocation.spare import discover_spare_cores
    from colocate.config import load
    try:
        found = discover_spare_cores(load()["co_location"], own_pids=[os.getpid()])
        return max(1, len(found.cores))
    except Exception:   # discovery is a hint here; the world reports the real placement
        return max(1, len(os.sched_getaffinity(0)))
