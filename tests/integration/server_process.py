"""A real segstream-server process on loopback, for signal, disconnect and soak tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    metrics_port: int
    # The server's stdout and stderr go to a file, not a pipe: a pipe nobody reads while the test runs
    # fills up (64 KiB of log lines) and then blocks the server's logging, and with it the server.
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, value = line.rsplit(" ", 1)
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total

    def output(self) -> str:
        """Everything the server has printed so far."""
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> str:
        """Waits for the server to exit; returns everything it printed."""
        self.process.wait(timeout=timeout)
        return self.output()

    def terminate(self, timeout: float = 30) -> str:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)


@contextmanager
def server_process(model: Path, *args: str, ready_timeout: float = 60) -> Iterator[ServerProcess]:
    port, metrics_port = free_port(), free_port()
    command = [str(BIN / "segstream-server"), "--model", f"tiny={model}", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--metrics-port", str(metrics_port), "--threads", "1", *args]
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "server.log"
        with log.open("w") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)
        server = ServerProcess(process, port, metrics_port, log)
        try:
            _wait_serving(server, ready_timeout)
            yield server
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def _wait_serving(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited: {server.wait()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError("server did not become SERVING")
