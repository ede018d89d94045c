"""`python -m segstream.server.healthcheck`, the containers' HEALTHCHECK, against real servers and closed ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from segstream.server.app import SERVICE_NAME
from segstream.server.healthcheck import build_parser, main
from tests.cli_help import assert_every_option_documented
from tests.integration.background_server import HeldModel, background_server, tiny_config


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(argv)
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    return status, out


def test_a_serving_server_is_healthy(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with background_server(tiny_config(tiny_model)) as server:
        port = str(server.server.port)
        assert _run(["--host", "127.0.0.1", "--port", port], capsys) == (0, f"127.0.0.1:{port}: SERVING\n")
        assert _run(["--host", "127.0.0.1", "--port", port, "--service", SERVICE_NAME], capsys)[0] == 0
        status, out = _run(["--host", "127.0.0.1", "--port", port, "--service", "no.such.Service"], capsys)
        assert status == 1 and "NOT_FOUND" in out


def test_a_server_still_loading_is_unhealthy_until_warm(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = HeldModel(tiny_model)
    model.gate.clear()  # the server listens, its warm-up waits
    with background_server(tiny_config(tiny_model), {"tiny": model}, wait_ready=False) as server:
        argv = ["--host", "127.0.0.1", "--port", str(server.server.port)]
        try:
            status, out = _run(argv, capsys)
            assert status == 1 and out.endswith(": NOT_SERVING\n")
        finally:
            model.gate.set()
        server.started.result(timeout=30)
        assert _run(argv, capsys)[0] == 0


def test_a_closed_port_is_unhealthy_at_once(closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    status, out = _run(["--host", "127.0.0.1", "--port", str(closed_port), "--timeout", "20"], capsys)
    assert status == 1 and "UNAVAILABLE" in out
    assert time.monotonic() - started < 5  # refused, not waited out


def test_a_stopped_server_is_unhealthy(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with background_server(tiny_config(tiny_model)) as server:
        argv = ["--host", "127.0.0.1", "--port", str(server.server.port), "--timeout", "20"]
        server.stop()
        started = time.monotonic()
        assert _run(argv, capsys)[0] == 1
        assert time.monotonic() - started < 5


def test_the_container_command_line_takes_the_port_from_the_environment(tiny_model: Path, closed_port: int) -> None:
    # As the images run it: a fresh interpreter; the port from SEGSTREAM_PORT, which the server reads too.
    command = [sys.executable, "-m", "segstream.server.healthcheck", "--host", "127.0.0.1"]
    with background_server(tiny_config(tiny_model)) as server:
        env = {**os.environ, "SEGSTREAM_PORT": str(server.server.port)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{server.target}: SERVING\n", "")
    env = {**os.environ, "SEGSTREAM_PORT": str(closed_port)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "UNAVAILABLE" in done.stdout


@pytest.mark.parametrize("argv", [["--port", "x"], ["--timeout", "0"], ["--bogus"]])
def test_a_bad_command_line_is_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("segstream.server.healthcheck: error:")


def test_help_documents_every_option() -> None:
    assert_every_option_documented(build_parser())


def test_the_check_loads_no_model_code(closed_port: int) -> None:
    # It runs every few seconds in each container: it must start fast.
    script = (
        "import sys; from segstream.server.healthcheck import main; "
        f"main(['--host', '127.0.0.1', '--port', '{closed_port}']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'cv2', 'onnx', 'onnxruntime')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
