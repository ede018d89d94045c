"""Inspecting and pruning ONNX graphs: metadata, multiply-accumulate counts, output selection."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import onnx
from google.protobuf.message import Message
from onnx import helper, shape_inference

from segstream.models.build import SYNTHETIC_KEY

# Initializers up to this many elements stay real constants during shape inference (Slice starts,
# Reshape targets...); larger ones are replaced by typed inputs so that no weight data is copied.
_SMALL_CONSTANT = 64


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a plain dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


def is_synthetic(model_or_metadata: onnx.ModelProto | Mapping[str, str]) -> bool:
    """True for graphs made by segstream-models build (random weights, meaningless masks)."""
    if isinstance(model_or_metadata, onnx.ModelProto):
        model_or_metadata = model_metadata(model_or_metadata)
    return model_or_metadata.get(SYNTHETIC_KEY, "").lower() == "true"


def input_names(model: onnx.ModelProto) -> list[str]:
    """Names of the graph inputs the caller must feed (initializers excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def output_names(model: onnx.ModelProto) -> list[str]:
    """Names of the graph outputs, in the graph's order."""
    return [o.name for o in model.graph.output]


def _check_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> list[str]:
    available = output_names(model)
    if isinstance(outputs, str):
        # A bare string is a sequence of characters: catch keep_outputs(model, "out") early.
        outputs = [outputs]
    if not outputs:
        raise ValueError(f"no output selected; the model's outputs are: {', '.join(available)}")
    for name in outputs:
        if name not in available:
            raise ValueError(f"unknown output {name!r}; the model's outputs are: {', '.join(available)}")
    return list(dict.fromkeys(outputs))


def _node_inputs(node: onnx.NodeProto) -> Iterable[str]:
    """Every tensor a node reads, including the outer-scope names its subgraphs capture."""
    yield from (name for name in node.input if name)
    for attr in node.attribute:
        graphs = list(attr.graphs)
        if attr.HasField("g"):
            graphs.append(attr.g)
        for graph in graphs:
            for inner in graph.node:
                yield from _node_inputs(inner)


def _needed_nodes(graph: onnx.GraphProto, outputs: Sequence[str]) -> list[int]:
    """Indices, in graph order, of the nodes that the given outputs depend on."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    needed: set[int] = set()
    pending = [producer[name] for name in outputs if name in producer]
    while pending:
        index = pending.pop()
        if index in needed:
            continue
        needed.add(index)
        pending.extend(producer[n] for n in _node_inputs(graph.node[index]) if n in producer)
    return sorted(needed)


def _copy_without_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    # Copying field by field avoids duplicating the graph's hundreds of megabytes of weights
    # only to throw most of them away again.
    shell = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name == "graph":
            continue
        if isinstance(value, Message):
            getattr(shell, field.name).CopyFrom(value)
        elif isinstance(value, str | bytes | int | float | bool):
            setattr(shell, field.name, value)
        else:
            getattr(shell, field.name).extend(value)
    return shell


def keep_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that computes only `outputs`, without the nodes and weights they don't need.

    The server uses it to drop the auxiliary head, which costs about 6.5% of the work.
    """
    selected = _check_outputs(model, outputs)
    graph = model.graph
    nodes = [graph.node[i] for i in _needed_nodes(graph, selected)]
    used = {name for node in nodes for name in _node_inputs(node)} | set(selected)
    produced = {name for node in nodes for name in node.output}
    initializers = {t.name for t in graph.initializer}

    pruned = _copy_without_graph(model)
    new = pruned.graph
    new.name = graph.name
    new.doc_string = graph.doc_string
    new.node.extend(nodes)
    new.initializer.extend(t for t in graph.initializer if t.name in used)
    new.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in used)
    # Real inputs stay even if unused so that callers feed the same interface.
    new.input.extend(i for i in graph.input if i.name not in initializers or i.name in used)
    by_name = {o.name: o for o in graph.output}
    new.output.extend(by_name[name] for name in selected)
    new.value_info.extend(v for v in graph.value_info if v.name in produced or v.name in used)
    new.quantization_annotation.extend(
        q for q in graph.quantization_annotation if q.tensor_name in produced or q.tensor_name in used
    )
    return pruned


def _shape_skeleton(model: onnx.ModelProto, nodes: list[onnx.NodeProto], height: int, width: int) -> onnx.ModelProto:
    """A weight-free copy of the graph with the image input fixed to 1x3xHxW, for shape inference."""
    graph = model.graph
    real_inputs = input_names(model)
    if not real_inputs:
        raise ValueError("the model has no input to feed")
    inputs = []
    for value in graph.input:
        if value.name == real_inputs[0]:
            elem_type = value.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
            inputs.append(helper.make_tensor_value_info(value.name, elem_type, [1, 3, height, width]))
        elif value.name in real_inputs:
            inputs.append(value)
    small = []
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= _SMALL_CONSTANT:
            small.append(tensor)
        else:
            inputs.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    skeleton_graph = helper.make_graph(nodes, graph.name, inputs, list(graph.output), initializer=small)
    skeleton = helper.make_model(skeleton_graph, opset_imports=list(model.opset_import))
    skeleton.ir_version = model.ir_version
    skeleton.functions.extend(model.functions)
    return skeleton


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    shapes: dict[str, list[int | None]] = {}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _known(shape: list[int | None] | None, what: str) -> list[int]:
    if shape is None or any(d is None for d in shape):
        raise ValueError(f"cannot infer the shape of {what}")
    return [d for d in shape if d is not None]


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, list[int | None]]) -> int:
    def shape(name: str) -> list[int]:
        return _known(shapes.get(name), f"{name!r} (input/output of {node.op_type} node {node.name!r})")

    if node.op_type == "Conv":
        # Each output element needs Cin/group * kh * kw multiply-accumulates.
        return math.prod(shape(node.output[0])) * math.prod(shape(node.input[1])[1:])
    if node.op_type == "ConvTranspose":
        # Each input element is scattered into Cout/group * kh * kw outputs.
        return math.prod(shape(node.input[0])) * math.prod(shape(node.input[1])[1:])
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        a_shape = shape(node.input[0])
        return math.prod(shape(node.output[0])) * a_shape[0 if trans_a else 1]
    if node.op_type == "MatMul":
        return math.prod(shape(node.output[0]) or [1]) * shape(node.input[0])[-1]
    return 0


def output_channels(model: onnx.ModelProto, output: str, height: int = 64, width: int = 64) -> int | None:
    """Dimension 1 (the channels, one per class for logits) of a graph output; None when it cannot be told.

    The declared shape answers when it fixes that dimension; otherwise shape inference runs on a
    weight-free copy of the graph for one 1x3xHxW input.
    """
    declared = next((o for o in model.graph.output if o.name == output), None)
    if declared is None:
        raise ValueError(f"unknown output {output!r}; the model's outputs are: {', '.join(output_names(model))}")
    dims = declared.type.tensor_type.shape.dim
    if len(dims) >= 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    try:
        nodes = [model.graph.node[i] for i in _needed_nodes(model.graph, [output])]
        skeleton = _shape_skeleton(model, nodes, height, width)
        del skeleton.graph.output[:]
        skeleton.graph.output.append(
            helper.make_tensor_value_info(output, declared.type.tensor_type.elem_type or onnx.TensorProto.FLOAT, None)
        )
        inferred = shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception:  # a graph shape inference cannot follow: the caller says what it needs instead
        return None
    shape = _shapes(inferred).get(output)
    if shape is None or len(shape) < 2 or not shape[1]:
        return None
    return shape[1]


def count_macs(model: onnx.ModelProto, height: int, width: int, outputs: Sequence[str] | None = None) -> int:
    """Multiply-accumulates of the Conv/ConvTranspose/Gemm/MatMul nodes that compute `outputs`
    (all graph outputs when None) for one 1x3xHxW image.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, not {height}x{width}")
    selected = _check_outputs(model, outputs if outputs is not None else output_names(model))
    nodes = [model.graph.node[i] for i in _needed_nodes(model.graph, selected)]
    skeleton = _shape_skeleton(model, nodes, height, width)
    inferred = shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    shapes = _shapes(inferred)
    return sum(_node_macs(node, shapes) for node in inferred.graph.node)
