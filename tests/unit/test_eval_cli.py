"""segstream-eval end to end in process: the engine on the hand-computed dataset, the synthetic model's
warning, and command-line errors (the runs against real servers are in tests/integration/test_eval_served.py).

The "oracle" model reads each pixel's class from its red channel (red = 10 x class), so the real
engine (resize, normalisation, serving graph, argmax) predicts exactly what test_eval_protocols'
fake predictor does, and the command must print exactly the hand-computed figures.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segstream.evaluation import EnginePredictor, ServerPredictor
from segstream.evaluation.cli import build_parser, main
from segstream.models.serving import MEAN, STD
from tests.cli_help import assert_every_option_documented
from tests.unit.test_eval_protocols import (
    EXPECTED_MATRIX,
    EXPECTED_MEAN_IOU_PRESENT,
    EXPECTED_PIXEL_ACCURACY,
    EXPECTED_ZOO,
    EXPECTED_ZOO_MEAN_IOU,
    EXPECTED_ZOO_PIXEL_ACCURACY,
    build_dataset,
)


def build_oracle(path: Path) -> Path:
    """out[c] = -(x_red - centre_c)^2 with centre_c the normalised red value 10 * c: argmax = red // 10."""
    centres = ((10.0 * np.arange(21) / 255.0 - MEAN[0]) / STD[0]).astype(np.float32).reshape(1, 21, 1, 1)
    red = np.array([1, 0, 0], np.float32).reshape(1, 3, 1, 1)
    nodes = [
        helper.make_node("Conv", ["input", "red_weight"], ["red"]),
        helper.make_node("Sub", ["red", "centres"], ["offset"]),
        helper.make_node("Mul", ["offset", "offset"], ["square"]),
        helper.make_node("Neg", ["square"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "oracle",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 21, "height", "width"])],
        [numpy_helper.from_array(red, "red_weight"), numpy_helper.from_array(centres, "centres")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    return build_dataset(tmp_path)


@pytest.fixture
def oracle(tmp_path: Path) -> Path:
    return build_oracle(tmp_path / "oracle.onnx")


def eval_args(data: tuple[Path, Path], *extra: str) -> list[str]:
    return ["--images", str(data[0]), "--annotations", str(data[1]), "--no-progress", "--json", *extra]


def check_exact(report: dict[str, Any]) -> None:
    torchvision, zoo = report["torchvision"], report["zoo"]
    matrix = np.array(torchvision["confusion_matrix"])
    assert {(int(r), int(c)): int(matrix[r, c]) for r, c in zip(*np.nonzero(matrix), strict=True)} == EXPECTED_MATRIX
    assert torchvision["images"] == 4
    assert torchvision["mean_iou"] is None  # torchvision's nan: most classes never occur
    assert torchvision["mean_iou_present_classes"] == float(EXPECTED_MEAN_IOU_PRESENT)
    assert torchvision["pixel_accuracy"] == float(EXPECTED_PIXEL_ACCURACY)
    person = torchvision["classes"][15]
    assert (person["name"], person["iou"], person["accuracy"]) == ("person", 10 / 16, 10 / 13)
    assert (zoo["images"], zoo["skipped_images"]) == (2, 2)
    assert zoo["mean_iou"] == float(EXPECTED_ZOO_MEAN_IOU)
    assert zoo["pixel_accuracy"] == float(EXPECTED_ZOO_PIXEL_ACCURACY)
    per_image = [(s["image_id"], s["intersection"], s["union"]) for s in zoo["per_image"]]
    assert per_image == [(i, inter, union) for i, inter, union, _, _ in EXPECTED_ZOO]
    assert [s["iou"] for s in zoo["per_image"]] == [float(Fraction(i, u)) for _, i, u, _, _ in EXPECTED_ZOO]


def test_in_process_engine_reproduces_the_hand_computed_figures(
    data: tuple[Path, Path], oracle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(eval_args(data, "--model", str(oracle), "--size", "4", "--threads", "1")) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    check_exact(report)
    assert report["synthetic"] is False and report["warnings"] == []
    assert report["model"]["source"] == "in-process engine"
    assert "SYNTHETIC" not in captured.err


def test_text_output_has_the_summary_and_a_per_class_table(
    data: tuple[Path, Path], oracle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a for a in eval_args(data, "--model", str(oracle), "--size", "4") if a != "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"pixel accuracy    {100 * float(EXPECTED_PIXEL_ACCURACY):.2f}%\n" in out
    assert f"mean IoU, present {100 * float(EXPECTED_MEAN_IOU_PRESENT):.2f}% (over the other 5 classes)" in out
    assert f"mean IoU          {100 * float(EXPECTED_ZOO_MEAN_IOU):.2f}%\n" in out
    assert f"pixel accuracy    {100 * float(EXPECTED_ZOO_PIXEL_ACCURACY):.2f}% (true negatives" in out
    assert "images            2 (2 without a VOC instance skipped)" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert rows["person"] == ["62.50", "76.92", "13", "13"]
    assert rows["cat"] == ["76.92", "83.33", "12", "11"]
    assert rows["aeroplane"] == ["nan", "nan", "0", "0"]


def test_limit_takes_the_first_images_by_id(
    data: tuple[Path, Path], oracle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(eval_args(data, "--model", str(oracle), "--size", "4", "--limit", "2")) == 0
    report = json.loads(capsys.readouterr().out)
    # Images 3 and 4 (all background: 14 + 16 true negatives, 2 false persons) are left out.
    matrix = np.array(report["torchvision"]["confusion_matrix"])
    assert (matrix[0, 0], matrix[0, 15], int(matrix.sum())) == (38 - 30, 1, 79 - 32)
    assert (report["zoo"]["images"], report["zoo"]["skipped_images"]) == (2, 0)
    assert report["zoo"]["mean_iou"] == float(EXPECTED_ZOO_MEAN_IOU)


def test_synthetic_model_runs_and_says_its_figures_are_meaningless(
    data: tuple[Path, Path], tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a for a in eval_args(data, "--model", str(tiny_model), "--size", "16") if a != "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "SYNTHETIC" in captured.err and "meaningless" in captured.err
    assert "SYNTHETIC WEIGHTS" in captured.out
    assert "Protocol 1, torchvision" in captured.out and "Protocol 2, ONNX model zoo" in captured.out
    assert "tvmonitor" in captured.out  # the per-class table's last row


def test_errors_are_one_line_with_what_to_fix(
    data: tuple[Path, Path], oracle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(eval_args((data[0], tmp_path / "missing.json"), "--model", str(oracle))) == 2
    assert "missing.json: cannot read it" in capsys.readouterr().err
    assert main(eval_args((tmp_path, data[1]), "--model", str(oracle))) == 2
    assert "a.png does not exist" in capsys.readouterr().err
    assert main(eval_args(data, "--model", str(tmp_path / "none.onnx"))) == 1
    assert "none.onnx" in capsys.readouterr().err
    assert main(eval_args(data, "--model", str(oracle), "--head", "aux")) == 1
    assert "heads ['aux']" in capsys.readouterr().err
    assert main(eval_args(data, "--model", str(oracle), "--zoo-server", "127.0.0.1:1")) == 2
    assert "go with --server" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--images", str(data[0]), "--annotations", str(data[1])])
    assert exit_info.value.code == 2
    assert "one of the arguments --model --server is required" in capsys.readouterr().err


def test_a_missing_last_image_fails_before_the_model_loads(
    data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the dataset was checked")

    monkeypatch.setattr(EnginePredictor, "load", no_model)
    monkeypatch.setattr(ServerPredictor, "connect", no_model)
    (data[0] / "d.png").unlink()  # image 4, the last by id
    (data[0] / "b.png").write_bytes(b"not an image")
    for source in (["--model", str(tmp_path / "none.onnx")], ["--server", "127.0.0.1:1"]):
        assert main(eval_args(data, *source)) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert lines[0] == "segstream-eval: error: the dataset has problems; nothing was evaluated (2 problems):"
        assert lines[1:] == [
            f"  image 2: {data[0] / 'b.png'}: not an image OpenCV can read",
            f"  image 4: {data[0] / 'd.png'} does not exist",
        ]


def test_every_option_is_documented() -> None:
    assert_every_option_documented(build_parser({}))
