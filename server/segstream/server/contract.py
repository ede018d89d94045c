"""What a model must be to be served, checked as it loads: one image input, logits heads, named classes.

`check_model` looks at the ONNX graph and the model's settings (ModelSpec: --head, --classes) and
returns which graph output each head is served from and the model's classes; a model that does not
fit is refused with an EngineError that says what is wrong and ends with CONTRACT. The classes
come from the file's metadata (segstream.models.classes), else the --classes file, else, for a
model with exactly 21 classes, the Pascal VOC names and palette.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from segstream.models.classes import (
    CLASSES_KEY,
    MAX_CLASSES,
    MIN_CLASSES,
    ClassList,
    ClassListError,
    classes_from_metadata,
    read_classes_file,
    voc_classes,
)
from segstream.models.graph import input_names, model_metadata, output_channels
from segstream.server.config import ModelSpec
from segstream.server.engine import HEADS, EngineError
from segstream.wire.palette import VOC_CLASSES

log = logging.getLogger(__name__)

CONTRACT = (
    "a served model takes one float32 input [N, 3, H, W] (RGB scaled to [0, 1], normalized with mean "
    "(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)) and gives float32 logits [N, C, H, W] at the "
    "input's size, one channel per class, in an output named 'out' (and optionally a second head 'aux'); "
    "--head MODEL:out=OUTPUT serves an output of another name; class names come from the file's metadata "
    "(segstream-models label MODEL.onnx --classes FILE writes them), else from --classes MODEL=FILE (one name "
    f"per line), else a {len(VOC_CLASSES)}-class model gets the Pascal VOC names; see docs/models.md"
)


@dataclass(frozen=True)
class ServedModel:
    """What the contract check found: the heads to serve, the graph output of each, and the classes."""

    heads: tuple[str, ...]
    outputs: Mapping[str, str]  # head -> graph output
    classes: ClassList


def refusal(spec: ModelSpec, problem: str) -> EngineError:
    """The EngineError refusing model `spec`: the problem, then the contract."""
    return EngineError(f"model {spec.name}: {problem}; {CONTRACT}")


def check_model(proto: onnx.ModelProto, spec: ModelSpec, heads: Sequence[str] = HEADS) -> ServedModel:
    """Checks `proto` against the contract; raises EngineError (ending with CONTRACT) when it cannot be served."""
    _check_input(proto, spec)
    outputs = _head_outputs(proto, spec, heads)
    channels: dict[str, int | None] = {}
    for head, output in list(outputs.items()):
        problem = _output_problem(proto, head, output)
        if problem is None:
            channels[head] = output_channels(proto, output)
        elif head == next(iter(outputs)) or head in dict(spec.head_outputs):
            raise refusal(spec, problem)
        else:
            # A second output that merely bears a head's name (an auxiliary depth map, say) is no reason to refuse.
            log.warning("model %s: not serving head %s: %s", spec.name, head, problem)
            del outputs[head]
    first = next(iter(outputs))
    classes = _classes(proto, spec, first, outputs[first], channels[first])
    for head in list(outputs)[1:]:
        if channels[head] not in (None, len(classes)):
            log.warning(
                "model %s: head %s (output %r) has %s channels, head %s has %d classes: not serving %s",
                spec.name,
                head,
                outputs[head],
                channels[head],
                first,
                len(classes),
                head,
            )
            del outputs[head]
    return ServedModel(tuple(outputs), outputs, classes)


def _check_input(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    names = input_names(proto)
    if len(names) != 1:
        raise refusal(spec, f"it has {len(names)} inputs ({', '.join(names) or 'none'}), not one")
    value = next(i for i in proto.graph.input if i.name == names[0])
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type != onnx.TensorProto.FLOAT:
        raise refusal(spec, f"its input {value.name!r} is {_type_name(value)}, not float32")
    dims = tensor.shape.dim
    if len(dims) != 4:
        raise refusal(spec, f"its input {value.name!r} has {len(dims)} dimensions, not 4 (N, 3, H, W)")
    if dims[1].HasField("dim_value") and dims[1].dim_value != 3:
        raise refusal(spec, f"its input {value.name!r} has {dims[1].dim_value} channels, not 3 (RGB)")


def _head_outputs(proto: onnx.ModelProto, spec: ModelSpec, heads: Sequence[str]) -> dict[str, str]:
    available = [o.name for o in proto.graph.output]
    mapping = dict(spec.head_outputs)
    for head, output in mapping.items():
        if output not in available:
            raise refusal(
                spec,
                f"--head {spec.name}:{head}={output}: the model has no output {output!r} "
                f"(its outputs: {', '.join(available)})",
            )
    outputs = {h: spec.output_of(h) for h in heads if spec.output_of(h) in available}
    if not outputs:
        suggestion = next((o for o in available if o not in mapping.values()), available[0] if available else "")
        raise refusal(
            spec,
            f"none of the heads {list(heads)} among its outputs {available}: "
            f"serve an output as a head with --head {spec.name}:{heads[0]}={suggestion or 'OUTPUT'}",
        )
    return outputs


def _output_problem(proto: onnx.ModelProto, head: str, output: str) -> str | None:
    """Why graph output `output` cannot serve as head `head`, or None when it can."""
    value = next(o for o in proto.graph.output if o.name == output)
    tensor = value.type.tensor_type
    what = f"head {head} (output {output!r})" if head != output else f"output {output!r}"
    if not value.type.HasField("tensor_type") or tensor.elem_type not in (0, onnx.TensorProto.FLOAT):
        return f"{what} is {_type_name(value)}, not float32 logits"
    if tensor.HasField("shape") and len(tensor.shape.dim) != 4:
        return f"{what} has {len(tensor.shape.dim)} dimensions, not 4 (N, C, H, W)"
    return None


def _classes(proto: onnx.ModelProto, spec: ModelSpec, head: str, output: str, channels: int | None) -> ClassList:
    what = f"output {output!r}" + (f" (head {head})" if head != output else "")
    if channels is not None and not MIN_CLASSES <= channels <= MAX_CLASSES:
        raise refusal(
            spec,
            f"{what} has {channels} channel(s); a served model has {MIN_CLASSES} to {MAX_CLASSES} classes "
            "(one logit channel per class, the argmax is the class id)",
        )
    try:
        classes = classes_from_metadata(model_metadata(proto), f"the metadata of {spec.path}")
        if classes is not None and spec.classes_file is not None:
            log.warning(
                "model %s: its file names its classes (%s): --classes %s is not used",
                spec.name,
                CLASSES_KEY,
                spec.classes_file,
            )
        if classes is None and spec.classes_file is not None:
            classes = read_classes_file(spec.classes_file)
    except ClassListError as exc:
        raise refusal(spec, str(exc)) from None
    if classes is None:
        voc = voc_classes()
        if channels == len(voc):
            return voc
        count = f"{channels} classes" if channels is not None else "a number of classes that its shape does not fix"
        raise refusal(
            spec,
            f"{what} holds {count} and the model names none (no {CLASSES_KEY} metadata, no --classes file)",
        )
    if channels is None:
        log.warning(
            "model %s: the class count of %s is not fixed in the file; serving the %d classes of %s",
            spec.name,
            what,
            len(classes),
            classes.source,
        )
    elif len(classes) != channels:
        raise refusal(
            spec, f"{classes.source} names {len(classes)} classes but {what} holds {channels} (C of N x C x H x W)"
        )
    return classes


def _type_name(value: onnx.ValueInfoProto) -> str:
    if not value.type.HasField("tensor_type"):
        return "not a tensor"
    elem = value.type.tensor_type.elem_type
    return onnx.TensorProto.DataType.Name(elem).lower() if elem else "of unknown type"
