"""The label-map upsampling of segstream.server.upsample as one compiled pass (Numba), where Numba is installed.

The NumPy/OpenCV paths of upsample.py pay per call and per temporary array: on a noisy 21-class map
upscaled from 64x85 to 640x480 they took 10-18 ms on the 2-core test machine, and 6.5 s for a
6000x4500 frame. This kernel makes the same labels (up to float near-ties) in one pass over the
output rows: about 4.6 ms for the synthetic model's VGA maps on one thread, 1-3.4 ms for smooth
maps like a trained model's (docs/benchmarks.md has the measurements).
Its work follows the pixels whose four bilinear source labels differ, the only ones that need
interpolating (the interpolated logits of four vectors that share their argmax, a convex
combination, have that argmax too):

1. Once per pair of source rows (consecutive output rows share theirs): which columns have
   differing source labels, gathered into stretches (short gaps between two are bridged).
2. Every channel of the two source rows is interpolated along x over those stretches. Where they
   cover most of the row, the whole row is, and a source row is kept for the next pair (which
   shares it) rather than interpolated twice.
3. Each output row takes the label of its pixels' agreeing sources, and over the stretches the
   channels are interpolated along y one after another, keeping the running maximum and its class:
   contiguous loops the compiler turns into SIMD code. A class replaces the label only where
   strictly greater, so ties keep the lower class id, like ArgMax. Pixels of a stretch whose four
   sources agree keep that label (exact) rather than the interpolated one.

The sums are bilinear interpolation taken in two steps, (X00 w_x0 + X01 w_x1) w_y0 + (X10 w_x0 +
X11 w_x1) w_y1, rather than ONNX Runtime's four products: the float roundings differ, so labels may
differ from its Resize + ArgMax only where two classes' interpolated logits are near-ties.

The compiled code releases the GIL, so inference workers upsample in parallel with each other and
with the event loop. Numba is imported and the kernel compiled on first use (about 2 s; OrtModel
does it while loading a model that upsamples on the host; cached on disk where Numba can write its
cache). A Numba that fails to import or compile is logged, and the NumPy/OpenCV paths serve. The
price is memory: about 175 MB more resident memory in the process (130 MB of it LLVM, from the
import). Where that matters more than a few ms per frame, uninstall numba: the NumPy/OpenCV paths then serve.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from segstream.server import cores

log = logging.getLogger(__name__)

U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


class Axis(NamedTuple):
    """Per output index along one axis: the low and high source index and their weights."""

    low: I64Array
    high: I64Array
    w_low: F32Array
    w_high: F32Array


ArrayT = TypeVar("ArrayT", bound="np.ndarray[Any, Any]")

# Output pixels below which one call is not split across threads: the hand-over would cost more.
SPLIT_PIXELS = 1 << 16
# Columns of agreeing labels between two stretches that need interpolating, up to which the two are
# interpolated as one: a loop over a few columns costs more than the columns it would skip.
RUN_GAP = 16
# The share of a row's columns beyond which the whole row is interpolated: each source row is then
# interpolated along x once and kept for the next pair of source rows, instead of twice in stretches.
DENSE_SHARE = 0.5


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
    gap: int,
    dense_columns: int,
    out: U8Array,
) -> None:
    """Writes into `out` the labels of the bilinearly resized logits (see the module's steps).

    `gap` and `dense_columns`: RUN_GAP, and DENSE_SHARE of the output width. Written for what the
    compiler vectorises (measured on its first form: 5 ms against 37 ms for the same work written otherwise):
    - the scratch arrays are allocated here, so it can tell they overlap nothing else;
    - a loop over a stretch of columns runs over views that start at the stretch, from 0: indices
      the compiler knows are not negative (from the stretch's first column it would check each one
      and not vectorise: 20 ms against 3 ms for a noisy VGA map);
    - each local name keeps one type (a uint8 label and a float32 logit sharing a name would both
      become float64, which is slower and rounds the sums differently);
    - the running label is int32, as wide as the float32 it is selected alongside.
    """
    channels = logits.shape[0]
    height, width = out.shape
    # Two slots of every channel's source rows interpolated along x; `kept` is the source row a slot
    # holds across the whole width (-1: only stretches of it, valid for the current pair alone).
    horizontal = np.empty((channels, 2, width), np.float32)
    kept = np.full(2, -1, np.int64)
    best = np.empty(width, np.float32)
    label = np.empty(width, np.int32)
    agreed = np.empty(width, np.uint8)  # the label of each column's top-left source pixel
    mixed = np.zeros(width, np.bool_)  # whether a column's four source labels differ
    starts = np.empty(width, np.int64)  # the stretches of columns to interpolate
    ends = np.empty(width, np.int64)
    runs = 0
    top = 0  # the slots of the pair's upper and lower source rows
    low = 1
    pair = (-1, -1)
    for y in range(height):
        if (y_low[y], y_high[y]) != pair:
            # Step 1, once per pair of source rows (consecutive output rows share theirs).
            pair = (y_low[y], y_high[y])
            upper = labels[pair[0]]
            lower = labels[pair[1]]
            runs = 0
            covered = 0
            open_run = False
            for x in range(width):
                i = x_low[x]
                j = x_high[x]
                corner = upper[i]
                agreed[x] = corner
                differ = corner != upper[j] or corner != lower[i] or corner != lower[j]
                mixed[x] = differ
                if differ and not open_run:
                    if runs > 0 and x - ends[runs - 1] <= gap:
                        runs -= 1  # continues the previous stretch across a short gap
                        covered -= ends[runs] - starts[runs]
                    else:
                        starts[runs] = x
                    open_run = True
                elif not differ and open_run:
                    ends[runs] = x
                    covered += x - starts[runs]
                    runs += 1
                    open_run = False
            if open_run:
                ends[runs] = width
                covered += width - starts[runs]
                runs += 1
            # Step 2: every channel of both source rows along x, where step 3 will read it.
            if covered > dense_columns:
                runs = 1
                starts[0] = 0
                ends[0] = width
                top = -1
                low = -1
                for slot in range(2):
                    if kept[slot] == pair[0]:
                        top = slot
                for slot in range(2):
                    if kept[slot] == pair[1] and (slot != top or pair[0] == pair[1]):
                        low = slot
                for r in range(2):
                    if r == 1 and low < 0 and pair[1] == pair[0]:
                        low = top  # one source row (the clamped edge)
                    slot = top if r == 0 else low
                    if slot >= 0:
                        continue  # kept from the previous pair
                    other = low if r == 0 else top
                    slot = 0 if other != 0 else 1
                    for c in range(channels):
                        src = logits[c, pair[r]]
                        dst = horizontal[c, slot]
                        for x in range(width):
                            dst[x] = src[x_low[x]] * wx_low[x] + src[x_high[x]] * wx_high[x]
                    kept[slot] = pair[r]
                    if r == 0:
                        top = slot
                    else:
                        low = slot
            else:
                top = 0
                low = 1
                if runs > 0:  # the slots get stretches: what they kept whole is gone
                    kept[0] = -1
                    kept[1] = -1
                for k in range(runs):
                    first = starts[k]
                    n = ends[k] - first
                    run_low = x_low[first:]
                    run_high = x_high[first:]
                    run_w_low = wx_low[first:]
                    run_w_high = wx_high[first:]
                    for c in range(channels):
                        for r in range(2):
                            src = logits[c, pair[r]]
                            dst = horizontal[c, r, first:]
                            for x in range(n):
                                dst[x] = src[run_low[x]] * run_w_low[x] + src[run_high[x]] * run_w_high[x]
        row = out[y]
        for x in range(width):
            row[x] = agreed[x]
        # Step 3: along y over the stretches, channel after channel, as a running maximum.
        wa = wy_low[y]
        wb = wy_high[y]
        for k in range(runs):
            first = starts[k]
            n = ends[k] - first
            run_best = best[first:]
            run_label = label[first:]
            above = horizontal[0, top, first:]
            below = horizontal[0, low, first:]
            for x in range(n):
                run_best[x] = above[x] * wa + below[x] * wb
                run_label[x] = 0
            for c in range(1, channels):
                above = horizontal[c, top, first:]
                below = horizontal[c, low, first:]
                class_id = np.int32(c)
                for x in range(n):
                    value = above[x] * wa + below[x] * wb
                    greater = value > run_best[x]
                    run_best[x] = value if greater else run_best[x]
                    run_label[x] = class_id if greater else run_label[x]
            # Where the four sources agree, their label (exact); elsewhere the interpolated one.
            run_row = row[first:]
            run_mixed = mixed[first:]
            for x in range(n):
                run_row[x] = np.uint8(run_label[x]) if run_mixed[x] else run_row[x]


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
        Axis(
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
            RUN_GAP,
            0,
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
    return Axis(_readonly(axis.low), _readonly(axis.high), _readonly(axis.w_low), _readonly(axis.w_high))


# Set on first use rather than at import: importing Numba alone adds about 130 MB to a process's
# resident memory (LLVM), which a server that never upsamples on the host (a GPU) need not pay.
_UNSET: Any = object()
_KERNEL: Callable[..., None] | None = _UNSET
_kernel_lock = threading.Lock()


def _kernel() -> Callable[..., None] | None:
    global _KERNEL
    kernel = _KERNEL
    if kernel is not _UNSET:  # set once, then only read: no lock on every frame
        return kernel
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
            _pool = ThreadPoolExecutor(max(1, cores.available_cores() - 1), thread_name_prefix="segstream-labels")
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
    cores are idle: with one stream, 4.6 ms become 2.8 ms on 2 cores for the synthetic model's VGA maps.
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
    return Axis(rows.low[top:bottom], rows.high[top:bottom], rows.w_low[top:bottom], rows.w_high[top:bottom])


def _run(
    labels: U8Array,
    logits: F32Array,
    rows: Axis,
    cols: Axis,
    out: U8Array,
) -> None:
    kernel = _kernel()
    assert kernel is not None
    width = out.shape[1]
    kernel(labels, logits, *rows, *cols, RUN_GAP, int(DENSE_SHARE * width), out)
