"""The segstream-models command line: outputs, exit codes and one-line errors."""

from __future__ import annotations

import importlib.util
import re
import socket
from pathlib import Path

import onnx
import pytest

from segstream.models.classes import classes_from_metadata
from segstream.models.cli import MODEL_DIR_ENV, _parser, main
from segstream.models.graph import is_synthetic, model_metadata
from segstream.wire.palette import VOC_CLASSES
from tests.cli_help import assert_every_option_documented
from tests.own_models import ramp_model

PROG = "segstream-models"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: error: ")
    return lines[0]


@pytest.fixture
def tiny_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    assert main(["build", "tiny", "--out", str(path), "--seed", "5"]) == 0
    return path


@pytest.fixture
def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.onnx"


def test_build_writes_the_model_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "tiny.onnx"
    assert main(["build", "tiny", "--out", str(out), "--seed", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "WARNING" in captured.err and "random" in captured.err and "meaningless" in captured.err
    assert "GMAC" in captured.err and "520x520" in captured.err
    model = onnx.load(str(out))
    assert is_synthetic(model)
    assert {p.key: p.value for p in model.metadata_props}["segstream.seed"] == "5"


def test_info_describes_the_model(tiny_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["info", str(tiny_path), "--size", "64x96"]) == 0
    out = capsys.readouterr().out
    assert "input: input float32 [batch, 3, height, width]" in out
    assert "output: out float32 [batch, 21, height, width]" in out
    assert "output: aux float32 [batch, 21, height, width]" in out
    assert "synthetic: yes (arch tiny, seed 5)" in out
    assert "WARNING" in out
    assert re.search(r"cost at 64x96: [\d.]+ GMAC", out)
    assert "out only:" in out and "aux only:" in out


def test_info_on_a_model_without_our_metadata(
    tmp_path: Path, tiny_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(str(tiny_path))
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    capsys.readouterr()
    assert main(["info", str(plain)]) == 0
    assert "synthetic: no (not a catalog file)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["fetch", "fcn-resnet18"],
        ["export", "fcn-resnet18", "--out", "x.onnx"],
        ["build", "resnet18", "--out", "x.onnx"],
        ["build", "tiny"],
        ["build", "tiny", "--out", "x.onnx", "--seed", "-3"],
        ["info", "does-not-exist.onnx"],
        ["info", "x.onnx", "--size", "big"],
        ["label", "does-not-exist.onnx", "--classes", "names.txt"],
        ["label", "x.onnx"],
        ["fetch", "fcn-resnet50", "--timeout", "-1"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err)
    assert captured.out == ""


def test_unknown_model_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "fcn-resnet18"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "fcn-resnet18" in line and "fcn-resnet50" in line and "fcn-resnet101" in line


def test_unreadable_onnx_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\x00 this is not a protobuf \x13\x37" * 10)
    assert main(["info", str(junk)]) == 2
    assert str(junk) in _one_error_line(capsys.readouterr().err)


def test_failed_fetch_is_one_line_and_exit_1(
    tmp_path: Path, refused_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "store"))
    argv = ["fetch", "fcn-resnet50", "--url", refused_url, "--url", refused_url + "?again", "--quiet"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert refused_url in line and f"{refused_url}?again" in line
    assert "segstream-models build resnet50" in line
    assert str(tmp_path / "store") in line
    assert captured.out == ""


def test_export_without_torch_explains_what_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision"):
        pytest.skip("torch and torchvision are installed: the export would download weights")
    assert main(["export", "fcn-resnet50", "--out", str(tmp_path / "x.onnx")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "pip install torch torchvision" in line
    assert "download.pytorch.org" in line


def test_every_option_of_every_command_is_documented() -> None:
    assert_every_option_documented(_parser())


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ([], ["fetch", "build", "export", "label", "info", "--help"]),
        (["fetch"], ["NAME", "--dir", "--url", "--timeout", "--quiet", MODEL_DIR_ENV]),
        (["build"], ["ARCH", "--out", "--seed", "--classes", "resnet50", "resnet101", "tiny"]),
        (["export"], ["NAME", "--out"]),
        (["label"], ["PATH", "--classes", "--output", "--out", "#rrggbb"]),
        (["info"], ["PATH", "--size"]),
    ],
)
def test_help_mentions_every_option(command: list[str], options: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text


# --- class names --------------------------------------------------------------------------------


def test_label_writes_class_names_into_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "ramp.onnx"
    onnx.save(ramp_model(4, output="logits"), str(model))
    names = tmp_path / "names.txt"
    names.write_text("sky\nsea #0000ff\nsand\nrock\n")
    capsys.readouterr()
    assert main(["label", str(model), "--classes", str(names)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(model)
    assert "4 classes (from" in captured.err and "sky, sea, sand, rock" in captured.err
    classes = classes_from_metadata(model_metadata(onnx.load(str(model))))
    assert classes is not None and classes.names == ("sky", "sea", "sand", "rock")
    assert classes.palette[1].tolist() == [0, 0, 255]

    assert main(["info", str(model)]) == 0
    assert "classes: 4 classes (from metadata): sky, sea, sand, rock" in capsys.readouterr().out


def test_label_refuses_a_class_count_the_model_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "ramp.onnx"
    onnx.save(ramp_model(4), str(model))
    before = model.read_bytes()
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    assert main(["label", str(model), "--classes", str(names)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "names 3 classes but output 'out'" in line and "has 4 channels" in line
    assert model.read_bytes() == before
    assert main(["label", str(model), "--classes", str(names), "--output", "scores"]) == 2
    assert "has no output 'scores' (its outputs: out)" in _one_error_line(capsys.readouterr().err)
    names.write_text("a\na\nb\nc\n")
    assert main(["label", str(model), "--classes", str(names)]) == 2
    assert "'a' already names class 0" in _one_error_line(capsys.readouterr().err)


def test_label_can_write_another_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "ramp.onnx"
    onnx.save(ramp_model(2), str(model))
    before = model.read_bytes()
    names = tmp_path / "names.json"
    names.write_text('{"classes": ["off", "on"], "palette": [[0, 0, 0], [255, 255, 255]]}')
    out = tmp_path / "labelled" / "ramp.onnx"
    assert main(["label", str(model), "--classes", str(names), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert model.read_bytes() == before
    classes = classes_from_metadata(model_metadata(onnx.load(str(out))))
    assert classes is not None and classes.palette.tolist() == [[0, 0, 0], [255, 255, 255]]


def test_build_names_voc_by_default_or_the_classes_given(
    tmp_path: Path, tiny_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc = classes_from_metadata(model_metadata(onnx.load(str(tiny_path))))
    assert voc is not None and voc.names == VOC_CLASSES
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"part {k}" for k in range(30)))
    out = tmp_path / "parts.onnx"
    assert main(["build", "tiny", "--out", str(out), "--classes", str(names)]) == 0
    model = onnx.load(str(out))
    classes = classes_from_metadata(model_metadata(model))
    assert classes is not None and len(classes) == 30
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "output: out float32 [batch, 30, height, width]" in capsys.readouterr().out
