"""A thread-pool test double of colocate's Executor, for the batch layer's tests.

It implements the part of the contract the batch runner uses: ``submit``, ``options`` (a view
sharing the pool), ``max_workers``, ``shutdown`` and the context manager; futures get
``info`` (node, rank, cores, started, finished, attempts) when done; ``retries`` retry runtime
failures and the ``retry_on`` types. It also counts outstanding futures, to test bounds.

Shared by tests/unit/batch/ and tests/integration/ (``from fakes import FakeExecutor``: pytest
puts tests/, where the top conftest.py is, on ``sys.path``; a subprocess needs it on its
``PYTHONPATH``).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from colocate.errors import MemoryLimitExceeded, TaskTimeout, WorkerCrashed, WorkerLost

OPTION_NAMES = {"timeout", "retries", "cores", "memory", "gpus", "retry_on"}
RUNTIME_RETRYABLE = (WorkerCrashed, TaskTimeout, MemoryLimitExceeded, WorkerLost)


class FakeInfo(NamedTuple):
    node: str
    rank: int
    cores: list[int]
    started: float
    finished: float
    attempts: int


class FakeFuture(Future):
    info: FakeInfo | None = None


class _View:
    def __init__(self, ex: FakeExecutor, opts: dict[str, Any]):
        self._ex, self._opts = ex, opts

    @property
    def max_workers(self) -> int:
        return self._ex.max_workers

    def options(self, **opts: Any) -> _View:
        return self._ex.options(**{**self._opts, **opts})

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> FakeFuture:
        return self._ex._submit(fn, args, kwargs, self._opts)


class FakeExecutor:
    def __init__(self, max_workers: int = 2, node: str = "fake-node"):
        self.max_workers = max_workers
        self.node = node
        self._pool = ThreadPoolExecutor(max_workers)
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(max_workers):
            self._slots.put(slot)
        self._lock = threading.Lock()
        self._futures: set[FakeFuture] = set()
        self.outstanding = 0
        self.max_outstanding = 0
        self.submitted = 0
        self.options_seen: list[dict[str, Any]] = []

    def options(self, **opts: Any) -> _View:
        unknown = set(opts) - OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}")
        self.options_seen.append(opts)
        return _View(self, opts)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> FakeFuture:
        return self._submit(fn, args, kwargs, {})

    def _submit(self, fn: Any, args: tuple, kwargs: dict, opts: dict) -> FakeFuture:
        fut = FakeFuture()
        with self._lock:
            self.submitted += 1
            self.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding)
            self._futures.add(fut)
        fut.add_done_callback(self._done)
        self._pool.submit(self._run, fut, fn, args, kwargs, opts)
        return fut

    def _done(self, fut: FakeFuture) -> None:
        with self._lock:
            self.outstanding -= 1
            self._futures.discard(fut)

    def _run(self, fut: FakeFuture, fn: Any, args: tuple, kwargs: dict, opts: dict) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        slot = self._slots.get()
        try:
            retry_on = RUNTIME_RETRYABLE + tuple(opts.get("retry_on", ()))
            cores = [slot * opts.get("cores", 1) + i for i in range(opts.get("cores", 1))]
            attempts = 0
            while True:
                attempts += 1
                started = time.time()
                try:
                    result, exc = fn(*args, **kwargs), None
                except Exception as e:
                    result, exc = None, e
                finished = time.time()
                if exc is None or not isinstance(exc, retry_on) or attempts > opts.get(
                        "retries", 0):
                    break
            fut.info = FakeInfo(self.node, slot + 1, cores, started, finished, attempts)
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)
        finally:
            self._slots.put(slot)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if cancel_futures:
            with self._lock:
                futures = list(self._futures)
            for fut in futures:
                fut.cancel()
        self._pool.shutdown(wait=wait)

    def __enter__(self) -> FakeExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)
