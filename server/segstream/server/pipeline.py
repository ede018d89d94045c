"""The transport-free core: one frame in, one SegmentResponse out.

decode + resize (decode thread) -> batcher -> model + postprocess (inference worker) -> response.
A frame crosses the event loop only twice: on its way to a decode thread and with its result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, cast

import grpc

from segstream.server.batcher import Batcher, Deliver, Ticket, delivered
from segstream.server.engine import EngineError, Model, U8Array
from segstream.server.errors import InvalidConfigError, status_for
from segstream.server.frame_limits import FrameLimits
from segstream.server.metrics import Metrics
from segstream.server.postprocess import OutputSpec, postprocess
from segstream.server.preprocess import resize_rgb, snap_to_bucket
from segstream.server.untrusted import clip
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec

log = logging.getLogger(__name__)

_HEAD_NAMES = {pb.HEAD_UNSPECIFIED: "out", pb.HEAD_OUT: "out", pb.HEAD_AUX: "aux"}


@dataclass(frozen=True)
class StreamSettings:
    """A StreamConfig checked against the served models, defaults filled in."""

    model: str
    head: str
    spec: OutputSpec
    policy: int


@dataclass
class _Work:
    resized: U8Array  # network input: the frame at the inference size
    image: U8Array  # the frame at the output resolution, for the overlay
    spec: OutputSpec
    response: pb.SegmentResponse


class Pipeline:
    def __init__(
        self,
        models: Mapping[str, Model],
        default_model: str,
        size: int,
        max_pixels: int,
        decode_pool: Executor,
        metrics: Metrics | None = None,
        on_engine_failure: Callable[[int], None] | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self._on_engine_failure = on_engine_failure
        # Consecutive frames lost to engine failures; the server turns unhealthy past a limit.
        self.engine_failures = 0
        self.models = models
        self.default_model = default_model
        self._size = size
        # Inference shapes frames snap to (--buckets); empty: short side = size, aspect kept.
        self.buckets: tuple[tuple[int, int], ...] = ()
        # What one frame may cost the network (--max-inference-pixels, --max-aspect).
        self.limits = FrameLimits()
        self._max_pixels = max_pixels
        self._decode_pool = decode_pool
        self.batcher: Batcher | None = None

    def resolve(self, config: pb.StreamConfig) -> StreamSettings:
        """Checks a StreamConfig; raises InvalidConfigError with what to fix."""
        name = config.model or self.default_model
        model = self.models.get(name)
        if model is None:
            raise InvalidConfigError(f"unknown model {clip(name)!r}: this server serves {sorted(self.models)}")
        head = _HEAD_NAMES.get(config.head)
        if head is None or head not in model.heads:
            raise InvalidConfigError(f"model {name!r} has no head {config.head}: heads are {list(model.heads)}")
        _check_enum(config.mask_encoding, pb.MaskEncoding, "mask_encoding")
        _check_enum(config.image_encoding, pb.ImageEncoding, "image_encoding")
        _check_enum(config.resolution, pb.OutputResolution, "resolution")
        _check_enum(config.policy, pb.FramePolicy, "policy")
        outputs = set(config.outputs) or {pb.OUTPUT_LABEL_MASK}
        for output in outputs:
            _check_enum(output, pb.Output, "outputs")
        outputs.discard(pb.OUTPUT_UNSPECIFIED)
        if config.jpeg_quality > 100:
            raise InvalidConfigError(f"jpeg_quality {config.jpeg_quality}: use 1-100, or 0 for the default")
        spec = OutputSpec(
            outputs=frozenset(outputs or {pb.OUTPUT_LABEL_MASK}),
            mask_encoding=config.mask_encoding or pb.MASK_ENCODING_RAW,
            image_encoding=config.image_encoding or pb.IMAGE_ENCODING_JPEG,
            resolution=config.resolution or pb.OUTPUT_RESOLUTION_FRAME,
            jpeg_quality=config.jpeg_quality or 90,
        )
        return StreamSettings(name, head, spec, config.policy or pb.FRAME_POLICY_ORDERED)

    async def process(self, frame: pb.Frame, settings: StreamSettings, received: float) -> pb.SegmentResponse:
        """Segments one frame; a failure comes back as the response's error, never as an exception."""
        assert self.batcher is not None, "Pipeline.batcher must be set before processing"
        response = pb.SegmentResponse(frame_id=frame.frame_id, model=settings.model)
        if frame.HasField("capture_time"):
            response.capture_time.CopyFrom(frame.capture_time)
        timings = response.timings
        metrics = self.metrics
        metrics.received.labels(settings.model).inc()
        metrics.inflight.inc()
        # Time between the frame's arrival and now was spent waiting (a LATEST stream's frame
        # waits for a place in the engine): it counts as queueing, not decoding.
        started = time.perf_counter()

        def start(deliver: Deliver, ticket: Ticket) -> None:
            self._decode_pool.submit(self._prepare_and_queue, frame, settings, response, started, ticket, deliver)

        try:
            (inference_s, post_s), queued_s = await delivered(start)
            timings.queue_ms = (started - received + queued_s) * 1e3
            timings.inference_ms = inference_s * 1e3
            timings.postprocess_ms = post_s * 1e3
            self.engine_failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = status_for(exc)
            if isinstance(exc, EngineError):
                self.engine_failures += 1
                if self._on_engine_failure is not None:
                    self._on_engine_failure(self.engine_failures)
                log.error("frame %d: %s", frame.frame_id, message, extra={"frame": frame.frame_id})
            elif code is grpc.StatusCode.INTERNAL:
                log.exception("frame %d of model %s failed", frame.frame_id, settings.model)
            _set_error(response, code, message)
        finally:
            metrics.inflight.dec()
        timings.total_ms = (time.perf_counter() - received) * 1e3
        metrics.frame_done(settings.model, response)
        return response

    def _prepare_and_queue(
        self,
        frame: pb.Frame,
        settings: StreamSettings,
        response: pb.SegmentResponse,
        started: float,
        ticket: Ticket,
        deliver: Deliver,
    ) -> None:
        """Runs in a decode thread: decodes and resizes the frame, then queues it for a batch from here.

        The response is this frame's alone until `deliver` is called, so filling it here is safe.
        """
        assert self.batcher is not None
        if ticket.withdrawn:  # the stream ended while the frame waited for a decode thread
            return
        try:
            rgb = codec.decode_frame(frame, self._max_pixels)
            shape = snap_to_bucket(rgb.shape[0], rgb.shape[1], self._size, self.buckets)
            # Before the resize: a thin frame's network input can cost thousands of times the frame.
            self.limits.check(rgb.shape[0], rgb.shape[1], shape, self._size)
            resized = resize_rgb(rgb, shape)
            response.inference_width, response.inference_height = resized.shape[1], resized.shape[0]
            response.timings.decode_ms = (time.perf_counter() - started) * 1e3
            image = rgb if settings.spec.resolution == pb.OUTPUT_RESOLUTION_FRAME else resized
            # Frames batch together when they share model, head, inference and output shape.
            key = (settings.model, settings.head, resized.shape, image.shape[:2])
            self.batcher.put(key, _Work(resized, image, settings.spec, response), deliver, ticket)
        except Exception as exc:
            deliver(exc, 0.0)

    def run_batch(self, key: Hashable, items: Sequence[_Work]) -> list[Any]:
        """Runs in an inference worker thread: the model on the batch, then each frame's postprocess."""
        model_name, head, _, output_size = cast(tuple[str, str, Any, tuple[int, int]], key)
        model = self.models[model_name]
        started = time.perf_counter()
        self.metrics.batch_size.observe(len(items))
        try:
            batch = model.run(head, [item.resized for item in items], output_size)
        except Exception as exc:
            if len(items) == 1:
                # Out of device memory, a lost device, a kernel failure: the engine, not the frame.
                return [EngineError(f"inference failed on {model.provider}: {exc}")]
            # Retry one by one so that a frame that breaks the batch fails alone.
            return [self.run_batch(key, [item])[0] for item in items]
        inference_s = time.perf_counter() - started
        results: list[Any] = []
        for i, item in enumerate(items):
            post_started = time.perf_counter()
            try:
                postprocess(
                    batch.labels[i],
                    float(batch.confidence[i]),
                    model.num_classes,
                    item.image,
                    item.spec,
                    item.response,
                )
            except Exception as exc:
                results.append(exc)
                continue
            results.append((inference_s, time.perf_counter() - post_started))
        return results


def _set_error(response: pb.SegmentResponse, code: grpc.StatusCode, message: str) -> None:
    for name in ("label_mask", "color_mask", "overlay", "confidence"):
        response.ClearField(name)
    del response.class_share[:]
    response.error.code = code.value[0]
    response.error.message = message


def _check_enum(value: int, enum: Any, field: str) -> None:
    if value not in enum.values():
        raise InvalidConfigError(f"{field}: unknown value {value}; valid values are {list(enum.keys())}")
