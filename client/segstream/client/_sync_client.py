"""`SegmentationClient`: the blocking client, for control loops and scripts."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2_grpc

from segstream.client._channel import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    HEALTH_REQUEST,
    ChannelOption,
    ReadyWait,
    as_frame_input,
    channel_options,
    channel_target,
    check_max_in_flight,
    image_request,
    segmentation_stub,
)
from segstream.client._errors import DeadlineExceededError, ServerUnavailableError, translating_rpc_errors
from segstream.client._frames import FrameEncoder, FrameLike, SendLog, check_wire_settings
from segstream.client._options import DEFAULT_OPTIONS, StreamOptions
from segstream.client._results import ModelInfo, SegmentResult
from segstream.client._security import PemSource, auth_metadata, channel_security
from segstream.client.codec import PixelFormatName, WireEncoding
from segstream.v1 import segmentation_pb2 as pb


class _Window:
    """Frames that may be sent before earlier ones are answered; None means unbounded."""

    def __init__(self, size: int | None) -> None:
        self._free = size
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self) -> bool:
        """Wait for a free slot; False once the stream is over."""
        with self._cond:
            while not self._closed and self._free is not None and self._free <= 0:
                self._cond.wait()
            if self._closed:
                return False
            if self._free is not None:
                self._free -= 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._free is not None:
                self._free += 1
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class SegmentationClient:
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

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        wire_encoding: WireEncoding = "raw",
        pixel_format: PixelFormatName = "bgr",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float | None = None,
        wait_for_ready: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[ChannelOption] = (),
        wire_jpeg_quality: int = 90,
        tls: bool | None = None,
        tls_ca: PemSource | None = None,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
        server_name_override: str | None = None,
        token: str | None = None,
    ) -> None:
        check_wire_settings(pixel_format, wire_encoding, wire_jpeg_quality)
        check_max_in_flight(max_in_flight)
        self.target = target
        self._wire = (pixel_format, wire_encoding, wire_jpeg_quality)
        self._max_in_flight = max_in_flight
        self._timeout = timeout
        self._wait_for_ready = wait_for_ready
        credentials, tls_options = channel_security(
            credentials,
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            server_name_override=server_name_override,
        )
        self._metadata = auth_metadata(token)
        opts = channel_options(max_message_bytes, [*tls_options, *options])
        self._channel = (
            grpc.insecure_channel(channel_target(target), opts)
            if credentials is None
            else grpc.secure_channel(channel_target(target), credentials, opts)
        )
        self._stub = segmentation_stub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _encoder(self) -> FrameEncoder:
        return FrameEncoder(*self._wire)

    def stream(
        self, frames: Iterable[FrameLike], options: StreamOptions = DEFAULT_OPTIONS
    ) -> Generator[SegmentResult, None, None]:
        """Segment a sequence of frames; yields one result per answered frame, in send order.

        `frames` may be endless (a camera). It is read on a gRPC thread, at most `max_in_flight`
        frames ahead of the results under policy "ordered"; under "latest" the server drops stale
        frames, so frames are sent as they come. Leaving the loop early cancels the stream. An
        exception raised by `frames` (or a frame that is not a uint8 image) stops sending and is
        re-raised here once the results of the frames already sent have been yielded.
        """
        log = SendLog()
        window = _Window(self._max_in_flight if options.policy == "ordered" else None)
        failure: list[Exception] = []
        requests = self._requests(frames, options, log, window, failure)
        call = self._stub.Segment(requests, wait_for_ready=self._wait_for_ready, metadata=self._metadata)
        try:
            with translating_rpc_errors(self.target):
                for resp in call:
                    window.release()
                    yield SegmentResult.from_proto(resp, log.answered(resp.frame_id))
        finally:
            window.close()
            call.cancel()
        if failure:
            raise failure[0]

    def _requests(
        self,
        frames: Iterable[FrameLike],
        options: StreamOptions,
        log: SendLog,
        window: _Window,
        failure: list[Exception],
    ) -> Iterator[pb.SegmentRequest]:
        yield pb.SegmentRequest(config=options.to_proto())
        encoder = self._encoder()
        iterator = iter(frames)
        try:
            # A slot first, then the frame: a camera frame is read when it can be sent, not before.
            while window.acquire():
                item = next(iterator, None)
                if item is None:  # frames are never None, so it marks the end
                    return
                request = encoder.request(item)
                log.sent(request.frame.frame_id)
                yield request
        except Exception as exc:
            # Raised on a gRPC thread, where it would only be logged: hand it to stream()'s caller.
            failure.append(exc)

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
