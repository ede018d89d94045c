"""The benchmark's frames: JPEGs (640x480 by default) made once, up front, from the bundled photographs.

Encoding happens before any clock starts, so the client's encode cost is never measured; every
stream sends the same few encoded frames in turn, as `Frame.encoded`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec
from segstream.wire.codec import U8Array

WIDTH, HEIGHT = 640, 480
JPEG_QUALITY = 90
# The two COCO photographs in samples/ (640x480 and 640x478).
SAMPLE_NAMES = ("000000017968.jpg", "000000025205.jpg")


def samples_dir() -> Path:
    """samples/ of the source tree this package runs from (an editable install or a checkout)."""
    return Path(__file__).resolve().parents[3] / "samples"


def load_photos(directory: Path | None = None) -> list[U8Array]:
    """The sample photographs as BGR arrays; raises FileNotFoundError naming what is missing."""
    folder = samples_dir() if directory is None else directory
    photos: list[U8Array] = []
    for name in SAMPLE_NAMES:
        path = folder / name
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"sample photograph {path} is missing or unreadable (pass --samples DIR)")
        photos.append(codec.as_u8(image))
    return photos


def _cover(image: U8Array, width: int, height: int, zoom: float = 1.0) -> U8Array:
    """The centred crop of `image` with the aspect ratio of width x height (narrowed by `zoom`), resized to it."""
    rows, cols = image.shape[:2]
    scale = min(cols / width, rows / height) / zoom
    crop_w, crop_h = min(cols, round(width * scale)), min(rows, round(height * scale))
    top, left = (rows - crop_h) // 2, (cols - crop_w) // 2
    crop = image[top : top + crop_h, left : left + crop_w]
    shrinking = crop_w >= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return codec.as_u8(cv2.resize(crop, (width, height), interpolation=interpolation))


def variants(photo: U8Array, width: int = WIDTH, height: int = HEIGHT) -> list[U8Array]:
    """Three width x height views of one photograph: whole, mirrored, and a centred 1.25x zoom."""
    whole = _cover(photo, width, height)
    mirrored = np.ascontiguousarray(whole[:, ::-1])
    return [whole, mirrored, _cover(photo, width, height, zoom=1.25)]


def encoded_frames(photos: Sequence[U8Array] | None = None, width: int = WIDTH, height: int = HEIGHT) -> list[bytes]:
    """JPEG bytes of every width x height variant of the photographs, in a fixed order."""
    images = [v for photo in (load_photos() if photos is None else photos) for v in variants(photo, width, height)]
    return [codec.encode_bgr(image, "jpeg", JPEG_QUALITY) for image in images]


def frame_request(data: bytes, frame_id: int, timestamp_ns: int) -> pb.SegmentRequest:
    """One stream message carrying an encoded frame."""
    request = pb.SegmentRequest()
    frame = request.frame
    frame.frame_id = frame_id
    frame.capture_time.FromNanoseconds(timestamp_ns)
    frame.encoded.data = data
    return request
