"""ONNX Runtime implementation of the Model seam: serving graphs run with IOBinding.

Each head gets its own session on the serving graph of that head (segstream.models.serving), so
the other head costs nothing and only uint8 frames go in and uint8 labels (plus two small score
tensors) come out. Each worker thread owns its bindings and pre-allocated buffers, keyed by batch
shape and reused across frames; the same path serves CPU and GPU providers: on a GPU the frames
are copied into a device buffer and ONNX Runtime writes the results into the bound host buffers.
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

from segstream.models.graph import is_synthetic
from segstream.models.serving import CLASS_SHARE, CONFIDENCE, FRAMES, LABELS, OUTPUT_SIZE, serving_graph
from segstream.server.config import Device, ModelSpec
from segstream.server.engine import HEADS, BatchResult, EngineError, U8Array
from segstream.server.providers import CPU, check_loaded, provider_list

log = logging.getLogger(__name__)

# Distinct batch shapes whose buffers one worker keeps; frames of a stream share one shape,
# so a handful covers several streams with different frame sizes.
_BINDINGS_PER_WORKER = 8


@dataclass
class _Binding:
    io: Any  # onnxruntime.IOBinding
    frames: U8Array  # host staging buffer [N, H, W, 3]
    device_frames: Any  # onnxruntime.OrtValue on the device, or None on the CPU
    output_size: Any  # keeps the bound int64 [2] buffer alive
    result: BatchResult


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
        self._heads = tuple(h for h in heads if h in outputs)
        if not self._heads:
            raise EngineError(f"model {spec.name}: none of the heads {list(heads)} among outputs {outputs}")
        self._synthetic = is_synthetic(proto)
        self._num_classes = _num_classes(proto, self._heads[0])
        self._providers = provider_list(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._sessions: dict[str, ort.InferenceSession] = {}
        for head in self._heads:
            try:
                graph = serving_graph(proto, head).SerializeToString()
                session = ort.InferenceSession(graph, options, providers=self._providers)
            except Exception as exc:
                raise EngineError(f"model {spec.name}: ONNX Runtime cannot load {spec.path}: {exc}") from exc
            self._provider = check_loaded(device, self._providers, session, spec.name)
            self._sessions[head] = session
        self._on_device = self._provider != CPU
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

    def run(self, head: str, frames: Sequence[U8Array], output_size: tuple[int, int]) -> BatchResult:
        session = self._sessions.get(head)
        if session is None:
            raise EngineError(f"model {self._name} does not serve head {head!r} (heads: {list(self._heads)})")
        binding = self._binding(head, session, (len(frames), *frames[0].shape), output_size)
        for i, frame in enumerate(frames):
            binding.frames[i] = frame
        if binding.device_frames is not None:
            binding.device_frames.update_inplace(binding.frames)
        session.run_with_iobinding(binding.io)
        binding.io.synchronize_outputs()
        return binding.result

    def _binding(
        self, head: str, session: ort.InferenceSession, shape: tuple[int, ...], output_size: tuple[int, int]
    ) -> _Binding:
        cache: OrderedDict[tuple[Any, ...], _Binding] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        key = (head, *shape, *output_size)
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
        binding = self._new_binding(session, shape, output_size)
        cache[key] = binding
        if len(cache) > _BINDINGS_PER_WORKER:
            cache.popitem(last=False)
        return binding

    def _new_binding(
        self, session: ort.InferenceSession, shape: tuple[int, ...], output_size: tuple[int, int]
    ) -> _Binding:
        n = shape[0]
        frames = np.empty(shape, np.uint8)
        size = np.array(output_size, np.int64)
        result = BatchResult(
            labels=np.empty((n, *output_size), np.uint8),
            confidence=np.empty(n, np.float32),
            class_share=np.empty((n, self._num_classes), np.float32),
        )
        io = session.io_binding()
        device_frames = None
        if self._on_device:
            device_frames = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.uint8, "cuda", 0)
            io.bind_ortvalue_input(FRAMES, device_frames)
        else:
            # The session reads the host buffer in place: no copy at all.
            io.bind_input(FRAMES, "cpu", 0, np.uint8, list(shape), frames.ctypes.data)
        # Resize reads its target size on the host whatever the provider.
        io.bind_input(OUTPUT_SIZE, "cpu", 0, np.int64, [2], size.ctypes.data)
        for name, array in (
            (LABELS, result.labels),
            (CONFIDENCE, result.confidence),
            (CLASS_SHARE, result.class_share),
        ):
            io.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        return _Binding(io=io, frames=frames, device_frames=device_frames, output_size=size, result=result)

    def close(self) -> None:
        self._sessions.clear()


def _num_classes(proto: onnx.ModelProto, head: str) -> int:
    for output in proto.graph.output:
        if output.name == head:
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return 21
