"""Frame -> network input: the shape it runs the network at, and the resize to that shape.

The short side is resized to the inference size keeping the aspect ratio (bilinear); with shape
buckets the frame is resized to exactly the bucket with the closest aspect ratio instead. The
frame stays uint8 RGB: the serving graph (segstream.models.serving) normalises it in its first nodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

U8Array = npt.NDArray[np.uint8]


def inference_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side equal to `size`, aspect kept; `size` 0 keeps the frame's own."""
    if size <= 0:
        return height, width
    if height <= width:
        return size, max(1, round(width * size / height))
    return max(1, round(height * size / width)), size


def snap_to_bucket(height: int, width: int, size: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The inference shape of a frame: `inference_shape` without buckets, else the closest bucket.

    Closest means the nearest aspect ratio (compared as log(width / height), so 2:1 and 1:2 are
    equally far from 1:1); among buckets of the same aspect ratio, the one nearest in area to
    `inference_shape(height, width, size)`. Frames are resized to exactly that shape (a slight
    stretch), so that frames of every resolution batch together and a GPU reuses a few engines.

    Example:
        >>> snap_to_bucket(480, 640, 520, [(520, 693), (693, 520), (520, 520)])
        (520, 693)
    """
    if not buckets:
        return inference_shape(height, width, size)
    aspect = math.log(width / height)
    target_h, target_w = inference_shape(height, width, size)
    target = target_h * target_w

    def distance(bucket: tuple[int, int]) -> tuple[float, int]:
        return round(abs(math.log(bucket[1] / bucket[0]) - aspect), 9), abs(bucket[0] * bucket[1] - target)

    return min(buckets, key=distance)


def resize_rgb(rgb: U8Array, shape: tuple[int, int]) -> U8Array:
    """The HxWx3 frame resized (bilinear) to `shape` (height, width); the frame itself when it already is."""
    if rgb.shape[:2] == shape:
        return rgb
    return np.asarray(cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR), np.uint8)
