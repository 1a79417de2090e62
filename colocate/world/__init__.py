"""Setting a world up: what every rank runs before it becomes rank 0 or a worker.

- :mod:`~colocate.world.serve`: ``colocate serve``: check the launch, find each rank's spare
  cores, connect the bells, then run :mod:`colocate.rank0.loop` or :mod:`colocate.worker.loop`.
- :mod:`~colocate.world.embed`: ``colocate.embed(comm)``: the same on ranks of an existing
  mpi4py application.
- :mod:`~colocate.world.idle`: how long a polling loop sleeps, from hot to cold.
"""
