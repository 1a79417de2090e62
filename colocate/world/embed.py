"""Embedding: turn some ranks of an existing mpi4py application into a colocate world.

``with colocate.embed(comm, workers=K) as ex:`` is called by every rank of ``comm``. The last
``K + 1`` ranks become the world: the first of them schedules, the ``K`` others run tasks (as in
``mpi4py.futures.MPICommExecutor``, ``workers`` counts only the ranks that run tasks). On those
ranks the ``with`` statement serves until every other rank has left its block, then ``ex`` is
``None``. On every other rank ``ex`` is an :class:`~colocate.Executor` connected to that world,
shut down when the block ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from colocate.errors import ConfigError

ADDRESS_TAG = 0x0C0C   # tag of the address message from the world to its clients
ADDRESS_TIMEOUT = 120.0


@contextlib.contextmanager
def embed(comm: Any, workers: int | None = None, *, config: str | None = None) -> Iterator[Any]:
    """Run tasks on ``workers`` ranks of ``comm`` (one more schedules); others get an Executor.

    Args:
        comm: an mpi4py intracommunicator (e.g. ``MPI.COMM_WORLD``); collective over it.
        workers: how many ranks run tasks (at least 1). One more rank schedules, and at least
            one rank must stay a client, so ``workers <= comm.Get_size() - 2``. Default: every
            rank but rank 0 serves (``comm.Get_size() - 2`` run tasks).
        config: a configuration file for the world.

    Raises:
        ConfigError: ``workers`` does not fit the communicator's size (on every rank).
    """
    from colocate import config as configuration
    from colocate.client.executor import Executor
    from colocate.world.serve import serve
    size, rank = comm.Get_size(), comm.Get_rank()
    if size < 3:
        raise ConfigError(
            f"found a communicator of {size} rank(s), needs at least 3: one rank schedules, at "
            "least one runs tasks, and at least one stays a client (start more ranks)",
            key="embed(comm)")
    k = size - 2 if workers is None else workers
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= size - 2:
        raise ConfigError(
            f"found workers={k!r} on a communicator of {size} ranks; needs 1 <= workers <= "
            f"{size - 2}: workers counts the ranks that run tasks, one more rank schedules, "
            f"and at least one rank stays a client (pass workers between 1 and {size - 2}, or "
            "start more ranks)", key="embed(workers)")
    first = size - (k + 1)   # the world: a scheduler and k workers
    serving = rank >= first
    clients = list(range(first))
    sub = comm.Split(1 if serving else 0, rank)
    try:
        if serving:
            cfg = configuration.load(config)

            def tell_clients(address: Any) -> None:
                for c in clients:
                    comm.send(address, dest=c, tag=ADDRESS_TAG)

            serve(cfg, None, comm=sub, on_ready=tell_clients, expect_clients=len(clients))
            yield None
        else:
            address = _receive_address(comm, first)
            ex = Executor(address=address, config=config)
            try:
                yield ex
            finally:
                ex.shutdown(wait=True)
    finally:
        sub.Free()


def _receive_address(comm: Any, source: int) -> Any:
    deadline = time.monotonic() + ADDRESS_TIMEOUT
    delay = 0.0005
    while not comm.iprobe(source=source, tag=ADDRESS_TAG):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the embedded world (rank {source}) did not start within "
                               f"{ADDRESS_TIMEOUT:g} s; see its error output")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
    return comm.recv(source=source, tag=ADDRESS_TAG)
