"""Input frames: what callers may pass, how each becomes a wire request, and when it was sent."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from segstream.v1 import segmentation_pb2 as pb
from segstream.wire.codec import PixelFormatName, U8Array, WireEncoding, frame_from_array, timestamp_from_ns
from segstream.wire.imageinfo import image_kind

PIXEL_FORMATS: tuple[PixelFormatName, ...] = ("bgr", "rgb", "gray")
WIRE_ENCODINGS: tuple[WireEncoding, ...] = ("raw", "jpeg", "png")
_MAX_FRAME_ID = 2**64 - 1
# Send times of frames never answered (dropped under "latest", or ids the caller reused) are
# forgotten after this many, so a stream that runs for days keeps a bounded table.
_MAX_TRACKED = 4096


@dataclass(frozen=True, eq=False)
class FrameInput:
    """A frame with its own id and capture time; plain arrays get automatic ones.

    Attributes:
        image: HxWx3 uint8 in the client's pixel format, or HxW uint8 grey.
        frame_id: Echoed back in the result; None uses the frame's position in the stream (from 0).
        timestamp_ns: Capture time in ns since the Unix epoch; None uses the time it is sent.
    """

    image: U8Array
    frame_id: int | None = None
    timestamp_ns: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, np.ndarray):
            raise TypeError(f"FrameInput.image must be a numpy array, got {type(self.image).__name__}")
        _check_frame_id("FrameInput", self.frame_id)


@dataclass(frozen=True, eq=False)
class EncodedFrame:
    """A complete JPEG or PNG file, sent as it is: no decoding or re-encoding on the client.

    Attributes:
        data: The file's bytes; the server tells JPEG from PNG by their magic bytes.
        frame_id: Echoed back in the result; None uses the frame's position in the stream (from 0).
        timestamp_ns: Capture time in ns since the Unix epoch; None uses the time it is sent.
    """

    data: bytes
    frame_id: int | None = None
    timestamp_ns: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise TypeError(f"EncodedFrame.data must be bytes, got {type(self.data).__name__}")
        if image_kind(self.data) is None:
            raise ValueError(f"EncodedFrame.data ({len(self.data)} bytes) is neither a JPEG nor a PNG file")
        _check_frame_id("EncodedFrame", self.frame_id)


def _check_frame_id(kind: str, frame_id: int | None) -> None:
    if frame_id is not None and not 0 <= frame_id <= _MAX_FRAME_ID:
        raise ValueError(f"{kind}.frame_id must be from 0 to 2**64-1; got {frame_id}")


FrameLike: TypeAlias = U8Array | FrameInput | EncodedFrame
"""What a frame source may yield: a bare image, one with its own id and capture time, or a JPEG/PNG file."""


def check_wire_settings(pixel_format: str, wire_encoding: str, jpeg_quality: int) -> None:
    """Raise ValueError, saying what is allowed, for a bad client-side frame setting."""
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {', '.join(PIXEL_FORMATS)}; got {pixel_format!r}")
    if wire_encoding not in WIRE_ENCODINGS:
        raise ValueError(f"wire_encoding must be one of {', '.join(WIRE_ENCODINGS)}; got {wire_encoding!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"wire_jpeg_quality must be from 1 to 100; got {jpeg_quality}")


class FrameEncoder:
    """Turns the frames of one stream into wire `Frame`s, numbering plain arrays by position."""

    def __init__(self, pixel_format: PixelFormatName, encoding: WireEncoding, jpeg_quality: int) -> None:
        self._pixel_format: PixelFormatName = pixel_format
        self._encoding: WireEncoding = encoding
        self._jpeg_quality = jpeg_quality
        self._position = 0

    def encode(self, item: FrameLike) -> pb.Frame:
        """The wire frame; raises TypeError/ValueError for an array that is not a uint8 image."""
        position = self._position
        self._position += 1
        if isinstance(item, EncodedFrame):
            frame = pb.Frame(
                frame_id=position if item.frame_id is None else item.frame_id,
                capture_time=timestamp_from_ns(time.time_ns() if item.timestamp_ns is None else item.timestamp_ns),
            )
            frame.encoded.data = item.data
            return frame
        if isinstance(item, FrameInput):
            image, frame_id, timestamp_ns = item.image, item.frame_id, item.timestamp_ns
        elif isinstance(item, np.ndarray):
            image, frame_id, timestamp_ns = item, None, None
        else:
            raise TypeError(f"frames must be numpy arrays, FrameInput or EncodedFrame, got {type(item).__name__}")
        return frame_from_array(
            image,
            frame_id=position if frame_id is None else frame_id,
            timestamp_ns=timestamp_ns,
            pixel_format=self._pixel_format,
            encoding=self._encoding,
            jpeg_quality=self._jpeg_quality,
        )

    def request(self, item: FrameLike) -> pb.SegmentRequest:
        """`encode` wrapped in a stream message."""
        request = pb.SegmentRequest()
        # CopyFrom into the field is far cheaper for multi-megabyte frames than the constructor.
        request.frame.CopyFrom(self.encode(item))
        return request


class SendLog:
    """When each frame in flight was sent, so a result's latency can be measured. Thread-safe.

    Results come back in send order under both policies, so a result for frame N also tells that
    every frame sent before N that is still listed was dropped and will get no result.
    """

    def __init__(self) -> None:
        self._sent: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()

    def sent(self, frame_id: int) -> None:
        """Record that `frame_id` goes out now; only the most recent frames are kept."""
        now = time.perf_counter()
        with self._lock:
            self._sent.pop(frame_id, None)
            self._sent[frame_id] = now
            while len(self._sent) > _MAX_TRACKED:
                self._sent.popitem(last=False)

    def answered(self, frame_id: int) -> float | None:
        """The send time of `frame_id` (None if unknown), forgetting it and every frame sent before it."""
        with self._lock:
            sent_at = self._sent.pop(frame_id, None)
            if sent_at is None:
                return None
            while self._sent:
                oldest_id, oldest_at = next(iter(self._sent.items()))
                if oldest_at > sent_at:
                    break
                del self._sent[oldest_id]
            return sent_at

    def __len__(self) -> int:
        with self._lock:
            return len(self._sent)
