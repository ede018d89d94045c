"""The browser live view's HTTP side, fed with made-up results: no segmentation server involved."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import cv2
import grpc
import numpy as np
import pytest

from segstream.client import _live_view
from segstream.client._live_view import MAX_CONNECTIONS, LiveView
from segstream.client._results import FrameError, SegmentResult
from segstream.wire.codec import U8Array
from segstream.wire.palette import blend, colorize, voc_palette
from tests.unit.test_client_legend import _model

pytestmark = pytest.mark.timeout(60)

SIZE = (160, 120)  # width, height


def _labels() -> U8Array:
    labels = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    labels[:, SIZE[0] // 2 :] = 15
    labels[: SIZE[1] // 2, : SIZE[0] // 2] = 7
    return labels


def _result(frame_id: int, latency_ms: float | None = 10.0, ok: bool = True) -> SegmentResult:
    labels = _labels()
    grey = np.full((SIZE[1], SIZE[0], 3), 100, np.uint8)
    overlay = blend(grey, colorize(labels))
    if not ok:
        return SegmentResult(frame_id, 0, error=FrameError(grpc.StatusCode.INTERNAL, "boom"))
    return SegmentResult(frame_id, 0, labels=labels, overlay=overlay, latency_ms=latency_ms)


@pytest.fixture(autouse=True)
def _short_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_live_view, "_LONG_POLL_S", 0.2)


@pytest.fixture
def view() -> Iterator[LiveView]:
    with LiveView("127.0.0.1", 0, _model(synthetic=True), command="webcam", source="rtsp://me:secret@cam/1") as v:
        yield v


def _get(view: LiveView, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", view.port, timeout=10)
    try:
        headers = {"Host": host} if host else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _decode(data: bytes) -> U8Array:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return np.asarray(image, np.uint8)


def _close(image: U8Array, bgr: tuple[int, ...], tolerance: int = 12) -> int:
    return int((np.abs(image.astype(int) - np.array(bgr)).max(axis=-1) <= tolerance).sum())


def test_page_stats_and_frames(view: LiveView) -> None:
    status, headers, page = _get(view, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"segstream live view" in page and b"/frame.jpg" in page and b"/stats.json" in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]

    status, _, body = _get(view, "/stats.json")
    stats = json.loads(body)
    assert status == 200 and stats["frame"] is None and stats["classes"] == []
    assert stats["fps"] is not None and stats["latency_ms"] == {"p50": None, "p95": None}
    assert stats["source"] == "rtsp://***@cam/1", "a password in a camera URL is never shown"
    assert stats["model"] == {
        "name": "m",
        "provider": "CPUExecutionProvider",
        "synthetic": True,
        "inference_size": 64,
    }
    status, _, body = _get(view, "/frame.jpg?mode=overlay&after=0")
    assert status == 204 and body == b"", "no frame yet: the long poll ends empty"

    original = np.full((SIZE[1], SIZE[0], 3), 100, np.uint8)
    frames = list(view.remember(iter([original, original, original])))
    assert len(frames) == 3
    view.publish(_result(0, 12.0))
    view.publish(_result(1, ok=False))
    view.publish(_result(2, 20.0))
    stats = json.loads(_get(view, "/stats.json")[2])
    assert stats["results"] == 3 and stats["failed"] == 1
    assert stats["latency_ms"]["p50"] == pytest.approx(16.0)
    assert stats["frame"]["id"] == 2 and (stats["frame"]["width"], stats["frame"]["height"]) == SIZE
    names = [(c["index"], c["name"], c["color"]) for c in stats["classes"]]
    r, g, b = voc_palette()[15]
    assert names[0] == (0, "background", "#000000") and names[2] == (15, "person", f"#{r:02x}{g:02x}{b:02x}")
    assert sum(c["share"] for c in stats["classes"]) == pytest.approx(1.0)

    status, headers, data = _get(view, "/frame.jpg?mode=overlay&after=0")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["X-Frame-Seq"] == "2"
    overlay = _decode(data)
    assert (overlay.shape[1], overlay.shape[0]) == SIZE
    person = tuple(int(c) for c in blend(np.full((1, 1, 3), 100, np.uint8), voc_palette()[None, [15]])[0, 0][::-1])
    assert _close(overlay[: SIZE[1] - 20, SIZE[0] // 2 + 4 :], person) > 0.9 * (SIZE[1] - 20) * (SIZE[0] // 2 - 4)
    assert _close(overlay[-4:], (0, 0, 200), 30) > 0.5 * 4 * SIZE[0], "the synthetic mark is drawn into the frame"

    mask = _decode(_get(view, "/frame.jpg?mode=mask")[2])
    assert _close(mask[5:40, SIZE[0] // 2 + 4 :], (int(b), int(g), int(r))) > 0.9 * 35 * (SIZE[0] // 2 - 4)

    side = _decode(_get(view, "/frame.jpg?mode=side")[2])
    assert side.shape[1] == 2 * SIZE[0], "the original beside the colour mask"
    assert _close(side[10:60, 10:60], (100, 100, 100)) > 0.9 * 50 * 50, "the remembered original frame"

    status, _, _ = _get(view, "/frame.jpg?mode=overlay&after=2")
    assert status == 204, "nothing newer than what the viewer has"
    assert _get(view, "/frame.jpg?mode=sepia")[0] == 400
    assert _get(view, "/frame.jpg?after=soon")[0] == 400
    assert _get(view, "/nothing")[0] == 404


def test_originals_are_kept_only_for_frames_in_flight(view: LiveView) -> None:
    frames = view.remember(np.full((SIZE[1], SIZE[0], 3), i, np.uint8) for i in range(40))
    for _ in range(20):
        next(frames)
    assert len(view._originals) == 8, "a bounded number of originals"
    view.publish(_result(17))
    assert list(view._originals) == [18, 19], "the answered frame and those before it are forgotten"


def test_loopback_view_answers_loopback_host_names_only(view: LiveView) -> None:
    assert _get(view, "/", host=f"localhost:{view.port}")[0] == 200
    assert _get(view, "/", host=f"[::1]:{view.port}")[0] == 200
    assert _get(view, "/stats.json", host=f"evil.example:{view.port}")[0] == 403


def test_publishing_never_waits_for_a_viewer_that_stopped_reading(view: LiveView) -> None:
    view.publish(_result(0))
    stalled = socket.create_connection(("127.0.0.1", view.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /stream.mjpg?mode=side HTTP/1.1\r\nHost: 127.0.0.1:{view.port}\r\n\r\n".encode())
    try:
        big = SegmentResult(
            0,
            0,
            labels=np.random.default_rng(0).integers(0, 21, (720, 1280), dtype=np.uint8),
            overlay=np.random.default_rng(1).integers(0, 255, (720, 1280, 3), dtype=np.uint8),
        )
        slowest = 0.0
        for n in range(300):
            started = time.perf_counter()
            view.publish(big if n % 2 else _result(n))
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.05, f"publish took {slowest * 1000:.1f} ms"
        # Another viewer is still served while the first one blocks on its full socket.
        assert _get(view, "/frame.jpg?after=0")[0] == 200
    finally:
        stalled.close()


def test_connections_are_bounded_and_freed(view: LiveView) -> None:
    idle = [socket.create_connection(("127.0.0.1", view.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = socket.create_connection(("127.0.0.1", view.port))
        extra.settimeout(10)
        answer = extra.recv(200)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # each closed connection gives its place back once its thread sees the close
        try:
            if _get(view, "/stats.json")[0] == 200:
                break
        except (ConnectionError, http.client.HTTPException):
            pass
        assert time.monotonic() < deadline, "the places of closed connections were never freed"
        time.sleep(0.05)


def test_close_ends_viewers_and_releases_the_port() -> None:
    view = LiveView("127.0.0.1", 0, _model(), command="video", source="in.mp4")
    view.publish(_result(0))
    port = view.port
    mjpeg = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    mjpeg.request("GET", "/stream.mjpg?mode=overlay")
    response = mjpeg.getresponse()
    assert response.status == 200 and response.getheader("Content-Type", "").startswith("multipart/x-mixed-replace")
    first = response.read(60)
    assert b"--segstream-frame" in first and b"Content-Type: image/jpeg" in first
    waiting: list[int] = []
    poller = threading.Thread(target=lambda: waiting.append(_get(view, "/frame.jpg?after=1")[0]))
    _live_view._LONG_POLL_S = 30.0  # restored by the autouse fixture
    poller.start()
    time.sleep(0.3)
    started = time.monotonic()
    view.close()
    assert time.monotonic() - started < 3
    poller.join(timeout=5)
    assert waiting == [503], "a viewer waiting for a frame is told the stream ended"
    remaining = response.read()  # ends: the connection is closed
    assert isinstance(remaining, bytes)
    mjpeg.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not [t for t in threading.enumerate() if t.name == "segstream-view"]
    view.close()  # twice is harmless


def test_a_busy_port_is_an_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            LiveView("127.0.0.1", taken.getsockname()[1], _model(), command="webcam", source="0")
