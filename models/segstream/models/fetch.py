"""Downloading a catalog model with resume, checksum verification and clear failure reports."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segstream.models.catalog import ModelFile, get_model

DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0
_CHUNK = 1 << 20
_USER_AGENT = "segstream-models (python-urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class FetchError(RuntimeError):
    """No source delivered the file; `attempts` holds (source, error) for each one tried."""

    def __init__(self, model: ModelFile, dest_dir: Path, attempts: Sequence[tuple[str, str]]) -> None:
        self.model = model
        self.dest_dir = dest_dir
        self.attempts = list(attempts)
        tried = "; ".join(f"{url} -> {error}" for url, error in self.attempts) or "no source configured"
        remedies = []
        if model.arch is not None:
            synthetic = dest_dir / f"{model.name}-synthetic.onnx"
            remedies.append(
                f"build a synthetic stand-in (random weights, meaningless masks) with "
                f"`segstream-models build {model.arch} --out {synthetic}`"
            )
        remedies.append(f"copy {model.file_name} ({model.size} bytes, sha256 {model.sha256}) into {dest_dir} by hand")
        if model.torchvision_builder is not None:
            remedies.append(
                f"export it with `segstream-models export {model.name} --out PATH` "
                f"(needs torch, torchvision and network access to download.pytorch.org)"
            )
        super().__init__(
            f"could not fetch {model.name} ({model.file_name}): {tried}. "
            f"Without network access: {', or '.join(remedies)}."
        )


class _SourceError(Exception):
    """One source failed; the message is what FetchError reports for it."""


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks so that a large model is never held in memory whole."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path: Path, model: ModelFile) -> bool:
    return path.is_file() and path.stat().st_size == model.size and sha256_of(path) == model.sha256


# urllib has a single timeout for connecting and reading. An unreachable host should fail within
# seconds, while a slow download must not be cut off, so the connect step gets its own timeout.
def _connect_with(conn: http.client.HTTPConnection, connect: Callable[[], None], timeout: float) -> None:
    read_timeout = conn.timeout
    conn.timeout = timeout
    try:
        connect()
    finally:
        conn.timeout = read_timeout
    if conn.sock is not None:
        conn.sock.settimeout(read_timeout)


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, connect_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        _connect_with(self, super().connect, self.connect_timeout)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, connect_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        _connect_with(self, super().connect, self.connect_timeout)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connect_timeout: float) -> None:
        super().__init__()
        self.connect_timeout = connect_timeout

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, /, **kwargs: Any) -> http.client.HTTPConnection:
            return _HTTPConnection(host, connect_timeout=self.connect_timeout, **kwargs)

        return self.do_open(connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connect_timeout: float) -> None:
        super().__init__()
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl.create_default_context()

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, /, **kwargs: Any) -> http.client.HTTPConnection:
            return _HTTPSConnection(host, connect_timeout=self.connect_timeout, **kwargs)

        return self.do_open(connection, req, context=self.ssl_context)


def _open(url: str, offset: int, timeout: float, connect_timeout: float) -> http.client.HTTPResponse:
    opener = urllib.request.build_opener(_HTTPHandler(connect_timeout), _HTTPSHandler(connect_timeout))
    # Compression would make Content-Length and Range count encoded bytes, not file bytes.
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response: http.client.HTTPResponse = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    return response


def _start(
    url: str, part: Path, model: ModelFile, timeout: float, connect_timeout: float
) -> tuple[http.client.HTTPResponse, int]:
    """Open `url` resuming after the bytes already in `part`; return the response and its offset."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout, connect_timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 416 or not offset:
            raise _SourceError(f"HTTP {exc.code} {exc.reason}") from exc
        # The partial file does not fit what the server has: start over.
        part.unlink()
        offset = 0
        response = _open(url, offset, timeout, connect_timeout)
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match and int(match.group(1)) == offset and match.group(3) in ("*", str(model.size)):
            return response, offset
        response.close()
        raise _SourceError(f"unusable partial response (Content-Range {response.headers.get('Content-Range')!r})")
    if response.status != 200:
        response.close()
        raise _SourceError(f"unexpected HTTP status {response.status}")
    # A 200 answer to a Range request means the server sends the whole file again.
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) != model.size:
        response.close()
        raise _SourceError(f"server offers {length} bytes, expected {model.size} (not the published file)")
    return response, 0


def _download(url: str, part: Path, model: ModelFile, timeout: float, connect_timeout: float, progress: bool) -> None:
    try:
        response, offset = _start(url, part, model, timeout, connect_timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if isinstance(exc, urllib.error.URLError):
            raise _SourceError(f"cannot connect ({exc.reason})") from exc
        raise _SourceError(f"{type(exc).__name__}: {exc}") from exc
    received = offset
    bar = tqdm(
        total=model.size,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=model.file_name,
        disable=not progress,
        file=sys.stderr,
    )
    overflow = False
    try:
        with response, bar, part.open("ab" if offset else "wb") as fh:
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > model.size:
                    overflow = True
                    break
                fh.write(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as exc:
        # The bytes written so far stay in the part file for the next source or run to resume.
        raise _SourceError(f"interrupted after {received} of {model.size} bytes: {exc!r}") from exc
    if overflow:
        # Not the published file: its prefix is worthless for resuming.
        part.unlink()
        raise _SourceError(f"server sent more than the expected {model.size} bytes")


def _verify(part: Path, model: ModelFile) -> None:
    size = part.stat().st_size
    if size < model.size:
        raise _SourceError(f"incomplete: {size} of {model.size} bytes (kept {part.name} to resume)")
    if size > model.size:
        part.unlink()
        raise _SourceError(f"{size} bytes, expected {model.size}")
    digest = sha256_of(part)
    if digest != model.sha256:
        part.unlink()
        raise _SourceError(f"sha256 mismatch: got {digest}, expected {model.sha256}")


def fetch(
    name: str | ModelFile,
    dest_dir: str | os.PathLike[str],
    sources: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Path:
    """Download model `name` (a catalog name or a ModelFile) into `dest_dir`; return its path.

    Sources (the catalog's unless given) are tried in order. Bytes go to `<file>.part`, resumed
    with an HTTP Range request when one exists, and the file is renamed into place only once its
    size and sha256 match. A file already present with the right checksum is not downloaded again.
    `timeout` bounds each network read, `connect_timeout` each connection attempt.
    Raises FetchError, listing every source and its error, when none delivers the file.
    """
    model = get_model(name) if isinstance(name, str) else name
    directory = Path(dest_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / model.file_name
    part = directory / f"{model.file_name}.part"
    if _matches(final, model):
        return final
    attempts: list[tuple[str, str]] = []
    if part.exists() and part.stat().st_size > model.size:
        part.unlink()  # cannot be a prefix of the file: resuming from it would be pointless
    if part.exists() and part.stat().st_size == model.size:
        # A previous run downloaded everything but stopped before the rename.
        try:
            _verify(part, model)
        except _SourceError as exc:
            attempts.append((str(part), str(exc)))
        else:
            part.replace(final)
            return final
    for url in sources if sources is not None else model.sources:
        if progress:
            print(f"fetching {model.file_name} from {url}", file=sys.stderr)
        try:
            _download(url, part, model, timeout, connect_timeout, progress)
            _verify(part, model)
        except _SourceError as exc:
            attempts.append((url, str(exc)))
            continue
        part.replace(final)
        return final
    raise FetchError(model, directory, attempts)
