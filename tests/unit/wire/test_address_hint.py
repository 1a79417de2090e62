"""What an unreachable address file tells the user (colocate.wire.address.unreachable_hint)."""

from colocate.wire.address import Address, unreachable_hint


def _addr(host, server_host="vnode2"):
    return Address(host, 4242, "t" * 64, 77, server_host, 3, "/w/colocate.address")


def test_a_one_node_world_seen_from_another_node_says_so_and_what_to_set():
    assert unreachable_hint(_addr("127.0.0.1"), "vnode1") == (
        "The server listens on loopback only (127.0.0.1): its world runs on one node, vnode2, "
        "and this client runs on vnode1. Connect from vnode2, or start the server with "
        "COLOCATE_SERVER_BIND=vnode2 (server.bind: the node's name) so that other nodes reach "
        "it.")


def test_otherwise_the_server_may_have_stopped():
    stopped = "The server may have stopped; start it again or fix the path."
    assert unreachable_hint(_addr("127.0.0.1"), "vnode2") == stopped    # same node
    assert unreachable_hint(_addr("vnode2"), "vnode1") == stopped       # reachable by name
    assert unreachable_hint(_addr("10.77.0.12"), "vnode1") == stopped
