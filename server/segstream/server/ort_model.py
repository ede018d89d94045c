"""ONNX Runtime implementation of the Model seam, with IOBinding on every run.

Each head gets its own session on a graph pruned to that head, so the other head costs nothing.
Each worker thread owns its bindings and pre-allocated buffers (keyed by batch shape), reused
across frames; the same path serves CPU and GPU providers: on a GPU the input lives on the device
and ONNX Runtime copies the logits into the bound host buffer.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from segstream.models.graph import keep_outputs
from segstream.server.config import Device, ModelSpec
from segstream.server.engine import HEADS, EngineError, F32Array
from segstream.server.providers import CPU, check_loaded, provider_list

log = logging.getLogger(__name__)

# Distinct batch shapes whose buffers one worker keeps; frames of a stream share one shape,
# so a handful covers several streams with different aspect ratios.
_BINDINGS_PER_WORKER = 8


@dataclass
class _Binding:
    io: Any  # onnxruntime.IOBinding
    host_input: F32Array
    device_input: Any  # onnxruntime.OrtValue on the device, or None on the CPU
    output: F32Array


class OrtModel:
    """One ONNX model served by ONNX Runtime."""

    def __init__(
        self,
        spec: ModelSpec,
        device: Device = "auto",
        threads: int = 0,
        heads: Sequence[str] = HEADS,
    ) -> None:
        self._name = spec.name
        try:
            proto = onnx.load(str(spec.path))
        except Exception as exc:
            raise EngineError(f"model {spec.name}: cannot read {spec.path}: {exc}") from exc
        outputs = [o.name for o in proto.graph.output]
        inputs = [i.name for i in proto.graph.input]
        if "input" not in inputs:
            raise EngineError(f"model {spec.name}: {spec.path} has no input named 'input' (inputs: {inputs})")
        self._heads = tuple(h for h in heads if h in outputs)
        if not self._heads:
            raise EngineError(f"model {spec.name}: none of the heads {list(heads)} among outputs {outputs}")
        meta = {p.key: p.value for p in proto.metadata_props}
        self._synthetic = meta.get("segstream.synthetic") == "true"
        self._num_classes = _num_classes(proto, self._heads[0])
        self._providers = provider_list(device)
        self._device_type = "cpu"
        self._sessions: dict[str, ort.InferenceSession] = {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        for head in self._heads:
            graph = keep_outputs(proto, [head]).SerializeToString()
            try:
                session = ort.InferenceSession(graph, options, providers=self._providers)
            except Exception as exc:
                raise EngineError(f"model {spec.name}: ONNX Runtime cannot load {spec.path}: {exc}") from exc
            self._provider = check_loaded(device, self._providers, session, spec.name)
            self._sessions[head] = session
        del proto
        if self._provider != CPU:
            self._device_type = "cuda"
        self._local = threading.local()

    @property
    def name(self) -> str:
        return self._name

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def heads(self) -> tuple[str, ...]:
        return self._heads

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def synthetic(self) -> bool:
        return self._synthetic

    def run(self, head: str, batch: Sequence[F32Array]) -> F32Array:
        session = self._sessions.get(head)
        if session is None:
            raise EngineError(f"model {self._name} does not serve head {head!r} (heads: {list(self._heads)})")
        shape = (len(batch), *batch[0].shape)
        binding = self._binding(head, session, shape)
        for i, tensor in enumerate(batch):
            binding.host_input[i] = tensor
        if binding.device_input is not None:
            binding.device_input.update_inplace(binding.host_input)
        session.run_with_iobinding(binding.io)
        binding.io.synchronize_outputs()
        return binding.output

    def _binding(self, head: str, session: ort.InferenceSession, shape: tuple[int, ...]) -> _Binding:
        cache: OrderedDict[tuple[Any, ...], _Binding] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        key = (head, *shape)
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
        binding = self._new_binding(head, session, shape)
        cache[key] = binding
        if len(cache) > _BINDINGS_PER_WORKER:
            cache.popitem(last=False)
        return binding

    def _new_binding(self, head: str, session: ort.InferenceSession, shape: tuple[int, ...]) -> _Binding:
        host_input = np.empty(shape, np.float32)
        output = np.empty((shape[0], self._num_classes, shape[2], shape[3]), np.float32)
        io = session.io_binding()
        device_input = None
        if self._device_type == "cpu":
            # The session reads the host buffer in place: no copy at all.
            io.bind_input("input", "cpu", 0, np.float32, list(shape), host_input.ctypes.data)
        else:
            device_input = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cuda", 0)
            io.bind_ortvalue_input("input", device_input)
        io.bind_output(head, "cpu", 0, np.float32, list(output.shape), output.ctypes.data)
        return _Binding(io=io, host_input=host_input, device_input=device_input, output=output)

    def close(self) -> None:
        self._sessions.clear()


def _num_classes(proto: onnx.ModelProto, head: str) -> int:
    for output in proto.graph.output:
        if output.name == head:
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return 21
