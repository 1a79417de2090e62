"""Which address a listening socket binds for the name peers reach it by (colocate.wire.bell)."""

import ipaddress
import socket

import pytest

from colocate.wire import bell


def _first(name):
    try:
        return socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror:
        return None


def _loopback_name():
    """A name other than localhost that resolves here to loopback first, if there is one."""
    for name in (socket.gethostname(), "localhost.localdomain", "ip6-localhost"):
        first = _first(name)
        if name != "localhost" and first and ipaddress.ip_address(first).is_loopback:
            return name
    return None


@pytest.mark.parametrize("host", ["127.0.0.1", "10.77.0.12", "::1", "localhost", ""])
def test_addresses_and_localhost_are_bound_as_given(host):
    assert bell.bind_address(host) == host


def test_a_name_that_does_not_resolve_binds_every_interface():
    assert bell.bind_address("no-such-node.invalid") == "0.0.0.0"


def test_a_name_that_resolves_to_loopback_binds_every_interface():
    """Debian's '127.0.1.1 node' line: bound to the name, no other node could connect."""
    name = _loopback_name()
    if name is None:
        pytest.skip("no host name here resolves to a loopback address")
    assert bell.bind_address(name) == "0.0.0.0"


def test_listen_on_such_a_name_accepts_local_and_keeps_the_port():
    ls = bell.listen("no-such-node.invalid")
    try:
        host, port = ls.getsockname()[:2]
        assert host == "0.0.0.0" and port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        ls.close()
