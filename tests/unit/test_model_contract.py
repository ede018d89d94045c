"""The serving contract, checked on ONNX graphs without loading them: each refusal names what is wrong."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from segstream.models.build import build_fcn
from segstream.models.classes import ClassList, set_class_metadata
from segstream.server.config import ModelSpec
from segstream.server.contract import CONTRACT, check_model
from segstream.server.engine import EngineError
from segstream.wire.palette import VOC_CLASSES
from tests.own_models import identity_model, ramp_model

SPEC = ModelSpec("mine", Path("mine.onnx"))


def _refusal(model: onnx.ModelProto, spec: ModelSpec = SPEC) -> str:
    with pytest.raises(EngineError) as info:
        check_model(model, spec)
    message = str(info.value)
    assert message.startswith(f"model {spec.name}: ") and message.endswith(CONTRACT)
    return message


def _named(model: onnx.ModelProto, *names: str) -> onnx.ModelProto:
    set_class_metadata(model, ClassList.of(names))
    return model


def test_the_contract_states_input_outputs_mapping_and_names() -> None:
    for words in (
        "float32 input [N, 3, H, W]",
        "mean (0.485, 0.456, 0.406)",
        "std (0.229, 0.224, 0.225)",
        "logits [N, C, H, W]",
        "'out'",
        "'aux'",
        "--head MODEL:out=OUTPUT",
        "segstream-models label",
        "--classes MODEL=FILE",
        "21-class model gets the Pascal VOC names",
    ):
        assert words in CONTRACT


def test_an_fcn_serves_both_heads_with_voc() -> None:
    model = build_fcn("tiny")
    served = check_model(model, SPEC)
    assert served.heads == ("out", "aux") and dict(served.outputs) == {"out": "out", "aux": "aux"}
    assert served.classes.source == "the metadata of mine.onnx" and served.classes.names == VOC_CLASSES
    del model.metadata_props[:]  # as the published files: 21 classes, no names
    assert check_model(model, SPEC).classes.source == "Pascal VOC (21 classes)"


def test_inputs_that_are_no_image_are_refused() -> None:
    two = identity_model()
    two.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    assert "it has 2 inputs (input, extra), not one" in _refusal(two)
    ints = identity_model()
    ints.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    assert "its input 'input' is uint8, not float32" in _refusal(ints)
    four = identity_model()
    four.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    assert "its input 'input' has 4 channels, not 3 (RGB)" in _refusal(four)


def test_outputs_that_are_no_logits_are_refused() -> None:
    flat = _named(identity_model(), "a", "b", "c")
    del flat.graph.output[0].type.tensor_type.shape.dim[3]
    assert "output 'out' has 3 dimensions, not 4 (N, C, H, W)" in _refusal(flat)
    ids = _named(identity_model(), "a", "b", "c")
    ids.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    assert "output 'out' is int64, not float32 logits" in _refusal(ids)
    one = ramp_model(2)
    one.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    assert "output 'out' has 1 channel(s); a served model has 2 to 256 classes" in _refusal(one)


def test_head_mappings_name_outputs_that_exist() -> None:
    model = _named(ramp_model(3, output="logits"), "a", "b", "c")
    served = check_model(model, ModelSpec("mine", Path("m"), head_outputs=(("out", "logits"),)))
    assert served.heads == ("out",) and dict(served.outputs) == {"out": "logits"}
    wrong = ModelSpec("mine", Path("m"), head_outputs=(("out", "scores"),))
    assert "--head mine:out=scores: the model has no output 'scores' (its outputs: logits)" in _refusal(model, wrong)


def test_class_names_must_match_the_channels() -> None:
    assert "output 'out' holds 30 classes and the model names none" in _refusal(ramp_model(30))
    message = _refusal(_named(ramp_model(30), "a", "b"))
    assert "the metadata of mine.onnx names 2 classes but output 'out' holds 30" in message


def test_an_aux_head_of_other_classes_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    model = _named(ramp_model(3), "a", "b", "c")
    extra = ramp_model(4, output="aux")
    model.graph.node.extend(extra.graph.node)
    model.graph.initializer.extend(
        onnx.helper.make_tensor(f"{t.name}.aux", t.data_type, t.dims, t.raw_data, raw=True)
        for t in extra.graph.initializer
    )
    model.graph.node[-1].input[1:] = [f"{n}.aux" for n in model.graph.node[-1].input[1:]]
    model.graph.output.extend(extra.graph.output)
    with caplog.at_level(logging.WARNING):
        served = check_model(model, SPEC)
    assert served.heads == ("out",) and len(served.classes) == 3
    assert "head aux (output 'aux') has 4 channels, head out has 3 classes: not serving aux" in caplog.text


def _unknown_channels() -> onnx.ModelProto:
    """A model whose output channels neither its declared shape nor shape inference can tell."""
    model = identity_model()
    model.graph.node[0].op_type = "Mystery"
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    dim = model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.ClearField("dim_value")
    dim.dim_param = "classes"
    return model


def test_a_class_count_the_file_does_not_fix_needs_names(caplog: pytest.LogCaptureFixture) -> None:
    assert "holds a number of classes that its shape does not fix and the model names none" in _refusal(
        _unknown_channels()
    )
    with caplog.at_level(logging.WARNING):
        served = check_model(_named(_unknown_channels(), "a", "b", "c", "d"), SPEC)
    assert len(served.classes) == 4
    assert "the class count of output 'out' is not fixed in the file; serving the 4 classes" in caplog.text


def test_an_aux_output_that_is_no_logits_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    model = _named(ramp_model(3), "a", "b", "c")
    model.graph.node.append(helper.make_node("ReduceMean", ["input"], ["aux"], axes=[1], keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["batch", "height", "width"]))
    with caplog.at_level(logging.WARNING):
        served = check_model(model, SPEC)
    assert served.heads == ("out",)
    assert "model mine: not serving head aux: output 'aux' has 3 dimensions, not 4 (N, C, H, W)" in caplog.text
    # Mapped on purpose, it is refused instead.
    mapped = ModelSpec("mine", Path("mine.onnx"), head_outputs=(("aux", "aux"),))
    assert "output 'aux' has 3 dimensions" in _refusal(model, mapped)
