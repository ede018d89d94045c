"""The synthetic FCN builder: contract, architecture, run-ability and determinism."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segstream.models.build import (
    ARCH_KEY,
    OPSET,
    SEED_KEY,
    SYNTHETIC_KEY,
    WARNING_KEY,
    build_fcn,
)
from segstream.models.serving import MEAN, STD

SEED_IMAGE = "000000017968.jpg"
# Byte sizes of the published opset-11 files (MODEL.md): a same-topology graph is within a few KB.
PUBLISHED_BYTES = {"resnet50": 141_193_553, "resnet101": 217_069_155}


def _seed_data_dir() -> Path | None:
    candidates = [
        os.environ.get("SEGSTREAM_SEED_DATA", ""),
        str(Path(__file__).resolve().parents[2] / "samples"),
        str(Path(__file__).resolve().parents[2] / "shared" / "seed-data"),
        "/work/shared/seed-data",
    ]
    return next((Path(c) for c in candidates if c and (Path(c) / SEED_IMAGE).is_file()), None)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _conv(model: onnx.ModelProto, name: str) -> dict[str, list[int]]:
    node = next(n for n in model.graph.node if n.name == name)
    assert node.op_type == "Conv"
    return {a.name: list(a.ints) for a in node.attribute if a.ints}


@pytest.fixture(scope="module")
def tiny() -> onnx.ModelProto:
    return build_fcn("tiny", seed=0)


@pytest.fixture(scope="module")
def resnet50() -> onnx.ModelProto:
    return build_fcn("resnet50", seed=0)


def test_interface_matches_the_published_contract(tiny: onnx.ModelProto) -> None:
    onnx.checker.check_model(tiny, full_check=True)
    assert [(o.domain, o.version) for o in tiny.opset_import] == [("", OPSET)]
    assert [i.name for i in tiny.graph.input] == ["input"]
    assert _dims(tiny.graph.input[0]) == ["batch", 3, "height", "width"]
    assert [o.name for o in tiny.graph.output] == ["out", "aux"]
    for output in tiny.graph.output:
        assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert _dims(output) == ["batch", 21, "height", "width"]
    resize = [n for n in tiny.graph.node if n.op_type == "Resize"]
    assert sorted(n.output[0] for n in resize) == ["aux", "out"]
    for node in resize:
        attrs = {a.name: a.s.decode() for a in node.attribute}
        assert attrs == {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}


def test_metadata_marks_the_model_synthetic(tiny: onnx.ModelProto) -> None:
    meta = {p.key: p.value for p in tiny.metadata_props}
    assert meta[SYNTHETIC_KEY] == "true"
    assert meta[ARCH_KEY] == "tiny"
    assert meta[SEED_KEY] == "0"
    assert "random" in meta[WARNING_KEY] and "meaningless" in meta[WARNING_KEY]


def test_resnet50_follows_torchvision_layout(resnet50: onnx.ModelProto) -> None:
    # Stem + 16 bottlenecks x 3 + 4 projections + 2 convs in each of the two heads.
    assert sum(n.op_type == "Conv" for n in resnet50.graph.node) == 1 + 16 * 3 + 4 + 2 * 2
    assert not any(n.op_type in ("BatchNormalization", "Dropout") for n in resnet50.graph.node)
    assert _conv(resnet50, "backbone.conv1") == {
        "kernel_shape": [7, 7], "strides": [2, 2], "pads": [3, 3, 3, 3], "dilations": [1, 1]
    }  # fmt: skip
    # layer2 strides; layer3/layer4 dilate instead, their first block keeping the previous dilation.
    expected = {
        "backbone.layer2.0.conv2": ([2, 2], [1, 1]),
        "backbone.layer3.0.conv2": ([1, 1], [1, 1]),
        "backbone.layer3.1.conv2": ([1, 1], [2, 2]),
        "backbone.layer3.5.conv2": ([1, 1], [2, 2]),
        "backbone.layer4.0.conv2": ([1, 1], [2, 2]),
        "backbone.layer4.2.conv2": ([1, 1], [4, 4]),
    }
    for name, (strides, dilations) in expected.items():
        attrs = _conv(resnet50, name)
        assert (attrs["strides"], attrs["dilations"]) == (strides, dilations), name
        assert attrs["pads"] == [dilations[0]] * 4, name
    assert _conv(resnet50, "backbone.layer3.0.downsample")["strides"] == [1, 1]
    weights = {t.name: list(t.dims) for t in resnet50.graph.initializer}
    assert weights["classifier.0.weight"] == [512, 2048, 3, 3]
    assert weights["classifier.4.weight"] == [21, 512, 1, 1]
    assert weights["aux_classifier.0.weight"] == [256, 1024, 3, 3]
    assert weights["aux_classifier.4.weight"] == [21, 256, 1, 1]


def test_resnet50_weighs_as_much_as_the_published_file(resnet50: onnx.ModelProto) -> None:
    assert resnet50.ByteSize() == pytest.approx(PUBLISHED_BYTES["resnet50"], rel=1e-3)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 72, 96)])
def test_tiny_runs_at_any_size(tiny: onnx.ModelProto, shape: tuple[int, int, int, int]) -> None:
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    out, aux = _session(tiny).run(["out", "aux"], {"input": x})
    for logits in (out, aux):
        assert logits.shape == (shape[0], 21, shape[2], shape[3])
        assert logits.dtype == np.float32
        assert np.isfinite(logits).all()


def test_tiny_masks_vary_across_a_real_photo(tiny: onnx.ModelProto) -> None:
    cv2 = pytest.importorskip("cv2")
    seed_dir = _seed_data_dir()
    if seed_dir is None:
        pytest.skip(f"seed data ({SEED_IMAGE}) not found; set SEGSTREAM_SEED_DATA")
    bgr = cv2.imread(str(seed_dir / SEED_IMAGE))
    height, width = bgr.shape[:2]
    scale = 96 / min(height, width)
    resized = cv2.resize(bgr, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
    rgb = resized[:, :, ::-1].astype(np.float32) / 255.0
    x = ((rgb - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1)[None].copy()
    out, aux = _session(tiny).run(["out", "aux"], {"input": x})
    assert out.shape == aux.shape == (1, 21, *resized.shape[:2])
    assert np.isfinite(out).all() and np.isfinite(aux).all()
    assert len(np.unique(out.argmax(axis=1))) >= 3
    assert len(np.unique(aux.argmax(axis=1))) >= 3


def test_same_seed_same_bytes_other_seed_other_weights(tiny: onnx.ModelProto) -> None:
    assert build_fcn("tiny", seed=0).SerializeToString() == tiny.SerializeToString()
    other = build_fcn("tiny", seed=1)
    weights = {t.name: t.raw_data for t in tiny.graph.initializer}
    other_weights = {t.name: t.raw_data for t in other.graph.initializer}
    assert other_weights.keys() == weights.keys()
    assert other_weights["classifier.4.weight"] != weights["classifier.4.weight"]
    assert {p.key: p.value for p in other.metadata_props}[SEED_KEY] == "1"


def test_unknown_arch_is_rejected() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        build_fcn("resnet18")
