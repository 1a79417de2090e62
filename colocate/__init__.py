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
"""

from .client import Executor, Future
from .embed import embed
from .errors import (
    AuthenticationError,
    BrokenWorld,
    ColocateError,
    ConfigError,
    MemoryLimitExceeded,
    ObjectLost,
    SerializationError,
    ServerUnavailable,
    StoreFull,
    TaskError,
    TaskInterrupted,
    TaskTimeout,
    WorkerCrashed,
    WorkerLost,
)
from .messages import RemoteError, TaskInfo
from .store import Ref, keep

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError", "BrokenWorld", "ColocateError", "ConfigError", "Executor", "Future",
    "MemoryLimitExceeded", "ObjectLost", "Ref", "RemoteError", "SerializationError",
    "ServerUnavailable", "StoreFull", "TaskError", "TaskInfo", "TaskInterrupted", "TaskTimeout",
    "WorkerCrashed", "WorkerLost", "embed", "keep",
]
