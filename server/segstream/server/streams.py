"""Frame policies of one stream: ORDERED (every frame, in order, backpressure) and LATEST (newest wins).

Both bound what one stream can hold: ORDERED stops reading while `window` frames are in flight,
which lets HTTP/2 flow control push back on the client; LATEST keeps one frame running and one
waiting, and drops (and counts) a waiting frame when a newer one arrives.

Every frame a policy reads is either handed to `process`, which answers it (with a result or an
error), or reported to `on_drop` once, with the reason: STALE (LATEST: a newer frame replaced it)
or CANCELLED (the stream ended first: the client cancelled or went away while the frame waited or
was being processed). So a stream's frames read = answered + failed + dropped, whatever ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any

from segstream.server.admission import LiveAdmission
from segstream.server.errors import IdleStreamError
from segstream.v1 import segmentation_pb2 as pb

# Segments one frame; the float is when the frame arrived (time.perf_counter()).
Process = Callable[[pb.Frame, float], Coroutine[Any, Any, pb.SegmentResponse]]
# Hears of one frame that will get no answer, with the reason (STALE or CANCELLED).
OnDrop = Callable[[str], None]

STALE = "stale"
CANCELLED = "cancelled"


def _ignore(reason: str) -> None:
    pass


_END = object()


async def ordered(
    frames: AsyncIterator[pb.Frame], process: Process, window: int, on_drop: OnDrop | None = None
) -> AsyncGenerator[pb.SegmentResponse, None]:
    """Every frame, answered in order, with at most `window` of them in flight.

    A frame still waiting for a slot, or whose processing is cancelled, when the stream ends is
    reported to `on_drop` as CANCELLED.
    """
    drop = on_drop or _ignore
    slots = asyncio.Semaphore(window)
    queue: asyncio.Queue[asyncio.Task[pb.SegmentResponse] | object] = asyncio.Queue()

    def settled(task: asyncio.Task[pb.SegmentResponse]) -> None:
        # Also for a task cancelled before it started: its frame was read all the same.
        if task.cancelled():
            drop(CANCELLED)

    async def read() -> None:
        try:
            async for frame in frames:
                received = time.perf_counter()
                try:
                    await slots.acquire()
                except asyncio.CancelledError:
                    drop(CANCELLED)
                    raise
                task = asyncio.create_task(process(frame, received))
                task.add_done_callback(settled)
                queue.put_nowait(task)
        finally:
            queue.put_nowait(_END)

    reader = asyncio.create_task(read())
    try:
        while (item := await queue.get()) is not _END:
            assert isinstance(item, asyncio.Task)
            response = await item
            slots.release()
            yield response
        await reader  # surfaces a stream error the reader met
    finally:
        reader.cancel()
        # The task being awaited when the stream was cancelled has ended by now (awaiting a task
        # passes the cancellation on and waits for it); only the queued ones are left.
        unanswered: list[asyncio.Task[pb.SegmentResponse]] = []
        while not queue.empty():
            pending = queue.get_nowait()
            if isinstance(pending, asyncio.Task):
                pending.cancel()
                unanswered.append(pending)
        with contextlib.suppress(BaseException):
            await reader
        if unanswered:  # their drops are counted once they have ended
            with contextlib.suppress(BaseException):
                await asyncio.wait(unanswered)


async def latest(
    frames: AsyncIterator[pb.Frame],
    process: Process,
    on_drop: OnDrop | None = None,
    admission: LiveAdmission | None = None,
) -> AsyncGenerator[pb.SegmentResponse, None]:
    """Newest frame wins.

    `admission`, shared by every LATEST stream of a server, holds one place per frame the engine
    can run at once. A stream takes its newest frame only once it holds a place, so frames wait
    in the stream (where a newer one replaces them) rather than in the engine's queue, where they
    would only grow old: latency stays near one inference however many live streams share it.
    """
    places = admission or LiveAdmission(1)
    drop = on_drop or _ignore
    me = object()  # this stream, to the admission
    waiting: tuple[pb.Frame, float] | None = None
    dropped = 0
    reading_done = False
    arrived = asyncio.Event()

    def waiting_since() -> float:
        return waiting[1] if waiting is not None else 0.0

    async def read() -> None:
        nonlocal waiting, dropped, reading_done
        try:
            async for frame in frames:
                if waiting is not None:
                    dropped += 1
                    drop(STALE)
                waiting = (frame, time.perf_counter())
                arrived.set()
        finally:
            reading_done = True
            arrived.set()

    reader = asyncio.create_task(read())
    try:
        while True:
            if waiting is None:
                if reading_done:
                    break
                # Clear before waiting and re-check after: no wake-up is lost on one event loop.
                arrived.clear()
                await arrived.wait()
                continue
            await places.acquire(me, waiting_since)
            try:
                if waiting is None:  # only this loop takes frames, but stay safe
                    continue
                (frame, received), waiting = waiting, None
                try:
                    response = await process(frame, received)
                except asyncio.CancelledError:
                    drop(CANCELLED)
                    raise
            finally:
                places.release()
            response.dropped_frames = dropped
            yield response
        await reader
    finally:
        places.forget(me)
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        if waiting is not None:  # read, but the stream ended before it could run
            drop(CANCELLED)


class RequestReader:
    """Reads a stream's messages until the client half-closes, the server drains, or the stream idles.

    `drained` tells afterwards whether reading stopped because the server is shutting down, so
    the caller can answer what it already took and then tell the client to reconnect.
    """

    def __init__(self, stop: asyncio.Event, idle_timeout: float | None) -> None:
        self._stop = stop
        self._idle_timeout = idle_timeout or None
        self.drained = False

    async def read(self, messages: AsyncIterator[pb.SegmentRequest]) -> AsyncIterator[pb.SegmentRequest]:
        """The stream's messages, until it half-closes, the server drains, or it idles (IdleStreamError)."""
        iterator = aiter(messages)
        stopping = asyncio.ensure_future(self._stop.wait())
        pending: asyncio.Future[pb.SegmentRequest] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait(
                    {pending, stopping}, timeout=self._idle_timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if pending not in done:
                    if stopping in done:
                        self.drained = True
                        return
                    raise IdleStreamError(
                        f"no message for {self._idle_timeout:g} s: stream closed by the server's idle timeout; "
                        "send frames more often or raise --idle-timeout"
                    )
                try:
                    message = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield message
        finally:
            stopping.cancel()
            if pending is not None:
                pending.cancel()
