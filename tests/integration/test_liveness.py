"""The liveness watchdog against a real server whose engine hangs: health, metric, log and recovery."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segstream.server.app import SegstreamServer
from segstream.server.batcher import Batcher
from segstream.server.config import ModelSpec, ServerConfig
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.fakes import GatedModel
from tests.integration.grpc_helpers import channel

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STALL_TIMEOUT = 0.4


@pytest.fixture
def small_frame(sample_bgr: npt.NDArray[np.uint8]) -> pb.Frame:
    return codec.frame_from_array(np.ascontiguousarray(sample_bgr[::8, ::8]), frame_id=1, encoding="jpeg")


async def _until(condition: Callable[[], bool], within: float = 10.0) -> float:
    """Polls `condition`; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def _health(stub: health_pb2_grpc.HealthStub) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service="segstream.v1.Segmentation"), timeout=5)
    return int(reply.status)


async def _until_health(stub: health_pb2_grpc.HealthStub, status: int, within: float = 10.0) -> float:
    started = time.monotonic()
    while await _health(stub) != status:
        assert time.monotonic() - started < within, f"health never became {status}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _segment_image(stub: pb_grpc.SegmentationStub, frame: pb.Frame) -> pb.SegmentResponse:
    reply: pb.SegmentResponse = await stub.SegmentImage(pb.SegmentImageRequest(frame=frame), timeout=30)
    return reply


def _sample(server: SegstreamServer, name: str) -> float:
    value = server.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def _gated_server(tiny_model: Path, **settings: Any) -> tuple[GatedModel, SegstreamServer]:
    """A server (not started) over a GatedModel, with the test's stall timeout unless `settings` say otherwise."""
    model = GatedModel()
    config = ServerConfig(
        models=(ModelSpec("gated", tiny_model),),
        host="127.0.0.1",
        port=0,
        size=32,
        **{"stall_timeout_s": STALL_TIMEOUT, **settings},
    )
    return model, SegstreamServer(config, models={"gated": model})


async def _started(tiny_model: Path) -> tuple[GatedModel, SegstreamServer, Batcher]:
    """A started gated server, and its batcher (to see what runs)."""
    model, server = _gated_server(tiny_model)
    await server.start()
    assert server.pipeline is not None
    return model, server, server.pipeline.batcher


async def test_a_hung_engine_turns_health_off_until_batches_complete_again(
    tiny_model: Path, small_frame: pb.Frame, caplog: pytest.LogCaptureFixture
) -> None:
    model, server, batcher = await _started(tiny_model)
    try:
        async with channel(server) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = pb_grpc.SegmentationStub(ch)
            # Idle for longer than the timeout: an idle server is not stalled...
            await asyncio.sleep(STALL_TIMEOUT * 2)
            assert await _health(health) == SERVING
            # ...and its first frame after the idle time is not late from the start: a frame that
            # waits less than the timeout leaves health alone.
            model.gate.clear()
            brief = asyncio.create_task(_segment_image(stub, small_frame))
            await _until(lambda: batcher.stalled_for()[0] == 1)
            await asyncio.sleep(STALL_TIMEOUT / 4)
            assert await _health(health) == SERVING
            model.gate.set()
            assert not (await brief).HasField("error")
            assert _sample(server, "segstream_engine_stalled") == 0

            # Now the engine hangs with frames waiting.
            model.gate.clear()
            hold = asyncio.Event()

            async def frames() -> AsyncIterator[pb.SegmentRequest]:
                for i in range(2):
                    frame = pb.Frame()
                    frame.CopyFrom(small_frame)
                    frame.frame_id = i
                    yield pb.SegmentRequest(frame=frame)
                await hold.wait()

            call = stub.Segment(frames(), timeout=30)
            await _until(lambda: batcher.stalled_for()[0] == 2)
            with caplog.at_level("ERROR", logger="segstream.server.watchdog"):
                took = await _until_health(health, NOT_SERVING)
            assert took < STALL_TIMEOUT * 4, f"NOT_SERVING only after {took:.2f} s"
            assert _sample(server, "segstream_engine_stalled") == 1
            assert _sample(server, "segstream_engine_stalls_total") == 1
            assert "completed no batch for" in caplog.text and "2 frame(s) wait" in caplog.text
            assert await _health(health) == NOT_SERVING  # it stays off while the engine hangs

            # The engine comes back: both frames are answered and health turns back on.
            model.gate.set()
            answered = [await call.read(), await call.read()]
            assert [r.frame_id for r in answered] == [0, 1]
            assert not any(r.HasField("error") for r in answered)
            await _until_health(health, SERVING)
            assert _sample(server, "segstream_engine_stalled") == 0
            hold.set()
            call.cancel()
    finally:
        # A hung engine would keep its worker thread (and the server's stop) waiting: release it.
        model.gate.set()
        await asyncio.wait_for(server.stop(grace=1), 30)


async def test_the_watchdog_never_turns_health_back_on_after_engine_failures(
    tiny_model: Path, small_frame: pb.Frame
) -> None:
    model, server = _gated_server(tiny_model, max_engine_failures=1)
    await server.start()
    try:
        async with channel(server) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = pb_grpc.SegmentationStub(ch)
            # A stall, then a failed run: health must stay off (the engine failed) after the stall ends.
            model.gate.clear()
            model.fail_when_mean_below = 1000.0
            call = asyncio.create_task(_segment_image(stub, small_frame))
            await _until_health(health, NOT_SERVING)
            model.gate.set()
            assert (await call).error.code == 14  # UNAVAILABLE: the engine failed
            watchdog = server.watchdog
            assert watchdog is not None
            await _until(lambda: not watchdog.stalled)
            assert _sample(server, "segstream_engine_stalled") == 0
            assert await _health(health) == NOT_SERVING
    finally:
        model.gate.set()
        await asyncio.wait_for(server.stop(grace=1), 30)


async def test_a_stall_timeout_of_zero_turns_the_watchdog_off(tiny_model: Path) -> None:
    _, server = _gated_server(tiny_model, stall_timeout_s=0)
    await server.start()
    try:
        assert server.watchdog is None
    finally:
        await server.stop(grace=1)


async def test_a_server_whose_engine_hangs_still_stops_and_says_so(
    tiny_model: Path, small_frame: pb.Frame, caplog: pytest.LogCaptureFixture
) -> None:
    model, server, batcher = await _started(tiny_model)
    try:
        async with channel(server) as ch:
            model.gate.clear()  # the engine hangs from now on
            model.entered.clear()
            call = asyncio.create_task(_segment_image(pb_grpc.SegmentationStub(ch), small_frame))
            await _until(model.entered.is_set)  # the frame is inside the engine, not queued
            started = time.monotonic()
            with caplog.at_level("ERROR", logger="segstream.server.app"):
                await asyncio.wait_for(server.stop(grace=0.1), 10)
            took = time.monotonic() - started
            # The grace for streams, then the rest of the stall timeout for the running batch: not forever.
            assert STALL_TIMEOUT / 2 <= took < 0.1 + STALL_TIMEOUT + 2, f"stop took {took:.2f} s"
            assert server.abandoned_work and not model.closed  # a session in use is not freed
            assert "the engine is hung" in caplog.text
            await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 5)  # the call has ended
    finally:
        model.gate.set()  # lets the worker thread end, before this test's event loop closes
        for thread in batcher._threads:
            await asyncio.to_thread(thread.join, 5)


async def test_a_run_that_ends_within_the_stall_timeout_is_waited_for_on_stop(
    tiny_model: Path, small_frame: pb.Frame
) -> None:
    model, server, _ = await _started(tiny_model)
    async with channel(server) as ch:
        model.gate.clear()
        model.entered.clear()
        call = asyncio.create_task(_segment_image(pb_grpc.SegmentationStub(ch), small_frame))
        await _until(model.entered.is_set)
        stopping = asyncio.create_task(server.stop(grace=0.05))
        await asyncio.sleep(STALL_TIMEOUT / 4)
        model.gate.set()  # the run ends before the stall timeout
        await asyncio.wait_for(stopping, 10)
        await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 5)
    assert not server.abandoned_work and model.closed


async def test_a_server_whose_runs_end_frees_its_models_on_stop(tiny_model: Path, small_frame: pb.Frame) -> None:
    model, server = _gated_server(tiny_model)
    await server.start()
    async with channel(server) as ch:
        assert not (await _segment_image(pb_grpc.SegmentationStub(ch), small_frame)).HasField("error")
    await asyncio.wait_for(server.stop(grace=1), 30)
    assert not server.abandoned_work
    assert model.closed


async def test_a_server_idle_for_longer_than_the_stall_timeout_stops_cleanly(
    tiny_model: Path, small_frame: pb.Frame
) -> None:
    # The usual drain: traffic moves away, the server idles, then it is told to stop. Idle time is
    # no stall, so its workers are waited for and its models freed.
    for frames in (0, 1):  # never used, and used once long ago
        model, server = _gated_server(tiny_model)
        await server.start()
        if frames:
            async with channel(server) as ch:
                assert not (await _segment_image(pb_grpc.SegmentationStub(ch), small_frame)).HasField("error")
        await asyncio.sleep(STALL_TIMEOUT * 3)
        await asyncio.wait_for(server.stop(grace=0.05), 30)
        assert not server.abandoned_work
        assert model.closed


async def test_a_stop_while_the_models_load_does_not_wait_for_them(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loading, release = threading.Event(), threading.Event()
    loaded: list[GatedModel] = []

    def slow_load(config: ServerConfig) -> dict[str, GatedModel]:
        loading.set()
        release.wait(30)  # a slow disk, or a TensorRT build of minutes
        loaded.append(GatedModel())
        return {"gated": loaded[-1]}

    monkeypatch.setattr("segstream.server.app.load_models", slow_load)
    config = ServerConfig(models=(ModelSpec("gated", tiny_model),), host="127.0.0.1", port=0, size=32)
    server = SegstreamServer(config)
    starting = asyncio.create_task(server.start())
    try:
        await _until(loading.is_set)
        starting.cancel()  # what the CLI does on SIGTERM while starting
        with caplog.at_level("WARNING", logger="segstream.server.app"), pytest.raises(asyncio.CancelledError):
            await starting
        assert server.abandoned_work and "still loading" in caplog.text
        await asyncio.wait_for(server.stop(grace=0), 5)  # nothing to wait for: no pipeline yet
        release.set()
        # Models that finish loading after the start was given up are freed, not left behind.
        await _until(lambda: bool(loaded) and loaded[0].closed)
    finally:
        release.set()
        for thread in threading.enumerate():
            if thread.name == "segstream-load":
                await asyncio.to_thread(thread.join, 5)
