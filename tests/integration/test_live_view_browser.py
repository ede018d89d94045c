"""`segstream-client webcam --view` seen in a real headless Chromium: overlay pixels, legend, statistics.

The camera is a video file of one grey frame, so every frame the page can show is the same and its
pixels can be computed: the tiny model's classes blended 50/50 with grey, and exact class colours on
the legend's swatches. Chromium comes from the test set-up (.ci/run installs Debian's package); where
it is missing this test is skipped, and says so.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import pytest

from segstream.client import SegmentationClient, StreamOptions
from segstream.wire.codec import U8Array
from segstream.wire.palette import VOC_CLASSES, blend, voc_palette
from tests.integration.background_server import background_server, tiny_config

pytestmark = pytest.mark.timeout(120)

CLIENT = str(Path(sys.executable).parent / "segstream-client")
GREY = 128
FRAME = (320, 240)  # width, height
WINDOW = (1100, 760)
PAGE_BANNER_BGR = (0, 0, 176)  # the page's synthetic banner, #b00000
FRAME_MARK_BGR = (0, 0, 200)  # the mark drawn into the frame
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    for name in _CANDIDATES:
        if path := shutil.which(name):
            return path
    reason = (
        "NO BROWSER: the live view's headless-browser test did not run because chromium is not on PATH"
        " (on Debian/Ubuntu: apt-get install chromium, which .ci/run does when it runs as root)"
    )
    warnings.warn(reason, stacklevel=2)  # shown in every run's summary, not only with -rs
    pytest.skip(reason)


def _grey_video(path: Path) -> U8Array:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, FRAME)
    for _ in range(30):
        writer.write(np.full((FRAME[1], FRAME[0], 3), GREY, np.uint8))
    writer.release()
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    assert ok, "OpenCV cannot read back the test video"
    return np.asarray(frame, np.uint8)  # decoded as the command will decode it


def _lines(stream: IO[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _view_url(lines: queue.Queue[str], process: subprocess.Popen[str], timeout: float = 30) -> str:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            assert process.poll() is None, f"the client ended early: {''.join(seen)}"
            continue
        seen.append(line)
        if found := re.search(r"live view on (http://\S+/)", line):
            return found.group(1)
    raise AssertionError(f"the client never said where its view is: {''.join(seen)}")


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "stats.json", timeout=5) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # tests run as root in containers
        "--disable-gpu",
        "--no-first-run",
        "--force-color-profile=srgb",  # CSS colours land in the screenshot unchanged
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        # Page time that passes while frames and statistics are fetched: a few frames and polls.
        "--virtual-time-budget=3000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _screenshot(browser: str, tmp_path: Path, url: str, name: str) -> U8Array:
    path = tmp_path / f"{name}.png"
    done = _chromium(browser, tmp_path / "profile", f"--screenshot={path}", url)
    assert done.returncode == 0 and path.is_file(), done.stderr[-2000:]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (WINDOW[1], WINDOW[0])
    return np.asarray(image, np.uint8)


def _near(image: U8Array, bgr: U8Array | tuple[int, int, int], tolerance: int) -> int:
    return int((np.abs(image.astype(np.int16) - np.asarray(bgr, np.int16)).max(axis=-1) <= tolerance).sum())


def _exact(image: U8Array, bgr: U8Array | tuple[int, int, int]) -> int:
    return int(np.all(image == np.asarray(bgr, np.uint8), axis=-1).sum())


def test_webcam_view_shows_the_overlay_legend_and_statistics_in_a_browser(tiny_model: Path, tmp_path: Path) -> None:
    browser = _browser()
    frame = _grey_video(tmp_path / "grey.avi")
    palette = voc_palette()
    with background_server(tiny_config(tiny_model)) as server:
        with SegmentationClient(server.target) as client:
            labels = client.segment(frame, StreamOptions(outputs=("label_mask",))).labels
        assert labels is not None
        share = np.bincount(labels.ravel(), minlength=len(VOC_CLASSES)) / labels.size
        classes = [int(c) for c in np.flatnonzero(share >= 0.01)]
        major = [c for c in classes if share[c] >= 0.1 and c != 0]
        assert major, f"the tiny model's mask has no large class: {share}"

        command = [CLIENT, "--server", server.target, "webcam", "--device", str(tmp_path / "grey.avi"), "--loop"]
        process = subprocess.Popen(
            [*command, "--view", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert process.stderr is not None
            url = _view_url(_lines(process.stderr), process)
            deadline = time.monotonic() + 30
            while (stats := _stats(url))["results"] < 5:
                assert time.monotonic() < deadline and process.poll() is None, "no results reached the view"
                time.sleep(0.1)
            assert stats["model"]["name"] == "tiny" and stats["model"]["synthetic"] is True

            shot = _screenshot(browser, tmp_path, url, "overlay")
            # The overlay: each large class of the mask, blended 50/50 with the grey frame.
            for c in major:
                expected = blend(np.full((1, 1, 3), GREY, np.uint8), palette[None, [c]])[0, 0][::-1]
                found = _near(shot, expected, 12)
                assert found >= 0.5 * share[c] * FRAME[0] * FRAME[1], (c, expected, found)
            # The legend: a swatch of exactly each class's colour (not blended: only the swatches are).
            for c in classes:
                if c != 0:
                    assert 200 <= _exact(shot, palette[c][::-1]) <= 400, f"no swatch for class {c}"
            # The synthetic model is marked, on the page and in the frame.
            assert _exact(shot, PAGE_BANNER_BGR) > 10_000
            assert _near(shot, FRAME_MARK_BGR, 30) > 1_000

            mask = _screenshot(browser, tmp_path, url + "#mode=mask", "mask")
            for c in major:  # the colour mask: class colours themselves (after JPEG)
                assert _near(mask, palette[c][::-1], 12) >= 0.5 * share[c] * FRAME[0] * FRAME[1], c

            dom = _chromium(browser, tmp_path / "profile", "--dump-dom", url)
            assert dom.returncode == 0, dom.stderr[-2000:]
            legend = re.search(r'<ul id="legend">(.*?)</ul>', dom.stdout, re.S)
            assert legend is not None, dom.stdout[-2000:]
            for c in classes:
                name = VOC_CLASSES[c].strip("_")
                r, g, b = (int(v) for v in palette[c])
                assert f'<span class="name">{name}</span>' in legend.group(1), name
                assert f"#{r:02x}{g:02x}{b:02x}" in legend.group(1), name
            for text in ('id="model">tiny<', 'id="provider">CPUExecutionProvider<', " fps<", " ms<"):
                assert text in dom.stdout, text
            assert '<div id="synthetic">' in dom.stdout, "the synthetic banner is shown"
        finally:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err and re.search(r"\d+ frames, 0 failed", out), out
    # Closing the client closed its view.
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
