"""The client library and the CLI with no server at the address: one clear error, no hang."""

from __future__ import annotations

import socket

import pytest

from segstream.client import SegmentationClient, ServerNotReadyError, ServerUnavailableError
from segstream.client.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("segstream-client: error: ")
    return lines[0]


def test_unreachable_server_raises_server_unavailable() -> None:
    with SegmentationClient(f"127.0.0.1:{_free_port()}", timeout=2) as c:
        with pytest.raises(ServerUnavailableError, match="UNAVAILABLE"):
            c.models()
        with pytest.raises(ServerNotReadyError, match="no connection"):
            c.wait_ready(timeout=0.2)


def test_cli_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{_free_port()}"
    assert main(["--server", target, "--timeout", "2", "models"]) == 1
    assert "UNAVAILABLE" in _one_error_line(capsys.readouterr().err)
    assert main(["--server", target, "wait", "--timeout", "0.2"]) == 1
    assert "did not report SERVING" in _one_error_line(capsys.readouterr().err)
