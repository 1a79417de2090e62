"""``colocate join``: workers that join a running world over TCP, from another batch job.

A world's size is fixed at ``mpiexec``; nodes that fall idle later (a pool's batch jobs,
:mod:`colocate.rank0.pool`) cannot become ranks of it. Their workers connect to rank 0's listening
socket instead, with the world's token and wire version, exactly as clients do, and from then on
rank 0 schedules them like any worker rank: the same :class:`~colocate.worker.loop.Worker` loop, the
same executor child, isolation, pinning, priority, cgroups, guard and object store.

The one difference is the link to rank 0. A worker rank has two: MPI messages
(:class:`~colocate.wire.mpi.Mailbox`) and a TCP bell beside them to wake it and to see rank 0 die.
A joined worker has one TCP :class:`~colocate.wire.stream.Stream` that does both jobs, behind the
same two interfaces (:class:`StreamLink`). It is outside the MPI world, so its death never takes the
world down, under MPICH too: rank 0 sees the stream close and fails only its running task.

Process layout: ``colocate join`` on a node with several cores forks one worker process per
core (each joins on its own, as one worker rank per core would) and forwards SIGTERM and SIGINT
to them. On SIGTERM (the batch system's preemption or time-limit warning) each worker leaves:

1. it pauses itself at rank 0 (``PauseCores``), so nothing new is placed on it;
2. the executor skips what was sent ahead and not started, which goes back as ``REQUEUE`` and
   is placed elsewhere; work still on its way comes back the same way;
3. the running task has ``pool.grace`` seconds to finish, and its result is sent;
4. it says ``Leaving``; rank 0 answers ``Shutdown`` (the link keeps order, so whatever rank 0
   sent before reaches the worker first), and it exits 0.

Past the grace period it exits anyway; its running task then fails with ``WorkerLost`` at rank
0 and is retried per ``tasks.retries``, as for any lost worker.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from colocate.errors import ConfigError, ServerUnavailable
from colocate.wire.stream import Stream

log = logging.getLogger("colocate.worker")

JOIN_TIMEOUT = 30.0   # seconds to wait for rank 0's answer to a join


class StreamLink:
    """A joined worker's link to rank 0: the worker's mailbox and its bell in one TCP stream.

    Offers what :class:`~colocate.worker.loop.Worker` uses of :class:`~colocate.wire.mpi.Mailbox`
    (``send``, ``poll``, ``flush``) and of :class:`~colocate.wire.bell.Bell` (``fileno``, ``drain``,
    ``ring``, ``close``). A stream needs no bell: whatever arrives on it wakes the worker.
    """

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.inbox: collections.deque = collections.deque()

    # Mailbox
    def send(self, obj: Any, dest: int = 0) -> None:
        """Queue ``obj`` for rank 0 and push what the socket takes now."""
        self.stream.send(obj)

    def poll(self) -> tuple[int, Any] | None:
        """``(0, message)`` if one from rank 0 has arrived, else ``None``; never waits."""
        if self.stream.pending:
            self.stream.flush()
        if not self.inbox and not self.stream.closed:
            self.inbox.extend(self.stream.receive())
        return (0, self.inbox.popleft()) if self.inbox else None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds for queued output to leave; True if all did."""
        deadline = time.monotonic() + timeout
        while self.stream.pending and not self.stream.closed:
            if time.monotonic() > deadline:
                return False
            import select
            select.select([], [self.stream], [], max(0.0, deadline - time.monotonic()))
            self.stream.flush()
        return not self.stream.pending

    # Bell
    def fileno(self) -> int:
        """The socket, for ``select``: readable when rank 0 sent something or closed."""
        return self.stream.fileno()

    def drain(self) -> bool:
        """Take in what has arrived; False once rank 0 has closed the connection."""
        self.inbox.extend(self.stream.receive())
        return not self.stream.closed or bool(self.inbox)

    def ring(self) -> None:
        """Nothing to do: the message itself wakes rank 0."""

    def close(self) -> None:
        """Close the connection."""
        self.stream.close()


def join(cfg: dict, address_path: str, cores: list[int] | None, config_path: str | None) -> int:
    """Run ``colocate join``: one joined worker per core of ``cores`` (default: spare cores).

    Returns the exit code: 0 when every worker left cleanly.

    Raises:
        ServerUnavailable: no world at ``address_path``, or it refused the join.
        ConfigError: no spare core here, or a core that this process may not use.
    """
    import mpi4py
    mpi4py.rc.initialize = False   # a joined worker is not an MPI process: never start MPI
    mpi4py.rc.finalize = False
    from colocate.wire import address as addresses
    from colocate.world.serve import setup_logging, spare_cores
    setup_logging(cfg["server"]["log_level"], f"join {os.getpid()}")
    address = addresses.read(address_path)
    if cores is None:
        cores, source = spare_cores(cfg)
    else:
        allowed = os.sched_getaffinity(0)
        bad = sorted(set(cores) - allowed)
        if bad:
            raise ConfigError(f"cores {bad} are not among the CPUs this process may use "
                              f"({_cpus(allowed)}); expected --cores within them",
                              key="--cores")
        source = "--cores"
    if not cores:
        raise ConfigError("no spare core on this node to join with; name them with --cores",
                          key="co_location.spare_cores")
    age = _age()
    log.info("colocate join: process started at %.3f (%.3f s ago), %d core(s)",
             time.time() - age, age, len(cores))
    if len(cores) > 1:
        return _one_per_core(cfg, address, cores, source)
    return _join_one(cfg, address, cores, source)


def _age() -> float:
    """Seconds since this process started (its Python start-up included); 0.0 if unknown."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, up - ticks / os.sysconf("SC_CLK_TCK"))


def _cpus(cpus: Any) -> str:
    from colocate.colocation.cpulist import format_cpulist
    return format_cpulist(sorted(cpus))


def _one_per_core(cfg: dict, address: Any, cores: list[int], source: str) -> int:
    """Fork a worker process per core, after the imports, and pass SIGTERM and SIGINT on.

    Forked rather than started afresh: the workers share this process's Python start-up and
    imports (a second or more per process on a loaded node), and each joins on its own.
    """
    import colocate.colocation.topology
    import colocate.wire.messages
    import colocate.wire.mpi
    import colocate.worker.loop  # noqa: F401 (imported once, here, for every worker)
    pids = []
    for core in cores:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                logging.getLogger("colocate").handlers.clear()
                code = _join_one(cfg, address, [core], source)
            except BaseException:   # noqa: BLE001 (a forked worker must never return here)
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)

    def forward(signum: int, frame: Any) -> None:
        for p in pids:
            try:
                os.kill(p, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = []
    for p in pids:
        while True:
            try:
                codes.append(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]))
                break
            except InterruptedError:
                continue
    return max(codes, key=abs)


def _join_one(cfg: dict, address: Any, cores: list[int], source: str) -> int:
    from colocate.colocation.topology import Topology
    from colocate.wire import bell as bells
    from colocate.wire import mpi
    from colocate.wire.messages import Joined
    from colocate.world.serve import memory_budget, setup_logging
    setup_logging(cfg["server"]["log_level"], f"join {os.getpid()}")
    leave: list[int] = []
    # Slurm's warning may come while we connect: keep it, and leave as soon as we can.
    signal.signal(signal.SIGTERM, lambda signum, frame: leave.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: leave.append(signum))
    node = cfg["co_location"]["node_name"] or socket.gethostname()   # MPI's name for it
    try:
        sock = bells.ring_up(address.host, address.bell_port,
                             {"token": address.token, "role": "join", "node": node,
                              "pid": os.getpid(), "host": socket.gethostname()},
                             timeout=JOIN_TIMEOUT)
    except PermissionError as e:
        raise ServerUnavailable(f"the world at {address.path} refused this worker: {e}") from None
    except OSError as e:
        raise ServerUnavailable(f"cannot reach the world of {address.path} at {address.host}:"
                                f"{address.bell_port}: {e}") from None
    link = StreamLink(Stream(sock))
    welcome = _wait_welcome(link, address.path)
    if not isinstance(welcome, Joined):
        raise ServerUnavailable(f"the world at {address.path} did not take this worker: "
                                f"{getattr(welcome, 'reason', welcome)!r}")
    if cfg["co_location"]["pinning"]:
        os.sched_setaffinity(0, cores)
    place = {"node": node, "cores": cores,
             "gpus": [g.id for g in Topology.probe(cfg["co_location"]).gpus],
             "memory_budget": memory_budget(cfg["co_location"]["memory_budget"]),
             "detail": {"spare": cores, "source": source, "pid": os.getpid(), "joined": True,
                        "job": _batch_job()},
             "peers": [os.getppid()],
             "token": address.token,
             "store_host": address.host if address.host.startswith("127.") else (
                 _store_host(mpi, cfg["server"]["bind"]))}
    from colocate.worker.loop import Worker
    worker = Worker(None, link, place, cfg, rank=welcome.rank, box=link)
    grace = float(cfg["pool"]["grace"])
    if leave:
        worker.leave(grace, "a stop signal came while joining")

    def on_signal(signum: int, frame: Any) -> None:
        worker.leave(grace, f"{signal.Signals(signum).name} from the batch system")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("joined the world of %s as worker %d on %s, core(s) %s", address.path,
             welcome.rank, node, _cpus(cores))
    worker.run()
    return 0 if worker.left_cleanly else 1


def _store_host(mpi: Any, bind: str) -> str:
    """Where this worker's store listens: ``server.bind`` if it names this node, else its name.

    A pool job inherits the environment rank 0 submitted it from, ``COLOCATE_SERVER_BIND`` (rank
    0's node) too; binding to that here fails, so the worker takes its own node's name instead.
    """
    host = mpi.host_address(bind)
    try:
        socket.create_server((host, 0)).close()
    except OSError:
        if bind == "auto":
            return host
        log.info("server.bind %r is not an address of this node (%s): the store listens on "
                 "the node's own name", bind, socket.gethostname())
        return mpi.host_address("auto")
    return host


def _batch_job() -> str | None:
    """The id of the batch job this worker runs in (a pool's job), if any."""
    for name in ("SLURM_JOB_ID", "PBS_JOBID", "FLUX_JOB_ID"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def _wait_welcome(link: StreamLink, path: str) -> Any:
    import select
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        got = link.poll()
        if got is not None:
            return got[1]
        if link.stream.closed:
            raise ServerUnavailable(f"the world at {path} closed the connection of this worker "
                                    "(is it draining, or another colocate version?)")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServerUnavailable(f"the world at {path} did not answer this worker within "
                                    f"{JOIN_TIMEOUT:g} s")
        select.select([link], [], [], left)
