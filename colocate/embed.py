"""Embedding: turn some ranks of an existing mpi4py application into a colocate world.

``with colocate.embed(comm, workers=K) as ex:`` is called by every rank of ``comm``. The last
``K`` ranks become the world (the first of them schedules, the others run tasks): on those ranks
the ``with`` statement serves until every other rank has left its block, then ``ex`` is ``None``
(the idiom of ``mpi4py.futures.MPICommExecutor``). On every other rank ``ex`` is an
:class:`~colocate.Executor` connected to that world, shut down when the block ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError

ADDRESS_TAG = 0x0C0C   # tag of the address message from the world to its clients
ADDRESS_TIMEOUT = 120.0


@contextlib.contextmanager
def embed(comm: Any, workers: int | None = None, *, config: str | None = None) -> Iterator[Any]:
    """Serve tasks on ``workers`` ranks of ``comm``; the other ranks get an Executor.

    Args:
        comm: an mpi4py intracommunicator (e.g. ``MPI.COMM_WORLD``); collective over it.
        workers: how many ranks form the world, one of which schedules (at least 2; default:
            every rank but rank 0, as in ``MPICommExecutor``).
        config: a configuration file for the world.

    Raises:
        ConfigError: ``workers`` does not fit the communicator's size.
    """
    from . import config as configuration
    from .client import Executor
    from .world import serve
    size, rank = comm.Get_size(), comm.Get_rank()
    k = size - 1 if workers is None else workers
    if size < 3:
        raise ConfigError(
            f"found a communicator of {size} rank(s), needs at least 3: one rank schedules, at "
            "least one runs tasks, and at least one stays a client (start more ranks)",
            key="embed(comm)")
    if not isinstance(k, int) or k < 2 or k > size - 1:
        raise ConfigError(
            f"found workers={k!r} on a communicator of {size} ranks; needs 2 <= workers <= "
            f"{size - 1}: one rank schedules, at least one runs tasks, and at least one rank "
            "stays a client (run with more ranks, or change workers)", key="embed(workers=)")
    first = size - k
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
