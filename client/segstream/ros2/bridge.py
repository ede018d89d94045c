"""The bridge without ROS 2: camera messages in, segmentation messages out, over one LATEST stream.

`BridgeCore` is what the rclpy node wraps. It keeps the newest camera message that has not been sent
yet (each new one replaces it: a robot wants the freshest view, not a queue), streams it to the server
with policy "latest" with at most `max_in_flight` frames unanswered, and hands every result to
`publish` as messages carrying the input's own header. When the server goes away it reconnects with
exponential backoff; a bad model name or rejected credentials stop it instead, since retrying cannot
help. Every method runs on the event loop's thread: the node hands messages over with
`loop.call_soon_threadsafe(core.submit, msg)`.

Example:
    >>> core = BridgeCore(BridgeSettings(server="localhost:50051"), print, message_factory=Image)  # doctest: +SKIP
    >>> core.submit(camera_image)  # doctest: +SKIP
    >>> await core.run()  # until core.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from segstream.client import (
    AsyncSegmentationClient,
    AuthenticationError,
    FrameInput,
    InvalidRequestError,
    SegmentResult,
    SegstreamError,
)
from segstream.ros2.convert import (
    HeaderTable,
    OutputMessages,
    UnsupportedImageError,
    frame_input_from_message,
    output_messages,
    stamp_to_ns,
)
from segstream.ros2.messages import CompressedImageLike, ImageFactory, ImageLike
from segstream.ros2.settings import BridgeSettings

_M = TypeVar("_M")
_T = TypeVar("_T")

CameraMessage = ImageLike | CompressedImageLike
DEFAULT_STOP_GRACE_S = 2.0


class BridgeLogger(Protocol):
    """What the bridge logs through: a `logging.Logger` or an rclpy node's logger."""

    def debug(self, message: str, /) -> object:
        """Details for diagnosis, such as frames a stream left unanswered when it ended."""

    def info(self, message: str, /) -> object:
        """Progress: the stream is up, and how many camera frames were dropped to stay current."""

    def warning(self, message: str, /) -> object:
        """Trouble the bridge rides out: a lost stream it reconnects, a frame it cannot segment or publish."""

    def error(self, message: str, /) -> object:
        """Trouble that ends streaming, such as a server refusing the stream."""


@dataclass
class BridgeStats:
    """Counters since the bridge started.

    Attributes:
        received: Camera messages handed to `submit`.
        sent: Frames sent to the server.
        published: Results published.
        replaced: Messages replaced by a newer one before they could be sent.
        dropped_by_server: Frames sent but skipped by the server for a newer one (policy "latest").
        failed: Messages that could not be converted, and frames the server answered with an error.
        reconnects: Times the stream was lost and opened again.
    """

    received: int = 0
    sent: int = 0
    published: int = 0
    replaced: int = 0
    dropped_by_server: int = 0
    failed: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class BridgeOutput(Generic[_M]):
    """One published result: the messages, the bridge's frame id and the client's result."""

    frame_id: int
    messages: OutputMessages[_M]
    result: SegmentResult


class LatestSlot(Generic[_T]):
    """Holds at most one item: `put` replaces what is there, `take` waits for it. Event-loop only."""

    def __init__(self) -> None:
        self._item: _T | None = None
        self._full = False
        self._closed = False
        self._changed = asyncio.Event()

    def put(self, item: _T) -> bool:
        """Store `item`; True when it replaced one that was never taken."""
        replaced = self._full
        self._item, self._full = item, True
        self._changed.set()
        return replaced

    async def take(self) -> _T | None:
        """The item, once there is one; None once the slot is closed."""
        while not self._closed:
            if self._full:
                item, self._item, self._full = self._item, None, False
                return item
            self._changed.clear()
            await self._changed.wait()
        return None

    def clear(self) -> int:
        """Discard the item; 1 if there was one, else 0."""
        had = int(self._full)
        self._item, self._full = None, False
        return had

    def close(self) -> None:
        """Wake any waiting `take` with None; the slot holds nothing after this."""
        self._closed = True
        self._changed.set()


def open_client(settings: BridgeSettings) -> AsyncSegmentationClient:
    """The client the bridge streams with: the settings' server, TLS, token and wire encoding."""
    return AsyncSegmentationClient(settings.server, **settings.client_kwargs())


class BridgeCore(Generic[_M]):
    """Streams camera messages to a segstream server and publishes each result with its input's header.

    Args:
        settings: Server, outputs, security and limits.
        publish: Called on the event loop with every result's messages; must not block for long.
        message_factory: Builds the output image messages (`segstream.ros2.messages.Image`, or
            `ros_image_factory(sensor_msgs.msg.Image)` in a node).
        logger: Where problems, drops and reconnects are reported.
        client_factory: Opens the client; the default honours the settings (tests may point it elsewhere).
        stop_grace_s: After `stop`, how long results of frames already sent may take before the stream
            is cancelled.
    """

    def __init__(
        self,
        settings: BridgeSettings,
        publish: Callable[[BridgeOutput[_M]], object],
        *,
        message_factory: ImageFactory[_M],
        logger: BridgeLogger | None = None,
        client_factory: Callable[[BridgeSettings], AsyncSegmentationClient] = open_client,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        self.settings = settings
        self.stats = BridgeStats()
        self._publish = publish
        self._factory = message_factory
        self._log: BridgeLogger = logger if logger is not None else logging.getLogger("segstream.ros2")
        self._client_factory = client_factory
        self._stop_grace_s = stop_grace_s
        self._slot: LatestSlot[CameraMessage] = LatestSlot()
        self._headers: HeaderTable[Any] = HeaderTable(settings.header_capacity)
        self._ids = itertools.count()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._attempt: asyncio.Task[None] | None = None
        self._answered = 0
        self._drops_reported = (0, 0)
        self._drops_reported_at = time.monotonic()
        self._problems_logged: dict[str, float] = {}

    # -- feeding --------------------------------------------------------------------------------

    def submit(self, msg: CameraMessage) -> None:
        """Hand over one camera message (sensor_msgs/Image or CompressedImage); never blocks."""
        if self._stopping:
            return
        self.stats.received += 1
        if self._slot.put(msg):
            self.stats.replaced += 1
        self._report_drops()

    def stop(self) -> None:
        """Stop sending; `run` returns once the frames already sent are answered (or after the grace)."""
        if self._stopping:
            return
        self._stopping = True
        self._slot.close()
        self._stopped.set()
        attempt = self._attempt
        if attempt is not None and not attempt.done():
            asyncio.get_running_loop().call_later(self._stop_grace_s, attempt.cancel)

    # -- streaming ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Stream until `stop`; reconnects while the server is away.

        Raises InvalidRequestError (unknown model or head) and AuthenticationError (missing or
        rejected credentials): no retry can fix those.
        """
        client = self._client_factory(self.settings)
        try:
            await self._run_with(client)
        finally:
            await client.close()

    async def _run_with(self, client: AsyncSegmentationClient) -> None:
        settings = self.settings
        delay = settings.reconnect_initial_s
        first = True
        while not self._stopping:
            if not first:
                # Frames that waited through the outage are stale; send only what comes next.
                self.stats.replaced += self._slot.clear()
            first = False
            self._answered = 0
            self._attempt = asyncio.create_task(self._stream_once(client))
            try:
                await self._attempt
                reason = "the server ended the stream"
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping and task is not None and not task.cancelling():
                    return  # the grace after stop() ran out
                raise
            except (InvalidRequestError, AuthenticationError) as exc:
                self._log.error(f"segstream server {settings.server} refused the stream: {exc}")
                raise
            except SegstreamError as exc:
                reason = str(exc)
            finally:
                self._attempt = None
                self._forget_in_flight()
            if self._stopping:
                return
            if self._answered:
                delay = settings.reconnect_initial_s
            self.stats.reconnects += 1
            self._log.warning(f"segmentation stream lost ({reason}); reconnecting in {delay:.1f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)
            delay = min(delay * 2, settings.reconnect_max_s)

    def _forget_in_flight(self) -> None:
        lost = self._headers.clear()
        if lost:
            self._log.debug(f"{lost} frame(s) sent were not answered before the stream ended")

    async def _stream_once(self, client: AsyncSegmentationClient) -> None:
        window = asyncio.Semaphore(self.settings.max_in_flight)
        options = self.settings.stream_options()
        async with contextlib.aclosing(client.stream(self._frames(window), options)) as results:
            async for result in results:
                if not self._answered:
                    self._log.info(
                        f"streaming {self.settings.topic} to {self.settings.server} "
                        f"(model {result.model or 'default'}, policy latest)"
                    )
                self._answered += 1
                self._handle(result, window)

    async def _frames(self, window: asyncio.Semaphore) -> AsyncIterator[FrameInput]:
        while True:
            await window.acquire()
            msg = await self._slot.take()
            if msg is None:
                return
            frame_id = next(self._ids)
            try:
                frame = frame_input_from_message(msg, frame_id, "rgb")
            except UnsupportedImageError as exc:
                window.release()
                self.stats.failed += 1
                self._problem(f"camera message skipped: {exc}")
                continue
            self._headers.add(frame_id, msg.header)
            self.stats.sent += 1
            yield frame

    def _handle(self, result: SegmentResult, window: asyncio.Semaphore) -> None:
        header, older = self._headers.take(result.frame_id)
        # One slot per answered frame, and one per older frame the server skipped (never answered).
        for _ in range(older + (header is not None)):
            window.release()
        self.stats.dropped_by_server += older
        if header is None:
            self._problem(f"result for frame {result.frame_id}, which the bridge did not send or has forgotten")
            return
        if result.error is not None:
            self.stats.failed += 1
            self._problem(f"frame {_stamp_text(header)} of {header.frame_id!r} failed: {result.error}")
            return
        if result.timestamp_ns != stamp_to_ns(header.stamp):
            self._problem(f"server echoed capture time {result.timestamp_ns} for frame {_stamp_text(header)}")
        messages = output_messages(result, header, self._factory)
        self._publish(BridgeOutput(result.frame_id, messages, result))
        self.stats.published += 1
        self._report_drops()

    # -- logging --------------------------------------------------------------------------------

    def _problem(self, text: str) -> None:
        # The same problem on every frame of a 30 Hz camera would flood the log: once per interval.
        now = time.monotonic()
        last = self._problems_logged.get(text)
        if last is None or now - last >= self.settings.drop_log_interval_s:
            self._problems_logged[text] = now
            self._log.warning(text)
            if len(self._problems_logged) > 256:
                self._problems_logged.clear()

    def _report_drops(self) -> None:
        now = time.monotonic()
        elapsed = now - self._drops_reported_at
        if elapsed < self.settings.drop_log_interval_s:
            return
        replaced = self.stats.replaced - self._drops_reported[0]
        skipped = self.stats.dropped_by_server - self._drops_reported[1]
        self._drops_reported = (self.stats.replaced, self.stats.dropped_by_server)
        self._drops_reported_at = now
        if replaced or skipped:
            self._log.info(
                f"dropped {replaced + skipped} camera frame(s) in the last {elapsed:.0f} s to stay current: "
                f"{replaced} replaced by a newer one before sending, {skipped} skipped by the server"
            )


def _stamp_text(header: Any) -> str:
    return f"{header.stamp.sec}.{header.stamp.nanosec:09d}"
