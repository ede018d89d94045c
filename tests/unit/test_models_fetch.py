"""fetch() against a local HTTP server: full download, resume, fallbacks and failures."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from segstream.models.catalog import MODELS, ModelFile, UnknownModelError
from segstream.models.fetch import FetchError, fetch

PAYLOAD = np.random.default_rng(7).integers(0, 256, size=3 * 1024 * 1024 + 123, dtype=np.uint8).tobytes()
FILE_NAME = "blob.onnx"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {f"/{FILE_NAME}": PAYLOAD}
        self.ignore_range = False
        self.cut_after: int | None = None  # close the connection after this many body bytes
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up early (size refused, checksum tests) are expected here

    def url(self, path: str = FILE_NAME) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not self.server.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            body = body[: self.server.cut_after]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would intercept requests to the local server.
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def entry() -> ModelFile:
    return ModelFile(
        name="blob",
        file_name=FILE_NAME,
        size=len(PAYLOAD),
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        arch="tiny",
    )


@pytest.fixture
def refused_url() -> str:
    # A port that was just free: nothing listens there, so connecting is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{FILE_NAME}"


def _fetch(entry: ModelFile, dest: Path, *sources: str) -> Path:
    return fetch(entry, dest, sources=list(sources), timeout=10, connect_timeout=2, progress=False)


def test_full_download(server: _Server, entry: ModelFile, tmp_path: Path) -> None:
    path = _fetch(entry, tmp_path, server.url())
    assert path == tmp_path / FILE_NAME
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / f"{FILE_NAME}.part").exists()
    assert server.requests == [(f"/{FILE_NAME}", None)]


def test_progress_goes_to_stderr(
    server: _Server, entry: ModelFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch(entry, tmp_path, sources=[server.url()], progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"fetching {FILE_NAME} from {server.url()}" in captured.err
    assert "100%" in captured.err


def test_resumes_a_partial_download(server: _Server, entry: ModelFile, tmp_path: Path) -> None:
    (tmp_path / f"{FILE_NAME}.part").write_bytes(PAYLOAD[:1_000_000])
    path = _fetch(entry, tmp_path, server.url())
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [(f"/{FILE_NAME}", "bytes=1000000-")]


def test_interrupted_download_is_resumed_next_time(server: _Server, entry: ModelFile, tmp_path: Path) -> None:
    server.cut_after = 1_500_000
    with pytest.raises(FetchError, match="interrupted"):
        _fetch(entry, tmp_path, server.url())
    part = tmp_path / f"{FILE_NAME}.part"
    assert part.stat().st_size == 1_500_000
    assert not (tmp_path / FILE_NAME).exists()
    server.cut_after = None
    assert _fetch(entry, tmp_path, server.url()).read_bytes() == PAYLOAD
    assert server.requests[-1] == (f"/{FILE_NAME}", "bytes=1500000-")


def test_server_ignoring_range_restarts_from_zero(server: _Server, entry: ModelFile, tmp_path: Path) -> None:
    server.ignore_range = True
    # Garbage in the part file proves that its bytes are discarded, not appended to.
    (tmp_path / f"{FILE_NAME}.part").write_bytes(b"x" * 1000)
    path = _fetch(entry, tmp_path, server.url())
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [(f"/{FILE_NAME}", "bytes=1000-")]


def test_checksum_mismatch_leaves_no_file(server: _Server, entry: ModelFile, tmp_path: Path) -> None:
    wrong = replace(entry, sha256=hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(FetchError) as info:
        _fetch(wrong, tmp_path, server.url())
    assert "sha256 mismatch" in str(info.value)
    assert server.url() in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_is_refused_before_downloading(server: _Server, entry: ModelFile, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="expected 1000"):
        _fetch(replace(entry, size=1000), tmp_path, server.url())
    assert not (tmp_path / FILE_NAME).exists()


def test_refused_port_fails_fast_and_says_what_to_do(entry: ModelFile, refused_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        _fetch(entry, tmp_path, refused_url)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert info.value.attempts[0][0] == refused_url
    assert refused_url in message
    assert "segstream-models build tiny" in message
    assert "by hand" in message
    assert "\n" not in message


def test_second_source_is_used_when_the_first_fails(
    server: _Server, entry: ModelFile, refused_url: str, tmp_path: Path
) -> None:
    path = _fetch(entry, tmp_path, refused_url, server.url("missing.onnx"), server.url())
    assert path.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/missing.onnx", f"/{FILE_NAME}"]


def test_every_failed_source_is_listed(server: _Server, entry: ModelFile, refused_url: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as info:
        _fetch(entry, tmp_path, refused_url, server.url("missing.onnx"))
    assert [url for url, _ in info.value.attempts] == [refused_url, server.url("missing.onnx")]
    assert "HTTP 404" in info.value.attempts[1][1]


def test_verified_file_is_not_downloaded_again(entry: ModelFile, refused_url: str, tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(PAYLOAD)
    assert _fetch(entry, tmp_path, refused_url) == tmp_path / FILE_NAME


def test_complete_part_file_is_finished_offline(entry: ModelFile, refused_url: str, tmp_path: Path) -> None:
    (tmp_path / f"{FILE_NAME}.part").write_bytes(PAYLOAD)
    assert _fetch(entry, tmp_path, refused_url).read_bytes() == PAYLOAD


def test_corrupt_file_in_place_is_replaced(server: _Server, entry: ModelFile, tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"not the model")
    assert _fetch(entry, tmp_path, server.url()).read_bytes() == PAYLOAD


def test_catalog_names_are_resolved_and_unknown_ones_rejected(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="fcn-resnet50"):
        fetch("fcn-resnet18", tmp_path, progress=False)
    # With no source to try, the error still names the file and how to obtain it.
    with pytest.raises(FetchError) as info:
        fetch("fcn-resnet101", tmp_path, sources=[], progress=False)
    message = str(info.value)
    assert MODELS["fcn-resnet101"].sha256 in message
    assert "segstream-models build resnet101" in message
    assert "segstream-models export fcn-resnet101" in message
