"""Label maps upsampled on the host exactly as ONNX Runtime's Resize(linear, half_pixel) + ArgMax would.

Resizing all C float logit channels to the frame's resolution before the argmax costs 4 * C bytes per
output pixel (1.85 GB for 21 classes on a 22-megapixel frame). This module gets the same class ids
from the logits and labels at the inference size, writing one byte per output pixel and working in
horizontal strips, so its own memory stays bounded whatever the frame size:

- For each output pixel, its four bilinear source pixels follow ONNX Runtime's CPU kernel to the
  bit: source = (dst + 0.5) / (out / in) - 0.5 in float32, clamped to [0, in - 1], the low index
  truncated, the high one low + 1 (clamped), weights |source - high| and |source - low| (0.5 each
  where low == high), terms summed in the kernel's order.
- Where the four source labels agree, the interpolated logits (a weighted sum with non-negative
  weights of four vectors that share their largest class) have that class as their argmax too, so
  the label is copied.
- Only where they differ are the C interpolated logits computed, for those pixels alone, and their
  argmax taken (first index on ties, like ArgMax), from a pixel-major copy of the few source rows
  the strip reads.

Where so many cells have disagreeing sources that refining would cost more (noisy label maps), and
the output is an upscale of bounded size, the channels are instead resized one at a time with OpenCV
and the argmax kept as a running maximum (see REFINE_SHARE).

Where Numba is installed, segstream.server.label_kernel does all of this in one compiled pass
(several times faster, whatever the labels); the paths here serve where it is not.

Labels can differ from ONNX Runtime's only on float near-ties of the argmax.

Example:
    >>> logits = np.array([[[0.5, 0.5]], [[0.0, 1.0]]], np.float32)  # 2 classes, 1 x 2 pixels
    >>> upsample_labels(logits.argmax(0).astype(np.uint8), logits, np.empty((1, 4), np.uint8))
    array([[0, 0, 1, 1]], dtype=uint8)
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import numpy.typing as npt

from segstream.server import label_kernel

U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]

# Output pixels per strip: the strip's temporaries (four uint8 copies, a mask, the indices of the
# pixels whose sources disagree) stay about a MB whatever the frame's width or height.
STRIP_PIXELS = 1 << 16
# Source pixels a strip may read: its pixel-major copy of their logits is C * 4 bytes each
# (2.75 MB for 21 classes), which bounds strips when the output is smaller than the inference size.
STRIP_SOURCE_PIXELS = 1 << 15
# Disagreeing pixels whose C logits are interpolated at once: C * 4 bytes each, 0.7 MB for 21 classes
# (small enough to stay in the CPU's cache between the steps).
CHUNK_PIXELS = 1 << 13
# Where the four sources of many output pixels disagree, refining each of them costs more than resizing
# every channel: from REFINE_SHARE of the inference cells on (about the share of output pixels to
# refine) the channels are resized one at a time with OpenCV and the argmax kept as a running maximum,
# a cost that does not depend on the labels. Measured with 21 classes: 640x480 from 64x85, refining
# 2.2 ms at 0.2% of cells, 7 ms at 7%, 16 ms at 14%, against 7-9 ms resizing every channel;
# 1920x1080 from 64x114, 15-20 / 37 / 55 ms against 35-47 ms. Only when upscaling on both axes, where
# OpenCV's bilinear resize uses ONNX Resize's half-pixel centres and edge clamping (labels differ only
# at float near-ties), and up to DENSE_PIXELS output pixels, whose two float planes it keeps.
REFINE_SHARE = 0.06
DENSE_PIXELS = 1 << 22
# The compiled kernel where it is available (tests turn it off to check the other paths).
USE_KERNEL = True


@functools.lru_cache(maxsize=64)
def _axis(size_in: int, size_out: int) -> label_kernel.Axis:
    """ONNX Runtime's bilinear set-up for one axis (half_pixel, sizes given).

    Cached: a stream's frames share their sizes, and the set-up costs 0.1 ms a VGA frame. The
    arrays are read-only, since every caller shares them.
    """
    scale = np.float32(size_out) / np.float32(size_in)
    dst = np.arange(size_out, dtype=np.float32)
    src = dst if scale == 1 else (dst + np.float32(0.5)) / scale - np.float32(0.5)
    src = np.clip(src, np.float32(0), np.float32(size_in - 1))
    low = np.minimum(src.astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    d_low = np.abs(src - low.astype(np.float32))
    d_high = np.abs(src - high.astype(np.float32))
    same = low == high
    d_low[same] = 0.5
    d_high[same] = 0.5
    # The weight of a source is the distance to the other one.
    axis = label_kernel.Axis(low, high, w_low=d_high, w_high=d_low)
    for array in axis:
        array.flags.writeable = False
    return axis


def _boundary_share(labels: U8Array) -> float:
    """The share of 2x2 windows of `labels` whose four labels are not all the same."""
    if labels.shape[0] < 2 or labels.shape[1] < 2:
        return 1.0
    corner = labels[:-1, :-1]
    differ = corner != labels[:-1, 1:]
    differ |= corner != labels[1:, :-1]
    differ |= corner != labels[1:, 1:]
    share: float = np.count_nonzero(differ) / differ.size
    return share


def _resize_each_channel(logits: F32Array, out: U8Array) -> U8Array:
    """The argmax over channels of every channel resized to `out`'s size, as a running maximum.

    One channel at a time keeps two float planes whatever the class count; each step is an OpenCV
    call over the whole plane. A channel replaces the label only where strictly greater, so ties
    keep the lower class id, as ArgMax does. The labels never decrease along the loop, so "set to c
    where greater" is a maximum with c masked by the comparison.
    """
    out_height, out_width = out.shape
    size = (out_width, out_height)
    best = cv2.resize(logits[0], size, interpolation=cv2.INTER_LINEAR)
    plane = np.empty_like(best)
    greater = np.empty(out.shape, np.uint8)
    out.fill(0)
    for c in range(1, logits.shape[0]):
        cv2.resize(logits[c], size, dst=plane, interpolation=cv2.INTER_LINEAR)
        cv2.compare(plane, best, cv2.CMP_GT, dst=greater)
        cv2.max(best, plane, dst=best)
        np.bitwise_and(greater, np.uint8(c), out=greater)  # 255 where greater -> c (np.minimum is 30x slower on uint8)
        cv2.max(out, greater, dst=out)
    return out


def upsample_labels(labels: U8Array, logits: F32Array, out: U8Array, parts: int = 1) -> U8Array:
    """Writes into `out` (H x W) the argmax of `logits` (C x h x w) bilinearly resized to H x W.

    `labels` (h x w) is the argmax of `logits` at their own size. Returns `out`. `parts` > 1 lets
    the compiled kernel split the work across that many threads (see label_kernel.upsample).
    """
    channels, height, width = logits.shape
    if labels.shape != (height, width):
        raise ValueError(f"labels {labels.shape} and logits {logits.shape} disagree on the inference size")
    out_height, out_width = out.shape
    if (out_height, out_width) == (height, width):
        np.copyto(out, labels)
        return out
    if USE_KERNEL and label_kernel.available():
        return label_kernel.upsample(
            np.ascontiguousarray(labels), logits, _axis(height, out_height), _axis(width, out_width), out, parts
        )
    upscaling = out_height >= height and out_width >= width
    if upscaling and out_height * out_width <= DENSE_PIXELS and _boundary_share(labels) >= REFINE_SHARE:
        return _resize_each_channel(logits, out)
    rows = _axis(height, out_height)
    cols = _axis(width, out_width)
    # Output rows per strip; a strip of n rows reads about n * height / out_height + 2 source rows.
    source_rows = max(1, STRIP_SOURCE_PIXELS // width - 2)
    strip = max(1, min(STRIP_PIXELS // out_width, source_rows * out_height // height))
    for top in range(0, out_height, strip):
        bottom = min(top + strip, out_height)
        upper = labels[rows.low[top:bottom]]
        lower = labels[rows.high[top:bottom]]
        first = upper[:, cols.low]
        dst = out[top:bottom]
        np.copyto(dst, first)
        differ = first != upper[:, cols.high]
        differ |= first != lower[:, cols.low]
        differ |= first != lower[:, cols.high]
        del upper, lower, first
        ys, xs = np.nonzero(differ)
        del differ
        if not len(ys):
            continue
        # The source rows this strip reads, pixel-major, so that each source pixel's C values are one
        # contiguous gather; a strip's worth only, so this copy stays small too.
        first, last = rows.low[top], rows.high[bottom - 1]
        pixels = np.ascontiguousarray(logits[:, first : last + 1].reshape(channels, -1).T)
        for start in range(0, len(ys), CHUNK_PIXELS):
            y = ys[start : start + CHUNK_PIXELS]
            x = xs[start : start + CHUNK_PIXELS]
            dst[y, x] = _interpolated_argmax(pixels, first, width, rows, cols, y + top, x)
    return out


def _interpolated_argmax(
    pixels: F32Array, first: int, width: int, rows: label_kernel.Axis, cols: label_kernel.Axis, y: I64Array, x: I64Array
) -> U8Array:
    """The argmax of the interpolated logits at output pixels (y, x), summed in ONNX Runtime's order.

    `pixels` holds the source rows from `first` on, one row of C logits per source pixel.
    """
    y_low = (rows.low[y] - first) * width
    y_high = (rows.high[y] - first) * width
    wy_low, wy_high = rows.w_low[y], rows.w_high[y]
    x_low, x_high, wx_low, wx_high = cols.low[x], cols.high[x], cols.w_low[x], cols.w_high[x]
    # np.take copies whole rows (several times faster than fancy indexing); each product is
    # rounded before the sum, as in the kernel: ((w11 * X11 + w21 * X21) + w12 * X12) + w22 * X22.
    value = np.take(pixels, y_low + x_low, axis=0)
    value *= (wx_low * wy_low)[:, None]
    for index, weight in (
        (y_low + x_high, wx_high * wy_low),
        (y_high + x_low, wx_low * wy_high),
        (y_high + x_high, wx_high * wy_high),
    ):
        term = np.take(pixels, index, axis=0)
        term *= weight[:, None]
        value += term
    labels: U8Array = value.argmax(axis=1).astype(np.uint8)
    return labels
