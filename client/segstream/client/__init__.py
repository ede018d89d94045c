"""segstream client: send video frames to a segstream server, get segmentation masks back.

Example:
    >>> from segstream.client import SegmentationClient, StreamOptions
    >>> with SegmentationClient("localhost:50051") as client:  # doctest: +SKIP
    ...     client.wait_ready(timeout=10)
    ...     for result in client.stream(frames, StreamOptions(outputs=("label_mask",))):
    ...         print(result.frame_id, result.latency_ms)

`stream(..., reconnect=Reconnect())` carries a stream over server drains and restarts; `CameraSource`
reads a camera, stream URL or video file and reopens it when it drops.

`segstream.wire.codec` and `segstream.wire.palette` hold the wire<->numpy conversions and mask
rendering; the exception hierarchy is documented in `SegstreamError`'s module, summarised here:
SegstreamError > ServerUnavailableError (> ServerNotReadyError), DeadlineExceededError,
InvalidRequestError, ResourceExhaustedError, AuthenticationError, ServerError.
"""

from __future__ import annotations

from segstream.client._async_client import AsyncSegmentationClient
from segstream.client._errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    ResourceExhaustedError,
    SegstreamError,
    ServerError,
    ServerNotReadyError,
    ServerUnavailableError,
)
from segstream.client._frames import EncodedFrame, FrameInput, FrameLike
from segstream.client._options import StreamOptions
from segstream.client._reconnect import Reconnect
from segstream.client._results import FrameError, ModelInfo, SegmentResult, StageTimings
from segstream.client._sources import CameraSource, VideoSourceError
from segstream.client._sync_client import SegmentationClient
from segstream.wire.codec import InvalidFrameError

__all__ = [
    "AsyncSegmentationClient",
    "AuthenticationError",
    "CameraSource",
    "DeadlineExceededError",
    "EncodedFrame",
    "FrameError",
    "FrameInput",
    "FrameLike",
    "InvalidFrameError",
    "InvalidRequestError",
    "ModelInfo",
    "Reconnect",
    "ResourceExhaustedError",
    "SegmentResult",
    "SegmentationClient",
    "SegstreamError",
    "ServerError",
    "ServerNotReadyError",
    "ServerUnavailableError",
    "StageTimings",
    "StreamOptions",
    "VideoSourceError",
]
