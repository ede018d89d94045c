"""The only code that turns wire messages into numpy arrays and back; client and server share it.

Images inside segstream are HxWx3 uint8 RGB arrays; label masks are HxW uint8 arrays.

Example:
    >>> frame = frame_from_array(np.zeros((4, 6, 3), np.uint8), frame_id=7, pixel_format="rgb")
    >>> decode_frame(frame).shape
    (4, 6, 3)
"""

from __future__ import annotations

import time
from typing import Literal, cast

try:
    import cv2
except ImportError as exc:  # OpenCV's builds share the cv2/ files: uninstalling one removes them for all
    raise ImportError(
        "segstream needs OpenCV: pip install --force-reinstall opencv-python-headless "
        "(or opencv-python for the live webcam window; needs libGL)"
    ) from exc
import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp

from segstream.v1 import segmentation_pb2 as pb
from segstream.wire.imageinfo import image_kind, image_size

U8Array = npt.NDArray[np.uint8]
PixelFormatName = Literal["rgb", "bgr", "gray"]
WireEncoding = Literal["raw", "jpeg", "png"]

# A frame over this many pixels is refused unless the server sets its own limit:
# 8K UHD (33 MP) passes, a header claiming 65535x65535 does not.
DEFAULT_MAX_PIXELS = 7680 * 4320

_CHANNELS = {pb.PIXEL_FORMAT_RGB8: 3, pb.PIXEL_FORMAT_BGR8: 3, pb.PIXEL_FORMAT_GRAY8: 1}
_FORMAT_BY_NAME = {"rgb": pb.PIXEL_FORMAT_RGB8, "bgr": pb.PIXEL_FORMAT_BGR8, "gray": pb.PIXEL_FORMAT_GRAY8}


def as_u8(mat: object) -> U8Array:
    """An OpenCV result typed as the uint8 array it is.

    OpenCV's stubs type every result as a loose `MatLike`; for uint8 inputs the outputs are uint8 too.
    """
    return cast(U8Array, mat)


class InvalidFrameError(ValueError):
    """A frame that cannot be turned into an image; the message says what to fix."""


class FrameOverLimitError(InvalidFrameError):
    """A well-formed frame beyond a limit: its pixels, its network input's pixels or its aspect ratio.

    The message says what to send instead; a server answers it with RESOURCE_EXHAUSTED (code 8),
    not INVALID_ARGUMENT.
    """


def timestamp_from_ns(ns: int) -> Timestamp:
    """A protobuf Timestamp for nanoseconds since the Unix epoch, as Frame.capture_time carries it."""
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidFrameError(f"frame has {width}x{height} pixels: width and height must be positive")
    if width * height > max_pixels:
        raise FrameOverLimitError(
            f"frame of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} pixels; "
            "send a smaller frame"
        )


def decode_frame(frame: pb.Frame, max_pixels: int = DEFAULT_MAX_PIXELS) -> U8Array:
    """The frame's pixels as an HxWx3 RGB array; raises InvalidFrameError for a bad frame."""
    which = frame.WhichOneof("image")
    if which == "encoded":
        return decode_encoded(frame.encoded.data, max_pixels)
    if which == "raw":
        return decode_raw(frame.raw, max_pixels)
    raise InvalidFrameError("frame carries no image: set Frame.encoded (JPEG/PNG) or Frame.raw")


def decode_encoded(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> U8Array:
    """A JPEG or PNG frame as an HxWx3 RGB array; its size is checked from the header before decoding."""
    kind = image_kind(data)
    if kind is None:
        raise InvalidFrameError(
            f"encoded image of {len(data)} bytes is neither JPEG nor PNG (unknown magic bytes); "
            "send JPEG or PNG, or use Frame.raw for uncompressed pixels"
        )
    size = image_size(data)
    if size is None:
        raise InvalidFrameError(f"{kind.upper()} header is corrupt or truncated ({len(data)} bytes)")
    _check_size(*size, max_pixels)
    # Decoding straight to RGB saves a colour conversion pass over every frame.
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise InvalidFrameError(f"{kind.upper()} image of {len(data)} bytes could not be decoded (corrupt data)")
    return as_u8(rgb)


def decode_raw(raw: pb.RawImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> U8Array:
    """An uncompressed frame (RGB, BGR or grey, rows maybe padded) as an HxWx3 RGB array."""
    channels = _CHANNELS.get(raw.format)
    if channels is None:
        raise InvalidFrameError("raw frame has no pixel format: set RawImage.format to RGB8, BGR8 or GRAY8")
    width, height = raw.width, raw.height
    _check_size(width, height, max_pixels)
    row = width * channels
    stride = raw.stride or row
    if stride < row:
        raise InvalidFrameError(f"raw frame stride {stride} is smaller than a row of {row} bytes")
    needed = stride * (height - 1) + row
    if len(raw.data) < needed or len(raw.data) > stride * height:
        raise InvalidFrameError(
            f"raw frame of {width}x{height} with stride {stride} needs {needed} to {stride * height} bytes, "
            f"got {len(raw.data)}"
        )
    buf = np.frombuffer(raw.data, np.uint8)
    # Rows start `stride` bytes apart; viewing only the first `row` bytes of each drops the padding
    # without a copy, and the length check above keeps the last row inside the buffer.
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row), strides=(stride, 1))
    pixels = rows.reshape(height, width, channels)
    if raw.format == pb.PIXEL_FORMAT_RGB8:
        return np.ascontiguousarray(pixels)
    if raw.format == pb.PIXEL_FORMAT_BGR8:
        return as_u8(cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGR2RGB))
    return as_u8(cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), cv2.COLOR_GRAY2RGB))


def frame_from_array(
    image: U8Array,
    frame_id: int = 0,
    timestamp_ns: int | None = None,
    pixel_format: PixelFormatName = "bgr",
    encoding: WireEncoding = "raw",
    jpeg_quality: int = 90,
) -> pb.Frame:
    """A wire Frame from an HxW (grey) or HxWx3 uint8 array in the given channel order.

    `timestamp_ns` defaults to now; `encoding` 'raw' sends pixels as they are, 'jpeg'/'png' compress.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 arrays, got {image.dtype}")
    if image.ndim == 2:
        pixel_format = "gray"
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frames must be HxW or HxWx3 arrays, got shape {image.shape}")
    elif pixel_format == "gray":
        raise ValueError(f"a grey frame must be an HxW array, got shape {image.shape}; pass 'rgb' or 'bgr'")
    frame = pb.Frame(
        frame_id=frame_id,
        capture_time=timestamp_from_ns(time.time_ns() if timestamp_ns is None else timestamp_ns),
    )
    height, width = image.shape[:2]
    if encoding == "raw":
        frame.raw.CopyFrom(
            pb.RawImage(
                data=np.ascontiguousarray(image).tobytes(),
                width=width,
                height=height,
                format=_FORMAT_BY_NAME[pixel_format],
            )
        )
        return frame
    # OpenCV encoders expect BGR (or grey).
    bgr = as_u8(cv2.cvtColor(image, cv2.COLOR_RGB2BGR)) if pixel_format == "rgb" else image
    frame.encoded.data = encode_bgr(bgr, encoding, jpeg_quality)
    return frame


def encode_bgr(bgr: U8Array, encoding: Literal["jpeg", "png"], jpeg_quality: int = 90) -> bytes:
    """JPEG or PNG bytes of a BGR (or grey) image, in the channel order OpenCV's encoders expect."""
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]) if encoding == "jpeg" else (".png", [])
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ValueError(f"could not encode a {bgr.shape} image as {encoding}")
    return bytes(buf)


def encode_mask(labels: U8Array, encoding: int = pb.MASK_ENCODING_RAW) -> pb.Mask:
    """The wire Mask of an HxW class-index map: raw bytes, or PNG when asked for (anything else is raw)."""
    height, width = labels.shape
    if encoding == pb.MASK_ENCODING_PNG:
        data = encode_bgr(labels, "png")
    else:
        encoding = pb.MASK_ENCODING_RAW
        data = np.ascontiguousarray(labels).tobytes()
    return pb.Mask(data=data, width=width, height=height, encoding=encoding)  # type: ignore[arg-type]


def decode_mask(mask: pb.Mask) -> U8Array:
    """A wire Mask as an HxW uint8 class-index array; ValueError when its data does not match its size."""
    if mask.encoding == pb.MASK_ENCODING_PNG:
        labels = cv2.imdecode(np.frombuffer(mask.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if labels is None or labels.shape != (mask.height, mask.width):
            raise ValueError("label mask PNG is corrupt or does not match its width and height")
        return as_u8(labels)
    if len(mask.data) != mask.width * mask.height:
        raise ValueError(f"raw label mask has {len(mask.data)} bytes for {mask.width}x{mask.height}")
    return np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)


def encode_image(rgb: U8Array, encoding: int = pb.IMAGE_ENCODING_JPEG, jpeg_quality: int = 90) -> pb.Image:
    """The wire Image of an RGB result (an overlay): JPEG by default, PNG or raw RGB when asked for."""
    height, width = rgb.shape[:2]
    if encoding == pb.IMAGE_ENCODING_RAW_RGB:
        data = np.ascontiguousarray(rgb).tobytes()
    else:
        if encoding != pb.IMAGE_ENCODING_PNG:
            encoding = pb.IMAGE_ENCODING_JPEG
        bgr = as_u8(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        data = encode_bgr(bgr, "png" if encoding == pb.IMAGE_ENCODING_PNG else "jpeg", jpeg_quality)
    return pb.Image(data=data, width=width, height=height, encoding=encoding)  # type: ignore[arg-type]


def decode_image(image: pb.Image) -> U8Array:
    """An Image result as an HxWx3 RGB array."""
    if image.encoding == pb.IMAGE_ENCODING_RAW_RGB:
        if len(image.data) != image.width * image.height * 3:
            raise ValueError(f"raw image has {len(image.data)} bytes for {image.width}x{image.height} RGB")
        return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 3)
    rgb = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise ValueError("result image is corrupt")
    return as_u8(rgb)
