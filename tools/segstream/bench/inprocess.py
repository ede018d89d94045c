"""The in-process measurements: raw ONNX Runtime alone, and the server's per-frame work in one loop.

Both take their settings from the `ServerConfig` the server itself was started with (model file,
execution provider and its options, threads, shape buckets), and run after the server has stopped,
so nothing else competes for the cores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from segstream.bench.report import LoopResult
from segstream.client import StreamOptions
from segstream.server.app import load_models
from segstream.server.config import ServerConfig
from segstream.server.postprocess import OutputSpec, postprocess
from segstream.server.preprocess import normalize_into, resize_rgb, snap_to_bucket
from segstream.server.providers import check_loaded, provider_list
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec


def output_spec(options: StreamOptions) -> OutputSpec:
    """The OutputSpec the server resolves for these options (every StreamConfig field is set explicitly)."""
    config = options.to_proto()
    return OutputSpec(
        outputs=frozenset(config.outputs),
        mask_encoding=config.mask_encoding,
        image_encoding=config.image_encoding,
        resolution=config.resolution,
        jpeg_quality=config.jpeg_quality,
    )


def network_shape(config: ServerConfig, height: int, width: int) -> tuple[int, int]:
    """The inference shape the server gives a height x width frame (short side --size, or a --buckets shape)."""
    return snap_to_bucket(height, width, config.size, config.gpu.buckets)


def measure_raw(
    config: ServerConfig,
    head: str,
    frame_jpeg: bytes,
    iterations: int,
    warmup: int,
) -> LoopResult:
    """`session.run([head])` of a plain session on the model file, fed one frame's float32 [1,3,H,W] tensor.

    Same provider (with the server's provider options) and intra-op threads as the server.
    """
    model = config.models[0]
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = provider_list(config.device, config.gpu, config.max_batch)
    session = ort.InferenceSession(str(model.path), options, providers=providers)
    provider = check_loaded(config.device, providers, session, model.name)
    rgb = codec.decode_encoded(frame_jpeg)
    height, width = network_shape(config, rgb.shape[0], rgb.shape[1])
    tensor = np.empty((1, 3, height, width), np.float32)
    normalize_into(resize_rgb(rgb, (height, width)), tensor[0])
    feed = {session.get_inputs()[0].name: tensor}
    for _ in range(warmup):
        session.run([head], feed)
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        session.run([head], feed)
        times.append((time.perf_counter() - t0) * 1e3)
    total = time.perf_counter() - started
    del session
    return LoopResult(times, total, provider)


def measure_pipeline(
    config: ServerConfig,
    options: StreamOptions,
    frames: Sequence[bytes],
    iterations: int,
    warmup: int,
) -> LoopResult:
    """Per frame what the server does, without serving: decode, resize, serving graph, postprocess.

    The model is loaded by the server's own `load_models` (OrtModel: IOBinding over the serving
    graph, the server's provider options), and the response is filled by the server's `postprocess`.
    """
    name = config.models[0].name
    engine = load_models(config)[name]
    try:
        spec = output_spec(options)
        wire = [pb.Frame(frame_id=i, encoded=pb.EncodedImage(data=data)) for i, data in enumerate(frames)]
        stage_sums = dict.fromkeys(("decode", "resize", "inference", "postprocess"), 0.0)
        times: list[float] = []

        def one(i: int, record: bool) -> None:
            frame = wire[i % len(wire)]
            t0 = time.perf_counter()
            rgb = codec.decode_frame(frame, config.max_frame_pixels)
            t1 = time.perf_counter()
            resized = resize_rgb(rgb, network_shape(config, rgb.shape[0], rgb.shape[1]))
            image = rgb if spec.resolution == pb.OUTPUT_RESOLUTION_FRAME else resized
            t2 = time.perf_counter()
            batch = engine.run(options.head, [resized], (image.shape[0], image.shape[1]))
            t3 = time.perf_counter()
            response = pb.SegmentResponse(frame_id=frame.frame_id, model=name)
            response.inference_width, response.inference_height = resized.shape[1], resized.shape[0]
            postprocess(batch.labels[0], float(batch.confidence[0]), engine.num_classes, image, spec, response)
            t4 = time.perf_counter()
            if record:
                times.append((t4 - t0) * 1e3)
                for stage, seconds in zip(stage_sums, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    stage_sums[stage] += seconds * 1e3

        for i in range(warmup):
            one(i, record=False)
        started = time.perf_counter()
        for i in range(iterations):
            one(i, record=True)
        total = time.perf_counter() - started
        means = {stage: value / iterations for stage, value in stage_sums.items()} if iterations else {}
        return LoopResult(times, total, engine.provider, means)
    finally:
        engine.close()
