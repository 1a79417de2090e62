"""colocate: serve Python functions on the idle cores and memory of an HPC allocation.

Public API (everything else is internal):

* :class:`Executor` — ``concurrent.futures.Executor`` over a colocate world (local, or a running
  ``colocate serve`` via ``address=``); ``ex.options(timeout=…, retries=…)`` for per-task settings.
* :func:`embed` — turn some ranks of an mpi4py application into a colocate world.
* :class:`Future`, :class:`TaskInfo` — futures carry ``info``: where and when the task ran.
* :class:`Ref`, :func:`keep` — the object store: ``ref = ex.put(array)`` keeps data in a worker
  rank's memory, ``ref.get()`` reads it back, a ``Ref`` argument reaches the function as the
  object, and a function returns ``keep(value)`` to leave a large result remote.
* the exceptions, all under :class:`ColocateError`.

The names are imported on first use (PEP 562), so the processes that never use the client (the
executor child, worker ranks, rank 0) do not load its stack by importing ``colocate``.

Where the code runs, by package: ``client/`` (the user's process), ``rank0/`` (the scheduler
rank), ``worker/`` (worker ranks and joined workers), ``child/`` (the executor child, where user
functions run), ``store/`` (the object store, on both sides of its data port), ``wire/`` (what
crosses between processes), ``world/`` (setting a world up), ``launch/`` (the batch-system
launchers), ``batch/`` (YAML batches), ``colocation/`` (staying out of the host job's way). See
``docs/architecture.md``.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_ERRORS = ("AuthenticationError", "BrokenWorld", "ColocateError", "ConfigError",
           "MemoryLimitExceeded", "ObjectLost", "SerializationError", "ServerUnavailable",
           "StoreFull", "TaskError", "TaskInterrupted", "TaskTimeout", "WorkerCrashed",
           "WorkerLost")
_WHERE = {
    "Executor": "colocate.client.executor",
    "Future": "colocate.client.executor",
    "embed": "colocate.world.embed",
    "RemoteError": "colocate.wire.messages",
    "TaskInfo": "colocate.wire.messages",
    "Ref": "colocate.store",
    "keep": "colocate.store",
    **{name: "colocate.errors" for name in _ERRORS},
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'colocate' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value    # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
