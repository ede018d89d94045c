"""The label-map upsampling of segstream.server.upsample as one compiled pass (Numba), where Numba is installed.

The NumPy/OpenCV paths of upsample.py pay per call and per temporary array: on a noisy 21-class map
upscaled from 64x85 to 640x480 they took 10-18 ms on the 2-core test machine, and 6.5 s for a
6000x4500 frame. This kernel makes the same labels (up to float near-ties) in one pass over the
output rows: about 2-2.8 ms for the synthetic model's VGA maps on one thread, 1.2-1.8 ms for smooth
maps like a trained model's (docs/benchmarks.md has the measurements).
Its work follows the pixels whose four bilinear source labels differ, the only ones that need
interpolating (the interpolated logits of four vectors that share their argmax, a convex
combination, have that argmax too), and there only the classes that can win:

1. Once per pair of source rows (consecutive output rows share theirs): which columns have
   differing source labels, gathered into stretches (short gaps between two are bridged). For each
   cell of four source pixels such a column reads, the candidate classes: every interpolated logit
   vector in the cell has, in some class, at least the largest of the classes' smallest corners,
   so a class whose largest corner lies below that wins nowhere in it. On the synthetic model's
   maps 2.8 of the 21 classes remain on average.
2. The two source rows are interpolated along x over the stretches, for each column's candidates
   only. Where that work nears every class over the whole row (noisy maps), every class is
   interpolated over whole rows instead, which vectorises, and a source row is kept for the next
   pair (which shares it) rather than interpolated twice.
3. Each output row takes the label of its pixels' agreeing sources, and over the stretches the
   candidates are interpolated along y one after another, keeping the running maximum and its rank:
   contiguous loops the compiler turns into SIMD code. Candidates are in ascending class order and a
   later one replaces the label only where strictly greater, so ties keep the lower class id, like
   ArgMax; the classes left out are strictly below the winner (a cell with a NaN corner keeps them
   all), so they change nothing. Pixels of a
   stretch whose four sources agree keep that label (exact) rather than the interpolated one.

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
# The share of every class over the whole row beyond which a pair of source rows is interpolated
# in whole rows for every class rather than over its stretches for its candidate classes: the
# whole rows vectorise and keep each source row for the next pair. The work compared is, over the
# stretches, their width times their columns' most candidate classes. Measured: 0.4-0.8 gave the
# same times within noise on the synthetic model's maps, smooth maps and random logits.
DENSE_SHARE = 0.6
# How far below the floor a class's largest corner must lie to be left out, relative to the
# largest magnitude among the cell's corners (any class): the two-step sums round by a few float32
# ulps of it, about 5e-7 at most. TINY covers subnormal logits, whose roundings are absolute
# (2**-150 each), which a relative margin of them would not.
MARGIN = np.float32(1e-5)
TINY = np.float32(1e-30)


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
    dense_work: int,
    out: U8Array,
) -> None:
    """Writes into `out` the labels of the bilinearly resized logits (see the module's steps).

    `gap`: RUN_GAP; `dense_work`: DENSE_SHARE of channels x output width. Written for what the
    compiler vectorises (measured on its first form: 5 ms against 37 ms for the same work written otherwise):
    - the scratch arrays are allocated here, so it can tell they overlap nothing else;
    - a loop over a stretch of columns runs over views that start at the stretch, from 0: indices
      the compiler knows are not negative (from the stretch's first column it would check each one
      and not vectorise: 20 ms against 3 ms for a noisy VGA map);
    - each local name keeps one type (a uint8 label and a float32 logit sharing a name would both
      become float64, which is slower and rounds the sums differently);
    - the running rank is int32, as wide as the float32 it is selected alongside, and the loop
      over a stretch selects a constant rank (a class read from an array per pixel stops it
      vectorising: 28 ms against 9 ms on random logits).
    """
    channels = logits.shape[0]
    height, width = out.shape
    # Every channel's source rows interpolated along x. Slots 0 and 1 hold whole rows, `kept` says
    # which source row (-1: none); slots 2 and 3 the current pair's upper and lower source rows
    # over its stretches, rank k of a column holding the class classes[cell_of[column], k].
    horizontal = np.empty((channels, 4, width), np.float32)
    kept = np.full(2, -1, np.int64)
    # Cells of source columns (s, s + 1); a column at the clamped right edge takes the last cell
    # (its corners are among that cell's, so the cell's bounds hold for it too).
    source_width = logits.shape[2]
    step = 1 if source_width > 1 else 0
    cells = max(1, source_width - 1)
    cell_of = np.empty(width, np.int64)
    for x in range(width):
        cell_of[x] = min(x_low[x], cells - 1)
    floor = np.empty(cells, np.float32)
    unordered = np.zeros(cells, np.bool_)  # a NaN among the cell's corners
    scale = np.empty(cells, np.float32)
    highest = np.empty((channels, cells), np.float32)
    classes = np.empty((cells, channels), np.int32)  # each cell's candidate classes, ascending
    cell_count = np.empty(cells, np.int64)
    count = np.zeros(width, np.int64)  # each column's candidates
    best = np.empty(width, np.float32)
    rank = np.empty(width, np.int32)
    agreed = np.empty(width, np.uint8)  # the label of each column's top-left source pixel
    mixed = np.zeros(width, np.bool_)  # whether a column's four source labels differ
    starts = np.empty(width, np.int64)  # the stretches of columns to interpolate
    ends = np.empty(width, np.int64)
    depth = np.empty(width, np.int64)  # a stretch's most candidates in one column
    runs = 0
    ranked = False  # whether the pair's stretches hold candidates (slots 2, 3) or every class
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
                    else:
                        starts[runs] = x
                    open_run = True
                elif not differ and open_run:
                    ends[runs] = x
                    runs += 1
                    open_run = False
            if open_run:
                ends[runs] = width
                runs += 1
            if runs > 0:
                # The classes that can win in each cell of source columns (s, s + 1): each pixel's
                # logits are a convex combination of its four corners', so at least the largest of
                # the classes' smallest corner (the floor); a class whose largest corner is below
                # that, by more than the sums' rounding, wins nowhere in the cell.
                upper_logits = logits[:, pair[0]]
                lower_logits = logits[:, pair[1]]
                for s in range(cells):
                    floor[s] = -np.inf
                    scale[s] = 0
                    unordered[s] = False
                for c in range(channels):
                    a = upper_logits[c]
                    b = upper_logits[c, step:]
                    d = lower_logits[c]
                    e = lower_logits[c, step:]
                    high = highest[c]
                    for s in range(cells):
                        lo = min(min(a[s], b[s]), min(d[s], e[s]))
                        hi = max(max(a[s], b[s]), max(d[s], e[s]))
                        floor[s] = max(floor[s], lo)
                        scale[s] = max(scale[s], max(abs(lo), abs(hi)))
                        high[s] = hi
                        # min and max pass over a NaN unless it comes first: flag it instead.
                        unordered[s] |= (a[s] != a[s]) | (b[s] != b[s]) | (d[s] != d[s]) | (e[s] != e[s])
                for s in range(cells):
                    cell_count[s] = -1
            for r in range(runs):
                depth[r] = 0
                for x in range(starts[r], ends[r]):
                    if not mixed[x]:
                        count[x] = 0
                        continue
                    s = cell_of[x]
                    if cell_count[s] < 0:
                        # A NaN among the corners keeps every class, as the whole-row path would
                        # (nothing is greater than a NaN that ranks first).
                        bound = -np.inf if unordered[s] else floor[s] - max(scale[s] * MARGIN, TINY)
                        n = 0
                        for c in range(channels):
                            if not highest[c, s] < bound:
                                classes[s, n] = c
                                n += 1
                        cell_count[s] = n
                    count[x] = cell_count[s]
                    depth[r] = max(depth[r], cell_count[s])
            work = 0
            for r in range(runs):
                work += depth[r] * (ends[r] - starts[r])
            # Step 2: the source rows along x, where step 3 will read them.
            ranked = work <= dense_work
            if not ranked and runs > 0:
                # Every class along whole rows: fewer loads and vectorised, each source row once.
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
                top = 2
                low = 3
                for r in range(runs):
                    for x in range(starts[r], ends[r]):
                        i = x_low[x]
                        j = x_high[x]
                        p = wx_low[x]
                        q = wx_high[x]
                        cands = classes[cell_of[x]]
                        for k in range(count[x]):
                            c = cands[k]
                            horizontal[k, 2, x] = logits[c, pair[0], i] * p + logits[c, pair[0], j] * q
                            horizontal[k, 3, x] = logits[c, pair[1], i] * p + logits[c, pair[1], j] * q
                        for k in range(count[x], depth[r]):
                            # Ranks beyond a column's candidates never win: -inf (NaN where a weight is 0).
                            horizontal[k, 2, x] = -np.inf
                            horizontal[k, 3, x] = -np.inf
        row = out[y]
        for x in range(width):
            row[x] = agreed[x]
        # Step 3: along y over the stretches, rank after rank, as a running maximum.
        wa = wy_low[y]
        wb = wy_high[y]
        for r in range(runs):
            first = starts[r]
            n = ends[r] - first
            levels = depth[r] if ranked else channels
            run_best = best[first:]
            run_rank = rank[first:]
            above = horizontal[0, top, first:]
            below = horizontal[0, low, first:]
            for x in range(n):
                run_best[x] = above[x] * wa + below[x] * wb
                run_rank[x] = 0
            for k in range(1, levels):
                above = horizontal[k, top, first:]
                below = horizontal[k, low, first:]
                level = np.int32(k)
                for x in range(n):
                    value = above[x] * wa + below[x] * wb
                    greater = value > run_best[x]
                    run_best[x] = value if greater else run_best[x]
                    run_rank[x] = level if greater else run_rank[x]
            # Where the four sources agree, their label (exact); elsewhere the interpolated one.
            run_row = row[first:]
            run_mixed = mixed[first:]
            if ranked:
                for x in range(n):
                    if run_mixed[x]:
                        run_row[x] = np.uint8(classes[cell_of[first + x], run_rank[x]])
            else:
                for x in range(n):
                    run_row[x] = np.uint8(run_rank[x]) if run_mixed[x] else run_row[x]


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
    cores are idle: with one stream, 1.9-2.8 ms become 1.2-1.9 ms on 2 cores for the synthetic model's VGA maps.
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
    kernel(labels, logits, *rows, *cols, RUN_GAP, int(DENSE_SHARE * logits.shape[0] * width), out)
