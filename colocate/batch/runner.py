"""The batch runner: submit a batch's remaining tasks to an Executor and journal every result.

Data flow, all in the calling thread::

    run_dir.pending() ─► submit, at most max_in_flight outstanding ─► Executor
    futures ─► wait(FIRST_COMPLETED, bounded) ─► run_dir.record() ─► progress.update()

One thread submits, waits and records: no callback writes to the journal, so records never
interleave and each is on disk (fsynced) before the next task is submitted in its place.

A drain (``drain_event`` set, e.g. by SIGTERM before the walltime or a first Ctrl-C) stops
submitting and takes back at once every task that has not started (queued at rank 0 or sent
ahead to a worker): they get no record, so the summary counts them as not run and a resume runs
them. Only running tasks are waited for, at most ``drain_timeout`` seconds; those still running
then are recorded as interrupted. ``stop_event`` (a second Ctrl-C) stops at once: every task
still out is recorded as interrupted, within one :data:`POLL_INTERVAL`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from threading import Event
from typing import Any

from colocate.errors import TaskInterrupted

from .data import DataRefs
from .functions import resolve_function
from .journal import EXIT_CONFIG, EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, RunDir, RunSummary
from .progress import Progress
from .schema import BatchSpec, TaskSpec

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INCOMPLETE", "EXIT_OK", "exit_code",
           "resolve_function", "run_batch"]

# Outstanding tasks per worker slot: enough that no worker waits for its next task while we
# record a result, few enough that a drain cancels little and memory stays flat for huge
# batches (a million tasks are never all submitted at once).
IN_FLIGHT_PER_WORKER = 4
# Longest blocking wait, in seconds: bounds how late a drain or a log line can be.
POLL_INTERVAL = 0.2
# After the executor breaks, seconds to wait for its remaining futures to fail.
ABORT_GRACE = 10.0


def exit_code(summary: RunSummary) -> int:
    """Process exit code for a run: 0 all ok, 1 some task failed, 3 incomplete (resume)."""
    return summary.exit_code


def run_batch(ex: Any, spec: BatchSpec, run_dir: RunDir, progress: bool | str | Progress = True,
              drain_event: Event | None = None, *, max_in_flight: int | None = None,
              rerun_failed: bool = True, drain_timeout: float | None = None,
              stop_event: Event | None = None,
              take_back: Callable[[], None] | None = None) -> RunSummary:
    """Run the tasks of ``spec`` that ``run_dir`` has not finished, recording each result.

    Args:
        ex: an Executor (``submit``, ``options``, ``max_workers``).
        spec: the validated batch.
        run_dir: the run directory, opened by ``RunDir.create`` or ``RunDir.open_for_resume``;
            left open (the caller closes it).
        progress: ``True`` (bar on a TTY, log lines otherwise), ``False``, a mode
            (``"bar"``, ``"log"``, ``"off"``) or a :class:`Progress`.
        drain_event: when set, stop submitting, take back unstarted tasks, finish running ones.
        max_in_flight: most tasks submitted and not finished; ``4 * ex.max_workers`` if None.
        rerun_failed: run tasks whose latest record is ``failed`` again.
        drain_timeout: after a drain starts, wait at most this long for running tasks (those
            still running are recorded as interrupted); None waits for them.
        stop_event: when set, stop at once: tasks still out are recorded as interrupted.
        take_back: called once when the drain starts, to take back the tasks that have not
            started; by default ``ex.cancel_pending()`` (this executor's tasks only). A caller
            that owns the world passes one that drains the whole world.

    Returns:
        The summary over the whole run directory (also written to ``summary.json``).
    """
    pending = deque(run_dir.pending(spec.tasks, rerun_failed=rerun_failed))
    limit = max_in_flight or IN_FLIGHT_PER_WORKER * max(1, int(getattr(ex, "max_workers", 0)
                                                               or 16))
    if not isinstance(progress, Progress):
        mode = {True: "auto", False: "off"}.get(progress, progress)   # type: ignore[arg-type]
        progress = Progress(len(spec.tasks), done=len(spec.tasks) - len(pending),
                            name=spec.name, mode=mode)
    submitter = _Submitter(ex, spec)
    in_flight: dict[Future, TaskSpec] = {}
    error: str | None = None
    stopping = False
    deadline: float | None = None

    def stop(grace: float | None) -> None:
        nonlocal stopping, deadline
        stopping = True
        pending.clear()
        for fut in [f for f in in_flight if f.cancel()]:
            del in_flight[fut]
        deadline = None if grace is None else time.monotonic() + grace

    def cut_off(why: str) -> None:
        for fut, task in list(in_flight.items()):
            if not fut.done():
                del in_flight[fut]
                run_dir.record(task, "interrupted", error=TaskInterrupted(why),
                               info=getattr(fut, "info", None))
                progress.update("interrupted")

    summary: RunSummary | None = None
    try:
        while True:
            if not stopping and drain_event is not None and drain_event.is_set():
                stop(drain_timeout)
                try:
                    (take_back or getattr(ex, "cancel_pending", lambda: None))()
                except Exception as exc:   # e.g. the world is already gone: nothing to take
                    error = error or f"{type(exc).__name__}: {exc}"
            if stop_event is not None and stop_event.is_set():
                if not stopping:
                    stop(None)
                cut_off("stopped at once (a second signal)")
            while not stopping and pending and len(in_flight) < limit:
                task = pending.popleft()
                try:
                    in_flight[submitter.submit(task)] = task
                except BrokenExecutor as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    stop(ABORT_GRACE)
                except Exception as exc:   # e.g. arguments that cannot be pickled
                    run_dir.record(task, "failed", error=exc)
                    progress.update("failed")
            if deadline is not None and time.monotonic() > deadline:
                cut_off(f"still running {drain_timeout:g} s after the drain began")
            if not in_flight:
                break
            done, _ = wait(in_flight, timeout=POLL_INTERVAL, return_when=FIRST_COMPLETED)
            for fut in done:
                task = in_flight.pop(fut)
                if fut.cancelled():
                    continue
                status, result, exc = _outcome(fut)
                if status == "interrupted" and _never_started(fut, exc):
                    continue   # taken back by a drain: no record, so it counts as not run
                run_dir.record(task, status, result=result, error=exc,
                               info=getattr(fut, "info", None))
                progress.update(status)
                if isinstance(exc, BrokenExecutor) and error is None:
                    error = f"{type(exc).__name__}: {exc}"
                    stop(ABORT_GRACE)
            progress.tick(len(in_flight))
    finally:
        for fut in in_flight:
            fut.cancel()
        submitter.data.free()
        try:
            summary = run_dir.write_summary(error)
        finally:
            progress.close(summary)
    return summary


def _never_started(fut: Future, exc: BaseException | None) -> bool:
    """Whether an interrupted task was taken back before it started (it carries no placement)."""
    return isinstance(exc, TaskInterrupted) and getattr(fut, "info", None) is None


def _outcome(fut: Future) -> tuple[str, Any, BaseException | None]:
    """``(status, result, exception)`` of a finished, not cancelled future."""
    exc = fut.exception(timeout=0)
    if exc is None:
        return "ok", fut.result(timeout=0), None
    if isinstance(exc, (TaskInterrupted, BrokenExecutor)):
        return "interrupted", None, exc
    return "failed", None, exc


class _Submitter:
    """Submits tasks through one executor view per distinct set of options."""

    def __init__(self, ex: Any, spec: BatchSpec):
        self.ex = ex
        self.spec = spec
        self.views: dict[Any, Any] = {}
        self.functions: dict[str, Callable] = dict(spec.functions)
        self.data = DataRefs(ex, spec.data)

    def submit(self, task: TaskSpec) -> Future:
        fn = self.functions.get(task.function)
        if fn is None:   # a spec loaded with resolve=False
            fn = self.functions[task.function] = resolve_function(task.function,
                                                                  self.spec.base_dir)
        view = self.views.get(task.options)
        if view is None:
            kwargs = task.options.executor_kwargs()
            view = self.views[task.options] = self.ex.options(**kwargs) if kwargs else self.ex
        args, kwargs = self.data.resolve(task.args, task.kwargs)
        return view.submit(fn, *args, **kwargs)
