"""Pieces the `segstream-client` commands share: errors, statistics, model checks, colours."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from segstream.client._reconnect import Reconnect
from segstream.client._results import ModelInfo
from segstream.client._sync_client import SegmentationClient
from segstream.wire.codec import U8Array, as_u8
from segstream.wire.palette import voc_palette

PROG = "segstream-client"


class CliError(Exception):
    """A problem the user can fix; printed as one `segstream-client: error: ...` line."""


def warn(message: str) -> None:
    """Print a `segstream-client: warning: ...` line on stderr, for problems that do not stop the command."""
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


class LatencyStats:
    """Client-side latencies in ms; `window` keeps only the most recent ones (live statistics)."""

    def __init__(self, window: int | None = None) -> None:
        self._values: deque[float] = deque(maxlen=window)

    def add(self, latency_ms: float | None) -> None:
        """Record one frame's latency; None (a frame the server did not time) is skipped."""
        if latency_ms is not None:
            self._values.append(latency_ms)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the recorded latencies; nan before the first one."""
        return float(np.percentile(np.fromiter(self._values, float), q)) if self._values else float("nan")

    @property
    def mean(self) -> float:
        """The mean of the recorded latencies; nan before the first one."""
        return float(np.mean(np.fromiter(self._values, float))) if self._values else float("nan")


class RateMeter:
    """Events per second, over the whole run or over the last `window_s` seconds."""

    def __init__(self, window_s: float | None = None) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._start = time.monotonic()
        self.total = 0

    def tick(self) -> None:
        """Count one event now."""
        now = time.monotonic()
        self.total += 1
        if self._window_s is not None:
            self._times.append(now)
            while self._times and now - self._times[0] > self._window_s:
                self._times.popleft()

    def rate(self) -> float:
        """Events per second so far, or within the window when there is one."""
        elapsed = time.monotonic() - self._start
        if self._window_s is not None:
            # Early on, the window is not full yet: divide by the time actually covered.
            span = min(self._window_s, elapsed)
            return len(self._times) / span if span > 0 else 0.0
        return self.total / elapsed if elapsed > 0 else 0.0


def cli_reconnect(enabled: bool, timeout_s: float) -> Reconnect | None:
    """The policy of the command line's --reconnect/--no-reconnect and --reconnect-timeout (0: none)."""
    if not enabled:
        return None
    return Reconnect(timeout=timeout_s or None)


def choose_model(client: SegmentationClient, name: str) -> ModelInfo:
    """The served model `name` selects ("" = the default); warns loudly when it is synthetic."""
    models = client.models()
    if not models:
        raise CliError(f"server {client.target} serves no models")
    if name:
        chosen = next((m for m in models if m.name == name), None)
        if chosen is None:
            served = ", ".join(m.name for m in models)
            raise CliError(f"unknown model {name!r}; server {client.target} serves: {served}")
    else:
        chosen = next((m for m in models if m.is_default), models[0])
    if chosen.synthetic:
        warn(
            f"!!! model {chosen.name!r} is SYNTHETIC: its weights are random and its masks are "
            "MEANINGLESS (a benchmark graph; serve real weights for real masks) !!!"
        )
    return chosen


def bgr_palette(model: ModelInfo) -> U8Array:
    """A 256-entry BGR colour table for the model's class indices (unknown indices stay black)."""
    table = np.zeros((256, 3), np.uint8)
    palette = model.palette if len(model.palette) else voc_palette(max(len(model.class_names), 1))
    table[: len(palette)] = palette[:256]
    return np.ascontiguousarray(table[:, ::-1])


def rgb_to_bgr(image: U8Array, size: tuple[int, int] | None = None) -> U8Array:
    """A result image in OpenCV's channel order, resized to (width, height) when given and different."""
    bgr = as_u8(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if size is not None and (bgr.shape[1], bgr.shape[0]) != size:
        bgr = as_u8(cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR))
    return bgr


def summary(frames: int, failed: int, fps: float, latency: LatencyStats, tail: Iterable[str] = ()) -> str:
    """The one-line report a command ends with: frames, failures, rate, latency, then `tail`."""
    parts = [
        f"{frames} frames",
        f"{failed} failed",
        f"{fps:.1f} fps",
        f"latency p50 {latency.percentile(50):.1f} ms",
        f"p95 {latency.percentile(95):.1f} ms",
        *tail,
    ]
    return ", ".join(parts)


def check_output_folder(path: Path) -> None:
    """Refuse an output path whose folder is missing before any work is done, not after it."""
    if not path.parent.is_dir():
        raise CliError(f"cannot write {path}: folder {path.parent} does not exist")
