"""What becomes of stored objects when the joined worker holding them leaves or dies.

Real worlds and real ``colocate join`` processes, through ``test_join``'s ``Kit``. The joined
worker is given a node name of its own, so that a put can be placed on it.
"""

from __future__ import annotations

import signal

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
        for attempt in ("get", "task"):
            with pytest.raises(ObjectLost) as lost:
                if attempt == "get":
                    ref.get()
                else:
                    ex.submit(len, ref).result(timeout=60)
            text = str(lost.value)
            assert f"object {ref.id} was stored on node {POOL_NODE} (worker {JOINED})" in text
            assert f"joined worker {JOINED} on {POOL_NODE} exited (its connection closed)" in text
            assert "put it again" in text
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32   # the world serves on
    assert world.proc.poll() is None
