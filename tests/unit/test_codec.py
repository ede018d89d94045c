"""The wire codec: round trips, clear errors, and no crash on arbitrary bytes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec
from segstream.wire.imageinfo import image_size

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_lossless_round_trips(encoding: codec.WireEncoding) -> None:
    rgb = codec.decode_frame(codec.frame_from_array(IMAGE, pixel_format="rgb", encoding=encoding))
    np.testing.assert_array_equal(rgb, IMAGE)
    bgr = codec.decode_frame(codec.frame_from_array(IMAGE, pixel_format="bgr", encoding=encoding))
    np.testing.assert_array_equal(bgr, IMAGE[:, :, ::-1])
    grey = codec.decode_frame(codec.frame_from_array(IMAGE[:, :, 0], encoding=encoding))
    assert grey.shape == (9, 13, 3) and (grey[:, :, 2] == IMAGE[:, :, 0]).all()


def test_frame_carries_id_and_timestamp() -> None:
    frame = codec.frame_from_array(IMAGE, frame_id=42, timestamp_ns=1_234_567_890_123_456_789)
    assert frame.frame_id == 42
    assert frame.capture_time.ToNanoseconds() == 1_234_567_890_123_456_789


def test_header_sizes_are_read_without_decoding() -> None:
    for ext in (".jpg", ".png"):
        ok, data = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
        assert ok and image_size(bytes(data)) == (53, 37)
    # A progressive JPEG keeps its size in SOF2.
    ok, data = cv2.imencode(".jpg", np.zeros((20, 30, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and image_size(bytes(data)) == (30, 20)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (pb.RawImage(data=b"\0" * 12, width=2, height=2), "pixel format"),
        (pb.RawImage(data=b"", width=0, height=2, format=pb.PIXEL_FORMAT_RGB8), "must be positive"),
        (pb.RawImage(data=b"\0" * 11, width=2, height=2, format=pb.PIXEL_FORMAT_RGB8), "needs 12 to 12 bytes"),
        (pb.RawImage(data=b"\0" * 13, width=2, height=2, format=pb.PIXEL_FORMAT_RGB8), "got 13"),
        (pb.RawImage(data=b"\0" * 12, width=2, height=2, stride=5, format=pb.PIXEL_FORMAT_RGB8), "stride 5"),
        (pb.RawImage(width=100_000, height=100_000, format=pb.PIXEL_FORMAT_GRAY8), "exceeds the limit"),
    ],
)
def test_bad_raw_frames_say_what_is_wrong(raw: pb.RawImage, message: str) -> None:
    with pytest.raises(codec.InvalidFrameError, match=message):
        codec.decode_frame(pb.Frame(raw=raw))


def test_absurd_header_dimensions_are_refused_before_decoding() -> None:
    _, data = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    forged = bytearray(data)
    forged[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")  # IHDR width and height
    with pytest.raises(codec.InvalidFrameError, match="exceeds the limit"):
        codec.decode_encoded(bytes(forged))


def test_masks_and_images_round_trip() -> None:
    labels = RNG.integers(0, 21, (7, 11), dtype=np.uint8)
    for encoding in (pb.MASK_ENCODING_RAW, pb.MASK_ENCODING_PNG):
        np.testing.assert_array_equal(codec.decode_mask(codec.encode_mask(labels, encoding)), labels)
    for image_encoding in (pb.IMAGE_ENCODING_RAW_RGB, pb.IMAGE_ENCODING_PNG):
        np.testing.assert_array_equal(codec.decode_image(codec.encode_image(IMAGE, image_encoding)), IMAGE)
    jpeg = codec.decode_image(codec.encode_image(IMAGE, pb.IMAGE_ENCODING_JPEG, 100))
    assert jpeg.shape == IMAGE.shape


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]))
def test_arbitrary_encoded_bytes_decode_or_raise_invalid_frame(data: bytes, prefix: bytes) -> None:
    try:
        image = codec.decode_encoded(prefix + data)
    except codec.InvalidFrameError as exc:
        assert str(exc)
    else:
        assert image.ndim == 3 and image.shape[2] == 3


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=512),
    st.integers(0, 70_000),
    st.integers(0, 70_000),
    st.integers(0, 1 << 20),
    st.integers(0, 4),
)
def test_arbitrary_raw_frames_decode_or_raise_invalid_frame(
    data: bytes, width: int, height: int, stride: int, fmt: int
) -> None:
    raw = pb.RawImage(data=data, width=width, height=height, stride=stride, format=fmt)  # type: ignore[arg-type]
    try:
        image = codec.decode_frame(pb.Frame(raw=raw))
    except codec.InvalidFrameError as exc:
        assert str(exc)
    else:
        assert image.shape == (height, width, 3)
