"""The executor child: the sandbox process in which user functions run.

Started by a worker rank with ``python -m colocate.child`` (a fresh interpreter, never MPI), it
applies its sandbox to itself (pinning, lowest priority, thread limits), then loops: read the
frames of :class:`~colocate.wire.messages.Work` items its worker has written, run them in order,
write back one :class:`~colocate.wire.messages.Outcome` per task. It reads on its one thread, only
when it has nothing left to run: a reader thread would cost a thread hand-off per task, and the
worker never blocks on a full pipe anyway (it queues what the pipe cannot take yet). Functions are
cached by content hash. Each outcome is written the moment its task ends (the worker reads them in
batches). It also holds the connections of leased clients its worker hands it, and reads and
answers their tasks itself (:mod:`colocate.child.direct`). After each task it polls hot for
``executor.hot`` seconds before it sleeps in ``select``.

Both directions carry plain tuples, not the named tuples of :mod:`colocate.wire.messages`, and an
outcome's status as a plain ``int`` (what ``Outcome.status`` declares; every reader compares
values): named tuples and enum members take several times longer to pickle and unpickle, at
every hop of every task.

``Ref`` arguments (:mod:`colocate.store`) are resolved here, just before the call: an array held
on this machine is mapped read-only from its worker rank's memory, without a copy.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import select
import signal
import struct
import sys
import time

from colocate import store
from colocate.wire.messages import Outcome, Status, Work, dump_exception, dumps, qualname


def run_work(work, cache: dict, where: dict):
    """Run one Work item; return an Outcome. Never raises."""
    started = time.time()
    try:
        fn = cache.get(work.fn_hash)
        if fn is None:
            fn = pickle.loads(work.fn_bytes)
            cache[work.fn_hash] = fn
        args, kwargs = pickle.loads(work.args)
    except BaseException as exc:  # noqa: BLE001 - anything may come out of unpickling
        return Outcome(work.gid, Status.BAD_INPUT, dump_exception(exc), started, time.time())
    try:
        if work.moved:
            store.relocate(work.moved)
        args, kwargs = store.resolve(args, kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. ObjectLost: the caller's error, as raised
        return Outcome(work.gid, Status.RAISED, dump_exception(exc), started, time.time(),
                       qualname(type(exc)))
    saved = _task_environment(work)
    ctx = store._context
    if ctx is not None:
        ctx.gid = work.gid
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the user's exception is the result
        finished = time.time()
        if isinstance(exc, MemoryError):
            return Outcome(work.gid, Status.MEMORY, dumps(work.memory), started, finished)
        return Outcome(work.gid, Status.RAISED, dump_exception(exc), started, finished,
                       qualname(type(exc)))
    finally:
        if ctx is not None:
            ctx.gid = None
        if saved is not None:
            _restore_environment(saved)
        del args, kwargs   # drop mapped arguments before the next task
    finished = time.time()
    try:
        payload = dumps(value)
    except BaseException as exc:  # noqa: BLE001
        return Outcome(work.gid, Status.BAD_RESULT, dump_exception(exc), started, finished)
    return Outcome(work.gid, Status.OK, payload, started, finished)


def _task_environment(work) -> dict | None:
    """Set a task's own environment: its GPUs, and thread pools sized to its cores."""
    if not work.cores and not work.gpus:
        return None
    changes = {}
    if work.gpus:
        changes["CUDA_VISIBLE_DEVICES"] = ",".join(work.gpus)
    if work.cores:
        from colocate.colocation.sandbox import thread_env
        changes.update(thread_env(len(work.cores)))
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    return saved


def _restore_environment(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _keep_function(item: tuple, cache: dict) -> None:
    """Cache the function a skipped work item carries (later items come without it)."""
    fn_hash, fn_bytes = item[1], item[2]
    if fn_bytes is not None and fn_hash not in cache:
        try:
            cache[fn_hash] = pickle.loads(fn_bytes)
        except BaseException:  # noqa: BLE001 - a later call reports it, as BAD_INPUT
            pass


def _not_ours(signum: int, frame: object) -> None:
    """SIGTERM and SIGINT are the worker's to act on; the executor carries on."""


def main() -> None:
    """Entry point: ``python -m colocate.child IN_FD OUT_FD SETTINGS_JSON [SHARED_FD [FDS_FD]]``.

    ``SHARED_FD``: memory shared with the worker: the take-back counter
    (:meth:`colocate.worker.childhandle.ChildHandle.take_back`): tasks of the batches numbered
    at or below it are returned unstarted, as ``REQUEUE`` outcomes; then the direct path's slot
    (:mod:`colocate.child.direct`). ``FDS_FD``: the Unix socket leased connections come over.
    """
    # The worker decides when this process ends (it kills it on a timeout, a cut-off or its own
    # exit). A batch system signals every process of a job step at preemption or cancellation,
    # this one too: the task keeps running while its worker gives back and leaves. A handler,
    # not SIG_IGN, so that programs the task starts get the default dispositions again.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _not_ours)
    in_fd, out_fd = int(sys.argv[1]), int(sys.argv[2])
    settings = json.loads(sys.argv[3])
    skip = None
    if len(sys.argv) > 4:
        size = os.fstat(int(sys.argv[4])).st_size
        skip = mmap.mmap(int(sys.argv[4]), size)
    store.context_from_environment()
    from colocate.colocation.sandbox import apply_sandbox
    applied = apply_sandbox(settings.get("cores"), settings.get("priority", "idle"),
                            settings.get("threads"), settings.get("memory_limit"),
                            die_with_parent=True)
    from colocate.wire.pipe import FrameReader, write_frame
    write_frame(out_fd, {"ready": os.getpid(), "sandbox": applied})

    cache: dict = {}
    direct = None
    if len(sys.argv) > 5:
        import socket

        from colocate.child.direct import Direct
        ctx = store._context
        seen = [0]

        def kept() -> bool:   # whether the task just run kept objects
            if ctx is None or ctx.kept == seen[0]:
                return False
            seen[0] = ctx.kept
            return True

        direct = Direct(socket.socket(fileno=int(sys.argv[5])), skip, out_fd,
                        lambda w: run_work(w, cache, settings), kept, cache)
    hot = float(settings.get("hot", 0.0))
    os.set_blocking(in_fd, False)
    reader = FrameReader(in_fd)
    number = 0   # of the batch being run, counted as the worker counts the batches it sends
    since = time.monotonic()
    while True:
        fds = [in_fd] if direct is None else [in_fd, *direct.streams()]
        ready = _wait(fds, hot, since)
        # Leased tasks first: one already sent runs before an order to end its lease that
        # came at the same time (the ending waits for it; either order keeps LeaseOver true).
        if direct is not None and len(ready) > (in_fd in ready):
            direct.ready(ready)
        if in_fd in ready:
            try:
                frames, closed = reader.drain()
            except OSError:
                return
            for batch in frames:
                if type(batch) is dict:   # an order about leased connections
                    direct.order(batch, lambda note: write_frame(out_fd, note))
                    continue
                number += 1
                for item in batch:
                    if skip is not None and number <= struct.unpack_from("q", skip)[0]:
                        _keep_function(item, cache)   # the worker counts on it being here
                        write_frame(out_fd, (item[0], int(Status.REQUEUE), b"", 0.0, 0.0, "",
                                             ()))
                        continue
                    out = run_work(Work._make(item), cache, settings)
                    # Each outcome is written as soon as it exists: if a later task kills this
                    # process, what finished before is already in the pipe and is not lost.
                    write_frame(out_fd, (out.gid, int(out.status), *out[2:]))
            if closed:   # the worker rank is gone
                return
        since = time.monotonic()


def _wait(fds: list, hot: float, since: float) -> list:
    """Readable ``fds``: polled until ``since + hot`` (SCHED_IDLE: free to the host), then slept."""
    while time.monotonic() < since + hot:
        ready = select.select(fds, [], [], 0)[0]
        if ready:
            return ready
    return select.select(fds, [], [], None)[0]
