"""SegmentImage calls count against --max-unary: RESOURCE_EXHAUSTED beyond it, the count conserved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from segstream.server.app import SegstreamServer
from segstream.server.config import ModelSpec, ServerConfig
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.fakes import GatedModel
from tests.integration.grpc_helpers import channel


@pytest.fixture
def small_frame(sample_bgr: npt.NDArray[np.uint8]) -> pb.Frame:
    return codec.frame_from_array(np.ascontiguousarray(sample_bgr[::8, ::8]), frame_id=1, encoding="jpeg")


@pytest.fixture
async def gated_server(tiny_model: Path) -> AsyncIterator[tuple[SegstreamServer, GatedModel]]:
    model = GatedModel()
    config = ServerConfig(
        models=(ModelSpec("gated", tiny_model),), host="127.0.0.1", port=0, size=32, max_unary=2, max_streams=1
    )
    server = SegstreamServer(config, models={"gated": model})
    await server.start()
    try:
        yield server, model
    finally:
        model.gate.set()
        await asyncio.wait_for(server.stop(grace=1), 30)


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _sample(server: SegstreamServer, name: str, **labels: str) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_calls_beyond_the_limit_get_resource_exhausted_and_the_count_returns_to_zero(
    gated_server: tuple[SegstreamServer, GatedModel], small_frame: pb.Frame
) -> None:
    server, model = gated_server
    model.gate.clear()
    async with channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)
        request = pb.SegmentImageRequest(frame=small_frame)
        calls = [stub.SegmentImage(request, timeout=30) for _ in range(2)]
        await _until(lambda: server.service.open_unary == 2)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SegmentImage(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry later" in (refused.value.details() or "")
        assert "--max-unary" in (refused.value.details() or "")
        assert _sample(server, "segstream_streams_rejected_total", reason="TooManyCallsError") == 1
        assert _sample(server, "segstream_open_unary_calls") == 2
        model.gate.set()
        for call in calls:
            assert not (await call).HasField("error")
        assert server.service.open_unary == 0
        assert _sample(server, "segstream_open_unary_calls") == 0
        # The places are free again.
        assert not (await stub.SegmentImage(request, timeout=30)).HasField("error")


async def test_cancelled_calls_give_their_places_back(
    gated_server: tuple[SegstreamServer, GatedModel], small_frame: pb.Frame
) -> None:
    server, model = gated_server
    model.gate.clear()
    async with channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)
        request = pb.SegmentImageRequest(frame=small_frame)
        for _ in range(3):  # places must be conserved round after round
            calls = [stub.SegmentImage(request, timeout=30) for _ in range(2)]
            await _until(lambda: server.service.open_unary == 2)
            for call in calls:
                call.cancel()
            await _until(lambda: server.service.open_unary == 0)
        # Calls that run out their deadline give their places back too.
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await asyncio.gather(*(stub.SegmentImage(request, timeout=0.3) for _ in range(2)))
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _until(lambda: server.service.open_unary == 0)
        assert _sample(server, "segstream_open_unary_calls") == 0
        model.gate.set()
        replies = await asyncio.gather(*(stub.SegmentImage(request, timeout=30) for _ in range(2)))
        assert not any(r.HasField("error") for r in replies)
        assert server.service.open_unary == 0


async def test_streams_and_image_calls_have_separate_budgets(
    gated_server: tuple[SegstreamServer, GatedModel], small_frame: pb.Frame
) -> None:
    server, _ = gated_server
    async with channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)
        hold = asyncio.Event()

        async def one_frame_then_wait() -> AsyncIterator[pb.SegmentRequest]:
            yield pb.SegmentRequest(frame=small_frame)
            await hold.wait()

        stream = stub.Segment(one_frame_then_wait(), timeout=30)
        assert (await stream.read()).frame_id == small_frame.frame_id
        # The only stream place is taken (--max-streams 1); images still have theirs.
        assert not (await stub.SegmentImage(pb.SegmentImageRequest(frame=small_frame), timeout=30)).HasField("error")
        hold.set()
        stream.cancel()
