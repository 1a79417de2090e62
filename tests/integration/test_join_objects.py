"""What becomes of stored objects when the joined worker holding them leaves or dies.

Real worlds and real ``colocate join`` processes, through ``test_join``'s ``Kit``. The joined
worker is given a node name of its own, so that a put can be placed on it; the world's own
worker rank (rank 1) is on another node, where a leaving worker's objects move.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
from test_join import JOINED, Joiner, Kit, workers

import colocate
from colocate.errors import ObjectLost

pytestmark = pytest.mark.timeout(150)

POOL_NODE = "pool-node-a"


@pytest.fixture
def pool(world_factory, tmp_path, wait_until):
    """``test_join``'s ``Kit``, for joined workers on nodes of their own names."""
    k = Kit(world_factory, tmp_path, wait_until)
    yield k
    k.close()


def join_pool_node(pool: Kit, world, name: str = POOL_NODE, **env: str) -> Joiner:
    """A joined worker of one core that calls its node ``name``."""
    j = Joiner(world, pool.tmp_path, "--cores", "1",
               env={"COLOCATE_CO_LOCATION_NODE_NAME": name, **env})
    pool.made.append(j)
    return j


def assert_lost(ex, ref, *why: str) -> None:
    """Both ways of reading ``ref`` (a get, and a task given it) fail with ``ObjectLost`` naming
    the node and worker it was stored on, each of ``why``, and what to do."""
    for attempt in ("get", "task"):
        with pytest.raises(ObjectLost) as lost:
            if attempt == "get":
                ref.get()
            else:
                ex.submit(len, ref).result(timeout=60)
        text = str(lost.value)
        assert f"object {ref.id} was stored on node {POOL_NODE} (worker {JOINED})" in text, text
        for part in why:
            assert part in text, text
        assert "put it again" in text, text


def test_objects_of_a_killed_joined_worker_fail_with_objectlost_naming_node_and_why(pool):
    world = pool.world()
    joiner = join_pool_node(pool, world)
    with colocate.Executor(address=world.address) as ex:
        pool.wait_joined(ex, 2)
        assert workers(ex)[JOINED]["node"] == POOL_NODE
        ref = ex.put(b"held on the pool node" * 100, node=POOL_NODE)
        assert (ref.node, ref.rank) == (POOL_NODE, JOINED)
        assert ex.submit(len, ref).result(timeout=60) == 2100
        joiner.proc.kill()
        assert joiner.wait() == -signal.SIGKILL
        pool.wait_joined(ex, 1)
        assert_lost(ex, ref,
                    f"joined worker {JOINED} on {POOL_NODE} exited (its connection closed)")
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32   # the world serves on
    assert world.proc.poll() is None


def test_objects_of_a_joined_worker_leaving_on_sigterm_move_to_another_node(pool):
    world = pool.world()
    joiner = join_pool_node(pool, world)
    with colocate.Executor(address=world.address) as ex:
        pool.wait_joined(ex, 2)
        big = np.arange(400_000, dtype=np.float64).reshape(800, 500)   # a segment (3 MiB)
        refs = {"big": ex.put(big, node=POOL_NODE), "small": ex.put({"a": [1, 2]}, node=POOL_NODE)}
        ex.free(ex.put(np.ones(3), node=POOL_NODE))   # freed: nothing to move
        assert {r.rank for r in refs.values()} == {JOINED}
        joiner.proc.send_signal(signal.SIGTERM)
        assert joiner.wait() == 0, joiner.log()
        pool.wait_joined(ex, 1)
        assert "2 object(s) copied to other workers, 0 not" in joiner.log()
        # A task given the old Ref reads the object at its new holder (rank 0 says where) ...
        assert ex.submit(np.sum, refs["big"]).result(timeout=60) == big.sum()
        assert refs["big"].rank == JOINED   # (the client's Ref was not touched by that)
        # ... and so does a get, which then points the Ref there.
        got = refs["big"].get()
        assert got.dtype == big.dtype and got.shape == big.shape and got.tobytes() == big.tobytes()
        assert refs["big"].rank == 1 and refs["big"].node != POOL_NODE
        assert refs["small"].get() == {"a": [1, 2]}
        assert ex.status()["store"]["bytes"] == refs["big"].nbytes + refs["small"].nbytes
        ex.free(refs["big"])   # released at its new holder
        pool.wait_until(lambda: ex.status()["store"]["bytes"] == refs["small"].nbytes, 30,
                        "the moved object to be freed")
    assert "worker lost" not in world.log()


def test_objects_that_do_not_fit_elsewhere_fail_with_objectlost_naming_node_and_why(pool):
    world = pool.world(COLOCATE_CO_LOCATION_MEMORY_BUDGET="1MiB")   # the other node: 1 MiB
    joiner = join_pool_node(pool, world, COLOCATE_CO_LOCATION_MEMORY_BUDGET="64MiB")
    with colocate.Executor(address=world.address) as ex:
        pool.wait_joined(ex, 2)
        ref = ex.put(np.zeros(2 << 20, dtype=np.uint8), node=POOL_NODE)
        fits = ex.put(b"x" * 1000, node=POOL_NODE)
        joiner.proc.send_signal(signal.SIGTERM)
        assert joiner.wait() == 0, joiner.log()
        pool.wait_joined(ex, 1)
        assert fits.get() == b"x" * 1000
        assert_lost(ex, ref,
                    f"joined worker {JOINED} on {POOL_NODE} left (SIGTERM from the batch system",
                    f"no other node had room for its {2 << 20} bytes (2.0 MiB)")
