"""Listening ports: a port that is already taken is refused in one line that names it.

gRPC binds its listeners with SO_REUSEPORT unless told otherwise, so a second server started on a
busy port would come up silently and share the clients at random with the first; and when gRPC
cannot bind, it raises a bare RuntimeError ("Failed to bind") that does not say why. The server
therefore tries the address itself first, with the socket options gRPC will use, and turns the
socket error into a sentence.
"""

from __future__ import annotations

import errno
import socket


class ListenError(OSError):
    """The server cannot listen where it was told to; the message is the whole story, in one line."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)  # one argument: str() is the message, without "[Errno N]"
        self.errno = code


class PortInUseError(ListenError):
    """Something already listens on the port the server was asked to listen on."""


def listen_error(flag: str, host: str, port: int, cause: OSError) -> ListenError:
    """The one-line error for `flag` (e.g. "--port") when listening on host:port failed with `cause`."""
    where = f"{flag} {port}"
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 address
    if cause.errno == errno.EADDRINUSE:
        return PortInUseError(
            errno.EADDRINUSE,
            f"{where}: port {port} is already in use on {host} (another segstream-server or another program "
            f"listens there): stop that one or choose another port",
        )
    if cause.errno == errno.EADDRNOTAVAIL:
        return ListenError(cause.errno, f"{where}: cannot listen on {host}: it is not an address of this machine")
    reason = cause.strerror or str(cause)
    return ListenError(cause.errno, f"{where}: cannot listen on {host}:{port}: {reason}")


def bind_error(flag: str, host: str, port: int, *, reuse_port: bool = False) -> ListenError | None:
    """Why a server socket could not listen on host:port now, as `listen_error` words it, or None.

    `host` may be in gRPC's form ("[::]" for every address). With `reuse_port` the probe sets
    SO_REUSEPORT as gRPC would, so a port shared by servers that all set it counts as free.
    """
    name = host.strip("[]") or None
    try:
        addresses = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return ListenError(errno.EADDRNOTAVAIL, f"{flag} {port}: cannot listen on {host}: {exc.strerror}")
    first: ListenError | None = None
    bound = False
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                # gRPC sets SO_REUSEADDR too: a port left in TIME_WAIT by a stopped server is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(address)
            bound = True
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return listen_error(flag, host, port, exc)
            # gRPC listens where it can (an IPv6 wildcard on a host without IPv6 falls back to IPv4).
            first = first or listen_error(flag, host, port, exc)
    return None if bound else first
