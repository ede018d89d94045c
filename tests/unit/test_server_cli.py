"""segstream-server's command line: documented options and one-line errors."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
from pathlib import Path

import pytest

from segstream.server import cli
from segstream.server.cli import build_parser, config_from_args, main
from segstream.server.engine import EngineError
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


# --- a model's classes and heads ----------------------------------------------------------------


def test_classes_and_heads_attach_to_the_models_they_name(tiny_model: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    argv = ["--model", f"a={tiny_model}", "--model", f"b={tiny_model}", "--classes", f"b={names}"]
    argv += ["--head", "a:out=logits", "--head", "b:aux=aux_logits", "--head", "a:aux=side"]
    config = config_from_args(build_parser().parse_args(argv))
    a, b = config.models
    assert a.classes_file is None and b.classes_file == names
    assert a.head_outputs == (("out", "logits"), ("aux", "side")) and a.output_of("out") == "logits"
    assert b.output_of("out") == "out" and b.output_of("aux") == "aux_logits"
    # With one model its name may be left out.
    single = config_from_args(build_parser().parse_args(["--model", str(tiny_model), "--classes", str(names)]))
    assert single.models[0].classes_file == names


def test_classes_and_heads_come_from_the_environment(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    monkeypatch.setenv("SEGSTREAM_CLASSES", f"m={names}")
    monkeypatch.setenv("SEGSTREAM_HEAD", "m:out=logits,m:aux=side")
    config = config_from_args(build_parser().parse_args(["--model", f"m={tiny_model}"]))
    assert config.models[0].classes_file == names
    assert config.models[0].head_outputs == (("out", "logits"), ("aux", "side"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "names.txt"], "--classes 'names.txt': several models are served; name one as MODEL=FILE"),
        (["--classes", "c=names.txt"], "no model is named 'c' (models: a, b)"),
        (["--classes", "a=names.txt", "--classes", "a=names.txt"], "model a is given two class files"),
        (["--classes", "a=missing.txt"], "--classes a=missing.txt: no such file"),
        (["--head", "out=logits"], "--head 'out=logits': several models are served; name one as MODEL:HEAD=OUTPUT"),
        (["--head", "a:main=logits"], "the heads are out and aux, not 'main'"),
        (["--head", "a:out"], "expected HEAD=OUTPUT or MODEL:HEAD=OUTPUT"),
        (["--head", "a:out=x", "--head", "a:out=y"], "head out of model a is mapped twice"),
    ],
)
def test_bad_classes_and_heads_are_one_line(
    extra: list[str],
    message: str,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "names.txt").write_text("x\ny\n")
    with pytest.raises(SystemExit) as info:
        main(["--model", f"a={tiny_model}", "--model", f"b={tiny_model}", *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.usefixtures("restore_root_logging")  # main() configures the root logger
def test_a_stop_with_a_hung_engine_exits_at_once_with_status_1(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    async def serve(*args: object) -> None:
        raise cli._WorkLeftRunning

    exits: list[int] = []

    def exit_now(status: int) -> None:
        exits.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(cli, "_serve", serve)
    monkeypatch.setattr(os, "_exit", exit_now)
    flushed: list[bool] = []
    monkeypatch.setattr(logging, "shutdown", lambda: flushed.append(True))  # pytest's handlers stay open
    with pytest.raises(SystemExit):
        cli.main(["--model", f"tiny={tiny_model}"])
    assert exits == [1] and flushed == [True]


@pytest.mark.usefixtures("restore_root_logging")
def test_a_failed_start_that_leaves_work_running_still_says_why(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def serve(*args: object) -> None:
        raise cli._WorkLeftRunning from EngineError("model tiny: warm-up failed")

    def exit_now(status: int) -> None:
        raise SystemExit(status)

    monkeypatch.setattr(cli, "_serve", serve)
    monkeypatch.setattr(os, "_exit", exit_now)
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    with pytest.raises(SystemExit) as ended:
        cli.main(["--model", f"tiny={tiny_model}"])
    assert ended.value.code == 1
    assert "segstream-server: error: model tiny: warm-up failed" in capsys.readouterr().err
