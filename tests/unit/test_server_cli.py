"""segstream-server's command line: documented options and one-line errors."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path

import pytest

from segstream.server.cli import build_parser, main
from segstream.server.event_loop import EventLoopUnavailable, loop_factory
from tests.cli_help import assert_every_option_documented


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--help" in capsys.readouterr().out
    assert_every_option_documented(build_parser())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no model to serve"),
        (["--model", "/nonexistent/x.onnx"], "does not exist"),
        (["--model", "a=/nonexistent/x.onnx", "--port", "70000"], "does not exist"),
        (["--device", "tpu"], "invalid choice"),
        (["--port", "abc"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_bad_numbers_are_named(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_model), "--max-batch", "0"])
    assert re.search(r"--max-batch 0: must be between 1 and", capsys.readouterr().err)


# --- the event loop -----------------------------------------------------------------------------


def test_auto_event_loop_takes_uvloop_where_installed() -> None:
    pytest.importorskip("uvloop")
    name, factory = loop_factory("auto")
    loop = factory()
    try:
        assert name == "uvloop" and type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_asyncio_event_loop_is_the_standard_one() -> None:
    name, factory = loop_factory("asyncio")
    loop = factory()
    try:
        assert name == "asyncio" and isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()


def test_uvloop_asked_for_but_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "uvloop" else real_find_spec(name))
    assert loop_factory("auto")[0] == "asyncio"
    with pytest.raises(EventLoopUnavailable, match="uvloop is not installed"):
        loop_factory("uvloop")
