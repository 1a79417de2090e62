"""A worker: a worker rank of the MPI world, or a worker that joined over TCP; never runs user code.

- :mod:`~colocate.worker.loop`: relays work from rank 0 to its executor children and outcomes
  back, holds its node's stored objects (:mod:`colocate.store.server`), pauses on the guard.
- :mod:`~colocate.worker.childhandle`: its handle on one executor child: start, feed, watch,
  kill, restart.
- :mod:`~colocate.worker.lease`: the task port where a leased client sends its lone tasks.
- :mod:`~colocate.worker.confinement`: cgroup, per-task memory limit, interference guard.
- :mod:`~colocate.worker.joined`: ``colocate join``: the same loop over one TCP stream, and the
  clean leave on SIGTERM.

Talks to: rank 0 (MPI and a bell, or one stream), its children (:mod:`colocate.wire.pipe`),
leased clients (task port), anyone reading its objects (data port).
"""
