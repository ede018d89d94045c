"""The settings and channel set-up the blocking and the asyncio client share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from segstream.client._channel import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    ChannelOption,
    channel_options,
    channel_target,
    check_max_in_flight,
    segmentation_stub,
)
from segstream.client._frames import check_wire_settings
from segstream.client._security import PemSource, auth_metadata, channel_security
from segstream.wire.codec import PixelFormatName, WireEncoding

ChannelT = TypeVar("ChannelT")


class ClientBase(Generic[ChannelT]):
    """Checks the arguments and opens the channel; subclasses say which kind of channel."""

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
        self._channel: ChannelT = self._open_channel(channel_target(target), credentials, opts)
        self._stub = segmentation_stub(self._channel)  # type: ignore[arg-type]
        self._health: Any = health_pb2_grpc.HealthStub(self._channel)

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[ChannelOption]
    ) -> ChannelT:
        raise NotImplementedError
