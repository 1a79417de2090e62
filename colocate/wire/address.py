"""The address file: how clients find and prove themselves to a running server.

JSON with the listening socket's host and port, a random token, and the server's
pid, host and world size. Written atomically with mode 0600 (the token is the only credential:
whoever can read the file can submit code), removed when the server exits.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass

from colocate.errors import ServerUnavailable

FORMAT = 1


@dataclass(frozen=True)
class Address:
    """A server's address."""

    host: str
    bell_port: int
    token: str
    pid: int
    server_host: str
    size: int
    path: str = ""
    format: int = FORMAT

    @classmethod
    def new(cls, host: str, bell_port: int, size: int, path: str) -> Address:
        """A fresh address with a new random token."""
        return cls(host, bell_port, secrets.token_hex(32), os.getpid(),
                   socket.gethostname(), size, os.path.abspath(path))

    def write(self) -> None:
        """Write the file atomically, readable by its owner only."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Remove the file if it is still ours."""
        try:
            if read(self.path).token == self.token:
                os.unlink(self.path)
        except (OSError, ServerUnavailable):
            pass


def unreachable_hint(address: Address, here: str) -> str:
    """What to do when nobody answers at ``address``, seen from the host named ``here``.

    A world on one node listens on loopback only (``server.bind: auto``): from another node its
    address names this client's own loopback, where nobody listens.
    """
    try:
        loopback = ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        loopback = address.host == "localhost"
    if loopback and address.server_host != here:
        return (f"The server listens on loopback only ({address.host}): its world runs on one "
                f"node, {address.server_host}, and this client runs on {here}. Connect from "
                f"{address.server_host}, or start the server with "
                f"COLOCATE_SERVER_BIND={address.server_host} (server.bind: the node's name) so "
                f"that other nodes reach it.")
    return "The server may have stopped; start it again or fix the path."


def read(path: str | os.PathLike) -> Address:
    """Read an address file.

    Raises:
        ServerUnavailable: the file is missing, unreadable or not an address file.
    """
    path = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ServerUnavailable(
            f"no address file at {path!r}: is `colocate serve --address-file {path}` running? "
            "It writes the file once the world is ready.") from None
    except PermissionError:
        raise ServerUnavailable(
            f"cannot read the address file {path!r}: it belongs to another user (mode 0600); "
            "only the user who started the server may submit to it") from None
    except (OSError, ValueError) as e:
        raise ServerUnavailable(f"{path!r} is not a colocate address file ({e})") from None
    try:
        data["path"] = os.path.abspath(path)
        return Address(**data)
    except TypeError:
        raise ServerUnavailable(f"{path!r} is not a colocate address file "
                                f"(keys found: {sorted(data)})") from None
