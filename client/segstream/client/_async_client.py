"""`AsyncSegmentationClient`: the same client over grpc.aio, for asyncio programs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from segstream.client._channel import (
    HEALTH_REQUEST,
    ChannelOption,
    ReadyWait,
    as_frame_input,
    image_request,
)
from segstream.client._client_base import ClientBase
from segstream.client._errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    SegstreamError,
    ServerUnavailableError,
    StatusWitness,
    status_was_lost,
    translating_rpc_errors,
)
from segstream.client._frames import FrameEncoder, FrameLike
from segstream.client._options import DEFAULT_OPTIONS, StreamOptions
from segstream.client._reconnect import Backoff, Reconnect, StreamLedger, log_reconnect
from segstream.client._results import ModelInfo, SegmentResult
from segstream.v1 import segmentation_pb2 as pb


def _next_frame(iterator: Iterator[FrameLike]) -> FrameLike | None:
    return next(iterator, None)


async def _aiterate(frames: Iterable[FrameLike] | AsyncIterable[FrameLike]) -> AsyncGenerator[FrameLike, None]:
    if isinstance(frames, AsyncIterable):
        async for item in frames:
            yield item
        return
    iterator: Iterator[FrameLike] = iter(frames)
    while True:
        # A plain iterator may block (a camera read); a worker thread keeps the event loop free.
        frame = await asyncio.to_thread(_next_frame, iterator)
        if frame is None:  # frames are never None, so it marks the end
            return
        yield frame


async def _next_item(source: AsyncIterator[FrameLike]) -> FrameLike | None:
    return await anext(source, None)


class _Feed:
    """The frame source of one stream() call, shared by the connections it opens (on one event loop).

    A source read runs as a task of its own: a connection that breaks cancels its writer, never the
    read, whose frame the next connection's writer then takes over.
    """

    def __init__(
        self, frames: Iterable[FrameLike] | AsyncIterable[FrameLike], encoder: FrameEncoder, ledger: StreamLedger
    ) -> None:
        self._source = _aiterate(frames)
        self._encoder = encoder
        self.ledger = ledger
        self._read: asyncio.Task[FrameLike | None] | None = None
        self._wake = asyncio.Event()
        self.failure: Exception | None = None

    def connect(self) -> int:
        connection = self.ledger.begin()
        self._wake.set()
        return connection

    async def next_request(self, connection: int) -> pb.SegmentRequest | None:
        """The next request of `connection`, or None when it should stop sending."""
        ledger = self.ledger
        while True:
            if ledger.connection != connection:
                return None
            if ledger.unsent:
                return ledger.take_unsent()
            if ledger.source_done:
                return None
            if self._read is None and ledger.room():
                # A slot first, then the frame: a camera frame is read when it can be sent, not before.
                ledger.reading += 1
                self._read = asyncio.ensure_future(_next_item(self._source))
            if self._read is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            read = self._read
            try:
                item = await asyncio.shield(read)
            except asyncio.CancelledError:
                raise  # this writer is cancelled; the read goes on for the next one
            except Exception as exc:
                # From `frames`: stop sending, and let stream() raise it after the results.
                self.failure, item = exc, None
            if self._read is not read:
                continue  # taken over by another writer already
            self._read = None
            ledger.reading -= 1
            return self._take(item, connection)

    def _take(self, item: FrameLike | None, connection: int) -> pb.SegmentRequest | None:
        ledger = self.ledger
        try:
            request = None if item is None else self._encoder.request(item)
        except Exception as exc:  # not a uint8 image
            self.failure, request = exc, None
        if request is None:  # frames are never None, so it marks the end
            ledger.source_done = True
            return None
        if ledger.connection != connection:
            ledger.keep(request)
            return None
        ledger.sent(request, first_time=True)
        return request

    def answered(self, resp: pb.SegmentResponse) -> SegmentResult:
        sent_at, dropped_before = self.ledger.answered(resp.frame_id)
        self._wake.set()
        result = SegmentResult.from_proto(resp, sent_at)
        return replace(result, dropped_frames=result.dropped_frames + dropped_before) if dropped_before else result

    def broke(self) -> tuple[bool, str]:
        """The connection ended early: whether anything is still owed, and what became of its frames."""
        count = self.ledger.broke()
        self._wake.set()
        return not self.ledger.settled, self.ledger.describe_break(count)

    async def close(self) -> None:
        read, self._read = self._read, None
        if read is not None:
            read.cancel()
            await asyncio.wait([read])
            if not read.cancelled():
                read.exception()  # retrieved, so that asyncio does not report it
        with contextlib.suppress(RuntimeError):
            await self._source.aclose()


class AsyncSegmentationClient(ClientBase[grpc.aio.Channel]):
    """The asyncio twin of `SegmentationClient`: same arguments, same results, awaitable calls.

    Example:
        >>> async with AsyncSegmentationClient("localhost:50051") as client:  # doctest: +SKIP
        ...     await client.wait_ready(timeout=10)
        ...     async for result in client.stream(frames, StreamOptions(outputs=("overlay",))):
        ...         show(result.overlay)
    """

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[ChannelOption]
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options)
        return grpc.aio.secure_channel(target, credentials, options)

    async def stream(
        self,
        frames: Iterable[FrameLike] | AsyncIterable[FrameLike],
        options: StreamOptions = DEFAULT_OPTIONS,
        *,
        reconnect: Reconnect | None = None,
    ) -> AsyncGenerator[SegmentResult, None]:
        """Segment a sync or async iterable of frames; yields results in send order.

        Behaves like `SegmentationClient.stream`: at most `max_in_flight` unanswered frames under
        policy "ordered", frames sent as they come under "latest", leaving the loop cancels the
        stream, an exception from `frames` is re-raised after the results already due, and with
        `reconnect` a stream ended by UNAVAILABLE is opened again and goes on with the same frames.
        Only a real UNAVAILABLE reconnects: where grpc.aio lost the server's status, the status the
        call first ended with is used, or else the stream's config is checked against the server.
        An async generator left early is only finalised later by the event loop; wrap it in
        `contextlib.aclosing` to cancel the stream at once.
        """
        ledger = StreamLedger(options.policy == "ordered", self._max_in_flight)
        feed = _Feed(frames, FrameEncoder(*self._wire), ledger)
        backoff = None if reconnect is None else Backoff(reconnect)
        config = pb.SegmentRequest(config=options.to_proto())
        try:
            while True:
                call = self._stub.Segment(wait_for_ready=self._wait_for_ready, metadata=self._metadata)
                witness = StatusWitness()
                call.add_done_callback(witness)
                writer = asyncio.create_task(self._write(call, config, feed, feed.connect()))
                try:
                    with translating_rpc_errors(self.target):
                        async for resp in call:
                            if backoff is not None:
                                backoff.reset()
                            yield feed.answered(resp)
                    break
                except SegstreamError as exc:
                    error = await self._real_error(exc, witness, options)
                    if backoff is None or not isinstance(error, ServerUnavailableError):
                        raise error from exc.__cause__
                    owed, frames_note = feed.broke()
                    if not owed:
                        break  # every frame was answered before the stream ended
                    if (delay := backoff.next_delay()) is None:
                        raise backoff.gave_up(self.target, error) from exc.__cause__
                    log_reconnect(self.target, error, backoff, delay, frames_note)
                    writer.cancel()
                    await asyncio.wait([writer])
                    await asyncio.sleep(delay)
                finally:
                    writer.cancel()
                    call.cancel()
        finally:
            await feed.close()
        if feed.failure is not None:
            raise feed.failure

    async def _real_error(
        self, error: SegstreamError, witness: StatusWitness, options: StreamOptions
    ) -> SegstreamError:
        if not status_was_lost(error):
            return error
        return witness.recovered(error, self.target) or await self._diagnose(options, error)

    async def _diagnose(self, options: StreamOptions, error: SegstreamError) -> SegstreamError:
        # grpc.aio lost the server's reason for ending the stream. The usual one is a model or head
        # the server does not have, which the model list can tell; otherwise keep the explanation.
        try:
            models = await self.models(timeout=5.0)
        except AuthenticationError as refused:
            # Missing or rejected credentials end a stream at once as well: that was the reason.
            return refused
        except SegstreamError:
            return error
        served = {m.name: m for m in models}
        model = served.get(options.model) or next((m for m in models if m.is_default), None)
        if options.model and options.model not in served:
            message = f"unknown model {options.model!r}; the server serves {sorted(served)}"
        elif model is not None and model.heads and options.head not in model.heads:
            message = f"model {model.name!r} has no {options.head!r} head; it offers {list(model.heads)}"
        else:
            return error
        code = grpc.StatusCode.INVALID_ARGUMENT
        return InvalidRequestError(f"{code.name} from {self.target}: {message}", code)

    async def _write(self, call: Any, config: pb.SegmentRequest, feed: _Feed, connection: int) -> None:
        try:
            await call.write(config)
            while (request := await feed.next_request(connection)) is not None:
                await call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError):
            # The call is over; the reading side reports why.
            return
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
            await call.done_writing()

    async def segment(
        self,
        image: FrameLike,
        options: StreamOptions = DEFAULT_OPTIONS,
        *,
        frame_id: int = 0,
        timestamp_ns: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, sent to the server
    ) -> SegmentResult:
        """Segment one image (SegmentImage); a problem with the image comes back in `result.error`."""
        encoder = FrameEncoder(*self._wire)
        request = image_request(encoder, as_frame_input(image, frame_id, timestamp_ns), options)
        sent_at = time.perf_counter()
        with translating_rpc_errors(self.target):
            resp = await self._stub.SegmentImage(
                request, timeout=self._deadline(timeout), wait_for_ready=self._wait_for_ready, metadata=self._metadata
            )
        return SegmentResult.from_proto(resp, sent_at)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:  # noqa: ASYNC109
        """The models the server serves."""
        with translating_rpc_errors(self.target):
            resp = await self._stub.ListModels(
                pb.ListModelsRequest(),
                timeout=self._deadline(timeout),
                wait_for_ready=self._wait_for_ready,
                metadata=self._metadata,
            )
        return [ModelInfo.from_proto(m) for m in resp.models]

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Return once the server's health check reports SERVING; ServerNotReadyError after `timeout`."""
        wait = ReadyWait(self.target, timeout)
        while (attempt := wait.next_attempt()) is not None:
            try:
                with translating_rpc_errors(self.target):
                    resp = await self._health.Check(
                        HEALTH_REQUEST, timeout=attempt, wait_for_ready=True, metadata=self._metadata
                    )
            except (ServerUnavailableError, DeadlineExceededError) as exc:
                wait.failed(exc)
            else:
                if wait.answered(resp.status):
                    return
            await asyncio.sleep(wait.pause())
        raise wait.error()

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    async def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncSegmentationClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
