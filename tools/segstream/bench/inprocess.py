"""The in-process measurements: raw ONNX Runtime alone, and the server's per-frame stages in one loop.

Both take their settings from the `ServerConfig` the server itself was started with (model file,
execution provider and its options, threads, shape buckets), and run in slices between the served
rounds, while the server idles, so nothing else competes for the cores (segstream.bench.run). The
pipeline loop calls the server's own stages (segstream.server.stages) one after the other, so it
runs by construction what the server runs per frame, without the threads, the batcher and the
transport around them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from segstream.bench.report import LoopResult
from segstream.client import StreamOptions
from segstream.models.serving import MEAN, STD
from segstream.server import stages
from segstream.server.app import load_models
from segstream.server.config import ServerConfig
from segstream.server.preprocess import resize_rgb
from segstream.server.providers import check_loaded, provider_list
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec

F32Array = npt.NDArray[np.float32]

# (x / 255 - mean) / std folded into one multiply-add per pixel, as the serving graph's first nodes do.
_SCALE = (1.0 / (255.0 * np.array(STD, np.float32))).astype(np.float32)
_OFFSET = (-np.array(MEAN, np.float32) / np.array(STD, np.float32)).astype(np.float32)


def network_shape(config: ServerConfig, height: int, width: int) -> tuple[int, int]:
    """The inference shape the server gives a height x width frame (short side --size, or a --buckets shape)."""
    return stages.Shaping.of(config).network_shape(height, width)


def normalize_into(rgb: codec.U8Array, out: F32Array) -> F32Array:
    """Writes the model card's normalised 3xHxW float32 tensor of an HxWx3 RGB uint8 image into `out`.

    The raw loop's input: the plain model file wants the float tensor the serving graph computes itself.
    """
    for c in range(3):
        # One channel at a time keeps the temporaries small and writes straight into `out`.
        np.multiply(rgb[:, :, c], _SCALE[c], out=out[c], dtype=np.float32)
        out[c] += _OFFSET[c]
    return out


class _TimedLoop:
    """A loop measured in slices: `_one` runs one iteration and returns the seconds each of `STAGES` took."""

    STAGES: tuple[str, ...]
    provider: str

    def _one(self) -> tuple[float, ...]:
        raise NotImplementedError

    def measure(self, iterations: int) -> LoopResult:
        """`iterations` timed iterations after one untimed one (the caches have cooled while the server ran)."""
        self._one()
        sums = dict.fromkeys(self.STAGES, 0.0)
        times: list[float] = []
        started = time.perf_counter()
        for _ in range(iterations):
            parts = self._one()
            times.append(sum(parts) * 1e3)
            for stage, seconds in zip(self.STAGES, parts, strict=True):
                sums[stage] += seconds * 1e3
        total = time.perf_counter() - started
        means = {stage: value / iterations for stage, value in sums.items()} if iterations else {}
        return LoopResult(times, total, self.provider, means)


class RawLoop(_TimedLoop):
    """`session.run([head])` of a plain session on the model file, fed one frame's float32 [1,3,H,W] tensor.

    Same provider (with the server's provider options) and intra-op threads as the server. Made
    once, measured in slices between the served rounds (`measure`), closed at the end.
    """

    STAGES = ("run",)

    def __init__(self, config: ServerConfig, head: str, frame_jpeg: bytes, warmup: int) -> None:
        model = config.models[0]
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        providers = provider_list(config.device, config.gpu, config.max_batch, config.buckets)
        self._session: ort.InferenceSession | None = ort.InferenceSession(str(model.path), options, providers=providers)
        self.provider = check_loaded(config.device, providers, self._session, model.name)
        rgb = codec.decode_encoded(frame_jpeg)
        height, width = network_shape(config, rgb.shape[0], rgb.shape[1])
        tensor = np.empty((1, 3, height, width), np.float32)
        normalize_into(resize_rgb(rgb, (height, width)), tensor[0])
        self._head = head
        self._feed = {self._session.get_inputs()[0].name: tensor}
        for _ in range(warmup):
            self._one()

    def _one(self) -> tuple[float]:
        assert self._session is not None, "measured after close()"
        t0 = time.perf_counter()
        self._session.run([self._head], self._feed)
        return (time.perf_counter() - t0,)

    def close(self) -> None:
        """Frees the session."""
        self._session = None


class PipelineLoop(_TimedLoop):
    """Per frame the server's stages, without serving: decode, resize, infer, finish.

    The model is loaded by the server's own `load_models` (OrtModel: IOBinding over the serving
    graph, the server's provider options), and the stream's options are resolved by the server's
    own `stages.resolve`. Made once, measured in slices (`measure`), closed at the end.
    """

    STAGES = ("decode", "resize", "inference", "postprocess")

    def __init__(self, config: ServerConfig, options: StreamOptions, frames: Sequence[bytes], warmup: int) -> None:
        name = config.models[0].name
        self._engine = load_models(config)[name]
        try:
            self._settings = stages.resolve(options.to_proto(), {name: self._engine}, name)
            self._shaping = stages.Shaping.of(config)
            self._wire = [pb.Frame(frame_id=i, encoded=pb.EncodedImage(data=data)) for i, data in enumerate(frames)]
            self._next = 0
            for _ in range(warmup):
                self._one()
        except BaseException:
            self._engine.close()
            raise
        self.provider = self._engine.provider

    def _one(self) -> tuple[float, float, float, float]:
        frame = self._wire[self._next % len(self._wire)]
        self._next += 1
        t0 = time.perf_counter()
        rgb = stages.decode(frame, self._shaping)
        t1 = time.perf_counter()
        response = stages.response_for(frame, self._settings)
        prepared = stages.resize(rgb, self._settings, self._shaping, response)
        t2 = time.perf_counter()
        result = stages.infer(self._engine, [prepared])
        t3 = time.perf_counter()
        stages.finish(self._engine, result, 0, prepared, response)
        t4 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3

    def close(self) -> None:
        """Frees the model."""
        self._engine.close()
