"""The `webcam` command: live segmentation of a camera, stream URL or file, newest frame first."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace

import cv2

from segstream.client._cli_record import Recording, check_record_paths, start_recording, with_record_outputs
from segstream.client._cli_security import security_kwargs
from segstream.client._cli_support import (
    PROG,
    LatencyStats,
    RateMeter,
    choose_model,
    cli_reconnect,
    rgb_to_bgr,
    summary,
)
from segstream.client._cli_view import annotator, start_view, webcam_outputs
from segstream.client._live_view import LiveView
from segstream.client._options import StreamOptions
from segstream.client._sources import DEFAULT_REOPEN, CameraSource
from segstream.client._sync_client import SegmentationClient

WINDOW = "segstream"
_QUIT_KEYS = frozenset({ord("q"), ord("Q"), 27})  # 27: Esc
_STATS_PERIOD_S = 1.0
# Statistics describe the last few seconds of a live source, not the whole run.
_LATENCY_WINDOW = 300


# Opens and closes a window in a child process. OpenCV's GUI backends abort the whole process
# (Qt: "could not connect to display") rather than raise when the display cannot be opened.
_PROBE = """
import sys
import cv2
try:
    cv2.namedWindow("segstream-probe", cv2.WINDOW_AUTOSIZE)
    cv2.destroyAllWindows()
except cv2.error:
    sys.exit(3)
"""
_PROBE_NO_GUI = 3
_PROBE_TIMEOUT_S = 15.0
_NO_GUI = (
    "this OpenCV build has no GUI support: install segstream[gui], then make the desktop build the one in use "
    "(pip install --force-reinstall --no-deps opencv-python==VERSION; README.md, Install)"
)


def _probe_display() -> str | None:
    """Why a child process could not open a window, or None when it could."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"opening a test window failed: {exc}"
    if probe.returncode == 0:
        return None
    if probe.returncode == _PROBE_NO_GUI:
        return _NO_GUI
    lines = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
    why = lines[0][:200] if lines else f"exit status {probe.returncode}"
    shown = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or ""
    return f"cannot open a window on display {shown!r}: {why}"


def display_problem() -> str | None:
    """Why no window can be shown here, or None when one can."""
    if sys.platform.startswith("linux"):
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return "neither DISPLAY nor WAYLAND_DISPLAY is set"
        # A DISPLAY that names no reachable X server would abort this process at the first window.
        if (problem := _probe_display()) is not None:
            return problem
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        # opencv-python-headless raises here: it is built without any GUI backend.
        return _NO_GUI
    return None


def run_webcam(args: argparse.Namespace) -> int:
    """The `webcam` command: a live view (or live statistics) of a camera, stream or file, newest frame first."""
    # Opened first, so a missing camera is one error line, before any display notice.
    reopen = replace(DEFAULT_REOPEN, max_attempts=args.reopen_attempts)
    reader = CameraSource(args.device, max_frames=args.max_frames, loop=args.loop, reopen=reopen)
    show = False
    if not args.no_display and args.view is None:  # a browser view takes the window's place
        problem = display_problem()
        show = problem is None
        if problem is not None:
            print(f"{PROG}: no display available ({problem}); printing statistics only", file=sys.stderr)
    check_record_paths(args)
    outputs = with_record_outputs(webcam_outputs(show, args), args)
    options = StreamOptions(model=args.model, head=args.head, outputs=outputs, mask_encoding="png", policy="latest")
    client = SegmentationClient(args.server, wire_encoding=args.wire, timeout=args.timeout, **security_kwargs(args))
    latency, rate, live_rate = LatencyStats(), RateMeter(), RateMeter(window_s=_STATS_PERIOD_S * 2)
    recent = LatencyStats(window=_LATENCY_WINDOW)
    dropped = failed = 0
    view: LiveView | None = None
    record: Recording | None = None
    try:
        model = choose_model(client, args.model)
        marks = annotator(args, model)
        view = start_view(args, model, source=str(args.device))
        record = start_recording(args, model, source=str(args.device), fps=reader.get(cv2.CAP_PROP_FPS))
        printed = time.monotonic()
        # A server that drains or restarts is left for another one, or waited for, with backoff.
        reconnect = cli_reconnect(args.reconnect, args.reconnect_timeout)
        frames = reader if view is None else view.remember(reader)
        frames = frames if record is None else record.remember(frames)
        for result in client.stream(frames, options, reconnect=reconnect):
            for stats in (latency, recent):
                stats.add(result.latency_ms)
            rate.tick()
            live_rate.tick()
            dropped = result.dropped_frames
            failed += not result.ok
            if view is not None:
                view.publish(result)
            if record is not None:
                record.publish(result)
            if show and result.overlay is not None:
                try:
                    cv2.imshow(WINDOW, marks.annotate(rgb_to_bgr(result.overlay), result.labels))
                    key = cv2.waitKey(1) & 0xFF
                    closed = cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1
                except cv2.error as exc:
                    # The display went away under a running view: the statistics go on without it.
                    show = False
                    why = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
                    print(f"{PROG}: the window failed ({why}); printing statistics only", file=sys.stderr)
                else:
                    if key in _QUIT_KEYS or closed:
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
        if view is not None:
            view.close()
        reader.close()
        client.close()
        if show:
            cv2.destroyAllWindows()
        if record is not None:
            record.close()  # finishes the MP4 and the MCAP file, so that what was recorded plays
    # Dropped: stale frames the server skipped, and frames lost when the stream reconnected.
    tail = [f"{reader.count} read", f"{dropped} dropped"]
    print(summary(rate.total, failed, rate.rate(), latency, tail), flush=True)
    return 0
