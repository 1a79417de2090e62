"""Bells: a TCP socket beside each MPI link, to wake a sleeping peer and to see it die.

MPI has no wait that leaves the core alone, so an idle rank sleeps in ``select`` on its bells
instead. Whoever sends an MPI message to a peer that may be asleep also rings its bell (one byte);
the peer wakes at once, polls MPI hot, and goes back to sleep when quiet. End of file on a bell
means the peer's process is gone: a lost worker or client is noticed immediately, not after a
heartbeat timeout.

Clients use the same listening socket and handshake, then keep the socket as their data link
(:mod:`colocate.wire.stream`). The handshake is one JSON line each way: the peer sends
``{"token": ..., "wire": N, "role": "client" | "worker", ...}``, the server answers
``{"ok": true}`` or ``{"ok": false, "reason": ...}`` and closes. Nothing reaches MPI before the
token and the wire format's version (``colocate.wire.messages.WIRE_VERSION``) are checked.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import socket
from typing import Any

from colocate.wire.messages import WIRE_VERSION

HANDSHAKE_TIMEOUT = 10.0   # seconds a peer has to complete the handshake line


class Bell:
    """One connected bell socket."""

    __slots__ = ("sock", "_fd")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._fd = sock.fileno()

    def fileno(self) -> int:
        """The socket's file descriptor, for ``select``."""
        return self._fd

    def ring(self) -> None:
        """Wake the peer (never blocks; a full buffer means it is ringing already)."""
        try:
            self.sock.send(b"!")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass   # the peer is gone; its death is noticed on our side by drain()

    def drain(self) -> bool:
        """Swallow pending rings; returns False if the peer has closed the connection."""
        try:
            while True:
                data = self.sock.recv(4096)
                if not data:
                    return False
                if len(data) < 4096:
                    return True
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Close the socket."""
        try:
            self.sock.close()
        except OSError:
            pass


def _send_line(sock: socket.socket, obj: dict) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def _read_line(sock: socket.socket, limit: int = 65536) -> dict:
    # One byte at a time: the peer's first frames may follow the line in the same packet, and
    # they belong to whoever uses the socket next. The line is short and read once.
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("the peer closed the connection during the handshake")
        buf += chunk
        if len(buf) > limit:
            raise ConnectionError("handshake line too long")
    data = json.loads(buf)
    if not isinstance(data, dict):
        raise ConnectionError("handshake line is not a JSON object")
    return data


def bind_address(host: str) -> str:
    """The address to bind a socket that peers reach as ``host``.

    ``host`` itself, except for a host name whose first address here (the one a bind to the name
    would take) is a loopback address, or that does not resolve here: then every interface
    (``0.0.0.0``). A node whose own ``/etc/hosts`` names it ``127.0.1.1``, as a Debian
    installation does, resolves its name to loopback while the other nodes resolve it (through
    DNS or their own files) to its real address; bound to the name, the socket would refuse them
    all. Addresses (``127.0.0.1``, ``10.1.2.3``) and ``localhost`` are bound as given.
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if host in ("", "localhost"):
        return host
    try:
        first = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except (socket.gaierror, UnicodeError, IndexError):
        return "0.0.0.0"
    return "0.0.0.0" if ipaddress.ip_address(first.split("%")[0]).is_loopback else host


def listen(host: str, backlog: int = 128) -> socket.socket:
    """Open a listening socket that peers reach as ``host`` (any free port; see ``bind_address``).

    The port is the socket's; the address to give peers stays ``host``, not what it is bound to.
    """
    ls = socket.create_server((bind_address(host), 0), backlog=backlog)
    ls.setblocking(False)
    return ls


def listen_local(backlog: int = 128) -> tuple[socket.socket, str]:
    """Open a listening Unix socket in the abstract namespace; returns it and its name.

    For peers on this machine (and network namespace) only: a same-node leased client's
    link, which skips loopback TCP's per-message cost (~1 µs each way, measured). The name is
    not a file (nothing to clean up) and is random; peers still prove the token in the handshake.
    """
    name = f"\0colocate-{os.getpid()}-{secrets.token_hex(8)}"
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ls.bind(name)
        ls.listen(backlog)
    except BaseException:
        ls.close()
        raise
    ls.setblocking(False)
    return ls, name


def ring_up_local(path: str, hello: dict[str, Any], timeout: float = 10.0) -> socket.socket:
    """:func:`ring_up` to a listener of :func:`listen_local` (``OSError`` if none is there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return _handshake(sock, hello)


def ring_up(host: str, port: int, hello: dict[str, Any], timeout: float = 10.0) -> socket.socket:
    """Connect to a server's listening socket and complete the handshake.

    Returns the connected socket: a worker wraps it in a :class:`Bell`, a client in a
    :class:`~colocate.wire.stream.Stream`.

    Raises:
        ConnectionRefusedError, OSError: nobody listens there.
        PermissionError: the server refused us; the message holds its reason.
    """
    return _handshake(socket.create_connection((host, port), timeout=timeout), hello)


def _handshake(sock: socket.socket, hello: dict[str, Any]) -> socket.socket:
    try:
        _send_line(sock, {**hello, "wire": WIRE_VERSION})
        answer = _read_line(sock)
    except BaseException:
        sock.close()
        raise
    if not answer.get("ok"):
        sock.close()
        raise PermissionError(answer.get("reason", "refused"))
    return sock


def answer(listener: socket.socket, token: str) -> tuple[socket.socket, dict] | tuple[None, str]:
    """Take one waiting connection and check its token.

    Returns ``(socket, hello)`` for an accepted peer, or ``(None, why)`` when it was refused (the
    connection is closed then, and nothing else happens).
    """
    sock, addr = listener.accept()
    sock.settimeout(HANDSHAKE_TIMEOUT)
    who = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
    try:
        hello = _read_line(sock)
        good = hmac.compare_digest(str(hello.get("token", "")).encode(), token.encode())
        if not good:
            _send_line(sock, {"ok": False, "reason": "wrong token: use the address file "
                              "written by this server (readable by its owner only)"})
            sock.close()
            return None, f"connection from {who} refused: wrong token"
        if hello.get("wire") != WIRE_VERSION:
            theirs = hello.get("wire", "1 or older")
            _send_line(sock, {"ok": False, "reason": (
                f"this server speaks colocate's wire format {WIRE_VERSION}, the connecting "
                f"side {theirs}: they come from different colocate versions; run both with the "
                f"same installation (or restart the server with this one)")})
            sock.close()
            return None, (f"connection from {who} refused: wire format {theirs}, expected "
                          f"{WIRE_VERSION} (another colocate version)")
        _send_line(sock, {"ok": True})
    except (OSError, ValueError, ConnectionError) as e:
        sock.close()
        return None, f"connection from {who} dropped during the handshake: {e}"
    return sock, hello
