"""Settings and bookkeeping the blocking and the asyncio client share."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from segstream.client._errors import SegstreamError, ServerNotReadyError
from segstream.client._frames import EncodedFrame, FrameEncoder, FrameInput, FrameLike
from segstream.client._options import StreamOptions
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Frames sent but not yet answered on an "ordered" stream: enough to keep a pipelined server busy,
# few enough that a camera iterator never runs far ahead of its results.
DEFAULT_MAX_IN_FLIGHT = 8

ChannelOption: TypeAlias = tuple[str, Any]

# How long one health check may wait for a connection before the loop looks at its deadline again.
_MAX_ATTEMPT_S = 1.0
_RETRY_PAUSE_S = 0.1
_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING: int = health_pb2.HealthCheckResponse.SERVING
HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="")


# Each new call (stream) goes to the next ready server the target resolves to: with a DNS name of
# several servers (a Kubernetes headless service) or a list of addresses, streams spread over all.
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_options(max_message_bytes: int, extra: Sequence[ChannelOption]) -> list[ChannelOption]:
    """gRPC channel options: message size limits both ways, round-robin balancing, then the caller's own."""
    if max_message_bytes <= 0:
        raise ValueError(f"max_message_bytes must be positive; got {max_message_bytes}")
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", _ROUND_ROBIN),
        *extra,
    ]


def channel_target(target: str) -> str:
    """The gRPC target for "host:port", "dns:///name:port" or a comma-separated list of IP:port.

    A list becomes gRPC's ipv4:/ipv6: form, whose addresses the round-robin policy then spreads
    streams over; host names in a list are refused because gRPC resolves a list only of addresses.
    """
    parts = [p.strip() for p in target.split(",")]
    if len(parts) == 1:
        return target
    families = set()
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"server address {part!r} in {target!r} needs a port: HOST:PORT")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise ValueError(
                f"server list {target!r} contains the host name {host!r}: a list must be IP addresses; "
                "for names use one DNS name that resolves to every server, e.g. dns:///segstream:50051"
            ) from None
    if len(families) > 1:
        raise ValueError(f"server list {target!r} mixes IPv4 and IPv6 addresses")
    return f"ipv{families.pop()}:{','.join(parts)}"


def segmentation_stub(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """The generated stub, on a blocking or an aio channel alike; its methods mirror the proto."""
    # The generated module is untyped; naming its class as a callable keeps mypy strict elsewhere.
    stub_class: Callable[[object], Any] = segmentation_pb2_grpc.SegmentationStub
    return stub_class(channel)


def check_max_in_flight(max_in_flight: int) -> None:
    """Refuse a window of fewer than one frame when the client is made, not when it first streams."""
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1; got {max_in_flight}")


def image_request(encoder: FrameEncoder, image: FrameLike, options: StreamOptions) -> pb.SegmentImageRequest:
    """The request of a one-image `segment()` call, shared by both clients."""
    request = pb.SegmentImageRequest(config=options.to_proto())
    request.frame.CopyFrom(encoder.encode(image))
    return request


def as_frame_input(image: FrameLike, frame_id: int, timestamp_ns: int | None) -> FrameLike:
    """`segment()`'s image with its frame id and capture time; a FrameInput keeps the ones it carries."""
    if isinstance(image, FrameInput):
        return image
    if isinstance(image, EncodedFrame):  # takes segment()'s id and time where it carries none
        return EncodedFrame(
            image.data,
            frame_id=frame_id if image.frame_id is None else image.frame_id,
            timestamp_ns=timestamp_ns if image.timestamp_ns is None else image.timestamp_ns,
        )
    return FrameInput(image, frame_id=frame_id, timestamp_ns=timestamp_ns)


class ReadyWait:
    """The deadline and the last answer of a wait_ready() loop, for either client."""

    def __init__(self, target: str, timeout: float) -> None:
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds; got {timeout}")
        self._target = target
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._attempts = 0
        self.last = "no answer yet"

    def next_attempt(self) -> float | None:
        """The timeout for the next health check, or None when the time is up (one check always runs)."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0 and self._attempts > 0:
            return None
        self._attempts += 1
        return min(max(remaining, 0.05), _MAX_ATTEMPT_S)

    def answered(self, status: int) -> bool:
        """Record a health answer; True when it is SERVING."""
        self.last = f"health status {_STATUS_NAMES.get(status, str(status))}"
        return status == SERVING

    def failed(self, exc: SegstreamError) -> None:
        """Record a health check that got no answer, for the error message if time runs out."""
        # Checks wait for a connection, so running out of time means none was made.
        self.last = "no connection to the server" if isinstance(exc, TimeoutError) else str(exc)

    def pause(self) -> float:
        """Seconds to wait before the next check, never past the deadline."""
        return max(0.0, min(_RETRY_PAUSE_S, self._deadline - time.monotonic()))

    def error(self) -> ServerNotReadyError:
        """The error to raise once time is up, with the last answer the server gave."""
        return ServerNotReadyError(
            f"server {self._target} did not report SERVING within {self._timeout:g} s (last: {self.last})"
        )
