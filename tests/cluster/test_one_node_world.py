"""A world on one virtual node, and a client on another (server.bind).

With ``server.bind: auto`` a world whose ranks are all on one node listens on loopback only; a
client on another node must be told that, and what to set, instead of "the server may have
stopped". With ``COLOCATE_SERVER_BIND=<node>`` it listens where other nodes reach it. (Its own
module: the world of test_cross_node.py holds both CPUs of vnode2 while it runs.)
"""

from __future__ import annotations

import sys

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def test_one_node_world_from_another_node(cluster, srun_world):
    """A world on vnode2 alone listens on loopback: vnode1 is told why, and how to reach it."""
    code = ("import colocate, socket\n"
            "try:\n"
            "    with colocate.Executor(address={a!r}) as ex:\n"
            "        print('OK', ex.submit(socket.gethostname).result(timeout=60))\n"
            "except colocate.errors.ServerUnavailable as e:\n"
            "    print('UNAVAILABLE', e)\n")
    alone = srun_world(("vnode2", "vnode2"), name="alone")
    out = cluster.on("vnode1", [sys.executable, "-c", code.format(a=str(alone.address))]).stdout
    assert out.startswith("UNAVAILABLE") and "listens on loopback only (127.0.0.1)" in out, out
    assert "COLOCATE_SERVER_BIND=vnode2" in out, out
    alone.stop()
    named = srun_world(("vnode2", "vnode2"), name="named", env={"COLOCATE_SERVER_BIND": "vnode2"})
    out = cluster.on("vnode1", [sys.executable, "-c", code.format(a=str(named.address))]).stdout
    assert out.strip() == "OK vnode2", out
