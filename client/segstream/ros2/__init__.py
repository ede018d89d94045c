"""segstream for ROS 2: a bridge node from camera topics to segmentation topics, and its pure parts.

Without ROS 2 installed, everything here but `node.BridgeNode`/`node.main` works: the message
conversions (`segstream.ros2.convert`), the stand-in message types (`segstream.ros2.messages`), the
settings and the transport-free `BridgeCore` that the node wraps. The node itself runs where ROS 2
is installed and sourced: `segstream-ros2-bridge --ros-args -p server:=host:50051`.

Example:
    >>> from segstream.ros2 import Header, Image, Time, frame_input_from_image
    >>> camera = Image(Header(Time(5, 7), "cam"), height=2, width=2, encoding="rgb8", step=6, data=bytes(12))
    >>> frame_input_from_image(camera, frame_id=0).timestamp_ns
    5000000007
"""

from __future__ import annotations

from segstream.ros2.bridge import BridgeCore, BridgeLogger, BridgeOutput, BridgeStats, LatestSlot
from segstream.ros2.convert import (
    SUPPORTED_ENCODINGS,
    HeaderTable,
    ImageFields,
    OutputMessages,
    UnsupportedImageError,
    frame_input_from_compressed,
    frame_input_from_image,
    frame_input_from_message,
    image_array,
    image_fields,
    mask_message,
    ns_to_stamp,
    output_messages,
    rgb_message,
    split_ns,
    stamp_to_ns,
    wire_frame_from_compressed,
    wire_frame_from_image,
)
from segstream.ros2.messages import CompressedImage, Header, Image, ImageFactory, Time, ros_image_factory
from segstream.ros2.settings import PARAMETERS, BridgeSettings, Parameter, settings_from_parameters

__all__ = [
    "PARAMETERS",
    "SUPPORTED_ENCODINGS",
    "BridgeCore",
    "BridgeLogger",
    "BridgeOutput",
    "BridgeSettings",
    "BridgeStats",
    "CompressedImage",
    "Header",
    "HeaderTable",
    "Image",
    "ImageFactory",
    "ImageFields",
    "LatestSlot",
    "OutputMessages",
    "Parameter",
    "Time",
    "UnsupportedImageError",
    "frame_input_from_compressed",
    "frame_input_from_image",
    "frame_input_from_message",
    "image_array",
    "image_fields",
    "mask_message",
    "ns_to_stamp",
    "output_messages",
    "rgb_message",
    "ros_image_factory",
    "settings_from_parameters",
    "split_ns",
    "stamp_to_ns",
    "wire_frame_from_compressed",
    "wire_frame_from_image",
]
