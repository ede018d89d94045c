"""Limits, timeouts, draining, engine failures, metrics and fuzzed requests against an in-process server."""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segstream.server.app import SegstreamServer
from segstream.server.config import ModelSpec, ServerConfig
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.conftest import ServerFactory
from tests.fakes import GatedModel
from tests.integration.grpc_helpers import channel, requests, segment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(text: str, name: str) -> float:
    """Sum of every sample of a metric in Prometheus text format."""
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.fixture
def small_frame(sample_bgr: npt.NDArray[np.uint8]) -> pb.Frame:
    return codec.frame_from_array(np.ascontiguousarray(sample_bgr[::8, ::8]), frame_id=1, encoding="jpeg")


async def test_metrics_count_what_happened(server_factory: ServerFactory, small_frame: pb.Frame) -> None:
    port = _free_port()
    bad = pb.Frame(frame_id=2, encoded=pb.EncodedImage(data=b"junk"))
    async with server_factory(metrics_port=port) as server:
        await segment(server, None, [small_frame, bad, small_frame])
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
    assert _metric(text, "segstream_frames_received_total") == 3
    assert _metric(text, "segstream_frames_answered_total") == 2
    assert 'segstream_frames_failed_total{model="tiny",reason="invalid_argument"} 1.0' in text
    assert _metric(text, "segstream_inflight_frames") == 0
    assert _metric(text, "segstream_open_streams") == 0
    assert _metric(text, "segstream_stage_seconds_count") == 10  # 5 stages x 2 answered frames
    assert 'segstream_model_info{model="tiny",provider="CPUExecutionProvider"} 1.0' in text


async def test_idle_streams_are_closed_with_a_reason(server_factory: ServerFactory, small_frame: pb.Frame) -> None:
    async with server_factory(idle_timeout_s=0.5) as server, channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)
        hold = asyncio.Event()

        async def one_then_silence() -> object:
            yield pb.SegmentRequest(frame=small_frame)
            await hold.wait()

        call = stub.Segment(one_then_silence(), timeout=30)
        got = [r async for r in _until_error(call)]
        hold.set()
    assert [r.frame_id for r in got[:-1]] == [1]
    error = got[-1]
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle timeout" in (error.details() or "")


async def _until_error(call: Any) -> AsyncIterator[Any]:
    try:
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as exc:
        yield exc


async def test_stop_drains_streams_answering_every_frame_taken(tiny_model: Path, small_frame: pb.Frame) -> None:
    model = GatedModel()
    config = ServerConfig(models=(ModelSpec("gated", tiny_model),), host="127.0.0.1", port=0, size=32, inflight=4)
    server = SegstreamServer(config, models={"gated": model})
    await server.start()
    model.gate.clear()
    hold = asyncio.Event()
    async with channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)

        async def frames() -> object:
            for i in range(3):
                frame = pb.Frame()
                frame.CopyFrom(small_frame)
                frame.frame_id = i
                yield pb.SegmentRequest(frame=frame)
            await hold.wait()  # the client keeps the stream open

        call = stub.Segment(frames(), timeout=30)
        collected = asyncio.create_task(_collect(call))
        for _ in range(100):  # wait until the server holds all three frames
            if server.metrics.registry.get_sample_value("segstream_inflight_frames") == 3:
                break
            await asyncio.sleep(0.02)
        stopping = asyncio.create_task(server.stop(grace=10))
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SegmentImage(pb.SegmentImageRequest(frame=small_frame), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        model.gate.set()
        got = await asyncio.wait_for(collected, 20)
        await asyncio.wait_for(stopping, 20)
        hold.set()
    responses, error = got
    assert [r.frame_id for r in responses] == [0, 1, 2]
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (error.details() or "")


async def _collect(call: object) -> tuple[list[pb.SegmentResponse], grpc.aio.AioRpcError | None]:
    responses: list[pb.SegmentResponse] = []
    try:
        async for response in call:  # type: ignore[attr-defined]
            responses.append(response)
    except grpc.aio.AioRpcError as exc:
        return responses, exc
    return responses, None


async def test_engine_failures_answer_unavailable_then_turn_health_off(tiny_model: Path, small_frame: pb.Frame) -> None:
    model = GatedModel()
    config = ServerConfig(
        models=(ModelSpec("gated", tiny_model),), host="127.0.0.1", port=0, size=32, max_engine_failures=3
    )
    server = SegstreamServer(config, models={"gated": model})
    await server.start()
    model.fail_when_mean_below = 1000.0  # every frame now fails inside the engine
    try:
        responses = await segment(server, None, [small_frame] * 4)
        assert all(r.error.code == grpc.StatusCode.UNAVAILABLE.value[0] for r in responses)
        assert "inference failed on CPUExecutionProvider: simulated device failure" in responses[0].error.message
        async with channel(server) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(grace=1)


_ENUM = st.integers(-3, 8)
_CONFIGS = st.builds(
    pb.StreamConfig,
    model=st.sampled_from(["", "tiny", "nope", "\x00"]),
    head=_ENUM,
    outputs=st.lists(_ENUM, max_size=4),
    mask_encoding=_ENUM,
    image_encoding=_ENUM,
    resolution=_ENUM,
    policy=_ENUM,
    jpeg_quality=st.integers(0, 300),
)
_RAW = st.builds(
    pb.RawImage,
    data=st.binary(max_size=300),
    width=st.integers(0, 70_000),
    height=st.integers(0, 70_000),
    stride=st.integers(0, 1 << 16),
    format=_ENUM,
)
_FRAMES = st.builds(
    pb.Frame,
    frame_id=st.integers(0, 2**64 - 1),
    raw=_RAW,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.none() | _CONFIGS, frames=st.lists(_FRAMES, max_size=3))
def test_fuzzed_requests_never_break_the_server(
    fuzz_server: tuple[SegstreamServer, asyncio.AbstractEventLoop],
    small_frame: pb.Frame,
    config: pb.StreamConfig | None,
    frames: list[pb.Frame],
) -> None:
    server, loop = fuzz_server

    async def exercise() -> None:
        async with channel(server) as ch:
            stub = pb_grpc.SegmentationStub(ch)
            try:
                responses = [r async for r in stub.Segment(requests(config, frames), timeout=30)]
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), exc
                assert exc.details()
            else:
                assert [r.frame_id for r in responses] == [f.frame_id for f in frames]
                for response in responses:
                    assert response.HasField("error") or response.HasField("label_mask") or config is not None
            # A good stream still works afterwards.
            good = [r async for r in stub.Segment(requests(None, [small_frame]), timeout=30)]
            assert len(good) == 1 and not good[0].HasField("error")

    asyncio.run_coroutine_threadsafe(exercise(), loop).result(timeout=60)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One server for all fuzz examples, on its own event loop thread (hypothesis drives it synchronously)."""
    import threading

    import onnx

    from segstream.models.build import build_fcn

    path = tmp_path_factory.mktemp("fuzz") / "tiny.onnx"
    onnx.save(build_fcn("tiny", seed=0), str(path))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = ServerConfig(models=(ModelSpec("tiny", path),), host="127.0.0.1", port=0, size=32, device="cpu", threads=1)
    server = asyncio.run_coroutine_threadsafe(_started(config), loop).result(timeout=60)
    yield server, loop
    asyncio.run_coroutine_threadsafe(server.stop(grace=1), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


async def _started(config: ServerConfig) -> SegstreamServer:
    server = SegstreamServer(config)
    await server.start()
    return server
