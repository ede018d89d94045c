"""CameraSource: files, looping, pacing, reopening a camera that drops, and what a source string names."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segstream.client import CameraSource, Reconnect, VideoSourceError
from segstream.client._sources import parse_source, redact
from segstream.client.cli import main
from segstream.wire.codec import U8Array

FILE_FRAMES = 12
_QUICK = Reconnect(initial=0.001, max_delay=0.002, jitter=0, max_attempts=3)


def _image(level: int) -> U8Array:
    return np.full((48, 64, 3), level, np.uint8)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames, each 20 grey levels brighter than the last, at 200 fps."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 200.0, (64, 48))
    assert writer.isOpened()
    for i in range(FILE_FRAMES):
        writer.write(_image(20 * i + 10))
    writer.release()
    return path


def _levels(frames: list[U8Array]) -> list[int]:
    # Compression shifts grey levels a little; 20 apart they stay tellable.
    return [round((float(f.mean()) - 10) / 20) for f in frames]


class FakeCapture:
    """A capture that delivers `frames` and then fails to read; None: one that did not open."""

    def __init__(self, frames: list[U8Array] | None, fps: float = 0.0) -> None:
        self._frames = None if frames is None else deque(frames)
        self._fps = fps
        self.released = False

    def isOpened(self) -> bool:
        return self._frames is not None

    def read(self) -> tuple[bool, Any]:
        if self._frames:
            return True, self._frames.popleft()
        return False, None

    def get(self, prop_id: int) -> float:
        return self._fps

    def release(self) -> None:
        self.released = True


class Captures:
    """A capture factory handing out the given captures in turn, then captures that do not open."""

    def __init__(self, *captures: FakeCapture) -> None:
        self._captures = deque(captures)
        self.handed: list[FakeCapture] = []
        self.locations: list[str | int] = []

    def __call__(self, location: str | int) -> FakeCapture:
        self.locations.append(location)
        capture = self._captures.popleft() if self._captures else FakeCapture(None)
        self.handed.append(capture)
        return capture


def test_a_file_is_read_to_its_end(video: Path) -> None:
    with CameraSource(str(video), pace=False) as source:
        frames = list(source)
    assert source.kind == "file" and source.count == FILE_FRAMES
    assert _levels(frames) == list(range(FILE_FRAMES))
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    with CameraSource(video, pace=False, max_frames=5) as source:  # a Path works as well
        assert len(list(source)) == 5


def test_the_capture_properties_are_read_until_closed(video: Path) -> None:
    source = CameraSource(video, pace=False)
    assert source.get(cv2.CAP_PROP_FPS) == pytest.approx(200.0)
    assert (source.get(cv2.CAP_PROP_FRAME_WIDTH), source.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    source.close()
    assert source.get(cv2.CAP_PROP_FPS) == 0.0


def test_a_file_is_paced_at_its_frame_rate(video: Path) -> None:
    started = time.monotonic()
    with CameraSource(str(video), max_frames=10) as source:
        assert len(list(source)) == 10
    # 200 fps: nine periods of 5 ms at least between the first and the tenth frame.
    assert time.monotonic() - started >= 0.04


def test_loop_starts_the_file_again(video: Path) -> None:
    with CameraSource(str(video), pace=False, loop=True, max_frames=30) as source:
        frames = list(source)
    assert _levels(frames) == [i % FILE_FRAMES for i in range(30)]
    with pytest.raises(ValueError, match="video files only"):
        CameraSource(0, loop=True, capture_factory=Captures(FakeCapture([])))


def test_a_file_without_frames_is_not_looped_forever(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    factory = Captures(FakeCapture([]), FakeCapture([]))
    with pytest.raises(VideoSourceError, match="no frames"):
        list(CameraSource(str(empty), pace=False, loop=True, capture_factory=factory))


def test_a_camera_that_drops_is_reopened(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="segstream.client")
    first = FakeCapture([_image(1), _image(2), _image(3)])
    fails_to_open = FakeCapture(None)
    second = FakeCapture([_image(4), _image(5)])
    factory = Captures(first, fails_to_open, second)
    source = CameraSource("0", max_frames=5, reopen=_QUICK, capture_factory=factory)
    frames = list(source)
    assert [int(f[0, 0, 0]) for f in frames] == [1, 2, 3, 4, 5]
    assert factory.locations == [0, 0, 0] and source.reopened == 1
    assert first.released and fails_to_open.released
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "camera 0 stopped delivering frames; reopening in 0.00 s (attempt 1 of 3)",
        "camera 0 stopped delivering frames; reopening in 0.00 s (attempt 2 of 3)",
    ]
    assert any(r.getMessage() == "camera 0 reopened" for r in caplog.records)


def test_a_camera_that_stays_away_is_an_error() -> None:
    factory = Captures(FakeCapture([_image(1)]))
    source = CameraSource("rtsp://user:secret@cam.local/live", reopen=_QUICK, capture_factory=factory)
    with pytest.raises(VideoSourceError, match="after 3 attempts") as caught:
        list(source)
    assert source.count == 1 and len(factory.locations) == 4
    assert "secret" not in str(caught.value) and "stream rtsp://user:***@cam.local/live" in str(caught.value)
    no_retry = CameraSource(1, reopen=None, capture_factory=Captures(FakeCapture([])))
    with pytest.raises(VideoSourceError, match=r"camera 1 stopped delivering frames$"):
        list(no_retry)


def test_a_source_that_does_not_open_is_reported_at_once() -> None:
    with pytest.raises(VideoSourceError, match="cannot open camera 2"):
        CameraSource(2, capture_factory=Captures())


def test_close_ends_an_iteration_waiting_to_reopen() -> None:
    slow = Reconnect(initial=30.0, max_delay=30.0)
    source = CameraSource(0, reopen=slow, capture_factory=Captures(FakeCapture([_image(1)])))
    threading.Timer(0.2, source.close).start()
    started = time.monotonic()
    assert len(list(source)) == 1
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", (0, "device")),
        (3, (3, "device")),
        (" 1 ", (1, "device")),
        ("rtsp://cam.local:554/stream", ("rtsp://cam.local:554/stream", "url")),
        ("https://cam.local/mjpg", ("https://cam.local/mjpg", "url")),
    ],
)
def test_sources_are_parsed(text: str | int, expected: tuple[str | int, str]) -> None:
    assert parse_source(text) == expected


def test_files_and_bad_sources(video: Path) -> None:
    assert parse_source(str(video)) == (str(video), "file")
    with pytest.raises(VideoSourceError, match="neither a camera index"):
        parse_source("/no/such/clip.mp4")
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        parse_source("ftp://files.local/clip.mp4")
    with pytest.raises(ValueError, match="0 or more"):
        parse_source(-1)
    with pytest.raises(TypeError):
        parse_source(True)
    assert redact("rtsp://admin:pw@[::1]:554/live") == "rtsp://admin:***@[::1]:554/live"
    assert redact("http://cam.local/x") == "http://cam.local/x"


def test_webcam_help_and_option_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["webcam", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--device", "--loop", "--reconnect", "--no-reconnect", "--reopen-attempts", "--max-frames"):
        assert option in text, option
    assert "rtsp://" in text
    for argv, message in [
        (["webcam", "--device", "0", "--loop", "--no-display"], "video files only"),
        (["webcam", "--device", "ftp://x/y", "--no-display"], "unsupported URL scheme"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
