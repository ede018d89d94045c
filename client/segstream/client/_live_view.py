"""A live view in any browser: the newest overlay, the classes in it with their colours, and the statistics.

A standard-library HTTP server on a thread of its own serves one page (`_live_view.html`), which pulls
`/frame.jpg` one frame at a time and polls `/stats.json`; `/stream.mjpg` serves the same frames as
MJPEG for players such as VLC or ffplay. It must never slow the stream it shows: `publish` only swaps
the newest result into a slot under a lock, each viewer is sent the newest frame when it is ready for
one (a slow viewer gets fewer frames, never a backlog), frames are drawn and JPEG-encoded once per
frame and mode on the viewers' threads, and at most `MAX_CONNECTIONS` connections are served at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Literal, cast, get_args
from urllib.parse import parse_qs, urlsplit, urlunsplit

import cv2
import numpy as np

from segstream.client._cli_support import LatencyStats, RateMeter, rgb_to_bgr
from segstream.client._legend import Annotator, classes_present, rgb_palette
from segstream.client._results import ModelInfo, SegmentResult
from segstream.wire.codec import U8Array, as_u8
from segstream.wire.palette import blend

ViewMode = Literal["overlay", "mask", "side"]
VIEW_MODES: tuple[ViewMode, ...] = get_args(ViewMode)
MAX_CONNECTIONS = 16
# A viewer's request for the next frame waits this long for one before it is answered 204.
_LONG_POLL_S = 1.0
# An idle keep-alive connection, or a write a viewer stopped reading, is given up after this long.
_SOCKET_TIMEOUT_S = 15.0
# Originals kept for side-by-side views, newest first; more than a LATEST stream has in flight.
_MAX_ORIGINALS = 8
_MAX_WIDTH = 1920  # wider frames are scaled down for the browser
_JPEG_QUALITY = 85
_LATENCY_WINDOW = 300
_RATE_WINDOW_S = 2.0
_BOUNDARY = "segstream-frame"
# How long closing waits for viewers to be told that the stream has ended.
_CLOSE_GRACE_S = 1.0
_CSP = (
    "default-src 'none'; img-src 'self' blob:; connect-src 'self'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ViewClosed(Exception):
    """The view was closed while a viewer waited for a frame."""


@dataclass(frozen=True, eq=False)
class _Shown:
    seq: int
    result: SegmentResult
    original: U8Array | None
    at: float  # time.monotonic() when published


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface only."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(source: str) -> str:
    # A camera URL may carry a password (rtsp://user:secret@cam/); the page never shows it.
    parts = urlsplit(source)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return source


def _number(value: float) -> float | None:
    # JSON has no NaN: "no value yet" is null.
    return round(value, 2) if np.isfinite(value) else None


def _page() -> bytes:
    return resources.files("segstream.client").joinpath("_live_view.html").read_bytes()


class LiveView:
    """The newest result of a stream, served to browsers on `url` until `close()`.

    `publish` is called by the stream's loop for every result; `remember` wraps a frame source so
    that the side-by-side view can show each result's original frame.
    """

    def __init__(
        self,
        host: str,
        port: int,
        model: ModelInfo,
        *,
        command: str,
        source: str,
        legend: bool = False,
    ) -> None:
        self.model = model
        self._command = command
        self._source = _redact(source)
        self._annotator = Annotator(model, legend)
        self._palette_rgb = rgb_palette(model)
        self._palette_bgr = np.ascontiguousarray(self._palette_rgb[:, ::-1])
        self._cond = threading.Condition()
        self._render_lock = threading.Lock()
        self._classes_lock = threading.Lock()
        self._cache: dict[str, tuple[int, bytes]] = {}
        self._classes_cache: tuple[int, list[dict[str, Any]]] = (0, [])
        self._latest: _Shown | None = None
        self._seq = 0
        self._closed = False
        self._originals: OrderedDict[int, U8Array] = OrderedDict()
        self._latency = LatencyStats(window=_LATENCY_WINDOW)
        self._rate = RateMeter(window_s=_RATE_WINDOW_S)
        self._results = self._failed = self._dropped = 0
        self._page = _page()
        self.loopback = is_loopback(host)
        self._server = _ViewServer((host, port), self)  # OSError: the address cannot be served
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="segstream-view", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Where to point a browser; an all-interfaces bind is shown by this machine's name."""
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def remember(self, frames: Iterable[U8Array]) -> Iterator[U8Array]:
        """`frames`, unchanged, keeping the newest few by position (the id a stream gives plain arrays)."""
        for position, frame in enumerate(frames):
            with self._cond:
                self._originals[position] = frame
                while len(self._originals) > _MAX_ORIGINALS:
                    self._originals.popitem(last=False)
            yield frame

    def publish(self, result: SegmentResult, original: U8Array | None = None) -> None:
        """Show `result` (with its original BGR frame, if known) next; cheap, never waits for a viewer."""
        with self._cond:
            if original is None and self._originals:
                original = self._originals.pop(result.frame_id, None)
                # Results come in send order: older frames will get none.
                while self._originals and next(iter(self._originals)) < result.frame_id:
                    self._originals.popitem(last=False)
            self._results += 1
            self._failed += not result.ok
            self._dropped = result.dropped_frames
            self._rate.tick()
            self._latency.add(result.latency_ms)
            if result.ok and (result.overlay is not None or result.labels is not None):
                self._seq += 1
                self._latest = _Shown(self._seq, result, original, time.monotonic())
                self._cond.notify_all()

    def close(self) -> None:
        """Stop serving: waiting viewers are answered, open connections closed, the port released."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The rest runs on the viewers' threads.

    def page(self) -> bytes:
        """The HTML page."""
        return self._page

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request's Host header may be answered.

        A view on loopback answers only loopback names, so a web page elsewhere cannot read the
        camera through a DNS name that it points at 127.0.0.1 (DNS rebinding).
        """
        if not self.loopback or not header:
            return True
        name = urlsplit(f"//{header}").hostname
        return name is not None and is_loopback(name)

    def next_jpeg(self, mode: ViewMode, after: int, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The newest frame as JPEG with its sequence number, once it differs from `after`; None on timeout."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or (self._latest is not None and self._latest.seq != after),
                _LONG_POLL_S if timeout is None else timeout,
            )
            if self._closed:
                raise ViewClosed
            shown = self._latest
        if shown is None or shown.seq == after:
            return None
        return shown.seq, self._jpeg(shown, mode)

    def stats(self) -> dict[str, Any]:
        """What the page shows beside the frame: model, rates, latency, drops and the classes in view."""
        with self._cond:
            shown = self._latest
            fps = self._rate.rate()
            p50, p95 = self._latency.percentile(50), self._latency.percentile(95)
            results, failed, dropped = self._results, self._failed, self._dropped
        frame: dict[str, Any] | None = None
        if shown is not None:
            height, width = self._size(shown)[::-1]
            frame = {
                "id": shown.result.frame_id,
                "seq": shown.seq,
                "width": width,
                "height": height,
                "age_s": round(time.monotonic() - shown.at, 2),
            }
        m = self.model
        return {
            "command": self._command,
            "source": self._source,
            "model": {
                "name": m.name,
                "provider": m.execution_provider,
                "synthetic": m.synthetic,
                "inference_size": m.inference_size,
            },
            "results": results,
            "fps": _number(fps),
            "latency_ms": {"p50": _number(p50), "p95": _number(p95)},
            "dropped": dropped,
            "failed": failed,
            "frame": frame,
            "classes": self._classes(shown),
        }

    def _classes(self, shown: _Shown | None) -> list[dict[str, Any]]:
        if shown is None or shown.result.labels is None:
            return []
        with self._classes_lock:
            seq, classes = self._classes_cache
            if seq != shown.seq:
                entries = classes_present(shown.result.labels, self.model, self._palette_rgb)
                classes = [
                    {"index": e.index, "name": e.name, "color": e.hex, "share": round(e.share, 4)} for e in entries
                ]
                self._classes_cache = (shown.seq, classes)
            return classes

    def _jpeg(self, shown: _Shown, mode: ViewMode) -> bytes:
        # One lock for every mode: the viewers together use at most one core for drawing and encoding.
        with self._render_lock:
            cached = self._cache.get(mode)
            if cached is not None and cached[0] == shown.seq:
                return cached[1]
            image = self.render(shown, mode)
            ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            if not ok:
                raise ValueError("OpenCV could not encode the frame as JPEG")
            data = buffer.tobytes()
            self._cache[mode] = (shown.seq, data)
            return data

    @staticmethod
    def _size(shown: _Shown) -> tuple[int, int]:
        """(width, height) of what is shown: the original frame's size when known."""
        result = shown.result
        for image in (shown.original, result.overlay, result.labels):
            if image is not None:
                return int(image.shape[1]), int(image.shape[0])
        return 0, 0

    def render(self, shown: _Shown, mode: ViewMode) -> U8Array:
        """The BGR image of `mode`: the overlay, the colour mask, or the original and colour mask side by side."""
        result = shown.result
        size = self._size(shown)
        labels = result.labels
        mask = None
        if labels is not None:
            mask = as_u8(self._palette_bgr[labels])
            if (mask.shape[1], mask.shape[0]) != size:
                mask = as_u8(cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))
        original = shown.original
        if original is not None and (original.ndim != 3 or (original.shape[1], original.shape[0]) != size):
            original = None
        overlay = rgb_to_bgr(result.overlay, size) if result.overlay is not None else None
        if overlay is None and mask is not None and original is not None:
            overlay = blend(original, mask)
        if mode == "mask":
            image = mask if mask is not None else overlay
        elif mode == "side":
            left = original if original is not None else overlay
            panes = [pane for pane in (left, mask) if pane is not None]
            image = as_u8(np.hstack(panes)) if panes else None
        else:
            image = overlay if overlay is not None else mask
        if image is None:
            image = np.zeros((max(size[1], 1), max(size[0], 1), 3), np.uint8)
        image = self._annotator.annotate(image, labels)
        if image.shape[1] > _MAX_WIDTH:
            height = max(1, round(image.shape[0] * _MAX_WIDTH / image.shape[1]))
            image = as_u8(cv2.resize(image, (_MAX_WIDTH, height), interpolation=cv2.INTER_AREA))
        return image


class _ViewServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most MAX_CONNECTIONS connections and can close them all."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 2 * MAX_CONNECTIONS  # a page opens several connections at once

    def __init__(self, address: tuple[str, int], view: LiveView) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.view = view
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up this machine's fully qualified name, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 2\r\n"
                    b"Connection: close\r\n\r\n"
                )
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread could be started: give the slot back
            self._forget(request)
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        with self._open_lock:
            if request not in self._open:
                return
            self._open.discard(request)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A viewer that goes away mid-frame is no error to print on the user's terminal.
        pass

    def close_connections(self, grace: float = _CLOSE_GRACE_S) -> None:
        """End every open connection, so no handler thread outlives the view.

        Reading ends first: idle connections close at once while a viewer that was waiting for a
        frame is still told that the stream has ended. What is left after `grace` is cut off.
        """
        for how in (socket.SHUT_RD, socket.SHUT_RDWR):
            with self._open_lock:
                requests = list(self._open)
            for request in requests:
                with contextlib.suppress(OSError):
                    request.shutdown(how)
            deadline = time.monotonic() + grace
            while how == socket.SHUT_RD and self._open and time.monotonic() < deadline:
                time.sleep(0.01)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "segstream-view"
    sys_version = ""
    timeout = _SOCKET_TIMEOUT_S
    server: _ViewServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the terminal shows the stream's statistics, not every page request

    def do_GET(self) -> None:
        view = self.server.view
        if not view.host_allowed(self.headers.get("Host")):
            self._send(403, b"this live view answers loopback host names only\n", "text/plain; charset=utf-8")
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        mode = query.get("mode", ["overlay"])[0]
        if url.path in ("/frame.jpg", "/stream.mjpg") and mode not in VIEW_MODES:
            self._send(400, f"mode must be one of {', '.join(VIEW_MODES)}\n".encode(), "text/plain; charset=utf-8")
            return
        try:
            if url.path in ("/", "/index.html"):
                self._send(200, view.page(), "text/html; charset=utf-8")
            elif url.path == "/stats.json":
                self._send(200, json.dumps(view.stats(), allow_nan=False).encode(), "application/json")
            elif url.path == "/frame.jpg":
                self._frame(view, cast(ViewMode, mode), query)
            elif url.path == "/stream.mjpg":
                self._mjpeg(view, cast(ViewMode, mode))
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
        except ViewClosed:
            self._send(503, b"the stream has ended\n", "text/plain; charset=utf-8")
            self.close_connection = True

    def _frame(self, view: LiveView, mode: ViewMode, query: dict[str, list[str]]) -> None:
        try:
            after = int(query.get("after", ["0"])[0])
        except ValueError:
            self._send(400, b"after must be a frame sequence number\n", "text/plain; charset=utf-8")
            return
        got = view.next_jpeg(mode, after)
        if got is None:
            self._send(204, b"", None)
        else:
            seq, data = got
            self._send(200, data, "image/jpeg", {"X-Frame-Seq": str(seq)})

    def _mjpeg(self, view: LiveView, mode: ViewMode) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        # Each part is followed at once by the next boundary: a browser shows a part only when it sees
        # the boundary after it, so a boundary sent before each part would keep every frame back one.
        self.wfile.write(f"--{_BOUNDARY}\r\n".encode())
        seq = 0
        while True:
            try:
                got = view.next_jpeg(mode, seq)
            except ViewClosed:
                return
            if got is None:
                continue
            seq, data = got
            head = f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            self.wfile.write(head + data + f"\r\n--{_BOUNDARY}\r\n".encode())
            self.wfile.flush()

    def _send(self, status: int, body: bytes, content_type: str | None, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        if status != 204:  # a 204 has no body and must not say how long it is
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)
