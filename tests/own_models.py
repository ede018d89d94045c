"""Small ONNX models that are not FCNs, as users bring them: a class ramp, a pass-through, renamed outputs.

`ramp_model(C)` classifies each pixel by its red value alone: its logits are a 1x1 convolution of the
normalized input with logit_k = k * x - k^2 / 2, where x = red / 255 * (C - 1), so the argmax is
round(x) and a pixel whose red is `ramp_red(k, C)` belongs to class k. Every class id is reachable,
and what the server returns for a frame can be computed exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from segstream.models.classes import ClassList, set_class_metadata
from segstream.models.serving import MEAN, STD

U8Array = npt.NDArray[np.uint8]


def _model(
    nodes: list[onnx.NodeProto], outputs: Sequence[str], channels: int, initializers: list[onnx.TensorProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "own",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", channels, "height", "width"]) for o in outputs],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def ramp_model(num_classes: int, output: str = "out") -> onnx.ModelProto:
    """The class ramp of `num_classes` classes (see the module docstring), logits in output `output`."""
    k = np.arange(num_classes, dtype=np.float64)
    # x = red / 255 * (C - 1) = (normalized red * std + mean) * (C - 1)
    slope = STD[0] * (num_classes - 1)
    offset = MEAN[0] * (num_classes - 1)
    weight = np.zeros((num_classes, 3, 1, 1), np.float32)
    weight[:, 0, 0, 0] = k * slope
    bias = (k * offset - k * k / 2).astype(np.float32)
    conv = helper.make_node("Conv", ["input", "ramp.weight", "ramp.bias"], [output], kernel_shape=[1, 1])
    initializers = [numpy_helper.from_array(weight, "ramp.weight"), numpy_helper.from_array(bias, "ramp.bias")]
    return _model([conv], [output], num_classes, initializers)


def ramp_red(k: int, num_classes: int) -> int:
    """The red value whose pixels the ramp model of `num_classes` classes puts in class k."""
    return round(k * 255 / (num_classes - 1))


def ramp_frame(num_classes: int, height: int = 64, block: int = 8) -> U8Array:
    """An RGB frame of `num_classes` vertical bands, band k of width `block` in class k."""
    reds = np.repeat([ramp_red(k, num_classes) for k in range(num_classes)], block).astype(np.uint8)
    frame = np.zeros((height, len(reds), 3), np.uint8)
    frame[:, :, 0] = reds
    frame[:, :, 1] = 90
    return frame


def identity_model(output: str = "out") -> onnx.ModelProto:
    """A model whose output is its input: 3 "logit" channels, the normalized R, G and B."""
    return _model([helper.make_node("Identity", ["input"], [output])], [output], 3, [])


def save(model: onnx.ModelProto, path: Path, classes: ClassList | None = None) -> Path:
    """Writes `model` to `path`, naming `classes` in its metadata when given."""
    if classes is not None:
        set_class_metadata(model, classes)
    onnx.save(model, str(path))
    return path
