"""segstream-eval against real servers on the hand-computed dataset (see tests/unit/test_eval_cli.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from segstream.evaluation.cli import main
from segstream.server.config import ModelSpec
from tests.conftest import ServerFactory
from tests.unit.test_eval_cli import build_oracle, check_exact, eval_args
from tests.unit.test_eval_protocols import build_dataset


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    return build_dataset(tmp_path)


@pytest.fixture
def oracle(tmp_path: Path) -> Path:
    return build_oracle(tmp_path / "oracle.onnx")


async def test_servers_reproduce_the_hand_computed_figures(
    data: tuple[Path, Path], oracle: Path, server_factory: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    models = (ModelSpec("oracle", oracle),)
    async with server_factory(models, size=4) as resized, server_factory(models, size=0) as native:
        args = eval_args(data, "--server", f"127.0.0.1:{resized.port}", "--zoo-server", f"127.0.0.1:{native.port}")
        assert await asyncio.to_thread(main, [*args, "--size", "4", "--timeout", "20"]) == 0
        report = json.loads(capsys.readouterr().out)
        check_exact(report)
        assert report["warnings"] == []
        assert report["model"]["source"] == f"server 127.0.0.1:{resized.port}"

        # One server at --size 4 for both protocols: protocol 2 is then not the notebook's, and it says so.
        args = eval_args(data, "--server", f"127.0.0.1:{resized.port}", "--protocol", "zoo", "--size", "4")
        assert await asyncio.to_thread(main, args) == 0
        captured = capsys.readouterr()
        assert "start a server with --size 0" in captured.err
        assert "torchvision" not in json.loads(captured.out)

        args = eval_args(data, "--server", f"127.0.0.1:{native.port}", "--protocol", "torchvision")
        assert await asyncio.to_thread(main, args) == 0
        captured = capsys.readouterr()
        assert "not --size 520" in captured.err
        assert json.loads(captured.out)["torchvision"]["size"] == 0


async def test_a_frame_the_server_refuses_stops_the_run(
    data: tuple[Path, Path], oracle: Path, server_factory: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # Image 2 (8x12 = 96 pixels) is over this server's limit; a figure without it would be wrong.
    async with server_factory((ModelSpec("oracle", oracle),), size=4, max_frame_pixels=40) as server:
        args = eval_args(data, "--server", f"127.0.0.1:{server.port}", "--size", "4", "--protocol", "torchvision")
        assert await asyncio.to_thread(main, args) == 1
    captured = capsys.readouterr()
    assert "could not segment image #1" in captured.err and "40 pixels" in captured.err
    assert captured.out == ""
