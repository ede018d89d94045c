"""`CameraSource`: live frames from a camera, a stream URL or a video file, reopened when they stop."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import cv2

from segstream.client._reconnect import Backoff, Reconnect
from segstream.wire.codec import U8Array, as_u8

log = logging.getLogger("segstream.client")

SourceKind: TypeAlias = Literal["device", "url", "file"]
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
# A camera or stream that stops delivering is reopened this often, 0.5 s to 5 s apart, before giving up.
DEFAULT_REOPEN = Reconnect(initial=0.5, max_delay=5.0, max_attempts=10)
_DEFAULT_FPS = 30.0


class Capture(Protocol):
    """What CameraSource needs of a capture: the part of cv2.VideoCapture it uses."""

    def isOpened(self) -> bool:
        """Whether the source could be opened."""

    def read(self) -> tuple[bool, Any]:
        """The next frame as (True, BGR array), or (False, None) when none came."""

    def get(self, prop_id: int) -> float:
        """A cv2.CAP_PROP_* property, such as the frame rate of a file."""

    def release(self) -> None:
        """Close the source; later reads fail."""


CaptureFactory: TypeAlias = Callable[[str | int], Capture]


def open_capture(location: str | int) -> Capture:
    """The default capture factory: cv2.VideoCapture."""
    capture: Capture = cv2.VideoCapture(location)
    return capture


class VideoSourceError(OSError):
    """A video source cannot be opened, or stopped delivering frames and could not be reopened."""


def parse_source(source: str | int | os.PathLike[str]) -> tuple[str | int, SourceKind]:
    """What `source` names: a camera ("0", 0, "/dev/video0"), a stream URL, or a video file (a path).

    Raises VideoSourceError when it is none of them (a file that does not exist), ValueError for a URL
    scheme OpenCV does not stream from.

    Example:
        >>> parse_source("1"), parse_source("rtsp://cam.local/stream")[1]
        ((1, 'device'), 'url')
    """
    if isinstance(source, os.PathLike):
        return _parse_path(os.fspath(source))
    if isinstance(source, bool) or not isinstance(source, int | str):
        raise TypeError(f"a video source is a camera index, a URL or a file path; got {source!r}")
    if isinstance(source, int):
        if source < 0:
            raise ValueError(f"camera index must be 0 or more; got {source}")
        return source, "device"
    text = source.strip()
    if text.isdigit():
        return int(text), "device"
    if "://" not in text:
        return _parse_path(text)
    scheme = urlsplit(text).scheme.lower()
    if scheme not in URL_SCHEMES:
        allowed = ", ".join(f"{s}://" for s in URL_SCHEMES)
        raise ValueError(f"video source {redact(text)!r}: unsupported URL scheme {scheme!r}; use one of {allowed}")
    return text, "url"


def _parse_path(text: str) -> tuple[str, SourceKind]:
    path = Path(text)
    if path.is_char_device():  # /dev/video0
        return text, "device"
    if path.is_file():
        return text, "file"
    raise VideoSourceError(
        f"cannot open video source {text!r}: it is neither a camera index (0, 1, ...), "
        "a stream URL (rtsp://, http(s)://) nor an existing file"
    )


def redact(url: str) -> str:
    """`url` without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


class CameraSource:
    """BGR uint8 frames of a camera, a stream URL or a video file, for `SegmentationClient.stream`.

    A camera or stream that stops delivering (unplugged, network drop) is released and reopened with
    the `reopen` backoff; VideoSourceError is raised once that many attempts in a row have failed.
    A file ends at its end, unless `loop`. Safe to iterate on one thread (the client reads frames on a
    gRPC thread) and `close()` from another.

    Args:
        source: A camera index (0 or "0"), a device path ("/dev/video0"), a stream URL (rtsp://,
            http(s)://, ...) or a video file.
        max_frames: Stop after this many frames (None: when the source ends; a camera never does).
        loop: Start a video file again when it ends (files only).
        pace: Read a video file at its own frame rate, as a camera would deliver it; False reads
            as fast as it decodes (batch work, tests).
        reopen: Backoff between attempts to reopen a camera or stream; None raises at the first failure.
        capture_factory: Opens a capture from a location (default cv2.VideoCapture): a seam for tests
            and for other capture backends.

    Example:
        >>> with SegmentationClient(server) as client:  # doctest: +SKIP
        ...     source = CameraSource("rtsp://camera.local/stream")
        ...     for result in client.stream(source, StreamOptions(policy="latest"), reconnect=Reconnect()):
        ...         show(result)
    """

    def __init__(
        self,
        source: str | int | os.PathLike[str],
        *,
        max_frames: int | None = None,
        loop: bool = False,
        pace: bool = True,
        reopen: Reconnect | None = DEFAULT_REOPEN,
        capture_factory: CaptureFactory = open_capture,
    ) -> None:
        self.location, self.kind = parse_source(source)
        if loop and self.kind != "file":
            raise ValueError(f"loop applies to video files only, not to {self.describe()}")
        if max_frames is not None and (isinstance(max_frames, bool) or max_frames < 1):
            raise ValueError(f"max_frames must be a positive integer or None; got {max_frames!r}")
        self.max_frames = max_frames
        self.loop = loop
        self._reopen = reopen
        self._factory = capture_factory
        # Reads and releases take turns: releasing a capture while another thread is inside its read()
        # can crash OpenCV.
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.count = 0
        self.reopened = 0
        # Opened at once, so that a missing camera or file is reported before anything else starts.
        capture = self._open()
        if capture is None:
            raise VideoSourceError(
                f"cannot open {self.describe()}: it is missing, busy or not something OpenCV can read"
            )
        self._capture: Capture | None = capture
        self._period = 0.0
        if pace and self.kind == "file":
            fps = capture.get(cv2.CAP_PROP_FPS)
            self._period = 1.0 / (fps if 0 < fps < 1000 else _DEFAULT_FPS)

    def describe(self) -> str:
        """How messages name this source: "camera 0", "stream rtsp://..." (no password), "video file x.mp4"."""
        if self.kind == "device":
            return f"camera {self.location}"
        if self.kind == "url":
            return f"stream {redact(str(self.location))}"
        return f"video file {self.location}"

    def get(self, prop_id: int) -> float:
        """A property of the open capture, as cv2.VideoCapture.get (cv2.CAP_PROP_FPS, ...); 0.0 once closed."""
        with self._lock:
            return 0.0 if self._capture is None else self._capture.get(prop_id)

    def _open(self) -> Capture | None:
        capture = self._factory(self.location)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def __iter__(self) -> Iterator[U8Array]:
        backoff = None if self._reopen is None else Backoff(self._reopen)
        due = time.monotonic()
        this_pass = 0  # frames since the file was (re)opened
        while self.max_frames is None or self.count < self.max_frames:
            if self._period:
                # A file standing in for a camera is read at its own frame rate; a reader that fell
                # behind skips ahead rather than bursting to catch up.
                now = time.monotonic()
                if due > now and self._closed.wait(due - now):
                    return
                due = max(due, now) + self._period
            with self._lock:
                if self._closed.is_set():
                    return
                ok, frame = self._capture.read() if self._capture is not None else (False, None)
            if ok and frame is not None:
                if backoff is not None:
                    backoff.reset()
                self.count += 1
                this_pass += 1
                yield as_u8(frame)
            elif self.kind == "file":
                if not self.loop:
                    return  # the end of the file
                if this_pass == 0:
                    raise VideoSourceError(f"{self.describe()} has no frames OpenCV can read; nothing to loop")
                this_pass = 0
                if not self._replace_capture():
                    raise VideoSourceError(f"cannot reopen {self.describe()} to loop it")
            elif not self._recover(backoff):
                return

    def _recover(self, backoff: Backoff | None) -> bool:
        """Wait, then reopen a camera or stream that stopped; False when closed meanwhile."""
        delay = None if backoff is None else backoff.next_delay()
        if backoff is None or delay is None:
            tried = "" if backoff is None else f" after {backoff.attempt} attempts to reopen it"
            raise VideoSourceError(f"{self.describe()} stopped delivering frames{tried}")
        limit = "" if backoff.max_attempts is None else f" of {backoff.max_attempts}"
        log.warning(
            "%s stopped delivering frames; reopening in %.2f s (attempt %d%s)",
            self.describe(),
            delay,
            backoff.attempt,
            limit,
        )
        with self._lock:
            if self._capture is not None:
                self._capture.release()
                self._capture = None
        if self._closed.wait(delay):
            return False
        if self._replace_capture():
            self.reopened += 1
            log.info("%s reopened", self.describe())
        return not self._closed.is_set()

    def _replace_capture(self) -> bool:
        capture = self._open()
        with self._lock:
            if self._capture is not None:
                self._capture.release()
            if self._closed.is_set():
                if capture is not None:
                    capture.release()
                return False
            self._capture = capture
        return capture is not None

    def close(self) -> None:
        """Release the capture; an iteration in progress ends at its next frame."""
        self._closed.set()
        with self._lock:
            if self._capture is not None:
                self._capture.release()
                self._capture = None

    def __enter__(self) -> CameraSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
