"""Pascal VOC class names, the model card's palette (generated for any class count), and pure numpy mask rendering.

Example:
    >>> labels = np.zeros((2, 2), np.uint8)
    >>> colorize(labels).shape
    (2, 2, 3)
"""

from __future__ import annotations

import colorsys
from functools import cache

import cv2
import numpy as np
import numpy.typing as npt

from segstream.wire.codec import as_u8

VOC_CLASSES: tuple[str, ...] = (
    "__background__",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

U8Array = npt.NDArray[np.uint8]


@cache
def voc_palette(num_classes: int = len(VOC_CLASSES)) -> U8Array:
    """RGB colour per class: class 0 black, class k the HSV colour (k/n, 0.75, 0.75), truncated.

    The table is cached and read-only, so callers can index it without copying.
    """
    table = np.zeros((256, 3), np.uint8)
    for k in range(1, num_classes):
        rgb = colorsys.hsv_to_rgb(k / num_classes, 0.75, 0.75)
        table[k] = [int(c * 255) for c in rgb]
    table.flags.writeable = False
    return table[:num_classes] if num_classes < 256 else table


def palette_table(palette: U8Array) -> U8Array:
    """A read-only 256-entry RGB lookup table from a [C, 3] palette (C <= 256); ids from C on stay black.

    Indexing it with any uint8 label map needs no bounds check: `palette_table(p)[labels]`.
    """
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    if len(colours) > 256:
        raise ValueError(f"a palette for uint8 class ids has at most 256 colours, not {len(colours)}")
    table = np.zeros((256, 3), np.uint8)
    table[: len(colours)] = colours
    table.flags.writeable = False
    return table


@cache
def _lut(num_classes: int) -> U8Array:
    # A full 256-entry table lets `colorize` index without bounds checks; class ids the
    # model cannot produce stay black.
    return palette_table(voc_palette(num_classes)[:num_classes])


def colorize(labels: U8Array, num_classes: int = len(VOC_CLASSES)) -> U8Array:
    """Colour a HxW uint8 label map with the generated palette of `num_classes`; returns HxWx3 RGB."""
    return _lut(num_classes)[labels]


def blend(image: U8Array, color: U8Array) -> U8Array:
    """The 50/50 overlay of a frame and its colour mask, both in the same channel order."""
    if image.shape != color.shape:
        raise ValueError(f"image {image.shape} and colour mask {color.shape} differ in shape")
    return as_u8(cv2.addWeighted(image, 0.5, color, 0.5, 0))


def class_share(labels: U8Array, num_classes: int = len(VOC_CLASSES)) -> npt.NDArray[np.float32]:
    """Fraction of pixels of each class (sums to 1 for a non-empty mask)."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    total = max(int(labels.size), 1)
    return (counts / total).astype(np.float32)
