"""Setting up a colocate world: check the launch, place workers on spare cores, connect bells.

``serve`` is what every rank of ``mpiexec -n N colocate serve`` runs. Rank 0 opens the listening
socket (bells and clients), every worker rank finds its spare core(s) on its node and rings in, then
rank 0 writes the address file and both sides enter their loops. Embedding (``colocate.embed``)
uses the same pieces on a sub-communicator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

from colocate.errors import ConfigError
from colocate.wire import bell as bells
from colocate.wire import mpi
from colocate.wire.address import Address

log = logging.getLogger("colocate")

WORKER_RING_TIMEOUT = 120.0   # seconds rank 0 waits for every worker to ring in


def setup_logging(level: str, rank: int | str) -> None:
    """Log to stderr, each line headed by the rank (``COLOCATE_LOG`` overrides the level).

    ``rank`` is a rank of the world, or a word for a process outside it (``"join"``).
    """
    level = os.environ.get("COLOCATE_LOG", level).upper()
    root = logging.getLogger("colocate")
    if root.handlers:
        return
    who = f"rank {rank}" if isinstance(rank, int) else rank
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s.%(msecs)03d colocate[{who}] %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if level in logging._nameToLevel else "INFO")


def node_name(cfg: dict) -> str:
    """This rank's node name (config ``co_location.node_name``, else what MPI says)."""
    return cfg["co_location"]["node_name"] or mpi.processor_name()


def plan_places(cfg: dict, names: list[str], rank: int, spare: list[int],
                workers: list[int]) -> list[int]:
    """The cores of worker ``rank``: its turn among the workers on its node, over the spares.

    Args:
        names: node name of every rank (index = rank).
        spare: the spare cores of this node.
        workers: the ranks that are workers (all but the scheduler).
    """
    mine = names[rank]
    local = [r for r in workers if names[r] == mine]
    i = local.index(rank)
    if not spare:
        raise ConfigError("no spare core on this node: co_location.spare_cores selected none; "
                          "name the cores to use (e.g. '1-3') or check the host job's "
                          "placement with `colocate info`", key="co_location.spare_cores")
    if len(local) > len(spare) and i == len(spare):
        log.warning("%d worker ranks on %s share %d spare core(s) %s: start fewer ranks per "
                    "node for one core each", len(local), mine, len(spare), spare)
    return [spare[i % len(spare)]]


def memory_budget(setting: Any) -> int:
    """Bytes of this node's memory that functions may use (a fraction of available, or a size)."""
    import psutil

    from colocate.colocation.units import parse_size
    available = psutil.virtual_memory().available
    if isinstance(setting, float) and 0 < setting <= 1:
        return int(available * setting)
    return parse_size(setting)


def spare_cores(cfg: dict) -> tuple[list[int], str]:
    """This node's spare cores and how they were found."""
    from colocate.colocation.spare import discover_spare_cores
    # Our parent is the launcher's proxy: its descendants are every local rank of this world,
    # whose start-up load must not count as the host's.
    found = discover_spare_cores(cfg["co_location"], own_pids=[os.getpid(), os.getppid()])
    return list(found.cores), found.source


def _watch_owner(owner: tuple[int, float | None], node: str) -> Any:
    """Rank 0's watch on ``serve --owner``; refuses an owner that is not running beside it.

    An owner that is gone already would stop the world the moment it starts, so this is a
    mistake: most often ``--owner`` given to a world whose rank 0 runs on another node.
    """
    from colocate.rank0.owner import OwnerWatch
    watch = OwnerWatch(*owner)
    if watch.gone():
        pid, started = owner
        when = "" if started is None else f" started at {started!r}"
        raise ConfigError(
            f"--owner {pid}: found no process {pid}{when} on {node}, the node of rank 0; "
            "expected the pid of a running process there, which the world stops with. --owner "
            "is for worlds that Executor() starts on its own node: leave it out for a world "
            "started by hand, which then runs until `colocate stop`")
    return watch


def serve(cfg: dict, address_file: str | None, comm: Any = None,
          on_ready: Callable[[Address], None] | None = None,
          expect_clients: int | None = None, early_signals: Any = None,
          owner: tuple[int, float | None] | None = None) -> int:
    """Run this rank's part of ``colocate serve``; returns the exit code.

    Args:
        cfg: the effective configuration.
        address_file: where rank 0 writes the address (``None``: write none).
        comm: the world's communicator (default ``COMM_WORLD``; a sub-communicator when embedded).
        on_ready: called on rank 0 with the address once every worker has rung in.
        expect_clients: stop once this many clients have come and gone (embedding).
        early_signals: what kept SIGTERM and SIGINT since before MPI started (``.received``):
            rank 0 drains once the world is up; worker ranks ignore them (rank 0 decides).
        owner: ``(pid, start time)`` of the process that owns this world (``serve --owner``):
            rank 0 stops the world when it exits (:mod:`colocate.rank0.owner`).
    """
    if comm is None:
        comm, rank, size = mpi.world()
    else:
        rank, size = comm.Get_rank(), comm.Get_size()
    if rank != 0 and expect_clients is None:
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # rank 0 decides when workers stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(cfg["server"]["log_level"], rank)
    if size < 2:
        raise ConfigError(
            f"found {size} rank, needs at least 2: rank 0 schedules and ranks 1..N-1 run "
            "tasks; start it as `mpiexec -n N colocate serve` with N >= 2")
    gathered = mpi.allgather(comm, (node_name(cfg), os.getpid()))   # one collective for both
    names = [name for name, _ in gathered]
    pids = [pid for _, pid in gathered]
    workers = list(range(1, size))
    if rank == 0:
        watch = None if owner is None else _watch_owner(owner, names[0])
        _confine_scheduler(cfg)
        host = "127.0.0.1" if len(set(names)) == 1 and cfg["server"]["bind"] == "auto" else (
            mpi.host_address(cfg["server"]["bind"]))
        listener = bells.listen(host)
        address = Address.new(host, listener.getsockname()[1], size, address_file or "")
        comm.bcast(address, root=0)
        worker_bells = _collect_worker_bells(listener, address.token, size - 1)
        from colocate.rank0.loop import Server
        server = Server(comm, cfg, listener, address, worker_bells, expect_clients, watch)
        server.await_workers(size - 1, WORKER_RING_TIMEOUT)
        if expect_clients is None:
            server.install_signal_handlers(early_signals.received if early_signals else [])
        if address_file:
            address.write()
        if on_ready is not None:
            on_ready(address)
        if address_file:
            log.info("serving %d worker rank(s); address %s", size - 1, address.path)
        else:
            log.info("serving %d worker rank(s), embedded in the application's MPI job: its "
                     "%d client rank(s) were told the address directly (no address file)",
                     size - 1, expect_clients or 0)
        try:
            server.run()
        finally:
            if address_file:
                address.remove()
                if watch is not None:   # a local world's private directory, now empty
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.dirname(address.path))
            if watch is not None:
                watch.close()
            listener.close()
        log.info("stopped")
        return 0
    address = comm.bcast(None, root=0)
    spare, source = spare_cores(cfg)
    cores = plan_places(cfg, names, rank, spare, workers)
    if cfg["co_location"]["pinning"]:
        # The rank shares its executor's core: it sleeps while the executor computes, and a
        # hand-over on one core costs a few microseconds where one across cores costs ~25.
        os.sched_setaffinity(0, cores)
    from colocate.colocation.topology import Topology
    gpus = [g.id for g in Topology.probe(cfg["co_location"]).gpus]
    place = {"node": names[rank], "cores": cores, "gpus": gpus,
             "memory_budget": memory_budget(cfg["co_location"]["memory_budget"]),
             "detail": {"spare": spare, "source": source, "pid": os.getpid()},
             # The world's other processes here (rank 0, other workers, the launcher's proxy):
             # the guard must not mistake their CPU time for the host's.
             "peers": [p for r, p in enumerate(pids) if names[r] == names[rank] and r != rank]
             + [os.getppid()],
             # The data port of the object store listens where rank 0's socket does: loopback
             # for a one-node world, else this node's own address.
             "token": address.token,
             "store_host": address.host if address.host.startswith("127.") else (
                 mpi.host_address(cfg["server"]["bind"]))}
    bell = bells.Bell(bells.ring_up(address.host, address.bell_port,
                                    {"token": address.token, "role": "worker", "rank": rank}))
    from colocate.worker.loop import Worker
    Worker(comm, bell, place, cfg).run()
    return 0


def _confine_scheduler(cfg: dict) -> None:
    """Keep rank 0 off the host's cores: pin it to this node's spare cores.

    It keeps its normal priority, so it preempts our SCHED_IDLE executors at once and schedules
    without delay; what it costs comes out of the spare cores, not the host's.
    """
    if not cfg["co_location"]["pinning"]:
        return
    try:
        spare, source = spare_cores(cfg)
    except ConfigError as e:
        log.warning("rank 0 is not pinned: %s", e)
        return
    if not spare:
        log.warning("rank 0 is not pinned: no spare core found on this node")
        return
    os.sched_setaffinity(0, spare)
    log.info("rank 0 pinned to spare cores %s (%s)", spare, source)


def _collect_worker_bells(listener: Any, token: str, count: int) -> dict[int, bells.Bell]:
    got: dict[int, bells.Bell] = {}
    deadline = time.monotonic() + WORKER_RING_TIMEOUT
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            missing = count - len(got)
            raise TimeoutError(f"{missing} worker rank(s) did not ring in within "
                               f"{WORKER_RING_TIMEOUT:g} s; see their error output")
        ready, _, _ = select.select([listener], [], [], left)
        if not ready:
            continue
        sock, hello = bells.answer(listener, token)
        if sock is None:
            log.warning("%s", hello)
        elif hello.get("role") == "worker":
            got[int(hello["rank"])] = bells.Bell(sock)
        else:
            log.info("a client rang before the world was ready; it will retry")
            sock.close()
    return got
