"""One colocate world across three virtual nodes: every path that crosses nodes, for real.

The world (started once for the module by ``srun --distribution=arbitrary``)::

    rank 0  vnode2   the scheduler: its socket on vnode2's address, named in the address file
    rank 1  vnode1   worker
    rank 2  vnode2   worker
    rank 3  vnode3   worker

Clients run on vnode1 and vnode3 (tests/cluster/node_client.py through on.sh) and in the root
namespace (this process; its host name is the machine's, a node of its own for colocate). Every
node has its own host name, address and boot of the network stack, so objects between them go
over TCP (the store's machine ids differ), never through shared memory.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

import colocate

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

LAYOUT = ("vnode2", "vnode1", "vnode2", "vnode3")
CLIENT = str(Path(__file__).with_name("node_client.py"))


@pytest.fixture(scope="module")
def world(srun_world):
    return srun_world(LAYOUT, name="cross")


def node_client(cluster, node, *args, timeout=120) -> dict:
    r = cluster.on(node, [sys.executable, CLIENT, *map(str, args)], timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8)).hexdigest()


def sha_of(a):
    """Runs in a task: where it ran and the sha256 of its argument's bytes."""
    import hashlib
    import socket

    import numpy as np
    return socket.gethostname(), hashlib.sha256(np.ascontiguousarray(a).view(np.uint8)).hexdigest()


def host_after_file(path, _ref=None, timeout=60.0):
    """Runs in a task: block (bounded) until ``path`` exists; return where it ran."""
    import socket

    from colocate.testing import wait_for_file
    if not wait_for_file(path, timeout):
        raise TimeoutError(f"{path} did not appear within {timeout} s")
    return socket.gethostname()


# ----- ranks, workers, colocate info per node ----------------------------------------------------
def test_ranks_workers_and_address_per_node(cluster, world):
    addr = world.read_address()
    assert addr["host"] == "vnode2" and addr["server_host"] == "vnode2", addr
    with colocate.Executor(address=world.address) as ex:
        workers = {w["rank"]: w["node"] for w in ex.status()["workers"]}
    assert workers == {1: "vnode1", 2: "vnode2", 3: "vnode3"}, workers
    # A client on vnode1, three tasks side by side: one per worker, each on the node it names.
    got = node_client(cluster, "vnode1", "where", world.address)
    assert got["me"] == "vnode1"
    assert sorted(host for host, _, _ in got["tasks"]) == ["vnode1", "vnode2", "vnode3"], got
    for host, node, rank in got["tasks"]:
        assert host == node == LAYOUT[rank], got


def test_colocate_info_per_node(cluster):
    for node in cluster.nodes:
        out = cluster.on(node, [sys.executable, "-m", "colocate", "info"],
                         env=cluster.environ(COLOCATE_CO_LOCATION_SPARE_CORES="1-1")).stdout
        first = out.splitlines()[0].split()
        assert first[:2] == ["node", node], out
        spare = next(line for line in out.splitlines() if line.startswith("spare cores"))
        assert spare.split()[2] == "1", out


# ----- the object store across nodes -------------------------------------------------------------
def test_put_with_node_lands_there_and_gets_cross_nodes(cluster, world):
    """From vnode1, put on vnode3 and get back: byte-exact, several dtypes and sizes."""
    got = node_client(cluster, "vnode1", "store", world.address, "vnode3")
    assert got["me"] == "vnode1"
    assert len(got["rows"]) == 15
    for row in got["rows"]:
        assert row["node"] == "vnode3", row
        assert row["back"] == row["sent"], row
        assert row["back_dtype"] == row["dtype"] and row["shape"] == [row["n"]], row


@pytest.mark.parametrize("dtype,mib", [("float64", 256), ("int16", 3)])
def test_large_arrays_cross_nodes_byte_exact(world, dtype, mib):
    """This process (the machine's root namespace) and vnode1 and vnode3, up to 256 MiB."""
    n = (mib << 20) // np.dtype(dtype).itemsize
    a = np.random.default_rng(mib).integers(-1000, 1000, n).astype(dtype)
    a[-1] = 12345     # the last chunk arrives too
    want = digest(a)
    with colocate.Executor(address=world.address) as ex:
        ref = ex.put(a, node="vnode1")
        assert (ref.node, ref.rank, ref.nbytes) == ("vnode1", 1, a.nbytes)
        # Its data port listens on vnode1's own address, on another machine id: TCP.
        assert ref.where.host == "vnode1" and ref.where.machine.startswith("vnode1/"), ref.where
        back = ex.get(ref)
        assert back.dtype == a.dtype and back.shape == a.shape and digest(back) == want
        # As a task argument: it runs where the object is (vnode1), and also where it is not.
        f = ex.submit(sha_of, ref)
        assert f.result(timeout=120) == ("vnode1", want) and f.info.node == "vnode1"
        ref3 = ex.put(a, node="vnode3")
        back3 = ex.get(ref3)
        assert digest(back3) == want
        del back, back3


def test_task_argument_from_another_node(world, tmp_path, wait_until):
    """The node holding the Ref is busy: the task runs on another node and fetches it there."""
    a = np.arange(3 << 20, dtype=np.int32)[::-1].copy()
    release = str(tmp_path / "release")
    with colocate.Executor(address=world.address) as ex:
        ref = ex.put(a, node="vnode3")
        # Placement prefers the Ref's node: the blocker (it takes the Ref) goes to vnode3 ...
        blocker = ex.submit(host_after_file, release, ref)
        try:
            wait_until(lambda: any(w["node"] == "vnode3" and w["current"] is not None
                                      for w in ex.status()["workers"]), 30,
                          "the blocker running on vnode3")
            # ... and a task with the same Ref, while vnode3 is busy, runs elsewhere.
            g = ex.submit(sha_of, ref)
            host, sha = g.result(timeout=60)
            assert host != "vnode3" and g.info.node == host, (host, g.info)
            assert sha == digest(a)
        finally:
            open(release, "w").close()
        assert blocker.result(timeout=60) == "vnode3"


# ----- clients and leases across nodes -----------------------------------------------------------
def test_client_on_one_node_lease_on_a_third(cluster, world):
    """Client on vnode1, rank 0 on vnode2, its lease on the worker of vnode3."""
    got = node_client(cluster, "vnode1", "lease", world.address, "vnode3")
    assert got["me"] == "vnode1"
    assert got["first"] == ["vnode3", 3], got            # the Ref's node
    assert got["leased"] is not None, got
    assert (got["leased"]["rank"], got["leased"]["node"]) == (3, "vnode3"), got
    after = got["tasks"][-5:]
    assert all(t[0] == "vnode3" and t[2] == "vnode3" and t[3] == 3 for t in after), got


def test_wrong_token_from_another_node_is_refused(cluster, world):
    got = node_client(cluster, "vnode3", "wrong-token", world.address)
    assert got["me"] == "vnode3"
    assert got["error"] == "AuthenticationError", got
    assert "wrong token" in got["message"], got
    assert got["seconds"] < 15, got
    # The world is unharmed.
    with colocate.Executor(address=world.address) as ex:
        assert len(ex.status()["workers"]) == 3

