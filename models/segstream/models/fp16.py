"""Float16 variant of an FCN for GPU serving: half the weight bytes, tensor-core convolutions.

The FCN itself (backbone and heads) is converted with onnxconverter-common's float16 converter;
its input `input` and its logits outputs stay float32, so `segstream.models.serving.serving_graph`
wraps the result exactly as it wraps the float32 model and the serving postprocessing (Resize to
the output size, ArgMax, ReduceMax/ReduceMean, Equal, Cast) keeps running in float32, where the
confidence and class-share averages need the precision. Operators the converter keeps in float32
by default (its block list, which includes Resize) get Cast nodes around them.

Example:
    >>> from segstream.models.build import build_fcn
    >>> half = fcn_to_float16(build_fcn("tiny"))
    >>> [o.type.tensor_type.elem_type for o in half.graph.output]  # float32 logits
    [1, 1]
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import onnx
from onnx import TensorProto

CONVERTER_PACKAGE = "onnxconverter-common"
# Weights below this magnitude are flushed to it instead of to zero (float16's smallest normal is 6.1e-5).
MIN_POSITIVE = 1e-7
MAX_FINITE = 1e4


class Float16Unavailable(RuntimeError):
    """The float16 converter (onnxconverter-common) is not installed."""


def _converter() -> Any:
    try:
        return importlib.import_module("onnxconverter_common.float16")
    except ImportError as exc:
        raise Float16Unavailable(
            f"the float16 model variant needs {CONVERTER_PACKAGE}: pip install '{CONVERTER_PACKAGE}>=1.16'"
        ) from exc


def fcn_to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of an FCN whose float32 inputs and outputs keep their names and type.

    Raises Float16Unavailable when onnxconverter-common is missing and ValueError when the model is
    already float16.
    """
    converter = _converter()
    float_outputs = [o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
    with warnings.catch_warnings():
        # "the float32 number 1e-09 will be truncated to 1e-07": expected for random and real weights alike.
        warnings.simplefilter("ignore", UserWarning)
        half: onnx.ModelProto = converter.convert_float_to_float16(
            model,
            min_positive_val=MIN_POSITIVE,
            max_finite_val=MAX_FINITE,
            keep_io_types=True,
        )
    graph = half.graph
    for name in float_outputs:
        _restore_float_output(graph, name)
    _shapes_read_through_casts(graph)
    onnx.checker.check_model(half)
    return half


def _restore_float_output(graph: onnx.GraphProto, name: str) -> None:
    """Makes graph output `name` float32 again.

    With keep_io_types the converter should leave the outputs float32, but when the last node is
    one it keeps in float32 (Resize) it ends the graph with that node's Cast back to float16 and
    declares the output float16. Dropping that Cast gives the float32 result directly; any other
    float16 output gets a Cast to float32.
    """
    output = next(o for o in graph.output if o.name == name)
    if output.type.tensor_type.elem_type == TensorProto.FLOAT:
        return
    producer = next(n for n in graph.node if name in n.output)
    to = next((a.i for a in producer.attribute if a.name == "to"), None)
    consumers = [n for n in graph.node if producer.output[0] in n.input]
    if (
        producer.op_type == "Cast"
        and to == TensorProto.FLOAT16
        and not consumers
        and _is_float32(graph, producer.input[0])
    ):
        source = producer.input[0]
        graph.node.remove(producer)
        for node in graph.node:
            _rename(node.output, source, name)
            _rename(node.input, source, name)
        _drop_value_info(graph, source)
    else:
        half_name = f"{name}_float16"
        for node in graph.node:
            _rename(node.output, name, half_name)
            _rename(node.input, name, half_name)
        graph.node.append(
            onnx.helper.make_node("Cast", [half_name], [name], name=f"{name}_to_float32", to=TensorProto.FLOAT)
        )
    output.type.tensor_type.elem_type = TensorProto.FLOAT


def _is_float32(graph: onnx.GraphProto, tensor: str) -> bool:
    producer = next((n for n in graph.node if tensor in n.output), None)
    if producer is not None and producer.op_type == "Cast":
        return next((a.i for a in producer.attribute if a.name == "to"), None) == TensorProto.FLOAT
    info = next((v for v in graph.value_info if v.name == tensor), None)
    return info is not None and info.type.tensor_type.elem_type == TensorProto.FLOAT


def _shapes_read_through_casts(graph: onnx.GraphProto) -> None:
    """Shape nodes read the tensor before a Cast: its shape is the same, and the Cast may then go."""
    casts = {n.output[0]: n for n in graph.node if n.op_type == "Cast"}
    for node in graph.node:
        if node.op_type == "Shape" and node.input[0] in casts:
            node.input[0] = casts[node.input[0]].input[0]
    outputs = {o.name for o in graph.output}
    read = {name for n in graph.node for name in n.input}
    for cast in casts.values():
        if cast.output[0] not in read and cast.output[0] not in outputs:
            graph.node.remove(cast)
            _drop_value_info(graph, cast.output[0])


def _rename(names: Any, old: str, new: str) -> None:
    for i, value in enumerate(names):
        if value == old:
            names[i] = new


def _drop_value_info(graph: onnx.GraphProto, name: str) -> None:
    for info in [v for v in graph.value_info if v.name == name]:
        graph.value_info.remove(info)
