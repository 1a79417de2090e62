"""How a task that did not return becomes the exception its future raises.

The status of its outcome (:class:`colocate.wire.messages.Status`) picks the type: the function's
own exception with the remote traceback as its cause, headed by where it ran; or one of colocate's
(``WorkerCrashed``, ``TaskTimeout``, ...) with a message that says what happened, where, after
how many attempts, and what became of the executor.
"""

from __future__ import annotations

import signal
from typing import Any

from colocate.errors import (
    MemoryLimitExceeded,
    ObjectLost,
    SerializationError,
    TaskError,
    TaskInterrupted,
    TaskTimeout,
    WorkerCrashed,
    WorkerLost,
)
from colocate.wire.messages import ResultMsg, Status, TaskInfo, loads, with_remote_traceback


def task_error(label: str, res: ResultMsg, world_size: int) -> BaseException:
    """The exception a failed task's future raises (``label`` names the function)."""
    info = res.info
    place = where(info)
    attempts = info.attempts if info else 1
    kw = {"task": label, "worker": place, "attempts": attempts}
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    status = Status(res.status)
    if status in (Status.RAISED, Status.BAD_INPUT, Status.BAD_RESULT):
        exc, tb = loads(res.payload)
        header = f"worker {place} of a world of {world_size} ranks"
        if status == Status.RAISED:
            return with_remote_traceback(exc, tb, header)
        stage = "arguments" if status == Status.BAD_INPUT else "result"
        verb = "unpickle the function or arguments" if stage == "arguments" else (
            "pickle the result")
        err = SerializationError(f"the worker could not {verb} of {label}: "
                                 f"{type(exc).__name__}: {exc}", stage=stage, side="worker",
                                 **kw)
        return with_remote_traceback(err, tb, header)
    detail = loads(res.payload) if res.payload else None
    if status == Status.CRASHED:
        return WorkerCrashed(f"{label}: the executor process died with "
                             f"{exit_text(detail)} on {place}{tries}; it was restarted",
                             exitcode=detail, **kw)
    if status == Status.TIMEOUT:
        return TaskTimeout(f"{label}: ran longer than its {detail:g} s timeout on "
                           f"{place}{tries}; the executor was killed and restarted", **kw)
    if status == Status.MEMORY:
        limit = f" of {detail} bytes" if detail else ""
        return MemoryLimitExceeded(f"{label}: exceeded its memory limit{limit} on "
                                   f"{place}{tries}", **kw)
    if status == Status.LOST:
        return WorkerLost(f"{label}: {detail}{tries}", **kw)
    if status == Status.INTERRUPTED:
        return TaskInterrupted(f"{label}: interrupted ({detail})", **kw)
    if status == Status.NO_OBJECT:   # (not a TaskError: the same type a get() raises)
        return ObjectLost(f"{label} was not run: an argument's {detail}")
    if status == Status.CANCELLED:
        return TaskInterrupted(f"{label}: cancelled before it started", **kw)
    return TaskError(f"{label}: {detail}", **kw)


def where(info: TaskInfo | None) -> str:
    """Where a task ran, for messages."""
    return info.where() if info else "no worker"


def exit_text(code: Any) -> str:
    """An executor's exit code in words (negative: the signal that killed it)."""
    if isinstance(code, int) and code < 0:
        try:
            return f"signal {signal.Signals(-code).name} (exit status {code})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
