"""Frame -> network input, as the model card prescribes: RGB, [0, 1], per-channel mean/std, NCHW.

The short side is resized to the inference size keeping the aspect ratio (bilinear); with shape
buckets the frame is resized to exactly the bucket with the closest aspect ratio instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (x / 255 - mean) / std folded into one multiply-add per pixel.
_SCALE = (1.0 / (255.0 * STD)).astype(np.float32)
_OFFSET = (-MEAN / STD).astype(np.float32)

F32Array = npt.NDArray[np.float32]
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
    if rgb.shape[:2] == shape:
        return rgb
    return np.asarray(cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR), np.uint8)


def normalize_into(rgb: U8Array, out: F32Array) -> F32Array:
    """Write the normalized CHW tensor of an HxWx3 RGB uint8 image into `out` (3xHxW float32)."""
    for c in range(3):
        # One channel at a time keeps the temporaries small and writes straight into `out`.
        np.multiply(rgb[:, :, c], _SCALE[c], out=out[c], dtype=np.float32)
        out[c] += _OFFSET[c]
    return out


def preprocess(rgb: U8Array, size: int) -> tuple[U8Array, F32Array]:
    """The resized RGB frame and its normalized 3xHxW tensor."""
    resized = resize_rgb(rgb, inference_shape(rgb.shape[0], rgb.shape[1], size))
    tensor = np.empty((3, *resized.shape[:2]), np.float32)
    return resized, normalize_into(resized, tensor)
