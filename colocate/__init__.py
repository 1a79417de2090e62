"""colocate: serve Python functions on the idle cores and memory of an HPC allocation.

Public API (everything else is internal):

* :class:`Executor` — ``concurrent.futures.Executor`` over a colocate world (local, or a running
  ``colocate serve`` via ``address=``); ``ex.options(timeout=…, retries=…)`` for per-task settings.
* :func:`embed` — turn some ranks of an mpi4py application into a colocate world.
* :class:`Future`, :class:`TaskInfo` — futures carry ``info``: where and when the task ran.
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
    SerializationError,
    ServerUnavailable,
    TaskError,
    TaskInterrupted,
    TaskTimeout,
    WorkerCrashed,
    WorkerLost,
)
from .messages import RemoteError, TaskInfo

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError", "BrokenWorld", "ColocateError", "ConfigError", "Executor", "Future",
    "MemoryLimitExceeded", "RemoteError", "SerializationError", "ServerUnavailable", "TaskError",
    "TaskInfo", "TaskInterrupted", "TaskTimeout", "WorkerCrashed", "WorkerLost", "embed",
]
