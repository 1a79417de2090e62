"""The direct hot path: a leased client's connection is held by the executor child itself.

The worker rank only supervises (colocate/child/direct.py); these tests check that the child
really holds the connection, and that a crash, a timeout, a lease that ends under a task, and a
task that keeps objects come out exactly as on the way through rank 0; and that the hot polling
falls back to sleeping (idle CPU over a bounded window, from /proc schedstat).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import cloudpickle
import numpy as np
import psutil
import pytest

import colocate
from colocate import Executor, TaskTimeout, WorkerCrashed
from colocate.testing import crash, lease_of, tagged_processes, take_lease

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 60


def add(a, b=0):
    return a + b


def nap(s):
    time.sleep(s)
    return s


def mark(path, token, seconds=0.0):
    """Append ``token`` to ``path`` (one line per run), after ``seconds``."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(token + "\n")
    return token


def keep_ones(n):
    return colocate.keep(np.ones(n))


def child_of(world):
    """The executor child of the world's one worker rank."""
    kids = []
    for p in tagged_processes(world.tag):
        try:
            if p.environ().get("COLOCATE_CHILD") == "1":
                kids.append(p)
        except psutil.Error:
            continue
    assert len(kids) == 1, kids
    return kids[0]


def holds_client(world, client_port_peers):
    """Whether the executor child holds the client's leased connection.

    Over TCP: a connection to one of the client's local ports. Over the worker's Unix socket
    (a client on the same machine): a connection accepted on that socket (its local name).
    """
    try:
        conns = child_of(world).net_connections(kind="inet" if isinstance(
            next(iter(client_port_peers)), int) else "unix")
    except (psutil.Error, AssertionError):
        return False
    return any((c.raddr and c.raddr[1] in client_port_peers) or c.laddr in client_port_peers
               for c in conns)


def lease_port(ex):
    """What names the client's leased connection: its local port, or the worker's Unix name."""
    link = ex._conn.lease
    assert link is not None
    sock = link.stream.sock
    if sock.family == socket.AF_UNIX:
        peer = sock.getpeername()
        peer = peer.decode() if isinstance(peer, bytes) else peer
        return {"@" + peer[1:]}
    return {sock.getsockname()[1]}


def ranks_of(world):
    out = {}
    for p in tagged_processes(world.tag):
        try:
            env = p.environ()
            if env.get("COLOCATE_CHILD") == "1":
                out["child"] = p
            elif "serve" in p.cmdline() and "PMI_RANK" in env:
                out[f"rank {env['PMI_RANK']}"] = p
        except psutil.Error:
            continue
    return out


def cpu_seconds(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


@pytest.mark.timeout(180)
def test_the_child_holds_the_connection_and_a_crash_is_answered_for(world_factory, wait_until):
    world = world_factory(2)
    with Executor(address=world.address) as ex:
        link = take_lease(ex)
        ports = lease_port(ex)
        wait_until(lambda: holds_client(world, ports), BOUND, "the child to hold the lease")
        first = child_of(world).pid
        with pytest.raises(WorkerCrashed) as crashed:
            ex.submit(crash, 17).result(timeout=BOUND)
        assert crashed.value.exitcode == 17
        assert lease_of(ex) == link, "the lease goes on with the next child"
        assert ex.submit(add, 2, 3).result(timeout=BOUND) == 5
        wait_until(lambda: holds_client(world, ports) and child_of(world).pid != first, BOUND,
                   "the new child to hold the lease")
        fut = ex.submit(add, 4, 4)
        assert fut.result(timeout=BOUND) == 8 and fut.info.rank == link["rank"]
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(180)
def test_a_timeout_on_the_direct_path_kills_the_child_and_the_lease_goes_on(world_factory,
                                                                             wait_until):
    world = world_factory(2)
    with Executor(address=world.address) as ex:
        link = take_lease(ex)
        ports = lease_port(ex)
        wait_until(lambda: holds_client(world, ports), BOUND, "the child to hold the lease")
        first = child_of(world).pid
        t = time.monotonic()
        with pytest.raises(TaskTimeout):
            ex.options(timeout=0.5).submit(nap, 30).result(timeout=BOUND)
        assert time.monotonic() - t < 20, "the worker rank enforces the timeout"
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
        assert lease_of(ex) == link
        assert [ex.submit(add, i).result(timeout=BOUND) for i in range(5)] == list(range(5))
        wait_until(lambda: holds_client(world, ports), BOUND, "the new child to hold the lease")
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(180)
def test_a_lease_ended_under_a_direct_task_runs_everything_once(world_factory, tmp_path,
                                                                 wait_until):
    """A lease on the only worker ends (another client wants the slot) while its task runs on
    the direct path: that task finishes and answers once, the other client's task runs after
    it, and every later task of both runs exactly once (side-effect lines)."""
    world = world_factory(2)
    log = tmp_path / "runs.txt"
    with Executor(address=world.address) as a, Executor(address=world.address) as b:
        take_lease(a)
        ports = lease_port(a)
        wait_until(lambda: holds_client(world, ports), BOUND, "the child to hold the lease")
        slow = a.submit(mark, str(log), "slow", 1.0)   # on the direct path
        time.sleep(0.2)
        other = b.submit(mark, str(log), "other")      # waits for the slot: the lease ends
        assert other.result(timeout=BOUND) == "other"
        assert slow.result(timeout=BOUND) == "slow"
        assert log.read_text().splitlines() == ["slow", "other"]

        errors = []

        def lone(ex, name):
            try:
                for i in range(60):
                    assert ex.submit(mark, str(log), f"{name}{i}").result(timeout=BOUND) == (
                        f"{name}{i}")
                    if name == "b" and i % 10 == 0:   # batches end a's leases again
                        futs = [ex.submit(mark, str(log), f"{name}{i}-{j}") for j in range(5)]
                        assert [f.result(timeout=BOUND) for f in futs] == [
                            f"{name}{i}-{j}" for j in range(5)]
            except BaseException as e:   # noqa: BLE001 - reported by the test thread
                errors.append(e)

        threads = [threading.Thread(target=lone, args=(ex, n)) for ex, n in ((a, "a"), (b, "b"))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(BOUND * 2)
        assert not errors, errors
        lines = log.read_text().splitlines()
        expected = ["slow", "other", *(f"a{i}" for i in range(60)), *(f"b{i}" for i in range(60)),
                    *(f"b{i}-{j}" for i in range(0, 60, 10) for j in range(5))]
        assert sorted(lines) == sorted(expected), "every task ran exactly once"
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(180)
def test_a_task_keeping_objects_on_the_direct_path_is_reported_through_rank_0(world_factory,
                                                                               wait_until):
    world = world_factory(2)
    with Executor(address=world.address) as ex:
        link = take_lease(ex)
        ports = lease_port(ex)
        wait_until(lambda: holds_client(world, ports), BOUND, "the child to hold the lease")
        fut = ex.submit(keep_ones, 1000)
        ref = fut.result(timeout=BOUND)
        assert fut.info.rank == link["rank"]
        assert ex.get(ref).sum() == 1000
        assert ex.status()["store"]["objects"] == 1
        assert ex.submit(add, 1, 1).result(timeout=BOUND) == 2   # the lease goes on
        assert lease_of(ex) == link
        ex.free(ref)
        wait_until(lambda: ex.status()["store"]["objects"] == 0, BOUND, "the kept object freed")
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(180)
def test_hot_polling_falls_back_to_sleep(world_factory, wait_until):
    """After a burst of direct round trips, and 0.1 s without work, the child (which polled
    hot after every task) and the client's waiting thread use next to no CPU."""
    world = world_factory(2)
    with Executor(address=world.address) as ex:
        take_lease(ex)
        ports = lease_port(ex)
        wait_until(lambda: holds_client(world, ports), BOUND, "the child to hold the lease")
        for i in range(300):
            assert ex.submit(add, i).result(timeout=BOUND) == i
        procs = {**ranks_of(world), "client": psutil.Process()}
        assert {"child", "rank 0", "rank 1"} <= set(procs), procs
        time.sleep(0.1)
        before = {k: cpu_seconds(p.pid) for k, p in procs.items()}
        t = time.monotonic()
        time.sleep(1.0)
        wall = time.monotonic() - t
        pct = {k: 100 * (cpu_seconds(p.pid) - before[k]) / wall for k, p in procs.items()}
        assert pct["child"] <= 2.0, pct
        assert pct["client"] <= 2.0, pct
        assert max(pct["rank 0"], pct["rank 1"]) <= 5.0, pct
        assert ex.submit(add, 1, 2).result(timeout=BOUND) == 3   # and it wakes
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(180)
def test_a_same_machine_lease_goes_over_the_workers_unix_socket_and_a_crash_is_reported(
        world_factory, wait_until):
    world = world_factory(2)
    with Executor(address=world.address) as ex:
        link = take_lease(ex)
        sock = ex._conn.lease.stream.sock
        assert sock.family == socket.AF_UNIX, "a client on the worker's machine skips TCP"
        ports = lease_port(ex)
        wait_until(lambda: holds_client(world, ports), BOUND, "the child to hold the lease")
        with pytest.raises(WorkerCrashed) as crashed:
            ex.submit(crash, 9).result(timeout=BOUND)
        assert crashed.value.exitcode == 9
        assert lease_of(ex) == link and ex._conn.lease.stream.sock is sock
        fut = ex.submit(add, 1, 1)
        assert fut.result(timeout=BOUND) == 2 and fut.info.rank == link["rank"]
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(180)
def test_a_lease_whose_unix_socket_does_not_answer_goes_over_tcp(world_factory, wait_until,
                                                                  monkeypatch):
    from colocate.client import connection
    from colocate.wire import bell

    tried = []

    def elsewhere(path, hello, timeout=10.0):   # as from another machine: nobody there
        tried.append(path)
        return bell.ring_up_local("\0colocate-nobody-listens-here", hello, timeout)

    monkeypatch.setattr(connection, "ring_up_local", elsewhere)
    world = world_factory(2)
    with Executor(address=world.address) as ex:
        link = take_lease(ex)
        assert tried, "the Unix socket is tried first"
        assert ex._conn.lease.stream.sock.family in (socket.AF_INET, socket.AF_INET6)
        ports = lease_port(ex)
        wait_until(lambda: holds_client(world, ports), BOUND, "the child to hold the lease")
        fut = ex.submit(add, 5, 5)
        assert fut.result(timeout=BOUND) == 10 and fut.info.rank == link["rank"]
    assert world.stop() == 0, world.log()
