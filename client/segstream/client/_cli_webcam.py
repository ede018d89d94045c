"""The `webcam` command: live segmentation of a camera, stream URL or file, newest frame first."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2

from segstream.client._cli_security import security_kwargs
from segstream.client._cli_support import (
    PROG,
    FrameReader,
    LatencyStats,
    RateMeter,
    choose_model,
    open_capture,
    rgb_to_bgr,
    summary,
)
from segstream.client._options import OutputName, StreamOptions
from segstream.client._sync_client import SegmentationClient

WINDOW = "segstream"
_QUIT_KEYS = frozenset({ord("q"), ord("Q"), 27})  # 27: Esc
_STATS_PERIOD_S = 1.0
# Statistics describe the last few seconds of a live source, not the whole run.
_LATENCY_WINDOW = 300


def display_problem() -> str | None:
    """Why no window can be shown here, or None when one can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "neither DISPLAY nor WAYLAND_DISPLAY is set"
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        # opencv-python-headless raises here: it is built without any GUI backend.
        return "this OpenCV build has no GUI support (install opencv-python instead of the headless build)"
    return None


def _open(device: str) -> tuple[cv2.VideoCapture, float | None]:
    """The capture, and the rate to read it at when it is a file standing in for a camera."""
    if device.isdigit():
        return open_capture(int(device), "camera"), None
    capture = open_capture(device, "video source")
    if not Path(device).is_file():
        return capture, None  # a stream URL delivers frames at its own pace
    fps = capture.get(cv2.CAP_PROP_FPS)
    return capture, fps if 0 < fps < 1000 else 30.0


def run_webcam(args: argparse.Namespace) -> int:
    # Opened first, so a missing camera is one error line, before any display notice.
    capture, pace = _open(args.device)
    reader = FrameReader(capture, args.max_frames, pace_fps=pace)
    show = False
    if not args.no_display:
        problem = display_problem()
        show = problem is None
        if problem is not None:
            print(f"{PROG}: no display available ({problem}); printing statistics only", file=sys.stderr)
    outputs: tuple[OutputName, ...] = ("overlay",) if show else ("label_mask",)
    options = StreamOptions(model=args.model, head=args.head, outputs=outputs, mask_encoding="png", policy="latest")
    client = SegmentationClient(args.server, wire_encoding=args.wire, timeout=args.timeout, **security_kwargs(args))
    latency, rate, live_rate = LatencyStats(), RateMeter(), RateMeter(window_s=_STATS_PERIOD_S * 2)
    recent = LatencyStats(window=_LATENCY_WINDOW)
    dropped = failed = 0
    try:
        choose_model(client, args.model)
        printed = time.monotonic()
        for result in client.stream(reader, options):
            for stats in (latency, recent):
                stats.add(result.latency_ms)
            rate.tick()
            live_rate.tick()
            dropped = result.dropped_frames
            failed += not result.ok
            if show and result.overlay is not None:
                cv2.imshow(WINDOW, rgb_to_bgr(result.overlay))
                key = cv2.waitKey(1) & 0xFF
                if key in _QUIT_KEYS or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                    break  # q, Esc, or the window was closed
            if time.monotonic() - printed >= _STATS_PERIOD_S:
                printed = time.monotonic()
                print(
                    f"{live_rate.rate():5.1f} fps | latency p50 {recent.percentile(50):.1f} ms "
                    f"p95 {recent.percentile(95):.1f} ms | dropped {dropped} | failed {failed}",
                    flush=True,
                )
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a live view is meant to end: stop quietly and report
    finally:
        reader.close()
        client.close()
        if show:
            cv2.destroyAllWindows()
    tail = [f"{reader.count} read", f"{dropped} dropped by the server"]
    print(summary(rate.total, failed, rate.rate(), latency, tail), flush=True)
    return 0
