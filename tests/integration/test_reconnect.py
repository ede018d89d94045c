"""Reconnecting streams: a server drained by SIGTERM mid-stream, and the stream going on on another one."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt
import pytest

from segstream.client import (
    AsyncSegmentationClient,
    InvalidRequestError,
    Reconnect,
    SegmentationClient,
    SegmentResult,
    ServerUnavailableError,
    StreamOptions,
)
from segstream.client._reconnect import Backoff
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from tests.integration.server_process import ServerProcess, free_port, server_process

FRAMES = 200
DRAIN_AFTER = 30
_PACE_S = 0.005
_SERVER_ARGS = ("--size", "32", "--grace", "10")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def small(sample_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(sample_bgr[::10, ::10])


def _paced(image: npt.NDArray[np.uint8], count: int = FRAMES) -> Iterator[npt.NDArray[np.uint8]]:
    for _ in range(count):
        yield image
        time.sleep(_PACE_S)


async def _apaced(image: npt.NDArray[np.uint8], count: int = FRAMES) -> AsyncIterator[npt.NDArray[np.uint8]]:
    for _ in range(count):
        yield image
        await asyncio.sleep(_PACE_S)


def _drain_the_busy_one(servers: list[ServerProcess]) -> ServerProcess:
    """SIGTERM to the server that carries the stream (round-robin chose it), on a side thread."""
    busy = [s for s in servers if s.metric("segstream_open_streams") > 0]
    assert len(busy) == 1, [s.metric("segstream_open_streams") for s in servers]
    busy[0].process.send_signal(signal.SIGTERM)
    return busy[0]


def _reconnect_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "reconnecting" in r.getMessage()]


def _check_drained(server: ServerProcess, others: list[ServerProcess]) -> None:
    output = server.wait(timeout=30)
    assert server.process.returncode == 0, output
    assert "Traceback" not in output
    # The stream went on elsewhere: another server received frames.
    assert sum(s.metric("segstream_frames_received_total") for s in others) > 0


def test_ordered_stream_moves_to_the_other_server_and_answers_every_frame_once(
    tiny_model: Path, small: npt.NDArray[np.uint8], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="segstream.client")
    with ExitStack() as stack:
        servers = [stack.enter_context(server_process(tiny_model, *_SERVER_ARGS)) for _ in range(2)]
        target = ",".join(s.target for s in servers)
        results: list[SegmentResult] = []
        drained: ServerProcess | None = None
        with SegmentationClient(target, timeout=30, max_in_flight=4) as client:
            client.wait_ready(timeout=30)
            for result in client.stream(
                _paced(small), StreamOptions(policy="ordered"), reconnect=Reconnect(initial=0.05)
            ):
                results.append(result)
                if len(results) == DRAIN_AFTER:
                    drained = _drain_the_busy_one(servers)
        assert drained is not None
        _check_drained(drained, [s for s in servers if s is not drained])
    # Every frame answered exactly once and in order, across the reconnection.
    assert [r.frame_id for r in results] == list(range(FRAMES))
    assert all(r.ok for r in results)
    assert all(r.dropped_frames == 0 for r in results)
    messages = _reconnect_records(caplog)
    assert messages and "attempt 1" in messages[0] and "shutting down" in messages[0], messages


async def test_async_latest_stream_goes_on_with_newer_frames(
    tiny_model: Path, small: npt.NDArray[np.uint8], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="segstream.client")
    with ExitStack() as stack:
        servers = [stack.enter_context(server_process(tiny_model, *_SERVER_ARGS)) for _ in range(2)]
        target = ",".join(s.target for s in servers)
        results: list[SegmentResult] = []
        drained: ServerProcess | None = None
        async with AsyncSegmentationClient(target, timeout=30) as client:
            await client.wait_ready(timeout=30)
            stream = client.stream(_apaced(small), StreamOptions(policy="latest"), reconnect=Reconnect(initial=0.05))
            async for result in stream:
                results.append(result)
                if len(results) == DRAIN_AFTER:
                    drained = await asyncio.to_thread(_drain_the_busy_one, servers)
        assert drained is not None
        await asyncio.to_thread(_check_drained, drained, [s for s in servers if s is not drained])
    ids = [r.frame_id for r in results]
    assert ids == sorted(set(ids)), "ids went back or repeated"
    assert len(ids) > DRAIN_AFTER + 10 and ids[-1] == FRAMES - 1
    assert all(r.ok for r in results)
    # Every frame is either answered or counted as dropped, across the reconnection too.
    dropped = [r.dropped_frames for r in results]
    assert dropped == sorted(dropped)
    assert len(results) + dropped[-1] == FRAMES
    assert _reconnect_records(caplog)


def test_without_reconnect_the_drain_is_raised(tiny_model: Path, small: npt.NDArray[np.uint8]) -> None:
    with server_process(tiny_model, *_SERVER_ARGS) as server:
        answered = 0
        with SegmentationClient(server.target, timeout=30) as client, pytest.raises(ServerUnavailableError) as caught:
            for _ in client.stream(_paced(small)):
                answered += 1
                if answered == 10:
                    server.process.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.process.returncode == 0
    assert "shutting down" in str(caught.value) and "Reconnect" in str(caught.value)
    assert 10 <= answered < FRAMES


@pytest.fixture(scope="module")
def one_server(tiny_model: Path) -> Iterator[ServerProcess]:
    with server_process(tiny_model, *_SERVER_ARGS) as server:
        yield server


def test_other_errors_are_not_retried(
    one_server: ServerProcess, small: npt.NDArray[np.uint8], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="segstream.client")
    options = StreamOptions(model="nope")
    with SegmentationClient(one_server.target, timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(InvalidRequestError, match="nope"):
            list(client.stream([small] * 5, options, reconnect=Reconnect(initial=0.05)))
        assert time.monotonic() - started < 5
    assert not _reconnect_records(caplog)


async def test_other_errors_are_not_retried_by_the_async_client(
    one_server: ServerProcess, small: npt.NDArray[np.uint8], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="segstream.client")
    async with AsyncSegmentationClient(one_server.target, timeout=30) as client:
        # Frames race the refusal, so grpc.aio may lose its status; either way nothing is retried.
        for _ in range(3):
            with pytest.raises(InvalidRequestError, match="nope"):
                stream = client.stream([small] * 50, StreamOptions(model="nope"), reconnect=Reconnect(initial=0.05))
                [r async for r in stream]
    assert not _reconnect_records(caplog)


class _BreaksFirstStream(pb_grpc.SegmentationServicer):
    """Answers ANSWERED frames of the first stream, takes HELD more without answering them, then ends it
    with UNAVAILABLE, as a draining server would; every later stream is answered in full."""

    ANSWERED, HELD = 5, 3

    def __init__(self) -> None:
        self.streams = 0
        self.received: list[list[int]] = []

    async def Segment(
        self, requests: AsyncIterator[pb.SegmentRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SegmentResponse]:
        self.streams += 1
        breaking = self.streams == 1
        received: list[int] = []
        self.received.append(received)
        async for request in requests:
            if not request.HasField("frame"):
                continue
            received.append(request.frame.frame_id)
            if breaking and len(received) > self.ANSWERED:
                if len(received) == self.ANSWERED + self.HELD:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; reconnect")
                continue
            yield pb.SegmentResponse(frame_id=request.frame.frame_id)


@contextmanager
def _serving(servicer: pb_grpc.SegmentationServicer) -> Iterator[str]:
    """`servicer` on 127.0.0.1 in an event loop of its own, so that blocking clients can call it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server: list[grpc.aio.Server] = []

    async def start() -> int:
        server.append(grpc.aio.server())  # made inside its event loop, which it binds to
        add: Callable[[object, grpc.aio.Server], None] = pb_grpc.add_SegmentationServicer_to_server
        add(servicer, server[0])
        port = server[0].add_insecure_port("127.0.0.1:0")
        await server[0].start()
        return port

    try:
        yield f"127.0.0.1:{asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)}"
    finally:
        if server:
            asyncio.run_coroutine_threadsafe(server[0].stop(0), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_unanswered_frames_are_sent_again_in_order(client_kind: str, small: npt.NDArray[np.uint8]) -> None:
    servicer = _BreaksFirstStream()
    count, policy = 40, Reconnect(initial=0.01)
    with _serving(servicer) as target:
        if client_kind == "sync":
            with SegmentationClient(target, max_in_flight=4) as client:
                ids = [r.frame_id for r in client.stream(_paced(small, count), reconnect=policy)]
        else:

            async def run() -> list[int]:
                async with AsyncSegmentationClient(target, max_in_flight=4) as client:
                    return [r.frame_id async for r in client.stream(_apaced(small, count), reconnect=policy)]

            ids = asyncio.run(run())
    assert ids == list(range(count))
    first, *later = servicer.received
    assert first[: _BreaksFirstStream.ANSWERED + _BreaksFirstStream.HELD] == list(range(8))
    # The frames the first stream took and never answered come first on the next one.
    resent = [i for stream in later for i in stream]
    assert resent[:3] == [5, 6, 7] and sorted(resent) == list(range(5, count))


def test_latest_counts_frames_lost_with_the_stream_as_dropped(small: npt.NDArray[np.uint8]) -> None:
    servicer = _BreaksFirstStream()
    count = 40
    with _serving(servicer) as target, SegmentationClient(target) as client:
        options = StreamOptions(policy="latest")
        results = list(client.stream(_paced(small, count), options, reconnect=Reconnect(initial=0.01)))
    ids = [r.frame_id for r in results]
    assert ids[:5] == list(range(5)) and ids == sorted(set(ids)) and ids[-1] == count - 1
    # The held frames (and any sent after them) were dropped: every frame is answered or counted once.
    assert all(r.dropped_frames == 0 for r in results[:5])
    assert results[5].dropped_frames >= _BreaksFirstStream.HELD
    assert len(results) + results[-1].dropped_frames == count


def test_attempts_are_bounded(small: npt.NDArray[np.uint8], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="segstream.client")
    policy = Reconnect(initial=0.01, max_delay=0.02, max_attempts=3)
    with SegmentationClient(f"127.0.0.1:{free_port()}") as client, pytest.raises(ServerUnavailableError):
        list(client.stream([small] * 3, reconnect=policy))
    messages = _reconnect_records(caplog)
    assert [m.rsplit("(", 1)[1] for m in messages] == ["attempt 1 of 3)", "attempt 2 of 3)", "attempt 3 of 3)"]


def test_backoff_grows_caps_and_resets() -> None:
    backoff = Backoff(Reconnect(jitter=0, max_attempts=9))
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays[:9] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]) and delays[9] is None
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1) and backoff.attempt == 1
    # Jitter spreads each delay around its base, never past max_delay.
    spread = Backoff(Reconnect(initial=4.0, jitter=0.5), uniform=lambda low, high: high)
    assert [spread.next_delay(), spread.next_delay()] == [5.0, 5.0]
    low = Backoff(Reconnect(initial=1.0, jitter=0.5), uniform=lambda low, high: low)
    assert low.next_delay() == pytest.approx(0.5)
    endless = Backoff(Reconnect(multiplier=10.0))
    assert all(d is not None and d <= 5.0 for d in (endless.next_delay() for _ in range(2000)))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"initial": 0}, "initial must be more than 0"),
        ({"multiplier": 0.5}, "multiplier must be at least 1"),
        ({"initial": 2.0, "max_delay": 1.0}, "max_delay"),
        ({"jitter": 1.5}, "jitter must be from 0 to 1"),
        ({"max_attempts": 0}, "max_attempts must be a positive integer or None"),
        ({"max_attempts": True}, "max_attempts"),
        ({"initial": float("nan")}, "finite number"),
    ],
)
def test_reconnect_policies_are_validated(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reconnect(**settings)
