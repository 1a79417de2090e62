"""Leases against real worlds: a client's lone tasks go straight to a worker rank and back.

Every semantic of the way through rank 0 must hold on the leased way too (errors, crashes,
timeouts, kept objects, counts), the slot must come back as soon as another client needs it, and
a lease that ends under a task in flight must send that task through rank 0, never lose it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest

import colocate
from colocate import Executor, SerializationError, TaskTimeout, WorkerCrashed, WorkerLost
from colocate.testing import connection_of, crash, lease_of, take_lease
from colocate.wire.bell import answer, listen
from colocate.wire.messages import Lease, LeaseOver, Submit
from colocate.wire.stream import Stream

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 60
# the random mix's two clients (LEASE_MIX_SEEDS=3,4 to try others)
SEEDS = tuple(int(s) for s in os.environ.get("LEASE_MIX_SEEDS", "1,2").split(","))


def add(a, b=0):
    return a + b


def fail(msg):
    raise KeyError(msg)


def nap(s):
    time.sleep(s)
    return s


def unpicklable():
    return threading.Lock()


def keep_ones(n):
    return colocate.keep(np.ones(n))


@pytest.mark.timeout(180)
def test_lone_tasks_go_to_a_leased_worker_with_every_semantic_kept(world_factory, cli, wait_until):
    world = world_factory(3)
    with Executor(address=world.address) as ex:
        link = take_lease(ex)
        assert link is not None, "a client sending lone tasks gets a lease"
        st = ex.status()
        assert st["leases"] == 1
        assert [w["state"] for w in st["workers"] if w["rank"] == link["rank"]] == ["leased"]
        fut = ex.submit(add, 2, b=3)
        assert fut.result(timeout=BOUND) == 5 and fut.info.rank == link["rank"]
        with pytest.raises(KeyError) as err:
            ex.submit(fail, "x").result(timeout=BOUND)
        assert f"rank {link['rank']}" in str(err.value.__cause__)
        with pytest.raises(WorkerCrashed) as crashed:
            ex.submit(crash).result(timeout=BOUND)
        assert crashed.value.exitcode == 13
        with pytest.raises(TaskTimeout):
            ex.options(timeout=0.5).submit(nap, 30).result(timeout=BOUND)
        with pytest.raises(SerializationError, match="pickle the result"):
            ex.submit(unpicklable).result(timeout=BOUND)
        assert ex.submit(add, 1, 1).result(timeout=BOUND) == 2
        big = b"x" * (24 << 20)   # larger than any socket buffer, both ways: partial frames
        assert ex.submit(add, big, b"y").result(timeout=BOUND) == big + b"y"
        assert lease_of(ex) == link, "the lease outlives errors, crashes and timeouts"
        # a task that keeps an object: its result comes through rank 0, which owns the object
        ref = ex.submit(keep_ones, 1000).result(timeout=BOUND)
        assert ex.get(ref).sum() == 1000
        assert ex.status()["store"]["objects"] == 1
        ex.free(ref)
        wait_until(lambda: ex.status()["store"]["objects"] == 0, BOUND, "the kept object freed")
        # map and batches take the way through rank 0 (the lease gives way, or another worker)
        assert list(ex.map(add, range(50), range(50), timeout=BOUND)) == [
            2 * i for i in range(50)]

    def status() -> dict:
        return json.loads(cli("status", "--address", str(world.address), "--json").stdout)

    wait_until(lambda: status()["leases"] == 0, BOUND, "the departed client's lease to end")
    # every leased task is counted, failures too (raised, crashed, timed out, bad result)
    wait_until(lambda: sum(w["failed"] for w in status()["workers"]) == 4, BOUND,
               "the four failed leased tasks counted")
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(180)
def test_another_client_gets_the_leased_slot_and_nothing_is_lost(world_factory):
    world = world_factory(2)   # one worker: the lease holds the only slot
    with Executor(address=world.address) as a, Executor(address=world.address) as b:
        link = take_lease(a)
        assert link is not None
        slow = a.submit(nap, 1.0)          # runs under the lease
        other = b.submit(add, 40, 2)       # waits for the slot: the lease ends after `slow`
        assert other.result(timeout=BOUND) == 42
        assert slow.done() and slow.result() == 1.0
        assert lease_of(a) is None, "a lease that ended is dropped"
        # both keep working; lone tasks of both clients race for leases and slots
        results: list = []

        def lone(ex, n):
            results.extend(ex.submit(add, i, n).result(timeout=BOUND) for i in range(100))

        threads = [threading.Thread(target=lone, args=(ex, n)) for ex, n in ((a, 0), (b, 1000))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BOUND)
        assert sorted(results) == sorted([*range(100), *range(1000, 1100)])
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(120)
def test_a_drain_lets_the_leased_task_finish(world_factory):
    world = world_factory(2)
    with Executor(address=world.address) as ex:
        assert take_lease(ex) is not None
        fut = ex.submit(nap, 1.0)
        time.sleep(0.2)                     # (it runs: the drain must wait for it)
        world.proc.send_signal(2)           # SIGINT: drain
        assert fut.result(timeout=BOUND) == 1.0
    assert world.wait_exit(BOUND) == 0, world.log()


# ----- the client's side of a lease ending or breaking, against a stand-in worker -----------------
class StandIn:
    """A task port that answers the handshake, takes one Submit, then says ``then``."""

    def __init__(self, token: str, then: str) -> None:
        self.listener = listen("127.0.0.1")
        self.port = self.listener.getsockname()[1]
        self.then = then
        self.got: list = []
        self.thread = threading.Thread(target=self._serve, args=(token,), daemon=True)
        self.thread.start()

    def _serve(self, token: str) -> None:
        import select
        select.select([self.listener], [], [], BOUND)
        sock, hello = answer(self.listener, token)
        st = Stream(sock)
        deadline = time.monotonic() + BOUND
        while not self.got and time.monotonic() < deadline:
            select.select([st], [], [], 0.1)
            self.got += st.receive()
        if self.then == "lease over":
            st.send(LeaseOver(hello["lease"]))
        st.close()
        self.listener.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("then", ["lease over", "close"])
def test_a_task_sent_under_a_lease_that_ends_goes_through_rank_0(world_factory, then):
    """LeaseOver with no result: the task never ran, rank 0 runs it. A closed connection
    without LeaseOver: the worker is gone, and the task fails with WorkerLost."""
    world = world_factory(2)
    with Executor(address=world.address) as ex:
        conn = connection_of(ex)   # (white-box: it stands in for rank 0 granting a lease)
        stand_in = StandIn(conn.address.token, then)
        conn._take_lease(Lease(99, 1, "127.0.0.1", stand_in.port))
        assert lease_of(ex) is not None
        fut = ex.submit(add, 20, 22)
        if then == "lease over":
            assert fut.result(timeout=BOUND) == 42
            assert fut.info.rank == 1
        else:
            with pytest.raises(WorkerLost, match="leased to this client"):
                fut.result(timeout=BOUND)
        stand_in.thread.join(BOUND)
        assert [type(m) for m in stand_in.got] == [Submit]
        assert lease_of(ex) is None
        assert ex.submit(add, 1, 2).result(timeout=BOUND) == 3   # and the client goes on
    assert world.stop() == 0, world.log()


@pytest.mark.timeout(120)
def test_the_lease_setting_turns_leases_off(world_factory):
    world = world_factory(2, env={"COLOCATE_CLIENT_LEASES": "false"})
    with Executor(address=world.address) as ex:
        for i in range(5):
            assert ex.submit(add, i).result(timeout=BOUND) == i
        assert lease_of(ex) is None and ex.status()["leases"] == 0
    assert world.stop() == 0, world.log()


def pick(kind, i):
    """A task of the mix: its result is known in advance (crashes: WorkerCrashed)."""
    if kind == "crash":
        return crash, ()
    if kind == "raise":
        return fail, (f"k{i}",)
    if kind == "nap":
        return nap, (0.002,)
    return add, (i, 1)


@pytest.mark.timeout(240)
def test_a_random_mix_of_lone_tasks_batches_and_crashes_loses_and_doubles_nothing(
        world_factory):
    """Two clients with a thread each mix lone tasks (which earn and use leases), batches (which
    end them), crashes and errors on two workers; every future gets exactly its own outcome."""
    import random
    world = world_factory(3)
    kinds = ["add"] * 14 + ["nap"] * 3 + ["raise", "crash"]

    def check(fut, kind, i):
        if kind == "crash":
            assert isinstance(fut.exception(timeout=BOUND), WorkerCrashed)
        elif kind == "raise":
            with pytest.raises(KeyError, match=f"k{i}"):
                fut.result(timeout=BOUND)
        elif kind == "nap":
            assert fut.result(timeout=BOUND) == 0.002
        else:
            assert fut.result(timeout=BOUND) == i + 1

    errors: list = []
    leased_first = [False, False]
    one_at_a_time, ready = threading.Lock(), threading.Barrier(len(SEEDS))

    def client(seed, slot):
        rng = random.Random(seed)
        try:
            with Executor(address=world.address) as ex:
                # Both start the mix on the leased way. A lease goes only to a client whose lone
                # tasks find nothing else in flight, and one given way to by a batch comes back
                # after twice as many lone tasks: left to the mix, a slow machine may never
                # lease. So the clients take their leases one after the other, then mix at once.
                with one_at_a_time:
                    leased_first[slot] = take_lease(ex, required=False) is not None
                ready.wait(BOUND)
                for step in range(300):
                    if rng.random() < 0.8:   # a lone task
                        kind = rng.choice(kinds)
                        fn, args = pick(kind, step)
                        check(ex.submit(fn, *args), kind, step)
                    else:                    # a small batch
                        futs = []
                        for j in range(5):
                            kind, i = rng.choice(kinds), step * 100 + j
                            fn, args = pick(kind, i)
                            futs.append((ex.submit(fn, *args), kind, i))
                        for fut, k, i in futs:
                            check(fut, k, i)
        except BaseException as e:   # noqa: BLE001 - reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(seed, slot))
               for slot, seed in enumerate(SEEDS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    assert not any(t.is_alive() for t in threads), "a client hung"
    if errors:
        raise errors[0]
    assert all(leased_first), f"a lone client got no lease: {leased_first}"
    assert world.stop() == 0, world.log()
