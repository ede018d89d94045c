"""Startup as a new user meets it: busy ports, foreign addresses, unreadable models and absent GPUs refused in
one line, and a server still loading says so."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segstream.client.cli import main as client_main
from segstream.server.cli import main as server_main
from segstream.server.gpu_options import CUDA, TENSORRT
from segstream.server.providers import nvidia_gpu_present
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.integration.background_server import HeldModel, background_server, tiny_config
from tests.unit.test_ports import FOREIGN

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _restore_logging(restore_root_logging: None) -> None:
    """main() points the root logger at this test's captured stderr (see tests/conftest.py)."""


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program (a plain listening socket) holds."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def _server_argv(model: Path, *args: str) -> list[str]:
    return ["--model", f"tiny={model}", "--host", "127.0.0.1", "--size", "64", "--log-level", "WARNING", *args]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("segstream-server: error: "), err
    return lines[0]


def test_a_second_server_on_the_same_port_is_refused(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with background_server(tiny_config(tiny_model)) as first:
        port = first.server.port
        assert server_main(_server_argv(tiny_model, "--port", str(port))) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert f"--port {port}: port {port} is already in use" in line and "--reuse-port" in line
        # The first server was not disturbed.
        with grpc.insecure_channel(first.target) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_port_held_by_another_program_is_one_line(
    tiny_model: Path, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server_main(_server_argv(tiny_model, "--port", str(busy_port))) == 1
    assert f"--port {busy_port}: port {busy_port} is already in use" in _one_error_line(capsys.readouterr().err)


def test_a_busy_metrics_port_is_named(tiny_model: Path, busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert server_main(_server_argv(tiny_model, "--port", "0", "--metrics-port", str(busy_port))) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"--metrics-port {busy_port}: port {busy_port} is already in use" in line


def test_servers_that_all_ask_for_it_share_a_port(tiny_model: Path) -> None:
    with background_server(tiny_config(tiny_model, reuse_port=True)) as first:
        port = first.server.port
        with background_server(tiny_config(tiny_model, port=port, reuse_port=True)) as second:
            assert second.server.port == port


def test_calls_before_the_models_are_warm_answer_loading(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = HeldModel(tiny_model)
    model.gate.clear()  # hold the warm-up run: the server listens, its models are not warm
    with (
        background_server(tiny_config(tiny_model), {"tiny": model}, wait_ready=False) as server,
        grpc.insecure_channel(server.target) as ch,
    ):
        try:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = pb_grpc.SegmentationStub(ch)
            frame = codec.frame_from_array(np.zeros((48, 64, 3), np.uint8), frame_id=1, encoding="raw")
            calls = {
                "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=10),
                "SegmentImage": lambda: stub.SegmentImage(pb.SegmentImageRequest(frame=frame), timeout=10),
                "Segment": lambda: list(stub.Segment(iter([pb.SegmentRequest(frame=frame)]), timeout=10)),
            }
            for name, call in calls.items():
                with pytest.raises(grpc.RpcError) as info:
                    call()
                error = info.value
                assert isinstance(error, grpc.Call)
                assert error.code() == grpc.StatusCode.UNAVAILABLE, name
                assert "loading" in (error.details() or ""), (name, error.details())

            capsys.readouterr()
            assert client_main(["--server", server.target, "models"]) == 1
            out, err = capsys.readouterr()
            assert "server is still loading" in err and "serves no models" not in out + err
            assert err.count("\n") == 1, err
        finally:
            model.gate.set()  # before the server stops: its start waits on the gate
        server.started.result(timeout=30)
        assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models] == ["tiny"]


def test_the_server_refuses_a_foreign_address_in_one_line(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(tiny_model), "--host", FOREIGN, "--port", "0", "--log-level", "WARNING"]
    assert server_main(argv) == 1
    err = capsys.readouterr().err
    assert (
        err == f"segstream-server: error: --port 0: cannot listen on {FOREIGN}: it is not an address of this machine\n"
    )


def test_unreadable_model_fails_at_startup_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    assert server_main(["--model", str(broken), "--port", "0", "--host", "127.0.0.1", "--log-level", "ERROR"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("segstream-server: error: model broken: cannot read")


@pytest.mark.parametrize(("device", "provider"), [("cuda", CUDA), ("tensorrt", TENSORRT)])
def test_explicit_gpu_device_without_gpu_fails_at_startup_in_one_line(
    device: str, provider: str, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if nvidia_gpu_present():
        pytest.skip("this machine has an NVIDIA GPU: the provider may really load")
    argv = ["--model", str(tiny_model), "--device", device, "--port", "0", "--host", "127.0.0.1"]
    assert server_main([*argv, "--log-level", "ERROR"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"segstream-server: error: model tiny: --device {device} asked for {provider}")
    assert "no NVIDIA driver" in lines[-1] and "--device cpu" in lines[-1]
