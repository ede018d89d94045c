"""Shared fixtures: small generated models, sample images, and real in-process servers on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest

from segstream.models.build import build_fcn
from segstream.server.app import SegstreamServer
from segstream.server.config import ModelSpec, ServerConfig

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"

ServerFactory = Callable[..., AbstractAsyncContextManager[SegstreamServer]]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FCN with the real models' contract (random weights), built once per test run."""
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(build_fcn("tiny", seed=0), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-b.onnx"
    onnx.save(build_fcn("tiny", seed=1), str(path))
    return path


@pytest.fixture(scope="session")
def sample_bgr() -> npt.NDArray[np.uint8]:
    image = cv2.imread(str(SAMPLES / "000000017968.jpg"))
    assert image is not None
    return np.asarray(image, np.uint8)


@pytest.fixture
def server_factory(tiny_model: Path) -> ServerFactory:
    """Starts a real server on 127.0.0.1 (free port) over the tiny model; stops it afterwards."""

    @asynccontextmanager
    async def start(models: tuple[ModelSpec, ...] | None = None, **options: object) -> AsyncIterator[SegstreamServer]:
        settings: dict[str, object] = {"host": "127.0.0.1", "port": 0, "size": 64, "device": "cpu", "threads": 1}
        settings.update(options)
        config = ServerConfig(models=models or (ModelSpec("tiny", tiny_model),), **settings)  # type: ignore[arg-type]
        server = SegstreamServer(config)
        await server.start()
        try:
            yield server
        finally:
            await server.stop(grace=1.0)

    return start


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """Puts the root logger back after a test whose main() pointed it at the test's captured stderr.

    That stderr is closed once the test ends; an earlier test's main() may also have left a handler
    on its own closed stream, which is dropped first.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers[:] = [h for h in handlers if not getattr(getattr(h, "stream", None), "closed", False)]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
