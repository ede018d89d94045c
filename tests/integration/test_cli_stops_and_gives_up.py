"""segstream-client under a user's hand: stopped by a signal, left by its server, run without a display."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from segstream.client import Reconnect, SegmentationClient, ServerUnavailableError
from segstream.client._reconnect import Backoff
from tests.conftest import SAMPLES
from tests.integration.background_server import HeldModel, background_server, tiny_config
from tests.integration.server_process import free_port
from tests.videos import count_frames

pytestmark = pytest.mark.timeout(60)

CLIENT = str(Path(sys.executable).parent / "segstream-client")
CLIP = SAMPLES / "coco-pan.mp4"  # 48 frames
# Seconds per frame of the served model: the 48-frame clip then takes about 5 s, time enough to stop it.
SLOW_S = 0.1


def _wait_for_runs(model: HeldModel, runs: int, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while model.runs < runs:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the server never ran enough frames"
        time.sleep(0.02)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_video_stopped_by_a_signal_finishes_its_videos(tiny_model: Path, tmp_path: Path, stop: signal.Signals) -> None:
    model = HeldModel(tiny_model, delay=SLOW_S)
    out, masks = tmp_path / "out.mp4", tmp_path / "masks.mp4"
    with background_server(tiny_config(tiny_model, warmup=False), {"tiny": model}) as server:
        command = [CLIENT, "--server", server.target, "video", str(CLIP), "--out", str(out), "--mask-out", str(masks)]
        command.append("--no-progress")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_runs(model, 8, process)  # runs on two workers finish ahead of the answers written
            process.send_signal(stop)
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 128 + stop, err
    assert "Traceback" not in err
    found = re.search(rf"stopped by {stop.name} after reading \d+ frames; (.+) each hold (\d+) frames", err)
    assert found is not None, err
    held = int(found.group(2))
    assert str(out) in found.group(1) and str(masks) in found.group(1)
    # The videos were finished (an MP4 cut off mid-write has no index and yields no frame at all).
    assert 5 <= held < 48
    assert count_frames(out) == held and count_frames(masks) == held


def test_video_gives_up_reconnecting_after_the_timeout(tiny_model: Path, tmp_path: Path) -> None:
    model = HeldModel(tiny_model, delay=SLOW_S / 2)
    out = tmp_path / "out.mp4"
    with background_server(tiny_config(tiny_model, warmup=False), {"tiny": model}) as server:
        command = [CLIENT, "--server", server.target, "video", str(CLIP), "--out", str(out), "--no-progress"]
        process = subprocess.Popen(
            [*command, "--reconnect-timeout", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            _wait_for_runs(model, 3, process)
            server.stop()  # drained, and never back
            gone = time.monotonic()
            _, err = process.communicate(timeout=30)
            took = time.monotonic() - gone
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"segstream-client: error: gave up reconnecting to {server.target} after "), err
    assert "limit is 1 s" in last and "Traceback" not in err
    assert took < 10, took
    assert count_frames(out) >= 3  # what was answered before the server left is in a finished video


def test_library_stream_gives_up_after_its_timeout(sample_bgr: np.ndarray) -> None:
    policy = Reconnect(initial=0.05, max_delay=0.1, timeout=0.5)
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with SegmentationClient(target) as client, pytest.raises(ServerUnavailableError) as info:
        list(client.stream([sample_bgr] * 3, reconnect=policy))
    assert 0.4 < time.monotonic() - started < 5
    assert str(info.value).startswith(f"gave up reconnecting to {target} after ")


def test_backoff_timeout_shortens_the_last_delay_then_stops() -> None:
    now = [0.0]
    backoff = Backoff(Reconnect(initial=0.4, jitter=0, timeout=1.0), clock=lambda: now[0])
    delays = []
    while (delay := backoff.next_delay()) is not None:
        delays.append(delay)
        now[0] += delay
    assert delays == pytest.approx([0.4, 0.6])  # 0.8 would overrun the second left
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.4)  # a result starts the clock over


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), True])
def test_reconnect_timeout_is_validated(timeout: float) -> None:
    with pytest.raises(ValueError, match=r"Reconnect\.timeout"):
        Reconnect(timeout=timeout)


def _has_gui() -> bool:
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    return gui is not None and gui.group(1).upper() != "NONE"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 DISPLAY semantics")
@pytest.mark.skipif(not _has_gui(), reason="a headless OpenCV never opens a window, so it cannot fail to")
def test_webcam_with_a_display_that_cannot_be_opened_goes_headless(tiny_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["DISPLAY"] = ":99"  # no X server listens there
    with background_server(tiny_config(tiny_model)) as server:
        done = subprocess.run(
            [CLIENT, "--server", server.target, "webcam", "--device", str(CLIP), "--max-frames", "4"],
            capture_output=True,
            text=True,
            env=env,
            timeout=45,
        )
    assert done.returncode == 0, done.stderr
    assert "no display available (cannot open a window on display ':99'" in done.stderr, done.stderr
    assert "printing statistics only" in done.stderr
    assert re.search(r"\d+ frames, 0 failed", done.stdout), done.stdout
