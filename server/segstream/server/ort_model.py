"""ONNX Runtime implementation of the Model seam: serving graphs run with IOBinding.

Each head gets its own session(s) on the serving graph of that head (segstream.models.serving), so
the other head costs nothing and only uint8 frames go in and uint8 labels (plus two small score
tensors) come out. Each worker thread owns its bindings and pre-allocated buffers, keyed by batch
shape and reused across frames; the same path serves CPU and GPU providers: on a GPU the frames
are copied into a device buffer on the configured device and ONNX Runtime writes the results into
the bound host buffers.

On a GPU the graph resizes the logits to the output size before the argmax. On the CPU the graph
stops at the inference size and segstream.server.upsample gives the labels at the output size from
there, strip by strip: the same labels without resizing every logit channel to the full frame
(4 bytes per class per output pixel, 1.85 GB for a 22-megapixel frame).

Where one session serializes its runs (TensorRT, CUDA graphs) a head gets several sessions and
each worker thread sticks to one of them. With CUDA graphs every binding (head, batch shape, output
size) also gets its own graph id and device-resident outputs, because a captured graph replays with
the addresses it was captured with.
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

from segstream.models.classes import ClassList
from segstream.models.graph import is_synthetic
from segstream.models.serving import CONFIDENCE, FRAMES, LABELS, LOGITS, OUTPUT_SIZE, serving_graph
from segstream.server import cores, label_kernel
from segstream.server.buckets import Bucket
from segstream.server.config import Device, ModelSpec
from segstream.server.contract import check_model
from segstream.server.engine import HEADS, BatchResult, EngineError, U8Array
from segstream.server.gpu_options import CUDA, TENSORRT, GpuOptions, serializes_runs, session_count
from segstream.server.providers import CPU, check_loaded, provider_list
from segstream.server.upsample import upsample_labels

log = logging.getLogger(__name__)

# Distinct batch shapes whose buffers one worker keeps; frames of a stream share one shape,
# so a handful covers several streams with different frame sizes.
_BINDINGS_PER_WORKER = 8
# CUDA graphs one session captures (each holds its own device memory); later shapes run uncaptured.
_GRAPHS_PER_SESSION = 32
# ONNX Runtime's run option naming the CUDA graph a run captures or replays; -1 runs without one.
_GRAPH_ID_KEY = "gpu_graph_id"
# The binding-cache index of the CPU's one-thread session (the sessions proper are 0..n-1).
_NARROW = 1 << 16
_NO_GRAPH = "-1"


@dataclass
class _Binding:
    io: Any  # onnxruntime.IOBinding
    frames: U8Array  # host staging buffer [N, H, W, 3]
    device_frames: Any  # onnxruntime.OrtValue on the device, or None on the CPU
    output_size: Any  # keeps the bound int64 [2] buffer alive
    result: BatchResult
    device_outputs: tuple[Any, ...] | None = None  # OrtValues the CUDA graph writes (labels, confidence, share)
    run_options: Any = None  # onnxruntime.RunOptions carrying the graph id, or None
    graph_id: int | None = None
    # Host upsampling: the graph's labels at the inference size [N, h, w]; None when the graph resizes.
    inference_labels: U8Array | None = None


class OrtModel:
    """One ONNX model served by ONNX Runtime."""

    def __init__(
        self,
        spec: ModelSpec,
        device: Device = "auto",
        threads: int = 0,
        heads: Sequence[str] = HEADS,
        gpu: GpuOptions | None = None,
        max_batch: int = 1,
        workers: int = 0,
        cpu_resize_in_graph: bool = False,
        buckets: Sequence[Bucket] = (),
    ) -> None:
        """Loads the model's serving graphs; raises EngineError saying what to check.

        The model must meet segstream.server.contract (one image input, logits heads, named
        classes); `heads` are the heads to serve where the model has them.

        `buckets` are the server's --buckets: CUDA graphs need them and TensorRT builds its profile from them.

        `cpu_resize_in_graph` makes the CPU provider resize the logits in the graph as GPU providers
        do (memory grows with the output size; kept to compare against the host upsampling).
        """
        self._name = spec.name
        gpu = gpu or GpuOptions()
        try:
            gpu.check(device, buckets)
        except ValueError as exc:
            raise EngineError(f"model {spec.name}: {exc}") from exc
        try:
            proto = onnx.load(str(spec.path))
        except Exception as exc:
            raise EngineError(f"model {spec.name}: cannot read {spec.path}: {exc}") from exc
        # Refuses, with the contract, a model whose input, outputs or classes do not fit.
        served = check_model(proto, spec, heads)
        self._heads = served.heads
        self._outputs = dict(served.outputs)
        self._classes = served.classes
        self._synthetic = is_synthetic(proto)
        try:
            self._providers = provider_list(device, gpu, max_batch, buckets)
        except EngineError as exc:
            raise EngineError(f"model {spec.name}: {exc}") from exc
        wanted = _provider_name(self._providers[0])
        if wanted == TENSORRT:
            _prepare_tensorrt(spec.name, gpu, buckets)
        self._options = ort.SessionOptions()
        self._options.intra_op_num_threads = threads
        self._options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._options.log_severity_level = 3
        # Idle ONNX Runtime threads would otherwise spin for work and take the cores that decoding,
        # gRPC and the next batch's set-up need between runs.
        self._options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._path = spec.path
        self._float16 = gpu.fp16 and wanted == CUDA
        self._host_upsample = wanted == CPU and not cpu_resize_in_graph
        self._graph_bytes: dict[str, bytes] = {}
        self._proto = proto
        first = {head: self._load(head) for head in self._heads}
        self._provider = check_loaded(device, self._providers, next(iter(first.values())), spec.name)
        # --device auto on a machine whose CUDA did not load: the CPU gets its own graph variant.
        if self._provider == CPU and wanted != CPU and (self._float16 or not cpu_resize_in_graph):
            if self._float16:
                # float16 would only slow the CPU down.
                log.warning("model %s: --fp16 ignored on the CPU, serving the float32 graph", spec.name)
                self._float16 = False
            # The graph that leaves the upsampling to the host (memory bounded whatever the frame size).
            self._host_upsample = not cpu_resize_in_graph
            self._graph_bytes.clear()
            first = {head: self._load(head) for head in self._heads}
        self._device_id = gpu.device_id
        self._on_device = self._provider != CPU
        self._graphs = gpu.cuda_graph and self._provider == CUDA
        count = session_count(self._provider, gpu, workers)
        self._sessions: dict[str, list[ort.InferenceSession]] = {
            head: [session, *(self._load(head) for _ in range(count - 1))] for head, session in first.items()
        }
        # On a CPU with several workers, a run that starts while another is running gets a session with
        # its share of the cores: two runs on one all-core session cost 89-94 core-ms a frame, two
        # one-thread runs 77-85 (2 cores, the synthetic FCN-ResNet50 at 64x85), while a run alone
        # keeps every core.
        self._narrow: dict[str, ort.InferenceSession] = {}
        all_threads = threads or cores.available_cores()
        workers = workers or cores.default_cpu_workers()
        share = max(1, all_threads // workers)
        if self._provider == CPU and workers != 1 and share < all_threads:
            self._options.intra_op_num_threads = share
            self._narrow = {head: self._load(head) for head in self._heads}
            self._options.intra_op_num_threads = threads
        self._running = 0
        # Threads the host upsampling may split over when no network run is in progress (one
        # stream, or a lull): the cores would otherwise idle while one thread makes the label map.
        self._upsample_parts = all_threads
        if self._host_upsample:
            # Compiles the label kernel (or loads it from Numba's cache) now, while the model loads,
            # rather than on the first frame whose output size differs from the inference size.
            label_kernel.available()
        self.concurrent_runs = 0  # runs that started while another was running (on the narrower session)
        self._graph_bytes.clear()
        del self._proto
        # A session that serializes its runs anyway gets a lock, so that a CUDA graph is never
        # captured while another thread launches kernels on the same stream.
        serial = serializes_runs(self._provider, gpu)
        self._session_locks = [threading.Lock() if serial else None for _ in range(count)]
        self._next_graph_id = [1] * count  # ONNX Runtime reserves id 0
        self._counter_lock = threading.Lock()
        self._next_session = 0
        self._local = threading.local()
        log.info(
            "model %s: %d session(s) per head on %s%s%s%s",
            spec.name,
            count,
            self._provider,
            ", float16" if self._float16 else "",
            ", CUDA graphs" if self._graphs else "",
            f", and a {share}-thread session for runs that overlap" if self._narrow else "",
        )

    def _load(self, head: str) -> ort.InferenceSession:
        graph = self._graph_bytes.get(head)
        try:
            if graph is None:
                graph = self._graph_bytes[head] = _serving_bytes(
                    self._proto, self._outputs[head], self._float16, resize_in_graph=not self._host_upsample
                )
            return ort.InferenceSession(graph, self._options, providers=self._providers)
        except EngineError as exc:
            raise EngineError(f"model {self._name}: {exc}") from exc
        except Exception as exc:
            raise EngineError(f"model {self._name}: ONNX Runtime cannot load {self._path}: {exc}") from exc

    @property
    def name(self) -> str:
        """The name clients address the model by."""
        return self._name

    @property
    def provider(self) -> str:
        """The execution provider really running the model."""
        return self._provider

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads it serves, each with its own sessions."""
        return self._heads

    @property
    def classes(self) -> ClassList:
        """Its class names and colours: from its file's metadata, its --classes file, or Pascal VOC's."""
        return self._classes

    @property
    def outputs(self) -> dict[str, str]:
        """The graph output each head is served from (a --head mapping, else the head's own name)."""
        return dict(self._outputs)

    @property
    def synthetic(self) -> bool:
        """True when the weights are random (masks are meaningless)."""
        return self._synthetic

    @property
    def float16(self) -> bool:
        """Whether the float16 variant of the graph is being served."""
        return self._float16

    @property
    def sessions_per_head(self) -> int:
        """Sessions each head has; the workers share them out."""
        return len(self._session_locks)

    @property
    def cuda_graphs(self) -> bool:
        """Whether runs are captured and replayed as CUDA graphs."""
        return self._graphs

    @property
    def overlap_session(self) -> bool:
        """Whether a CPU run that starts while another is running takes a one-thread session of its own."""
        return bool(self._narrow)

    @property
    def host_upsample(self) -> bool:
        """Whether labels are upsampled to the output size on the host (CPU) rather than in the graph."""
        return self._host_upsample

    def run(self, head: str, frames: Sequence[U8Array], output_size: tuple[int, int]) -> BatchResult:
        """Segments N frames of one shape; see Model.run (results live in this thread's buffers)."""
        sessions = self._sessions.get(head)
        if sessions is None:
            raise EngineError(f"model {self._name} does not serve head {head!r} (heads: {list(self._heads)})")
        shape = (len(frames), *frames[0].shape)
        narrow = self._narrow.get(head)
        if narrow is None:
            index = self._session_index()
            binding = self._binding(head, index, sessions[index], shape, output_size)
            self._run(index, sessions[index], binding, frames)
        else:
            with self._counter_lock:
                alone = self._running == 0
                self._running += 1
                self.concurrent_runs += not alone
            try:
                index, session = (0, sessions[0]) if alone else (_NARROW, narrow)
                binding = self._binding(head, index, session, shape, output_size)
                self._run(index, session, binding, frames)
            finally:
                # Counted down when the network is done, before the host upsampling: a run that
                # starts while the other worker only upsamples has the cores to itself.
                with self._counter_lock:
                    self._running -= 1
        if self._host_upsample:
            _upsample(binding, self._upsample_parts if self._running == 0 else 1)
        return binding.result

    def frames_devices(self) -> set[str]:
        """Where the calling thread's bindings hold their `frames` input ('cuda' or 'cpu')."""
        cache: OrderedDict[tuple[Any, ...], _Binding] | None = getattr(self._local, "cache", None)
        if cache is None:
            return set()
        return {"cpu" if b.device_frames is None else str(b.device_frames.device_name()) for b in cache.values()}

    def _run(
        self,
        index: int,
        session: ort.InferenceSession,
        binding: _Binding,
        frames: Sequence[U8Array],
    ) -> None:
        for i, frame in enumerate(frames):
            binding.frames[i] = frame
        lock = self._session_locks[index] if index < len(self._session_locks) else None
        if lock is not None:
            lock.acquire()
        try:
            if binding.device_frames is not None:
                binding.device_frames.update_inplace(binding.frames)
            session.run_with_iobinding(binding.io, binding.run_options)
            binding.io.synchronize_outputs()
            if binding.device_outputs is not None:
                result = binding.result
                arrays: tuple[np.ndarray[Any, Any], ...] = (result.labels, result.confidence)
                for value, array in zip(binding.device_outputs, arrays, strict=True):
                    np.copyto(array, value.numpy())
        finally:
            if lock is not None:
                lock.release()

    def _session_index(self) -> int:
        index: int | None = getattr(self._local, "session", None)
        if index is None:
            with self._counter_lock:
                index = self._next_session % len(self._session_locks)
                self._next_session += 1
            self._local.session = index
        return index

    def _binding(
        self,
        head: str,
        index: int,
        session: ort.InferenceSession,
        shape: tuple[int, ...],
        output_size: tuple[int, int],
    ) -> _Binding:
        cache: OrderedDict[tuple[Any, ...], _Binding] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        key = (head, index, *shape, *output_size)
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
        binding = self._new_binding(session, shape, output_size, self._new_graph_id(index))
        cache[key] = binding
        if len(cache) > (_GRAPHS_PER_SESSION if self._graphs else _BINDINGS_PER_WORKER):
            (evicted_head, evicted_index, *_), evicted = cache.popitem(last=False)
            if evicted.graph_id is not None:
                # Its buffers go away, so its graph must never replay: the id is not reused, and
                # ONNX Runtime versions that can release a captured graph free its memory now.
                release = getattr(self._sessions[evicted_head][evicted_index], "release_captured_graph", None)
                if release is not None:
                    release(evicted.graph_id)
        return binding

    def _new_graph_id(self, index: int) -> int | None:
        if not self._graphs:
            return None
        with self._counter_lock:
            graph_id = self._next_graph_id[index]
            if graph_id > _GRAPHS_PER_SESSION:
                return None
            self._next_graph_id[index] = graph_id + 1
        return graph_id

    def _new_binding(
        self,
        session: ort.InferenceSession,
        shape: tuple[int, ...],
        output_size: tuple[int, int],
        graph_id: int | None,
    ) -> _Binding:
        n = shape[0]
        frames = np.empty(shape, np.uint8)
        size = np.array(output_size, np.int64)
        result = BatchResult(
            labels=np.empty((n, *output_size), np.uint8),
            confidence=np.empty(n, np.float32),
        )
        if self._host_upsample:
            return self._new_host_binding(session, frames, size, result)
        io = session.io_binding()
        device_frames = None
        if self._on_device:
            device_frames = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.uint8, "cuda", self._device_id)
            io.bind_ortvalue_input(FRAMES, device_frames)
        else:
            # The session reads the host buffer in place: no copy at all.
            io.bind_input(FRAMES, "cpu", 0, np.uint8, list(shape), frames.ctypes.data)
        # Resize reads its target size on the host whatever the provider.
        io.bind_input(OUTPUT_SIZE, "cpu", 0, np.int64, [2], size.ctypes.data)
        outputs = ((LABELS, result.labels), (CONFIDENCE, result.confidence))
        device_outputs = None
        run_options = None
        if graph_id is not None:
            # A replayed graph writes where it wrote when captured, and ONNX Runtime copies nothing
            # back on a replay: the outputs live on the device and are copied out after each run.
            device_outputs = tuple(
                ort.OrtValue.ortvalue_from_shape_and_type(list(a.shape), a.dtype, "cuda", self._device_id)
                for _, a in outputs
            )
            for (name, _), value in zip(outputs, device_outputs, strict=True):
                io.bind_ortvalue_output(name, value)
        else:
            for name, array in outputs:
                io.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        if self._graphs:
            run_options = ort.RunOptions()
            run_options.add_run_config_entry(_GRAPH_ID_KEY, _NO_GRAPH if graph_id is None else str(graph_id))
        return _Binding(
            io=io,
            frames=frames,
            device_frames=device_frames,
            output_size=size,
            result=result,
            device_outputs=device_outputs,
            run_options=run_options,
            graph_id=graph_id,
        )

    def _new_host_binding(
        self, session: ort.InferenceSession, frames: U8Array, size: Any, result: BatchResult
    ) -> _Binding:
        """A CPU binding on the graph whose outputs stay at the inference size."""
        n, height, width, _ = frames.shape
        io = session.io_binding()
        io.bind_input(FRAMES, "cpu", 0, np.uint8, list(frames.shape), frames.ctypes.data)
        # At the inference size the graph's labels are the result; otherwise they feed the upsampling.
        same = result.labels.shape[1:] == (height, width)
        labels = result.labels if same else np.empty((n, height, width), np.uint8)
        io.bind_output(LABELS, "cpu", 0, np.uint8, list(labels.shape), labels.ctypes.data)
        io.bind_output(CONFIDENCE, "cpu", 0, np.float32, [n], result.confidence.ctypes.data)
        # ONNX Runtime allocates the logits (it knows the class count); see _upsample.
        io.bind_output(LOGITS, "cpu")
        return _Binding(
            io=io,
            frames=frames,
            device_frames=None,
            output_size=size,
            result=result,
            inference_labels=None if same else labels,
        )

    def close(self) -> None:
        """Drops the sessions (and with them their device memory)."""
        self._sessions.clear()
        self._narrow.clear()


def _upsample(binding: _Binding, parts: int) -> None:
    """The labels at the output size from the graph's labels and logits at the inference size.

    `parts`: the threads it may use (see upsample_labels).
    """
    labels = binding.inference_labels
    io = binding.io
    if labels is not None:  # None: the output size is the inference size
        logits = np.from_dlpack(io.get_outputs()[2])  # bound order: labels, confidence, logits
        for i in range(labels.shape[0]):
            upsample_labels(labels[i], logits[i], binding.result.labels[i], parts)
        del logits
    # Binding the output afresh lets go of this run's logits, so that an idle binding in the
    # worker's cache holds no float tensor.
    io.bind_output(LOGITS, "cpu")


def _serving_bytes(proto: onnx.ModelProto, output: str, float16: bool, resize_in_graph: bool = True) -> bytes:
    if float16:
        from segstream.models.fp16 import Float16Unavailable, fcn_to_float16
        from segstream.models.graph import keep_outputs

        try:
            proto = fcn_to_float16(keep_outputs(proto, [output]))
        except Float16Unavailable as exc:
            raise EngineError(f"--fp16: {exc}") from exc
    return bytes(serving_graph(proto, output, resize_in_graph).SerializeToString())


def _prepare_tensorrt(model: str, gpu: GpuOptions, buckets: Sequence[Bucket]) -> None:
    if gpu.trt_cache_dir is not None:
        try:
            gpu.trt_cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineError(f"model {model}: --trt-cache-dir {gpu.trt_cache_dir}: {exc}") from exc
    else:
        log.warning("model %s: no --trt-cache-dir, so TensorRT builds its engines again on every start", model)
    if not buckets:
        log.warning(
            "model %s: TensorRT without --buckets builds a new engine whenever a frame shape falls outside "
            "the ones seen so far; pass --buckets to build one engine for all of them up front",
            model,
        )


def _provider_name(provider: str | tuple[str, Any]) -> str:
    return provider if isinstance(provider, str) else provider[0]
