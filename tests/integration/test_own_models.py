"""Bringing one's own model: class names from the file's metadata or --classes, outputs mapped with --head,
and a model that does not say what it segments refused at startup with the contract."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from segstream.models.build import build_fcn
from segstream.models.classes import ClassList, generated_palette
from segstream.server.app import SegstreamServer
from segstream.server.cli import build_parser, config_from_args
from segstream.server.cli import main as server_main
from segstream.server.config import ServerConfig
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from segstream.wire.palette import VOC_CLASSES, blend, voc_palette
from tests.integration.grpc_helpers import channel, segment
from tests.own_models import identity_model, ramp_frame, ramp_model, save

pytestmark = pytest.mark.timeout(90)

NAMES_30 = tuple(f"part {k}" for k in range(30))
# A palette no generator makes: class k is (8k, 255 - 8k, 100 + k).
PALETTE_30 = [[8 * k, 255 - 8 * k, 100 + k] for k in range(30)]
# What every refusal ends with, in a few of its words.
CONTRACT_WORDS = (
    "one float32 input [N, 3, H, W]",
    "[N, C, H, W]",
    "named 'out'",
    "--head",
    "--classes",
    "docs/models.md",
)


@pytest.fixture(autouse=True)
def _restore_logging(restore_root_logging: None) -> None:
    """main() points the root logger at this test's captured stderr (see tests/conftest.py)."""


def _config(*argv: str) -> ServerConfig:
    """The server's config of a command line, as segstream-server parses it."""
    base = ["--host", "127.0.0.1", "--port", "0", "--size", "64", "--device", "cpu", "--threads", "1"]
    return config_from_args(build_parser().parse_args([*base, *argv]))


@asynccontextmanager
async def _serving(*argv: str) -> AsyncIterator[SegstreamServer]:
    server = SegstreamServer(_config(*argv))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


async def _list(server: SegstreamServer) -> dict[str, pb.ModelInfo]:
    async with channel(server) as ch:
        response = await pb_grpc.SegmentationStub(ch).ListModels(pb.ListModelsRequest(), timeout=30)
    return {m.name: m for m in response.models}


def _colours(info: pb.ModelInfo) -> list[list[int]]:
    return [[c.r, c.g, c.b] for c in info.palette]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line segstream-server exits 1 with; it states the contract."""
    assert server_main(["--host", "127.0.0.1", "--port", "0", "--size", "64", "--log-level", "ERROR", *argv]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("segstream-server: error: model "), err
    for words in CONTRACT_WORDS:
        assert words in lines[0], (words, lines[0])
    return lines[0]


_ALL_OUTPUTS = [pb.OUTPUT_LABEL_MASK, pb.OUTPUT_COLOR_MASK, pb.OUTPUT_OVERLAY, pb.OUTPUT_CLASS_SHARE]


async def test_a_model_that_names_30_classes_is_served_listed_and_coloured_with_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ramp = save(ramp_model(30), tmp_path / "ramp30.onnx", ClassList.of(NAMES_30, PALETTE_30))
    # The synthetic FCN builder names a class count of its own too.
    fcn = save(build_fcn("tiny", classes=ClassList.of(NAMES_30)), tmp_path / "fcn30.onnx")
    rgb = ramp_frame(30)
    frame = codec.frame_from_array(rgb, frame_id=1, pixel_format="rgb", encoding="raw")
    config = pb.StreamConfig(outputs=_ALL_OUTPUTS, image_encoding=pb.IMAGE_ENCODING_PNG)
    with caplog.at_level(logging.INFO, logger="segstream.server.app"):
        async with _serving("--model", f"ramp={ramp}", "--model", f"fcn={fcn}") as server:
            models = await _list(server)
            [response] = await segment(server, config, [frame])
            config.model = "fcn"
            [fcn_response] = await segment(server, config, [frame])
    assert tuple(models["ramp"].class_names) == NAMES_30
    assert _colours(models["ramp"]) == PALETTE_30
    assert tuple(models["fcn"].class_names) == NAMES_30
    assert _colours(models["fcn"]) == generated_palette(30).tolist()
    assert f"30 classes (from the metadata of {ramp}): part 0, part 1" in caplog.text

    assert not response.HasField("error")
    labels = codec.decode_mask(response.label_mask)
    # Band k of the frame is class k: every id up to 29.
    assert labels[:, 4::8].tolist() == [list(range(30))] * rgb.shape[0]
    assert int(labels.max()) == 29
    colour = np.array(PALETTE_30, np.uint8)[labels]
    np.testing.assert_array_equal(codec.decode_image(response.color_mask), colour)
    np.testing.assert_array_equal(codec.decode_image(response.overlay), blend(rgb, colour))
    assert len(response.class_share) == 30 and response.class_share[29] == pytest.approx(1 / 30)

    fcn_labels = codec.decode_mask(fcn_response.label_mask)
    assert int(fcn_labels.max()) < 30
    np.testing.assert_array_equal(codec.decode_image(fcn_response.color_mask), generated_palette(30)[fcn_labels])


def test_30_classes_without_names_are_refused_at_startup_with_the_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ramp = save(ramp_model(30), tmp_path / "ramp30.onnx")
    line = _refused(["--model", f"ramp={ramp}"], capsys)
    assert "model ramp: output 'out' holds 30 classes and the model names none" in line


async def test_a_class_file_names_the_classes_of_a_model_whose_file_does_not(tmp_path: Path) -> None:
    ramp = save(ramp_model(30), tmp_path / "ramp30.onnx")
    names = tmp_path / "parts.txt"
    # Plain text, a comment, and a colour for class 1 only: the others keep the generated palette.
    names.write_text("# my parts\n" + "\n".join(f"{n} #ff8000" if n == "part 1" else n for n in NAMES_30) + "\n")
    async with _serving("--model", f"ramp={ramp}", "--classes", f"ramp={names}") as server:
        info = (await _list(server))["ramp"]
        rgb = ramp_frame(30)
        config = pb.StreamConfig(
            outputs=[pb.OUTPUT_LABEL_MASK, pb.OUTPUT_COLOR_MASK], image_encoding=pb.IMAGE_ENCODING_PNG
        )
        [response] = await segment(server, config, [codec.frame_from_array(rgb, pixel_format="rgb")])
    assert tuple(info.class_names) == NAMES_30
    expected = generated_palette(30).tolist()
    expected[1] = [255, 128, 0]
    assert _colours(info) == expected
    labels = codec.decode_mask(response.label_mask)
    np.testing.assert_array_equal(codec.decode_image(response.color_mask), np.array(expected, np.uint8)[labels])


def test_an_identity_model_is_refused_without_class_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save(identity_model(), tmp_path / "identity.onnx")
    line = _refused(["--model", str(model)], capsys)
    assert "model identity: output 'out' holds 3 classes and the model names none" in line


async def test_an_identity_model_is_served_once_its_classes_are_named(tmp_path: Path) -> None:
    model = save(identity_model(), tmp_path / "identity.onnx")
    names = tmp_path / "channels.json"
    palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    names.write_text(json.dumps({"classes": ["red", "green", "blue"], "palette": palette}))
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:, :32, 0] = 255
    frame[:, 32:64, 1] = 255
    frame[:, 64:, 2] = 255
    async with _serving("--model", str(model), "--classes", str(names)) as server:
        info = (await _list(server))["identity"]
        [response] = await segment(server, None, [codec.frame_from_array(frame, pixel_format="rgb")])
    assert list(info.class_names) == ["red", "green", "blue"] and _colours(info) == palette
    labels = codec.decode_mask(response.label_mask)
    assert labels[:, [16, 48, 80]].tolist() == [[0, 1, 2]] * 64


def test_an_output_named_logits_is_refused_naming_the_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save(ramp_model(5, output="logits"), tmp_path / "seg.onnx", ClassList.of(["a", "b", "c", "d", "e"]))
    line = _refused(["--model", f"seg={model}"], capsys)
    assert "model seg: none of the heads ['out', 'aux'] among its outputs ['logits']" in line
    assert "serve an output as a head with --head seg:out=logits" in line


async def test_an_output_named_logits_is_served_once_mapped_to_a_head(tmp_path: Path) -> None:
    model = save(ramp_model(5, output="logits"), tmp_path / "seg.onnx", ClassList.of(["a", "b", "c", "d", "e"]))
    rgb = ramp_frame(5)
    async with _serving("--model", f"seg={model}", "--head", "out=logits") as server:
        info = (await _list(server))["seg"]
        [response] = await segment(server, None, [codec.frame_from_array(rgb, pixel_format="rgb")])
    assert list(info.heads) == [pb.HEAD_OUT] and list(info.class_names) == ["a", "b", "c", "d", "e"]
    assert codec.decode_mask(response.label_mask)[:, 4::8].tolist() == [[0, 1, 2, 3, 4]] * rgb.shape[0]


async def test_a_21_class_model_that_names_nothing_is_taken_for_pascal_voc(tmp_path: Path) -> None:
    bare = build_fcn("tiny")
    del bare.metadata_props[:]
    path = save(bare, tmp_path / "bare21.onnx")
    async with _serving("--model", f"bare={path}") as server:
        info = (await _list(server))["bare"]
    assert tuple(info.class_names) == VOC_CLASSES
    assert _colours(info) == voc_palette().tolist()
    assert not info.synthetic  # the synthetic mark went with the metadata


def test_a_class_count_that_differs_from_the_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ramp = save(ramp_model(30), tmp_path / "ramp30.onnx")
    names = tmp_path / "voc.txt"
    names.write_text("\n".join(VOC_CLASSES))
    line = _refused(["--model", f"ramp={ramp}", "--classes", str(names)], capsys)
    assert f"{names} names 21 classes but output 'out' holds 30" in line

    labelled = save(ramp_model(30), tmp_path / "wrong.onnx", ClassList.of(["a", "b", "c"]))
    line = _refused(["--model", f"wrong={labelled}"], capsys)
    assert f"the metadata of {labelled} names 3 classes but output 'out' holds 30" in line


async def test_the_file_s_own_names_come_before_a_class_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ramp = save(ramp_model(3), tmp_path / "ramp3.onnx", ClassList.of(["sky", "sea", "sand"]))
    names = tmp_path / "other.txt"
    names.write_text("x\ny\nz\n")
    with caplog.at_level(logging.WARNING):
        async with _serving("--model", f"ramp={ramp}", "--classes", f"ramp={names}") as server:
            info = (await _list(server))["ramp"]
    assert list(info.class_names) == ["sky", "sea", "sand"]
    assert f"--classes {names} is not used" in caplog.text
