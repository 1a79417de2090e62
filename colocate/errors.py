"""Exceptions: one root, ``ColocateError``, with subclasses that say what happened and what to do.

Each class subclasses the standard exception that fits where one does (``TimeoutError``,
``MemoryError``, ``ValueError``, ``BrokenExecutor``), so code written for
``concurrent.futures`` keeps working.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor


class ColocateError(Exception):
    """Root of every error colocate raises itself (not of errors raised by your functions)."""


class ConfigError(ColocateError, ValueError):
    """A configuration value, batch file or command-line argument is invalid.

    Raised before anything runs. The message names the source (file, key path or option),
    what was found and what was expected; fix the input and run again.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class TaskError(ColocateError):
    """A task failed for a reason other than an exception raised by its function.

    Attributes:
        task: a short description of the task (function name and task id).
        worker: where it ran, e.g. ``"rank 2 on node01, cores [3]"``, or ``None``.
        attempts: how many times it was started.
    """

    def __init__(self, message: str, *, task: str = "", worker: str | None = None,
                 attempts: int = 1):
        self.task = task
        self.worker = worker
        self.attempts = attempts
        super().__init__(message)


class WorkerCrashed(TaskError):
    """The executor process running the task died (``os._exit``, or a signal like SIGSEGV).

    The executor is restarted and the world keeps serving. ``exitcode`` is the exit status, or
    ``-signal`` for a signal. Look for the cause in the function (native code, ``os._exit``) or
    raise its ``retries`` if the crash is transient.
    """

    def __init__(self, message: str, *, exitcode: int | None = None, **kw):
        self.exitcode = exitcode
        super().__init__(message, **kw)


class TaskTimeout(TaskError, TimeoutError):
    """The task ran longer than its ``timeout``; its executor was killed and restarted.

    Raise the task's timeout (``ex.options(timeout=...)`` or ``timeout:`` in a batch) if the
    work is expected to take longer.
    """


class MemoryLimitExceeded(TaskError, MemoryError):
    """The task used more memory than its limit allowed (``memory`` option or the node budget).

    Ask for more memory per task, or split the work into smaller pieces.
    """


class SerializationError(TaskError):
    """A function, its arguments or its result could not be pickled or unpickled.

    ``stage`` says which: ``"function"``, ``"arguments"`` or ``"result"``, and ``side`` whether
    it happened on the client or on the worker. Make the object picklable by cloudpickle
    (e.g. avoid open files, locks and sockets in arguments and results).
    """

    def __init__(self, message: str, *, stage: str, side: str, **kw):
        self.stage = stage
        self.side = side
        super().__init__(message, **kw)


class TaskInterrupted(TaskError):
    """The task was cut off by a drain (SIGTERM before walltime) or by ``shutdown``.

    A batch records it as interrupted; ``colocate run --resume`` runs it again.
    """


class WorkerLost(TaskError):
    """The worker rank that held the task stopped answering, and the task ran out of retries.

    The rank's node may have failed; see the server log.
    """


class BrokenWorld(ColocateError, BrokenExecutor):
    """The connection to the colocate world is gone: the server stopped, crashed or refused us.

    Every pending future fails with this error; create a new ``Executor`` to go on.
    """


class AuthenticationError(ColocateError, PermissionError):
    """The server refused the connection: the token in the address file did not match.

    Use the address file written by the server you mean to reach (it is readable by its owner
    only); a stale file from an earlier server holds a stale token.
    """


class ServerUnavailable(ColocateError, ConnectionError):
    """No server answers at the address given (missing or stale address file, server gone).

    Start one with ``mpiexec -n N colocate serve --address-file PATH``, or check the path.
    """


class StoreFull(ColocateError, MemoryError):
    """A ``put`` does not fit the memory budget of the node it was meant for.

    The message names the node, the object's size, the node's budget for functions
    (``co_location.memory_budget``) and what already uses it (stored objects, running tasks'
    reservations). Free objects you no longer need (``ex.free(ref)`` or drop the last ``Ref``),
    put on another node, or raise the budget.
    """


class ObjectLost(ColocateError, LookupError):
    """The object a ``Ref`` names cannot be read: it was freed, or its worker rank is gone.

    Raised by ``Ref.get``, and by the future of a task whose argument names such an object
    (rank 0 then never sends the task). When its holder went away, the message says which node
    it was on and why (a joined worker that left on SIGTERM or whose batch job ended, a worker
    that died, a link that was lost). Objects live in the memory of one worker and die with it;
    keep what you cannot lose elsewhere too, and put it again after a loss.
    """
