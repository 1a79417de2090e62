"""Rank 0: the scheduler rank of a world (``colocate serve``'s rank 0, or ``embed``'s root).

- :mod:`~colocate.rank0.loop`: the only part that does I/O: turns MPI messages, client and
  joined-worker streams, bells and signals into scheduler events, and instructions back into
  messages; writes the address file.
- :mod:`~colocate.rank0.scheduler`: a pure state machine, ``handle(event) -> [instruction]``:
  queues, fairness, retries, leases, drains. No MPI, no clock.
- :mod:`~colocate.rank0.events`: its vocabulary: events (facts, e.g. ``WorkerGone``) in,
  instructions (verbs, e.g. ``SendWork``, ``DiscardObjects``) out.
- :mod:`~colocate.rank0.records`: the scheduler's records of tasks and worker slots.
- :mod:`~colocate.rank0.placement`: where a task can go, found from indexes, not a scan (an
  object the scheduler holds).
- :mod:`~colocate.rank0.objects`: the store's books, an object the scheduler holds: which
  worker holds each object, whose it is, how big, and each node's room.
- :mod:`~colocate.rank0.owner`: the watch on the process that owns a local world.
- :mod:`~colocate.rank0.pool`: pools of joined workers grown and shrunk through the batch system.

Talks to: worker ranks (:mod:`colocate.wire.mpi` + :mod:`colocate.wire.bell`), joined workers
and clients (:mod:`colocate.wire.stream`), the batch system (``sbatch``/``squeue``/``scancel``).
"""
