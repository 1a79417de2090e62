"""The client: runs in the user's process (a script, a notebook, ``colocate run``).

- :mod:`~colocate.client.executor`: the public :class:`~colocate.client.executor.Executor`
  (``concurrent.futures``), ``options()``, ``put``/``get``/``free``, ``status()``.
- :mod:`~colocate.client.connection`: the engine: one connection to rank 0 over
  :mod:`colocate.wire.stream`, owned by one thread, the futures, and the leased path (lone
  tasks straight to a worker's task port).
- :mod:`~colocate.client.outcomes`: how an outcome that is not a return value becomes the
  exception its future raises.
- :mod:`~colocate.client.localworld`: the ``mpiexec … colocate serve`` child that
  ``Executor()`` starts, and stops when the client goes.

Talks to: rank 0 (tasks, puts' bookkeeping, status), a leased worker (lone tasks), workers' data
ports (object data, :mod:`colocate.store`).
"""
