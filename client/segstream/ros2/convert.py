"""Pure conversions between ROS 2 image messages and segstream frames and results.

Nothing here imports ROS 2: messages are read by attribute (real rclpy messages and the stand-ins of
`segstream.ros2.messages` alike), and output images are built by an `ImageFactory`.

Conventions:
    - Input: sensor_msgs/Image with encoding rgb8, bgr8, mono8, rgba8 or bgra8 (any row `step`, padding
      included; alpha is dropped), or sensor_msgs/CompressedImage holding JPEG or PNG bytes.
    - A header's stamp becomes the frame's capture time in ns, `sec * 10**9 + nanosec`, and comes back
      exactly; the whole header (frame_id included) waits in a `HeaderTable` under the frame id the
      bridge assigned, so every output carries the input's own header.
    - Output: the class mask as mono8 (one class index per pixel, step = width, the convention of
      Isaac ROS and ros_deep_learning), the colour mask and the overlay as rgb8 (step = 3 * width).

Example:
    >>> from segstream.ros2.messages import Header, Image, Time
    >>> msg = Image(Header(Time(1_700_000_000, 42), "cam"), 2, 3, "mono8", 0, 4, bytes(8))
    >>> frame = frame_input_from_image(msg, frame_id=7)
    >>> frame.image.shape, frame.timestamp_ns
    ((2, 3), 1700000000000000042)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypedDict, TypeVar, cast, overload

import cv2
import numpy as np

from segstream.client import FrameInput, SegmentResult
from segstream.ros2.messages import (
    CompressedImageLike,
    Image,
    ImageFactory,
    ImageLike,
    StampLike,
    Time,
)
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire.codec import U8Array, as_u8, timestamp_from_ns

_M = TypeVar("_M")
_H = TypeVar("_H")

NS_PER_S = 1_000_000_000
ChannelOrder = Literal["rgb", "bgr"]

# Bytes per pixel of every encoding the bridge reads.
_CHANNELS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_CHANNELS)
_WIRE_FORMAT: dict[str, pb.PixelFormat] = {
    "rgb8": pb.PIXEL_FORMAT_RGB8,
    "rgba8": pb.PIXEL_FORMAT_RGB8,
    "bgr8": pb.PIXEL_FORMAT_BGR8,
    "bgra8": pb.PIXEL_FORMAT_BGR8,
    "mono8": pb.PIXEL_FORMAT_GRAY8,
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"

MASK_ENCODING: Final = "mono8"
COLOR_ENCODING: Final = "rgb8"


class UnsupportedImageError(ValueError):
    """An image message the bridge cannot segment; the message says what to send instead."""


# -- stamps ---------------------------------------------------------------------------------------


def stamp_to_ns(stamp: StampLike) -> int:
    """A builtin_interfaces/Time as integer ns since the epoch: `sec * 10**9 + nanosec`, exactly."""
    sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    if not 0 <= nanosec < NS_PER_S:
        raise UnsupportedImageError(f"header stamp nanosec must be from 0 to 999999999; got {nanosec}")
    return sec * NS_PER_S + nanosec


def split_ns(ns: int) -> tuple[int, int]:
    """(sec, nanosec) of a time in ns, nanosec always from 0 to 999999999 (as ROS 2 stores it)."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec


def ns_to_stamp(ns: int) -> Time:
    """The stand-in `Time` for a time in ns; `stamp_to_ns(ns_to_stamp(ns)) == ns` for every integer."""
    sec, nanosec = split_ns(ns)
    return Time(sec, nanosec)


# -- input: sensor_msgs/Image and CompressedImage ---------------------------------------------------


def _buffer(data: object) -> U8Array:
    # rclpy hands uint8[] fields over as array.array('B'); stand-ins carry bytes; both are buffers.
    try:
        return np.frombuffer(cast(bytes, data), np.uint8)
    except TypeError:
        return np.frombuffer(bytes(cast(list[int], data)), np.uint8)


def _channels(encoding: str) -> int:
    channels = _CHANNELS.get(encoding)
    if channels is None:
        hint = ""
        if encoding in ("mono16", "16UC1", "32FC1") or encoding.startswith(("16", "32", "64")):
            hint = " (a depth or 16-bit image: the networks take 8-bit colour or grey camera images)"
        elif encoding.startswith("bayer"):
            hint = " (debayer it first, e.g. with image_proc)"
        elif encoding in ("yuv422", "yuv422_yuy2", "uyvy", "yuyv", "nv12", "nv21"):
            hint = " (convert it to rgb8 first, e.g. with image_proc or the camera driver's output format)"
        raise UnsupportedImageError(
            f"image encoding {encoding!r} is not supported{hint}; send one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    return channels


def image_array(msg: ImageLike) -> U8Array:
    """The pixels of a sensor_msgs/Image as a read-only numpy view, in the message's own channel order.

    HxW for mono8, HxWx3 for rgb8/bgr8, HxWx4 for rgba8/bgra8; row padding (`step` > width * channels)
    is skipped without a copy. Raises `UnsupportedImageError` for another encoding or a malformed message.
    """
    channels = _channels(msg.encoding)
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if width <= 0 or height <= 0:
        raise UnsupportedImageError(f"image is {width}x{height}: width and height must be positive")
    row = width * channels
    if step < row:
        raise UnsupportedImageError(
            f"image step {step} is smaller than one row of {row} bytes ({width} pixels x {channels} bytes, "
            f"{msg.encoding})"
        )
    buf = _buffer(msg.data)
    needed = step * (height - 1) + row
    if buf.size < needed:
        raise UnsupportedImageError(
            f"image data has {buf.size} bytes; {width}x{height} {msg.encoding} with step {step} needs {step * height}"
        )
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row), strides=(step, 1), writeable=False)
    return rows.reshape(height, width) if channels == 1 else rows.reshape(height, width, channels)


def _in_order(pixels: U8Array, encoding: str, order: ChannelOrder) -> U8Array:
    if pixels.ndim == 2:
        return pixels
    colour = pixels[:, :, :3]  # alpha, if any, carries nothing the network uses
    native: ChannelOrder = "rgb" if encoding.startswith("rgb") else "bgr"
    return colour if native == order else colour[:, :, ::-1]


def frame_input_from_image(msg: ImageLike, frame_id: int, pixel_format: ChannelOrder = "rgb") -> FrameInput:
    """A `FrameInput` for `AsyncSegmentationClient.stream`/`SegmentationClient.stream`.

    The image is a view in `pixel_format` channel order (the client's own `pixel_format`; mono8 stays
    HxW grey), `frame_id` is the bridge's, and the capture time is the header stamp in ns.
    """
    pixels = _in_order(image_array(msg), msg.encoding, pixel_format)
    return FrameInput(pixels, frame_id=frame_id, timestamp_ns=stamp_to_ns(msg.header.stamp))


def _compressed_bytes(msg: CompressedImageLike) -> bytes:
    data = bytes(_buffer(msg.data))
    fmt = msg.format.lower()
    if "compresseddepth" in fmt:
        raise UnsupportedImageError(
            f"compressed image format {msg.format!r} is a depth map; subscribe to a colour camera's "
            "compressed topic (JPEG or PNG)"
        )
    if not data.startswith((_JPEG_SIGNATURE, _PNG_SIGNATURE)):
        raise UnsupportedImageError(
            f"compressed image (format {msg.format!r}, {len(data)} bytes) is neither JPEG nor PNG; "
            "publish with image_transport's 'compressed' plugin (jpeg or png) or send raw sensor_msgs/Image"
        )
    return data


def frame_input_from_compressed(
    msg: CompressedImageLike, frame_id: int, pixel_format: ChannelOrder = "rgb"
) -> FrameInput:
    """A `FrameInput` from a JPEG/PNG sensor_msgs/CompressedImage, decoded to an HxWx3 array.

    The clients send numpy frames; `wire_frame_from_compressed` keeps the compressed bytes instead.
    """
    data = _compressed_bytes(msg)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnsupportedImageError(f"compressed image (format {msg.format!r}, {len(data)} bytes) is corrupt")
    pixels = as_u8(bgr) if pixel_format == "bgr" else as_u8(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return FrameInput(pixels, frame_id=frame_id, timestamp_ns=stamp_to_ns(msg.header.stamp))


def frame_input_from_message(
    msg: ImageLike | CompressedImageLike, frame_id: int, pixel_format: ChannelOrder = "rgb"
) -> FrameInput:
    """`frame_input_from_image` or `frame_input_from_compressed`, by the message's fields."""
    if hasattr(msg, "encoding"):
        return frame_input_from_image(cast(ImageLike, msg), frame_id, pixel_format)
    if hasattr(msg, "format"):
        return frame_input_from_compressed(msg, frame_id, pixel_format)
    raise UnsupportedImageError(
        f"{type(msg).__name__} is neither a sensor_msgs/Image (no 'encoding') nor a CompressedImage (no 'format')"
    )


def wire_frame_from_image(msg: ImageLike, frame_id: int) -> pb.Frame:
    """A wire `Frame` with the message's raw pixels: rgb8/bgr8/mono8 as they are (stride = step),
    rgba8/bgra8 repacked without alpha. For code that drives the gRPC stub itself."""
    pixels = image_array(msg)
    frame = pb.Frame(frame_id=frame_id, capture_time=timestamp_from_ns(stamp_to_ns(msg.header.stamp)))
    height, width = pixels.shape[:2]
    wire_format = _WIRE_FORMAT[msg.encoding]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        data, stride = np.ascontiguousarray(pixels[:, :, :3]).tobytes(), 0
    else:
        stride = int(msg.step)
        data = _buffer(msg.data)[: stride * height].tobytes()
    frame.raw.CopyFrom(pb.RawImage(data=data, width=width, height=height, stride=stride, format=wire_format))
    return frame


def wire_frame_from_compressed(msg: CompressedImageLike, frame_id: int) -> pb.Frame:
    """A wire `Frame` carrying the message's JPEG/PNG bytes as they are (no decoding on the robot)."""
    frame = pb.Frame(frame_id=frame_id, capture_time=timestamp_from_ns(stamp_to_ns(msg.header.stamp)))
    frame.encoded.data = _compressed_bytes(msg)
    return frame


# -- output: mono8 class mask, rgb8 colour mask and overlay ------------------------------------------


class ImageFields(TypedDict):
    """The fields of one sensor_msgs/Image, ready for an `ImageFactory`."""

    header: Any
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def image_fields(pixels: U8Array, header: Any, encoding: Literal["mono8", "rgb8"]) -> ImageFields:
    """The fields of an image message holding `pixels` (HxW for mono8, HxWx3 for rgb8), tightly packed."""
    expected_ndim = 2 if encoding == MASK_ENCODING else 3
    if pixels.dtype != np.uint8 or pixels.ndim != expected_ndim or (expected_ndim == 3 and pixels.shape[2] != 3):
        shape = "HxW" if expected_ndim == 2 else "HxWx3"
        raise ValueError(f"{encoding} needs an {shape} uint8 array; got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else 3
    return ImageFields(
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * channels,
        data=np.ascontiguousarray(pixels).tobytes(),
    )


@overload
def mask_message(labels: U8Array, header: Any) -> Image: ...
@overload
def mask_message(labels: U8Array, header: Any, factory: ImageFactory[_M]) -> _M: ...
def mask_message(labels: U8Array, header: Any, factory: ImageFactory[Any] = Image) -> Any:
    """The class mask as a mono8 image message: one class index per pixel, step = width."""
    return factory(**image_fields(labels, header, MASK_ENCODING))


@overload
def rgb_message(rgb: U8Array, header: Any) -> Image: ...
@overload
def rgb_message(rgb: U8Array, header: Any, factory: ImageFactory[_M]) -> _M: ...
def rgb_message(rgb: U8Array, header: Any, factory: ImageFactory[Any] = Image) -> Any:
    """An HxWx3 RGB array (colour mask or overlay) as an rgb8 image message, step = 3 * width."""
    return factory(**image_fields(rgb, header, COLOR_ENCODING))


@dataclass(frozen=True)
class OutputMessages(Generic[_M]):
    """The messages one result becomes, each None unless its output was requested.

    Attributes:
        header: The input's header, shared by all three.
        mask: mono8 class indices.
        color_mask: rgb8 palette colours of the classes.
        overlay: rgb8 50/50 blend of the frame and the colour mask.
    """

    header: Any
    mask: _M | None = None
    color_mask: _M | None = None
    overlay: _M | None = None


@overload
def output_messages(result: SegmentResult, header: Any) -> OutputMessages[Image]: ...
@overload
def output_messages(result: SegmentResult, header: Any, factory: ImageFactory[_M]) -> OutputMessages[_M]: ...
def output_messages(result: SegmentResult, header: Any, factory: ImageFactory[Any] = Image) -> OutputMessages[Any]:
    """The mono8 mask, rgb8 colour mask and rgb8 overlay of a result, all carrying `header`."""
    if result.error is not None:
        raise ValueError(f"frame {result.frame_id} has no result to publish: {result.error}")
    return OutputMessages(
        header=header,
        mask=None if result.labels is None else mask_message(result.labels, header, factory),
        color_mask=None if result.color_mask is None else rgb_message(result.color_mask, header, factory),
        overlay=None if result.overlay is None else rgb_message(result.overlay, header, factory),
    )


# -- frame id -> header ---------------------------------------------------------------------------


class HeaderTable(Generic[_H]):
    """Headers of frames sent but not answered yet, under the frame id the bridge gave each.

    Results come back in send order, so the answer for frame N also tells that every older frame
    still listed was dropped (policy "latest"); `take` forgets those too. At most `capacity` entries
    are kept: the oldest go first, counted in `evicted`.

    Example:
        >>> table = HeaderTable[str](capacity=2)
        >>> for frame_id in (1, 2, 3):
        ...     table.add(frame_id, f"header {frame_id}")
        >>> table.take(3), len(table), table.evicted
        (('header 3', 1), 0, 1)
    """

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"HeaderTable capacity must be at least 1; got {capacity}")
        self.capacity = capacity
        self.evicted = 0
        self._headers: OrderedDict[int, _H] = OrderedDict()

    def add(self, frame_id: int, header: _H) -> None:
        """Remember the header of a frame about to be sent, evicting the oldest beyond `capacity`."""
        self._headers.pop(frame_id, None)
        self._headers[frame_id] = header
        while len(self._headers) > self.capacity:
            self._headers.popitem(last=False)
            self.evicted += 1

    def take(self, frame_id: int) -> tuple[_H | None, int]:
        """The header of `frame_id` (None if unknown or evicted), and how many older frames were dropped."""
        if frame_id not in self._headers:
            return None, 0
        dropped = 0
        while True:
            oldest, header = self._headers.popitem(last=False)
            if oldest == frame_id:
                return header, dropped
            dropped += 1

    def clear(self) -> int:
        """Forget every entry (a stream ended); returns how many there were."""
        count = len(self._headers)
        self._headers.clear()
        return count

    def __len__(self) -> int:
        return len(self._headers)

    def __contains__(self, frame_id: object) -> bool:
        return frame_id in self._headers
