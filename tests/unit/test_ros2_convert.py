"""ROS 2 message conversions, without ROS 2: stamps, every input encoding, compressed input, outputs, headers."""

from __future__ import annotations

import array
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

import segstream.ros2
from segstream.client import SegmentResult
from segstream.ros2 import (
    SUPPORTED_ENCODINGS,
    CompressedImage,
    Header,
    HeaderTable,
    Image,
    Time,
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
    ros_image_factory,
    split_ns,
    stamp_to_ns,
    wire_frame_from_compressed,
    wire_frame_from_image,
)
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire.codec import decode_frame
from segstream.wire.palette import blend, colorize

U8 = npt.NDArray[np.uint8]
HEADER = Header(Time(1_700_000_123, 456_789_012), "camera_color_optical_frame")


def rgb_pattern(height: int = 5, width: int = 7) -> U8:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def camera_image(rgb: U8, encoding: str, padding: int = 0, header: Header = HEADER) -> Image:
    """A sensor_msgs/Image stand-in holding `rgb` in `encoding`, each row followed by `padding` junk bytes."""
    pixels: U8
    if encoding == "mono8":
        pixels = rgb[:, :, 0]
    elif encoding.startswith("rgb"):
        pixels = rgb
    else:
        pixels = np.ascontiguousarray(rgb[:, :, ::-1])
    if encoding in ("rgba8", "bgra8"):
        alpha = np.full((*rgb.shape[:2], 1), 77, np.uint8)
        pixels = np.concatenate([pixels, alpha], axis=2)
    height, width = rgb.shape[:2]
    rows = pixels.reshape(height, -1)
    junk = np.full((height, padding), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    return Image(header, height, width, encoding, 0, rows.shape[1] + padding, data)


def expected_rgb(rgb: U8, encoding: str) -> U8:
    return rgb[:, :, 0] if encoding == "mono8" else rgb


def test_public_names_are_pinned_and_importable() -> None:
    names = segstream.ros2.__all__
    assert len(names) == len(set(names)) and all(hasattr(segstream.ros2, name) for name in names)
    assert set(names) == {
        "PARAMETERS", "SUPPORTED_ENCODINGS", "BridgeCore", "BridgeLogger", "BridgeOutput", "BridgeSettings",
        "BridgeStats", "CompressedImage", "Header", "HeaderTable", "Image", "ImageFactory", "ImageFields",
        "LatestSlot", "OutputMessages", "Parameter", "Time", "UnsupportedImageError", "frame_input_from_compressed",
        "frame_input_from_image", "frame_input_from_message", "image_array", "image_fields", "mask_message",
        "ns_to_stamp", "output_messages", "rgb_message", "ros_image_factory", "settings_from_parameters", "split_ns",
        "stamp_to_ns", "wire_frame_from_compressed", "wire_frame_from_image",
    }  # fmt: skip


# -- stamps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sec", "nanosec"),
    [(0, 0), (1_700_000_123, 456_789_012), (2**31 - 1, 999_999_999), (-5, 1), (12, 999_999_999)],
)
def test_stamps_round_trip_exactly(sec: int, nanosec: int) -> None:
    ns = stamp_to_ns(Time(sec, nanosec))
    assert ns == sec * 1_000_000_000 + nanosec
    assert split_ns(ns) == (sec, nanosec)
    assert ns_to_stamp(ns) == Time(sec, nanosec)


@given(st.integers(min_value=-(2**62), max_value=2**63 - 1))
def test_every_ns_round_trips_through_a_stamp(ns: int) -> None:
    stamp = ns_to_stamp(ns)
    assert 0 <= stamp.nanosec < 1_000_000_000
    assert stamp_to_ns(stamp) == ns


def test_a_stamp_with_nanosec_out_of_range_is_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="nanosec must be from 0 to 999999999"):
        stamp_to_ns(Time(1, 1_000_000_000))


# -- raw input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [0, 5])
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_every_supported_encoding_becomes_the_same_pixels(encoding: str, padding: int) -> None:
    rgb = rgb_pattern()
    msg = camera_image(rgb, encoding, padding)
    frame = frame_input_from_image(msg, frame_id=41)
    assert frame.frame_id == 41
    assert frame.timestamp_ns == 1_700_000_123_456_789_012
    np.testing.assert_array_equal(frame.image, expected_rgb(rgb, encoding))
    in_bgr = frame_input_from_image(msg, frame_id=41, pixel_format="bgr").image
    np.testing.assert_array_equal(in_bgr, expected_rgb(rgb, encoding) if encoding == "mono8" else rgb[:, :, ::-1])


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_wire_frames_keep_the_row_step_and_decode_to_the_same_pixels(encoding: str, padding: int) -> None:
    rgb = rgb_pattern()
    msg = camera_image(rgb, encoding, padding)
    frame = wire_frame_from_image(msg, frame_id=9)
    assert frame.frame_id == 9
    assert frame.capture_time.seconds == HEADER.stamp.sec and frame.capture_time.nanos == HEADER.stamp.nanosec
    if encoding in ("rgba8", "bgra8"):
        assert frame.raw.stride == 0  # repacked without alpha
    else:
        assert frame.raw.stride == msg.step and frame.raw.data == msg.data
    expected_format = {"rgb": pb.PIXEL_FORMAT_RGB8, "bgr": pb.PIXEL_FORMAT_BGR8, "mon": pb.PIXEL_FORMAT_GRAY8}
    assert frame.raw.format == expected_format[encoding[:3]]
    decoded = decode_frame(frame)
    want = np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(decoded, want)


def test_rclpy_style_buffers_are_read_without_copies_and_lists_are_accepted() -> None:
    rgb = rgb_pattern()
    msg = camera_image(rgb, "rgb8", padding=2)
    as_array = Image(msg.header, msg.height, msg.width, "rgb8", 0, msg.step, array.array("B", msg.data))  # type: ignore[arg-type]
    view = image_array(as_array)
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, rgb)
    as_list = Image(msg.header, msg.height, msg.width, "rgb8", 0, msg.step, list(msg.data))  # type: ignore[arg-type]
    np.testing.assert_array_equal(image_array(as_list), rgb)


@pytest.mark.parametrize(
    ("encoding", "hint"),
    [
        ("mono16", "16-bit"),
        ("16UC1", "depth"),
        ("32FC1", "depth"),
        ("bayer_rggb8", "debayer"),
        ("yuv422", "convert it to rgb8"),
        ("8UC3", "send one of rgb8, bgr8, mono8, rgba8, bgra8"),
    ],
)
def test_other_encodings_are_refused_with_what_to_send(encoding: str, hint: str) -> None:
    msg = Image(HEADER, 2, 2, encoding, 0, 8, bytes(16))
    with pytest.raises(UnsupportedImageError, match=f"{encoding!r} is not supported") as info:
        frame_input_from_image(msg, 0)
    assert hint in str(info.value)
    assert "rgb8, bgr8, mono8, rgba8, bgra8" in str(info.value)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (Image(HEADER, 2, 3, "rgb8", 0, 8, bytes(18)), "step 8 is smaller than one row of 9 bytes"),
        (Image(HEADER, 2, 3, "rgb8", 0, 9, bytes(10)), "needs 18"),
        (Image(HEADER, 0, 3, "rgb8", 0, 9, b""), "must be positive"),
    ],
)
def test_malformed_images_are_refused(msg: Image, message: str) -> None:
    with pytest.raises(UnsupportedImageError, match=message):
        image_array(msg)


# -- compressed input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "ext"), [("jpeg", ".jpg"), ("png", ".png"), ("rgb8; jpeg compressed bgr8", ".jpg")])
def test_compressed_images_decode_and_pass_through_as_they_are(fmt: str, ext: str) -> None:
    rgb = cv2.resize(rgb_pattern(), (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    msg = CompressedImage(HEADER, fmt, bytes(buf))
    frame = frame_input_from_compressed(msg, frame_id=3)
    assert frame.timestamp_ns == stamp_to_ns(HEADER.stamp) and frame.frame_id == 3
    assert frame.image.shape == (48, 64, 3)
    if ext == ".png":
        np.testing.assert_array_equal(frame.image, rgb)
    else:
        assert np.abs(frame.image.astype(int) - rgb.astype(int)).mean() < 40
    assert frame_input_from_message(msg, 3).image.shape == (48, 64, 3)
    wire = wire_frame_from_compressed(msg, frame_id=3)
    assert wire.encoded.data == msg.data
    assert wire.capture_time.seconds == HEADER.stamp.sec and wire.capture_time.nanos == HEADER.stamp.nanosec


def test_compressed_depth_and_unknown_bytes_are_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="depth map"):
        frame_input_from_compressed(CompressedImage(HEADER, "16UC1; compressedDepth png", bytes(40)), 0)
    with pytest.raises(UnsupportedImageError, match="neither JPEG nor PNG"):
        wire_frame_from_compressed(CompressedImage(HEADER, "theora", b"OggS" + bytes(20)), 0)
    with pytest.raises(UnsupportedImageError, match="corrupt"):
        frame_input_from_compressed(CompressedImage(HEADER, "jpeg", b"\xff\xd8\xff" + bytes(20)), 0)
    with pytest.raises(UnsupportedImageError, match="neither a sensor_msgs/Image"):
        frame_input_from_message(object(), 0)  # type: ignore[arg-type]


# -- outputs --------------------------------------------------------------------------------------


def test_mask_and_colour_messages_round_trip_with_the_header() -> None:
    labels = np.arange(35, dtype=np.uint8).reshape(5, 7) % 21
    mask = mask_message(labels, HEADER)
    assert (mask.encoding, mask.step, mask.width, mask.height, mask.is_bigendian) == ("mono8", 7, 7, 5, 0)
    assert mask.header is HEADER
    np.testing.assert_array_equal(image_array(mask), labels)
    color = rgb_message(colorize(labels), HEADER)
    assert (color.encoding, color.step) == ("rgb8", 21)
    np.testing.assert_array_equal(image_array(color), colorize(labels))


def test_a_result_becomes_three_messages_with_the_input_header() -> None:
    rgb = rgb_pattern()
    labels = (rgb[:, :, 0] % 21).astype(np.uint8)
    color = colorize(labels)
    result = SegmentResult(frame_id=4, timestamp_ns=1, labels=labels, color_mask=color, overlay=blend(rgb, color))
    out = output_messages(result, HEADER)
    assert out.header is HEADER
    assert out.mask is not None and out.color_mask is not None and out.overlay is not None
    for msg in (out.mask, out.color_mask, out.overlay):
        assert msg.header is HEADER
        assert msg.header.stamp == Time(1_700_000_123, 456_789_012)
        assert msg.header.frame_id == "camera_color_optical_frame"
    np.testing.assert_array_equal(image_array(out.mask), labels)
    np.testing.assert_array_equal(image_array(out.color_mask), color)
    np.testing.assert_array_equal(image_array(out.overlay), blend(rgb, color))
    only_mask = output_messages(SegmentResult(frame_id=4, timestamp_ns=1, labels=labels), HEADER)
    assert only_mask.mask is not None and only_mask.color_mask is None and only_mask.overlay is None


def test_a_failed_result_has_nothing_to_publish() -> None:
    import grpc

    from segstream.client import FrameError

    failed = SegmentResult(frame_id=4, timestamp_ns=1, error=FrameError(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    with pytest.raises(ValueError, match="frame 4 has no result"):
        output_messages(failed, HEADER)


def test_image_fields_refuse_arrays_that_do_not_fit_the_encoding() -> None:
    with pytest.raises(ValueError, match="mono8 needs an HxW uint8 array"):
        image_fields(np.zeros((2, 2, 3), np.uint8), HEADER, "mono8")
    with pytest.raises(ValueError, match="rgb8 needs an HxWx3 uint8 array"):
        image_fields(np.zeros((2, 2), np.float32), HEADER, "rgb8")


class RecordingRosImage:
    """Stands in for rclpy's generated sensor_msgs.msg.Image: keyword construction only."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields


def test_the_ros_factory_builds_the_ros_class_with_an_array_buffer() -> None:
    factory = ros_image_factory(RecordingRosImage)
    labels = np.array([[1, 2], [3, 4]], np.uint8)
    msg = mask_message(labels, HEADER, factory)
    assert isinstance(msg, RecordingRosImage)
    data = msg.fields.pop("data")
    assert isinstance(data, array.array) and data.typecode == "B" and data.tobytes() == labels.tobytes()
    assert msg.fields == {"header": HEADER, "height": 2, "width": 2, "encoding": "mono8", "is_bigendian": 0, "step": 2}


# -- frame id -> header ---------------------------------------------------------------------------


def test_the_header_table_maps_answers_back_and_counts_skipped_frames() -> None:
    table: HeaderTable[Header] = HeaderTable(capacity=8)
    headers = {i: Header(ns_to_stamp(1_000 + i), f"cam{i}") for i in range(5)}
    for frame_id, header in headers.items():
        table.add(frame_id, header)
    assert table.take(0) == (headers[0], 0)
    # Frame 3 answered: 1 and 2 were skipped by the server and will never be answered.
    assert table.take(3) == (headers[3], 2)
    assert 1 not in table and 2 not in table and len(table) == 1
    assert table.take(2) == (None, 0)
    assert table.clear() == 1 and len(table) == 0


def test_the_header_table_is_bounded_and_evicts_the_oldest() -> None:
    table: HeaderTable[str] = HeaderTable(capacity=3)
    for frame_id in range(10):
        table.add(frame_id, f"h{frame_id}")
    assert len(table) == 3 and table.evicted == 7
    assert table.take(5) == (None, 0)
    assert table.take(8) == ("h8", 1)
    with pytest.raises(ValueError, match="at least 1"):
        HeaderTable(capacity=0)
