"""Stand-ins for the ROS 2 message types the bridge reads and writes, and the seam that builds real ones.

`Time`, `Header`, `Image` and `CompressedImage` carry the same fields as builtin_interfaces/Time,
std_msgs/Header, sensor_msgs/Image and sensor_msgs/CompressedImage, so the conversion functions can be
used and tested without ROS 2. The conversion functions only read attributes, so real rclpy messages
work wherever a stand-in does.

An `ImageFactory` builds output images: the stand-in `Image` class is one, and `ros_image_factory`
wraps sensor_msgs' own class where ROS 2 is installed.

Example:
    >>> msg = Image(Header(Time(12, 5), "camera"), height=1, width=2, encoding="mono8", step=2, data=b"\\x00\\x01")
    >>> msg.header.stamp.nanosec
    5
"""

from __future__ import annotations

import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

_M_co = TypeVar("_M_co", covariant=True)


@dataclass
class Time:
    """builtin_interfaces/Time: seconds and nanoseconds (0 <= nanosec < 10**9) since the Unix epoch."""

    sec: int = 0
    nanosec: int = 0


@dataclass
class Header:
    """std_msgs/Header: when the data was captured and the coordinate frame it belongs to."""

    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class Image:
    """sensor_msgs/Image: uncompressed pixels, `step` bytes per row."""

    header: Header = field(default_factory=Header)
    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    data: bytes = b""


@dataclass
class CompressedImage:
    """sensor_msgs/CompressedImage: JPEG or PNG bytes; `format` names the compression ("jpeg", "png")."""

    header: Header = field(default_factory=Header)
    format: str = ""
    data: bytes = b""


class StampLike(Protocol):
    """What the bridge reads from a stamp: builtin_interfaces/Time or `Time`."""

    @property
    def sec(self) -> int:
        """Whole seconds since the Unix epoch (or since the simulation started)."""

    @property
    def nanosec(self) -> int:
        """Nanoseconds past `sec`, 0 to 999999999."""


class HeaderLike(Protocol):
    """What the bridge reads from a header: std_msgs/Header or `Header`."""

    @property
    def stamp(self) -> StampLike:
        """When the camera captured the image; sent to the server as the frame's capture time."""

    @property
    def frame_id(self) -> str:
        """The camera's coordinate frame, kept on every output so that the masks line up with it."""


class ImageLike(Protocol):
    """What the bridge reads from sensor_msgs/Image (or `Image`); `data` is any bytes-like buffer."""

    @property
    def header(self) -> HeaderLike:
        """The camera's stamp and frame, copied onto every output message."""

    @property
    def height(self) -> int:
        """Rows of pixels."""

    @property
    def width(self) -> int:
        """Pixels per row."""

    @property
    def encoding(self) -> str:
        """The pixel layout (rgb8, bgr8, mono8, ...): how many channels, in which order."""

    @property
    def is_bigendian(self) -> int:
        """Byte order of multi-byte pixel values; the 8-bit encodings the bridge takes ignore it."""

    @property
    def step(self) -> int:
        """Bytes from the start of one row to the next, row padding included."""

    @property
    def data(self) -> Any:
        """The pixel rows, `step` bytes each."""


class CompressedImageLike(Protocol):
    """What the bridge reads from sensor_msgs/CompressedImage (or `CompressedImage`)."""

    @property
    def header(self) -> HeaderLike:
        """The camera's stamp and frame, copied onto every output message."""

    @property
    def format(self) -> str:
        """The compression: "jpeg", "png", or image_transport's longer "bgr8; jpeg compressed bgr8"."""

    @property
    def data(self) -> Any:
        """The JPEG or PNG bytes."""


class ImageFactory(Protocol[_M_co]):
    """Builds one output image message from its fields; the stand-in `Image` class is one."""

    def __call__(
        self, *, header: Any, height: int, width: int, encoding: str, is_bigendian: int, step: int, data: bytes
    ) -> _M_co:
        """One message with these sensor_msgs/Image fields (rclpy's Image class takes them as keywords)."""


def ros_image_factory(image_type: Callable[..., _M_co]) -> ImageFactory[_M_co]:
    """An `ImageFactory` for rclpy's generated `sensor_msgs.msg.Image` class.

    rclpy stores uint8[] fields as `array.array('B')`; handing it one skips the per-byte check its
    setter runs on any other sequence (seconds for a camera frame).

    Example:
        >>> from sensor_msgs.msg import Image as RosImage  # doctest: +SKIP
        >>> factory = ros_image_factory(RosImage)  # doctest: +SKIP
    """

    def build(
        *, header: Any, height: int, width: int, encoding: str, is_bigendian: int, step: int, data: bytes
    ) -> _M_co:
        return image_type(
            header=header,
            height=height,
            width=width,
            encoding=encoding,
            is_bigendian=is_bigendian,
            step=step,
            data=array.array("B", data),
        )

    return build
