"""Cost counting and output pruning on the synthetic graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segstream.models.build import build_fcn
from segstream.models.graph import count_macs, is_synthetic, keep_outputs, model_metadata

# Cost figures of the published models at 520x520 (MODEL.md).
GMAC_R50 = 152.7
GMAC_R50_OUT_ONLY = 142.7
GMAC_R101 = 232.7


@pytest.fixture(scope="module")
def tiny() -> onnx.ModelProto:
    return build_fcn("tiny", seed=3)


@pytest.fixture(scope="module")
def resnet50() -> onnx.ModelProto:
    return build_fcn("resnet50")


@pytest.fixture(scope="module")
def resnet101() -> onnx.ModelProto:
    return build_fcn("resnet101")


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


def test_resnet50_cost_matches_published_figures(resnet50: onnx.ModelProto) -> None:
    assert count_macs(resnet50, 520, 520) / 1e9 == pytest.approx(GMAC_R50, rel=0.005)
    assert count_macs(resnet50, 520, 520, ["out"]) / 1e9 == pytest.approx(GMAC_R50_OUT_ONLY, rel=0.005)


def test_resnet101_cost_matches_published_figure(resnet101: onnx.ModelProto) -> None:
    assert count_macs(resnet101, 520, 520) / 1e9 == pytest.approx(GMAC_R101, rel=0.005)


def test_cost_scales_with_the_frame(resnet50: onnx.ModelProto) -> None:
    # MODEL.md: a 1080p frame costs about 7.7 times a 520x520 one.
    ratio = count_macs(resnet50, 1080, 1920) / count_macs(resnet50, 520, 520)
    assert ratio == pytest.approx(7.7, abs=0.05)


def test_aux_head_is_the_published_share_of_the_work(resnet50: onnx.ModelProto) -> None:
    total = count_macs(resnet50, 520, 520)
    without_aux = count_macs(resnet50, 520, 520, ["out"])
    assert (total - without_aux) / total == pytest.approx(0.065, abs=0.002)


def test_count_macs_rejects_bad_arguments(tiny: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match="out, aux"):
        count_macs(tiny, 64, 64, ["logits"])
    with pytest.raises(ValueError, match="positive"):
        count_macs(tiny, 0, 64)


def test_keep_outputs_drops_the_aux_head(tiny: onnx.ModelProto) -> None:
    before = tiny.SerializeToString()
    pruned = keep_outputs(tiny, ["out"])
    assert tiny.SerializeToString() == before, "the input model must not change"
    onnx.checker.check_model(pruned, full_check=True)
    assert [o.name for o in pruned.graph.output] == ["out"]
    assert [i.name for i in pruned.graph.input] == ["input"]
    assert len(pruned.graph.node) < len(tiny.graph.node)
    assert not any(n.name.startswith("aux_classifier") for n in pruned.graph.node)
    assert not any(t.name.startswith("aux_classifier") for t in pruned.graph.initializer)
    assert model_metadata(pruned) == model_metadata(tiny)
    assert pruned.opset_import == tiny.opset_import
    assert count_macs(pruned, 64, 64) == count_macs(tiny, 64, 64, ["out"])

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 80), dtype=np.float32)
    full, only_out = _run(tiny, x), _run(pruned, x)
    assert list(only_out) == ["out"]
    np.testing.assert_array_equal(only_out["out"], full["out"])


def test_keep_outputs_aux_only_keeps_layer4_out(tiny: onnx.ModelProto) -> None:
    pruned = keep_outputs(tiny, ["aux"])
    assert [o.name for o in pruned.graph.output] == ["aux"]
    assert not any(n.name.startswith("backbone.layer4") for n in pruned.graph.node)
    assert count_macs(pruned, 64, 64) == count_macs(tiny, 64, 64, ["aux"])


def test_keep_outputs_rejects_unknown_names(tiny: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match=r"'logits'.*out, aux"):
        keep_outputs(tiny, ["logits"])
    with pytest.raises(ValueError, match="no output selected"):
        keep_outputs(tiny, [])


def test_is_synthetic(tiny: onnx.ModelProto) -> None:
    assert is_synthetic(tiny)
    assert is_synthetic(model_metadata(tiny))
    real_like = onnx.ModelProto()
    real_like.CopyFrom(tiny)
    del real_like.metadata_props[:]
    assert not is_synthetic(real_like)
    assert not is_synthetic({})
