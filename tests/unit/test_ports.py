"""Listening ports probed the way gRPC binds them, and the one-line errors that name them."""

from __future__ import annotations

import errno
import socket

import pytest

from segstream.server.ports import ListenError, PortInUseError, bind_error, listen_error

# TEST-NET-1 (RFC 5737): never an address of this machine.
FOREIGN = "192.0.2.1"


def test_a_free_port_has_no_problem() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below, so free
    assert bind_error("--port", "127.0.0.1", port) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "[::]", "0.0.0.0"])
def test_a_listening_port_is_in_use_from_any_address(host: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        problem = bind_error("--port", host, port)
    assert isinstance(problem, PortInUseError) and problem.errno == errno.EADDRINUSE
    assert str(problem).startswith(f"--port {port}: port {port} is already in use on {host} ")
    assert "Errno" not in str(problem)


def test_a_port_shared_with_so_reuseport_is_free_only_to_those_asking() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert bind_error("--port", "127.0.0.1", port, reuse_port=True) is None
        assert isinstance(bind_error("--port", "127.0.0.1", port), PortInUseError)


def test_an_address_of_another_machine_is_named() -> None:
    problem = bind_error("--port", FOREIGN, 50051)
    assert isinstance(problem, ListenError) and not isinstance(problem, PortInUseError)
    assert str(problem) == f"--port 50051: cannot listen on {FOREIGN}: it is not an address of this machine"


def test_ipv6_addresses_are_shown_in_brackets() -> None:
    cause = OSError(errno.EADDRINUSE, "Address already in use")
    assert "already in use on [::1] " in str(listen_error("--metrics-port", "::1", 9090, cause))
