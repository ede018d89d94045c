"""The serving graph: an FCN wrapped so that only uint8 data enters and leaves the device.

The resizing variant (`resize_in_graph=True`, for GPU providers):

    frames      uint8 [N, H, W, 3] RGB at the inference size
    output_size int64 [2]          (height, width) the label map is wanted at
 -> labels      uint8 [N, Hout, Wout]  argmax class ids after bilinear (half-pixel) resize of the logits
    confidence  float [N]              mean over pixels of the maximum logit, at the inference size

The host variant (`resize_in_graph=False`, for the CPU provider), whose outputs all stay at the
inference size; segstream.server.upsample then gives the labels at any output size from them
without resizing every logit channel to it:

    frames      uint8 [N, H, W, 3] RGB at the inference size
 -> labels      uint8 [N, H, W]     argmax class ids
    confidence  float [N]           mean over pixels of the maximum logit
    logits      float [N, C, H, W]  the head's logits

Normalisation (the model card's mean/std) runs as the first nodes; the other head is removed.
Every operator is opset 11 and runs on ONNX Runtime's CUDA provider.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segstream.models.graph import input_names, keep_outputs

FRAMES = "frames"
OUTPUT_SIZE = "output_size"
LABELS = "labels"
CONFIDENCE = "confidence"
LOGITS = "logits"

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_P = "segstream_serving_"  # prefix that keeps added names clear of the model's own


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, _P + name)


def serving_graph(model: onnx.ModelProto, head: str = "out", resize_in_graph: bool = True) -> onnx.ModelProto:
    """The serving graph of an FCN with one float NCHW input (`input` in the published files) and logits output `head`.

    `resize_in_graph` picks the variant (see the module docstring): labels resized to `output_size`
    in the graph, or labels and logits at the inference size for the host to upsample.
    """
    pruned = keep_outputs(model, [head])
    graph = pruned.graph
    head = _clear_serving_names(graph, head)
    inputs = input_names(pruned)
    if len(inputs) != 1:
        raise ValueError(f"the model has {len(inputs)} inputs ({', '.join(inputs)}); a served model has one, the image")
    model_input = next(i for i in graph.input if i.name == inputs[0])
    dims = model_input.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"the model's input {model_input.name!r} has {len(dims)} dimensions, not 4 (N, 3, H, W)")
    graph.input.remove(model_input)
    scale = (1.0 / (255.0 * np.array(STD, np.float32))).reshape(1, 3, 1, 1).astype(np.float32)
    offset = (-np.array(MEAN, np.float32) / np.array(STD, np.float32)).reshape(1, 3, 1, 1).astype(np.float32)
    graph.initializer.extend([_const("scale", scale), _const("offset", offset)])
    pre = [
        # Transpose while still uint8: a quarter of the bytes to move.
        helper.make_node("Transpose", [FRAMES], [_P + "nchw_u8"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", [_P + "nchw_u8"], [_P + "nchw"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [_P + "nchw", _P + "scale"], [_P + "scaled"]),
        helper.make_node("Add", [_P + "scaled", _P + "offset"], [model_input.name]),
    ]
    logits = head
    score = [
        helper.make_node("ReduceMax", [logits], [_P + "max"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", [_P + "max"], [CONFIDENCE], axes=[1, 2], keepdims=0),
    ]
    if not resize_in_graph:
        return _host_variant(pruned, pre, score, head, dims)
    graph.initializer.extend(
        [
            _const("empty_f", np.zeros(0, np.float32)),
            _const("two", np.array([2], np.int64)),
            _const("zero", np.array([0], np.int64)),
        ]
    )
    post = [
        *score,
        helper.make_node("Shape", [logits], [_P + "shape"]),
        helper.make_node("Slice", [_P + "shape", _P + "zero", _P + "two"], [_P + "nc"]),
        helper.make_node("Concat", [_P + "nc", OUTPUT_SIZE], [_P + "sizes"], axis=0),
        helper.make_node(
            "Resize",
            [logits, _P + "empty_f", _P + "empty_f", _P + "sizes"],
            [_P + "resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("ArgMax", [_P + "resized"], [_P + "argmax"], axis=1, keepdims=1),
        helper.make_node("Cast", [_P + "argmax"], [_P + "labels4"], to=TensorProto.UINT8),
        helper.make_node("Squeeze", [_P + "labels4"], [LABELS], axes=[1]),
    ]
    nodes = [*pre, *graph.node, *post]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.extend(
        [
            helper.make_tensor_value_info(FRAMES, TensorProto.UINT8, [_dim(dims[0]), _dim(dims[2]), _dim(dims[3]), 3]),
            helper.make_tensor_value_info(OUTPUT_SIZE, TensorProto.INT64, [2]),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LABELS, TensorProto.UINT8, [_dim(dims[0]), "out_height", "out_width"]),
            helper.make_tensor_value_info(CONFIDENCE, TensorProto.FLOAT, [_dim(dims[0])]),
        ]
    )
    onnx.checker.check_model(pruned)
    return pruned


def _host_variant(
    pruned: onnx.ModelProto,
    pre: list[onnx.NodeProto],
    score: list[onnx.NodeProto],
    head: str,
    dims: Sequence[onnx.TensorShapeProto.Dimension],
) -> onnx.ModelProto:
    """The graph whose outputs stay at the inference size: labels, confidence and the logits."""
    graph = pruned.graph
    post = [
        *score,
        helper.make_node("ArgMax", [head], [_P + "argmax"], axis=1, keepdims=0),
        helper.make_node("Cast", [_P + "argmax"], [LABELS], to=TensorProto.UINT8),
        # The head itself cannot be both a graph output and renamed: an Identity gives it the fixed name.
        helper.make_node("Identity", [head], [LOGITS]),
    ]
    nodes = [*pre, *graph.node, *post]
    del graph.node[:]
    graph.node.extend(nodes)
    batch = _dim(dims[0])
    graph.input.extend(
        [helper.make_tensor_value_info(FRAMES, TensorProto.UINT8, [batch, _dim(dims[2]), _dim(dims[3]), 3])]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LABELS, TensorProto.UINT8, [batch, "height", "width"]),
            helper.make_tensor_value_info(CONFIDENCE, TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [batch, "classes", "height", "width"]),
        ]
    )
    onnx.checker.check_model(pruned)
    return pruned


def _clear_serving_names(graph: onnx.GraphProto, head: str) -> str:
    """Renames the model's tensors that bear a name of the serving graph's inputs and outputs (a head
    called `logits`, an input called `frames`); returns the head's name after that."""
    used = {value.name for value in (*graph.input, *graph.output, *graph.value_info)}
    used |= {t.name for t in graph.initializer}
    used |= {name for node in graph.node for name in (*node.input, *node.output)}
    for name in (FRAMES, OUTPUT_SIZE, LABELS, CONFIDENCE, LOGITS):
        if name in used:
            _rename(graph, name, _P + "model_" + name)
            head = _P + "model_" + name if head == name else head
    return head


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
        # Subgraphs (If, Loop, Scan) may read the tensor from the outer scope.
        for attr in node.attribute:
            for sub in (*attr.graphs, *([attr.g] if attr.HasField("g") else [])):
                _rename(sub, old, new)


def _dim(dim: onnx.TensorShapeProto.Dimension) -> str | int:
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
