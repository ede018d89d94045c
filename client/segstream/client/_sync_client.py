"""`SegmentationClient`: the blocking client, for control loops and scripts."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import replace
from types import TracebackType

import grpc

from segstream.client._channel import (
    HEALTH_REQUEST,
    ChannelOption,
    ReadyWait,
    as_frame_input,
    image_request,
)
from segstream.client._client_base import ClientBase
from segstream.client._errors import DeadlineExceededError, ServerUnavailableError, translating_rpc_errors
from segstream.client._frames import FrameEncoder, FrameLike
from segstream.client._options import DEFAULT_OPTIONS, StreamOptions
from segstream.client._reconnect import Backoff, Reconnect, StreamLedger, log_reconnect
from segstream.client._results import ModelInfo, SegmentResult
from segstream.v1 import segmentation_pb2 as pb


class _Feed:
    """The frame source of one stream() call, shared by the connections it opens. Thread-safe.

    gRPC reads each connection's requests on a thread of its own, and a broken connection's thread
    may still be inside the source (a camera read) when the next connection starts; a frame read for
    a connection that is gone is handed to the ledger instead of being lost.
    """

    def __init__(self, frames: Iterable[FrameLike], encoder: FrameEncoder, ledger: StreamLedger) -> None:
        self._iterator = iter(frames)
        self._encoder = encoder
        self.ledger = ledger
        self._cond = threading.Condition()
        self._read_lock = threading.Lock()
        self._closed = False
        self.failure: Exception | None = None

    def connect(self, config: pb.SegmentRequest) -> Iterator[pb.SegmentRequest]:
        """The requests of a new connection: the config, frames owed from broken ones, then new frames."""
        with self._cond:
            connection = self.ledger.begin()
            self._cond.notify_all()
        return self._requests(config, connection)

    def _requests(self, config: pb.SegmentRequest, connection: int) -> Iterator[pb.SegmentRequest]:
        yield config
        while (request := self._next(connection)) is not None:
            yield request

    def _next(self, connection: int) -> pb.SegmentRequest | None:
        ledger = self.ledger
        while True:
            with self._cond:
                # A slot first, then the frame: a camera frame is read when it can be sent, not before.
                while True:
                    if self._closed or ledger.connection != connection:
                        return None
                    if ledger.unsent:
                        return ledger.take_unsent()
                    if ledger.source_done:
                        return None
                    if ledger.room():
                        break
                    self._cond.wait()
                ledger.reading += 1
            with self._read_lock:
                with self._cond:
                    # An earlier connection's reader may have handed back a frame while this one waited.
                    busy = bool(ledger.unsent) or ledger.source_done or ledger.connection != connection
                    if busy:
                        ledger.reading -= 1
                if busy:
                    continue
                try:
                    item = next(self._iterator, None)
                    request = None if item is None else self._encoder.request(item)
                except Exception as exc:
                    # Raised on a gRPC thread, where it would only be logged: hand it to stream()'s caller.
                    self.failure, request = exc, None
            with self._cond:
                ledger.reading -= 1
                if request is None:  # frames are never None, so it marks the end
                    ledger.source_done = True
                    self._cond.notify_all()
                    return None
                if self._closed or ledger.connection != connection:
                    ledger.keep(request)
                    self._cond.notify_all()
                    return None
                ledger.sent(request, first_time=True)
                return request

    def answered(self, resp: pb.SegmentResponse) -> SegmentResult:
        with self._cond:
            sent_at, dropped_before = self.ledger.answered(resp.frame_id)
            self._cond.notify_all()
        result = SegmentResult.from_proto(resp, sent_at)
        return replace(result, dropped_frames=result.dropped_frames + dropped_before) if dropped_before else result

    def broke(self) -> tuple[bool, str]:
        """The connection ended early: whether anything is still owed, and what became of its frames."""
        with self._cond:
            count = self.ledger.broke()
            self._cond.notify_all()
            return not self.ledger.settled, self.ledger.describe_break(count)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class SegmentationClient(ClientBase[grpc.Channel]):
    """A blocking client of a segstream server.

    Args:
        target: "host:port" of the server; "dns:///name:port" or "ip:port,ip:port" spreads streams
            round-robin over every server the name resolves to or the list holds.
        wire_encoding: How frames travel: "raw" pixels (no loss, most bytes), "jpeg" or "png".
        pixel_format: Channel order of the HxWx3 frames given: "bgr" (OpenCV's) or "rgb";
            HxW arrays are always grey.
        max_message_bytes: Largest message sent or received.
        max_in_flight: Frames of an "ordered" stream sent but not yet answered, at most.
        timeout: Default deadline in seconds of segment() and models() (None: no deadline).
        wait_for_ready: Let calls wait for the server to come up instead of failing at once.
        credentials: Ready-made gRPC channel credentials; None opens a plaintext channel unless the
            tls options below ask for TLS.
        options: Extra gRPC channel options, applied last.
        wire_jpeg_quality: JPEG quality of frames sent with wire_encoding "jpeg".
        tls: Connect over TLS; None (the default) means "when tls_ca, tls_cert or tls_key is given".
        tls_ca: CA certificates (a PEM file's path, or PEM bytes) the server's certificate must chain to;
            None trusts the system's root certificates.
        tls_cert: Client certificate chain (path or PEM bytes) for servers that require mutual TLS.
        tls_key: Private key of tls_cert (path or PEM bytes).
        server_name_override: Name the server's certificate must carry, instead of the target's host.
        token: Bearer token sent as "authorization: Bearer <token>" metadata on every call.

    Example:
        >>> with SegmentationClient("localhost:50051") as client:  # doctest: +SKIP
        ...     client.wait_ready(timeout=10)
        ...     for result in client.stream(camera_frames(), StreamOptions(policy="latest")):
        ...         steer(result.labels)
    """

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[ChannelOption]
    ) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target, options)
        return grpc.secure_channel(target, credentials, options)

    def _encoder(self) -> FrameEncoder:
        return FrameEncoder(*self._wire)

    def stream(
        self,
        frames: Iterable[FrameLike],
        options: StreamOptions = DEFAULT_OPTIONS,
        *,
        reconnect: Reconnect | None = None,
    ) -> Generator[SegmentResult, None, None]:
        """Segment a sequence of frames; yields one result per answered frame, in send order.

        `frames` may be endless (a camera). It is read on a gRPC thread, at most `max_in_flight`
        frames ahead of the results under policy "ordered"; under "latest" the server drops stale
        frames, so frames are sent as they come. Leaving the loop early cancels the stream. An
        exception raised by `frames` (or a frame that is not a uint8 image) stops sending and is
        re-raised here once the results of the frames already sent have been yielded.

        With `reconnect`, a stream that ends with UNAVAILABLE (the server drains, restarts or is
        gone; also a first connection that fails) is opened again on the same channel after the
        policy's backoff (round-robin may pick another server), the config is sent again and the
        same `frames` are read on. Under "ordered" the frames the broken stream left unanswered are
        sent again first, so every frame is answered exactly once and in order; under "latest" they
        are dropped, and `SegmentResult.dropped_frames` counts them with the server's drops.
        ServerUnavailableError is raised once `max_attempts` reconnections in a row, or `timeout`
        seconds of reconnecting, got no result (its message says so, with the last reason);
        every other error is raised at once, as without `reconnect`.
        """
        ledger = StreamLedger(options.policy == "ordered", self._max_in_flight)
        feed = _Feed(frames, self._encoder(), ledger)
        backoff = None if reconnect is None else Backoff(reconnect)
        config = pb.SegmentRequest(config=options.to_proto())
        try:
            while True:
                call = self._stub.Segment(
                    feed.connect(config), wait_for_ready=self._wait_for_ready, metadata=self._metadata
                )
                try:
                    with translating_rpc_errors(self.target):
                        for resp in call:
                            if backoff is not None:
                                backoff.reset()
                            yield feed.answered(resp)
                    break
                except ServerUnavailableError as exc:
                    if backoff is None:
                        raise
                    owed, frames_note = feed.broke()
                    if not owed:
                        break  # every frame was answered before the stream ended
                    if (delay := backoff.next_delay()) is None:
                        raise backoff.gave_up(self.target, exc) from exc
                    log_reconnect(self.target, exc, backoff, delay, frames_note)
                    time.sleep(delay)
                finally:
                    call.cancel()
        finally:
            feed.close()
        if feed.failure is not None:
            raise feed.failure

    def segment(
        self,
        image: FrameLike,
        options: StreamOptions = DEFAULT_OPTIONS,
        *,
        frame_id: int = 0,
        timestamp_ns: int | None = None,
        timeout: float | None = None,
    ) -> SegmentResult:
        """Segment one image (SegmentImage); a problem with the image comes back in `result.error`."""
        request = image_request(self._encoder(), as_frame_input(image, frame_id, timestamp_ns), options)
        sent_at = time.perf_counter()
        with translating_rpc_errors(self.target):
            resp = self._stub.SegmentImage(
                request, timeout=self._deadline(timeout), wait_for_ready=self._wait_for_ready, metadata=self._metadata
            )
        return SegmentResult.from_proto(resp, sent_at)

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the server serves."""
        with translating_rpc_errors(self.target):
            resp = self._stub.ListModels(
                pb.ListModelsRequest(),
                timeout=self._deadline(timeout),
                wait_for_ready=self._wait_for_ready,
                metadata=self._metadata,
            )
        return [ModelInfo.from_proto(m) for m in resp.models]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once the server's health check (service "") reports SERVING.

        Raises ServerNotReadyError when `timeout` seconds pass first; an unreachable or still
        loading server is retried until then.
        """
        wait = ReadyWait(self.target, timeout)
        while (attempt := wait.next_attempt()) is not None:
            try:
                with translating_rpc_errors(self.target):
                    resp = self._health.Check(
                        HEALTH_REQUEST, timeout=attempt, wait_for_ready=True, metadata=self._metadata
                    )
            except (ServerUnavailableError, DeadlineExceededError) as exc:
                wait.failed(exc)
            else:
                if wait.answered(resp.status):
                    return
            time.sleep(wait.pause())
        raise wait.error()

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        self._channel.close()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
