"""Frame policies over a fake processing step: ORDERED keeps order and bounds work; LATEST drops stale frames."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from segstream.server.admission import LiveAdmission
from segstream.server.streams import latest, ordered
from segstream.v1 import segmentation_pb2 as pb


async def frames(count: int, delay: float = 0.0, fail_at: int | None = None) -> AsyncIterator[pb.Frame]:
    for i in range(count):
        if i == fail_at:
            raise ValueError("bad request")
        yield pb.Frame(frame_id=i)
        if delay:
            await asyncio.sleep(delay)


class Processor:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = 0
        self.peak = 0
        self.seen: list[int] = []

    async def __call__(self, frame: pb.Frame, received: float) -> pb.SegmentResponse:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.seen.append(frame.frame_id)
        try:
            # Later frames finish sooner, so only the policy can keep the order.
            await asyncio.sleep(self.seconds / (1 + frame.frame_id % 3))
            return pb.SegmentResponse(frame_id=frame.frame_id)
        finally:
            self.active -= 1


async def test_ordered_keeps_order_and_bounds_the_window() -> None:
    process = Processor(0.01)
    out = [r.frame_id async for r in ordered(frames(40), process, window=3)]
    assert out == list(range(40))
    assert process.peak == 3


async def test_ordered_surfaces_request_errors_after_answering_earlier_frames() -> None:
    out: list[int] = []
    with pytest.raises(ValueError, match="bad request"):
        async for response in ordered(frames(10, fail_at=5), Processor(0.001), window=2):
            out.append(response.frame_id)
    assert out == [0, 1, 2, 3, 4]


async def test_latest_answers_newest_frames_and_counts_drops() -> None:
    process = Processor(0.03)
    responses = [r async for r in latest(frames(60, delay=0.002), process)]
    ids = [r.frame_id for r in responses]
    assert ids == sorted(ids) and ids[-1] == 59
    assert process.peak == 1
    assert responses[-1].dropped_frames == 60 - len(responses) > 0


async def test_latest_with_a_slow_source_drops_nothing() -> None:
    responses = [r async for r in latest(frames(5, delay=0.02), Processor(0.001))]
    assert [r.frame_id for r in responses] == list(range(5))
    assert all(r.dropped_frames == 0 for r in responses)


async def test_closing_a_stream_cancels_its_in_flight_work() -> None:
    process = Processor(10.0)
    stream = ordered(frames(10), process, window=4)
    task = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert process.active == 0


async def test_live_streams_share_engine_places_and_take_fresh_frames() -> None:
    """With one place, two LATEST streams run one frame at a time, and each frame taken is fresh."""
    process = Processor(0.03)
    ages: list[float] = []

    async def timed(frame: pb.Frame, received: float) -> pb.SegmentResponse:
        ages.append(time.perf_counter() - received)
        return await process(frame, received)

    admission = LiveAdmission(1)

    async def run() -> list[pb.SegmentResponse]:
        return [r async for r in latest(frames(40, delay=0.003), timed, None, admission)]

    first, second = await asyncio.gather(run(), run())
    assert process.peak == 1  # the shared place serialises the two streams
    assert first[-1].frame_id == second[-1].frame_id == 39
    # A frame waits for a place in its stream, not in the engine: taken frames are at most a few ms old.
    assert sorted(ages)[len(ages) // 2] < 0.01
