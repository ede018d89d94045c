"""A real in-process server on its own event loop thread, for tests whose own thread blocks.

Command-line tests run `main()` or a subprocess on the test's thread; the server they talk to
then needs an event loop that keeps running meanwhile. `HeldModel` wraps a real ONNX Runtime
model so that a test can slow it down (a large network) or hold it (models still warming up).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from segstream.models.classes import ClassList
from segstream.server.app import SegstreamServer
from segstream.server.config import ModelSpec, ServerConfig
from segstream.server.engine import BatchResult, Model, U8Array
from segstream.server.ort_model import OrtModel

_T = TypeVar("_T")


class HeldModel:
    """A real ONNX Runtime model whose runs wait for `gate` and take at least `delay` seconds."""

    def __init__(self, path: Path, delay: float = 0.0, name: str = "tiny") -> None:
        self._inner = OrtModel(ModelSpec(name, path), device="cpu", threads=1)
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.runs = 0

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def provider(self) -> str:
        return self._inner.provider

    @property
    def heads(self) -> tuple[str, ...]:
        return self._inner.heads

    @property
    def classes(self) -> ClassList:
        return self._inner.classes

    @property
    def synthetic(self) -> bool:
        return self._inner.synthetic

    def run(self, head: str, frames: Sequence[U8Array], output_size: tuple[int, int]) -> BatchResult:
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the gate never opened")
        time.sleep(self.delay)
        result = self._inner.run(head, frames, output_size)
        self.runs += 1
        return result

    def close(self) -> None:
        self._inner.close()


class BackgroundServer:
    """A SegstreamServer running on an event loop thread of its own."""

    def __init__(
        self, server: SegstreamServer, loop: asyncio.AbstractEventLoop, started: concurrent.futures.Future[int]
    ) -> None:
        self.server = server
        self._loop = loop
        self.started = started  # done once the models are warm (SERVING)
        self.stopped = False

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 30) -> _T:
        """Runs `coroutine` on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        """Drains and stops the server for good (the port then refuses connections)."""
        if not self.stopped:
            self.stopped = True
            self.call(self.server.stop(grace=grace), timeout=grace + 30)


def tiny_config(model: Path, **settings: Any) -> ServerConfig:
    """A loopback config over the tiny model, small and on the CPU, with `settings` on top."""
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "size": 64, "device": "cpu", "threads": 1}
    base.update(settings)
    return ServerConfig(models=(ModelSpec("tiny", model),), **base)


@contextmanager
def background_server(
    config: ServerConfig, models: Mapping[str, Model] | None = None, *, wait_ready: bool = True
) -> Iterator[BackgroundServer]:
    """Starts a server on a thread of its own; with `wait_ready` False, returns once it listens."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="background-server", daemon=True)
    thread.start()
    holder: list[SegstreamServer] = []
    running: list[BackgroundServer] = []

    async def make() -> SegstreamServer:
        holder.append(SegstreamServer(config, models))  # made inside its loop, which grpc.aio binds to
        return holder[0]

    try:
        server = asyncio.run_coroutine_threadsafe(make(), loop).result(30)
        starting = asyncio.run_coroutine_threadsafe(server.start(), loop)
        if wait_ready:
            starting.result(60)
        else:
            deadline = time.monotonic() + 30
            while not server.port and not starting.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.port, "the server never listened"
        running.append(BackgroundServer(server, loop, starting))
        yield running[0]
        starting.result(60)  # a test that held the start released it by now
    finally:
        if running:
            running[0].stop()
        elif holder:
            asyncio.run_coroutine_threadsafe(holder[0].stop(grace=1.0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
