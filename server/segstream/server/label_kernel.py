"""The label-map upsampling of segstream.server.upsample as one compiled pass (Numba), where Numba is installed.

The NumPy/OpenCV paths of upsample.py pay per call and per temporary array: on a noisy 21-class map
upscaled from 64x85 to 640x480 they took 10-18 ms on the 2-core test machine, and 6.5 s for a
6000x4500 frame. This kernel makes the same labels (up to float near-ties) in one pass per strip of
output rows, in 5-7 ms and 0.33 s there on one thread (docs/benchmarks.md has the measurements):

1. An output row whose two source rows hold one label throughout gets that label.
2. For the source rows a strip of output rows reads, every channel is interpolated horizontally,
   once per row, when the strip's first row that needs it comes.
3. The other rows are interpolated vertically, channel after channel, keeping the running maximum
   and its class: contiguous loops the compiler turns into SIMD code. A class replaces the label
   only where strictly greater, so ties keep the lower class id, like ArgMax. Where an output
   pixel's four bilinear source labels agree, that label is taken instead, as in upsample.py (the
   interpolated logits are a convex combination of four vectors that share their argmax).

The sums are bilinear interpolation taken in two steps, (X00 w_x0 + X01 w_x1) w_y0 + (X10 w_x0 +
X11 w_x1) w_y1, rather than ONNX Runtime's four products: the float roundings differ, so labels may
differ from its Resize + ArgMax only where two classes' interpolated logits are near-ties.

The compiled code releases the GIL, so inference workers upsample in parallel with each other and
with the event loop. Numba is imported and the kernel compiled on first use (about 2 s; OrtModel
does it while loading a model that upsamples on the host; cached on disk where Numba can write its
cache). A Numba that fails to import or compile is logged, and the NumPy/OpenCV paths serve. The
price is memory:
about 175 MB more resident memory in the process (130 MB of it LLVM, from the import). Where that
matters more than 2-6 ms per frame, uninstall numba: the NumPy/OpenCV paths then serve.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]
# Per output index along one axis: the low and high source index and their weights.
Axis = tuple[I64Array, I64Array, F32Array, F32Array]
ArrayT = TypeVar("ArrayT", bound="np.ndarray[Any, Any]")

# The horizontally interpolated rows a strip keeps (C * source rows * width floats): small enough to
# stay in the CPU's cache while the strip's rows read them channel after channel.
STRIP_BYTES = 1 << 20
# Output pixels below which one call is not split across threads: the hand-over would cost more.
SPLIT_PIXELS = 1 << 16


def _interpolate_argmax(
    labels: U8Array,
    logits: F32Array,
    y_low: I64Array,
    y_high: I64Array,
    wy_low: F32Array,
    wy_high: F32Array,
    x_low: I64Array,
    x_high: I64Array,
    wx_low: F32Array,
    wx_high: F32Array,
    strip: int,
    out: U8Array,
) -> None:
    """Writes into `out` the labels of the bilinearly resized logits (see the module's steps).

    Strips of `strip` output rows share their horizontally interpolated source rows. Written for what the
    compiler vectorises (measured: 5 ms against 37 ms for the same work written otherwise):
    - the scratch arrays are allocated here, so it can tell they overlap nothing else;
    - the loops over x run the whole width with fixed bounds, not a span computed per row;
    - each local name keeps one type (a uint8 label and a float32 logit sharing a name would both
      become float64, which is slower and rounds the sums differently);
    - the running label is int32, as wide as the float32 it is selected alongside.
    """
    channels = logits.shape[0]
    height, width = out.shape
    source_width = labels.shape[1]
    source_rows = 1  # the most any strip reads
    for top in range(0, height, strip):
        source_rows = max(source_rows, y_high[min(top + strip, height) - 1] - y_low[top] + 1)
    horizontal = np.empty((channels, source_rows, width), np.float32)
    best = np.empty(width, np.float32)
    label = np.empty(width, np.int32)
    pair = (-1, -1)
    pair_differs = True
    for top in range(0, height, strip):
        bottom = min(top + strip, height)
        source = y_low[top]
        interpolated = False
        for y in range(top, bottom):
            upper = labels[y_low[y]]
            lower = labels[y_high[y]]
            row = out[y]
            # Step 1: consecutive output rows share their two source rows; where those hold a
            # single label, so does the output row.
            if (y_low[y], y_high[y]) != pair:
                pair = (y_low[y], y_high[y])
                pair_differs = False
                for i in range(source_width):
                    pair_differs = pair_differs or upper[i] != upper[0] or lower[i] != upper[0]
            if not pair_differs:
                for x in range(width):
                    row[x] = upper[0]
                continue
            if not interpolated:
                # Step 2, once per strip that needs it: every channel along x, for its source rows.
                interpolated = True
                for c in range(channels):
                    for r in range(y_high[bottom - 1] - source + 1):
                        src = logits[c, source + r]
                        dst = horizontal[c, r]
                        for x in range(width):
                            dst[x] = src[x_low[x]] * wx_low[x] + src[x_high[x]] * wx_high[x]
            # Step 3: along y, channel after channel, as a running maximum.
            a = y_low[y] - source
            b = y_high[y] - source
            wa = wy_low[y]
            wb = wy_high[y]
            above = horizontal[0, a]
            below = horizontal[0, b]
            for x in range(width):
                best[x] = above[x] * wa + below[x] * wb
                label[x] = 0
            for c in range(1, channels):
                above = horizontal[c, a]
                below = horizontal[c, b]
                k = np.int32(c)
                for x in range(width):
                    value = above[x] * wa + below[x] * wb
                    greater = value > best[x]
                    best[x] = value if greater else best[x]
                    label[x] = k if greater else label[x]
            # Where the four sources agree, their label (exact); elsewhere the interpolated one.
            for x in range(width):
                i = x_low[x]
                j = x_high[x]
                corner = upper[i]
                same = corner == upper[j] and corner == lower[i] and corner == lower[j]
                row[x] = corner if same else np.uint8(label[x])


def _compile() -> Callable[..., None] | None:
    """The compiled kernel, compiled (or loaded from Numba's cache) and tried once; None where it cannot run."""
    try:
        import numba
    except ImportError:  # the `server` extras install it; without it upsample.py's own paths serve
        return None
    except Exception:  # a broken install, say llvmlite's library failing to load
        log.warning("numba cannot be imported; label maps take the NumPy/OpenCV paths", exc_info=True)
        return None
    options: dict[str, Any] = {"nogil": True, "boundscheck": False}
    try:
        compiled: Callable[..., None] = numba.njit(cache=True, **options)(_interpolate_argmax)
    except RuntimeError:  # nowhere to write the cache (a read-only install without a home directory)
        compiled = numba.njit(**options)(_interpolate_argmax)
    # One call on a 2x2 map to 3x3 compiles it now, for the argument types every later call has
    # (read-only logits and axes, see upsample), so that a compiler failure falls back here and not
    # on a frame.
    axis = _axis_readonly(
        (
            np.array([0, 0, 1], np.int64),
            np.array([0, 1, 1], np.int64),
            np.array([0.5, 0.75, 0.5], np.float32),
            np.array([0.5, 0.25, 0.5], np.float32),
        )
    )
    out = np.empty((3, 3), np.uint8)
    try:
        compiled(
            np.array([[0, 1], [1, 1]], np.uint8),
            _readonly(np.arange(8, dtype=np.float32).reshape(2, 2, 2)),
            *axis,
            *axis,
            1,
            out,
        )
    except Exception:
        log.warning("the label kernel failed to compile; label maps take the NumPy/OpenCV paths", exc_info=True)
        return None
    return compiled


def _readonly(array: ArrayT) -> ArrayT:
    # Numba compiles once per argument type, and ONNX Runtime's outputs are read-only arrays: passing
    # every caller's logits and axes read-only keeps it to one compilation.
    view = array.view()
    view.flags.writeable = False
    return view


def _axis_readonly(axis: Axis) -> Axis:
    return _readonly(axis[0]), _readonly(axis[1]), _readonly(axis[2]), _readonly(axis[3])


# Set on first use rather than at import: importing Numba alone adds about 130 MB to a process's
# resident memory (LLVM), which a server that never upsamples on the host (a GPU) need not pay.
_UNSET: Any = object()
_KERNEL: Callable[..., None] | None = _UNSET
_kernel_lock = threading.Lock()


def _kernel() -> Callable[..., None] | None:
    global _KERNEL
    with _kernel_lock:
        if _KERNEL is _UNSET:
            _KERNEL = _compile()
        return _KERNEL


def available() -> bool:
    """Whether the compiled kernel can run here (Numba is installed)."""
    return _kernel() is not None


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """Threads that take a band of a split call (one fewer than the cores; the caller takes a band)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="segstream-labels")
        return _pool


def upsample(
    labels: U8Array,
    logits: F32Array,
    rows: Axis,
    cols: Axis,
    out: U8Array,
    parts: int = 1,
) -> U8Array:
    """Writes into `out` the argmax of `logits` (C x h x w) bilinearly resized to `out`'s size; returns `out`.

    `labels` is the argmax at the inference size; `rows` and `cols` are each output index's low and
    high source index and their weights along that axis (ONNX Runtime's half-pixel set-up).

    With `parts` > 1 the output rows are split into that many bands, run at once on this thread and
    helper threads (the kernel releases the GIL). Every output row depends only on its own source
    rows and weights, so the labels are the same however the rows are split. Worth it only where
    cores are idle: with one stream, 5.9 ms become 3.9 ms on 2 cores for a VGA frame.
    """
    if _kernel() is None:
        raise RuntimeError("the compiled label kernel needs Numba (pip install numba)")
    height, width = out.shape
    logits = _readonly(np.ascontiguousarray(logits))
    rows, cols = _axis_readonly(rows), _axis_readonly(cols)
    parts = min(parts, height, max(1, height * width // SPLIT_PIXELS))
    if parts <= 1:
        _run(labels, logits, rows, cols, out)
        return out
    bounds = [height * k // parts for k in range(parts + 1)]
    bands: list[Future[None]] = []
    try:
        for top, bottom in itertools.pairwise(bounds[1:]):
            bands.append(_helpers().submit(_run, labels, logits, _band(rows, top, bottom), cols, out[top:bottom]))
        _run(labels, logits, _band(rows, 0, bounds[1]), cols, out[: bounds[1]])
    finally:
        # Every band has finished before `out` (a worker's reused buffer) is handed on, even when
        # one failed or submitting did (the interpreter shutting down).
        wait(bands)
    for band in bands:
        band.result()  # raises a band's error
    return out


def _band(rows: Axis, top: int, bottom: int) -> Axis:
    return rows[0][top:bottom], rows[1][top:bottom], rows[2][top:bottom], rows[3][top:bottom]


def _run(
    labels: U8Array,
    logits: F32Array,
    rows: Axis,
    cols: Axis,
    out: U8Array,
) -> None:
    kernel = _kernel()
    assert kernel is not None
    channels = logits.shape[0]
    height, width = out.shape
    # Output rows per strip, so that the source rows they read fit STRIP_BYTES (two at least).
    source_rows = max(2, STRIP_BYTES // (4 * channels * width))
    strip = max(1, (source_rows - 1) * height // (int(rows[1][-1] - rows[0][0]) + 1))
    kernel(labels, logits, *rows, *cols, strip, out)
