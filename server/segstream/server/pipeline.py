"""The transport-free core: one frame in, one SegmentResponse out.

The Pipeline only schedules the stages of segstream.server.stages:

    event loop -> decode thread: prepare -> batcher -> inference worker: infer, finish -> event loop

A frame crosses the event loop only twice: on its way to a decode thread and with its result.
The pipeline is built whole once the models are loaded, and owns its decode threads, its batcher
(with the inference workers) and the engine places its LATEST streams share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from segstream.server import stages
from segstream.server.admission import LiveAdmission
from segstream.server.batcher import Batcher, Deliver, Ticket, delivered
from segstream.server.cores import available_cores
from segstream.server.engine import EngineError, Model
from segstream.server.errors import status_for
from segstream.server.metrics import Metrics
from segstream.server.stages import Prepared, Shaping, StreamSettings
from segstream.v1 import segmentation_pb2 as pb

log = logging.getLogger(__name__)

# What the batcher carries for one frame: the frame ready for the network, and its response.
_Work = tuple[Prepared, pb.SegmentResponse]


class Pipeline:
    """Runs each frame's stages: prepare in a decode thread, infer and finish in an inference worker."""

    def __init__(
        self,
        models: Mapping[str, Model],
        default_model: str,
        shaping: Shaping,
        *,
        workers: int = 1,
        max_batch: int = 1,
        max_delay_s: float = 0.0,
        live_workers: int | None = None,
        metrics: Metrics | None = None,
        on_engine_failure: Callable[[int], None] | None = None,
    ) -> None:
        """Starts the inference workers; `close` stops them.

        `on_engine_failure` hears, on the event loop, the count of consecutive frames lost to
        engine failures each time one more is lost; the server turns unhealthy past a limit.
        `live_workers` (default: all of them) is how many workers' batches LATEST frames may fill at once.
        """
        self.models: Mapping[str, Model] = dict(models)
        self.default_model = default_model
        self.shaping = shaping
        self.metrics = metrics or Metrics()
        self._on_engine_failure = on_engine_failure
        self.engine_failures = 0
        # As many live frames as the workers can run in full batches; more would only queue.
        self.admission = LiveAdmission(min(workers, live_workers or workers) * max_batch)
        self._decode_pool = ThreadPoolExecutor(max(2, available_cores()), thread_name_prefix="segstream-decode")
        self.batcher = Batcher(self._run_batch, workers, max_batch, max_delay_s)
        self.batcher.start()

    def resolve(self, config: pb.StreamConfig) -> StreamSettings:
        """Checks a stream's StreamConfig against the served models; raises InvalidConfigError with what to fix."""
        return stages.resolve(config, self.models, self.default_model)

    async def process(self, frame: pb.Frame, settings: StreamSettings, received: float) -> pb.SegmentResponse:
        """Segments one frame; a failure comes back as the response's error, never as an exception."""
        response = stages.response_for(frame, settings)
        timings = response.timings
        metrics = self.metrics
        # The caller counts the frame received (metrics.FrameTally), and dropped should it cancel this.
        metrics.inflight.inc()
        # Time between the frame's arrival and now was spent waiting (a LATEST stream's frame
        # waits for a place in the engine): it counts as queueing, not decoding.
        started = time.perf_counter()

        def start(deliver: Deliver, ticket: Ticket) -> None:
            self._decode_pool.submit(self._prepare, frame, settings, response, started, ticket, deliver)

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

    async def close(self, run_grace: float | None = None) -> bool:
        """Cancels the frames still queued, lets running batches finish, and stops the threads.

        False when a batch was still running `run_grace` seconds later (see Batcher.close).
        """
        ended = await self.batcher.close(run_grace)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        return ended

    def _prepare(
        self,
        frame: pb.Frame,
        settings: StreamSettings,
        response: pb.SegmentResponse,
        started: float,
        ticket: Ticket,
        deliver: Deliver,
    ) -> None:
        """In a decode thread: the prepare stage, then the frame queued for a batch from here.

        The response is this frame's alone until `deliver` is called, so filling it here is safe.
        """
        if ticket.withdrawn:  # the stream ended while the frame waited for a decode thread
            return
        try:
            prepared = stages.prepare(frame, settings, self.shaping, response)
            response.timings.decode_ms = (time.perf_counter() - started) * 1e3
            work: _Work = (prepared, response)
            self.batcher.put(prepared.batch_key, work, deliver, ticket)
        except Exception as exc:
            deliver(exc, 0.0)

    def _run_batch(self, key: Hashable, items: Sequence[_Work]) -> list[Any]:
        """In an inference worker: the infer stage on the batch, then each frame's finish stage.

        One result per frame: (inference seconds, finish seconds), or the frame's exception.
        """
        first, _ = items[0]
        model = self.models[first.settings.model]
        started = time.perf_counter()
        self.metrics.batch_size.observe(len(items))
        try:
            result = stages.infer(model, [prepared for prepared, _ in items])
        except Exception as exc:
            if len(items) == 1:
                # Out of device memory, a lost device, a kernel failure: the engine, not the frame.
                return [EngineError(f"inference failed on {model.provider}: {exc}")]
            # Retry one by one so that a frame that breaks the batch fails alone.
            return [self._run_batch(key, [item])[0] for item in items]
        inference_s = time.perf_counter() - started
        results: list[Any] = []
        for index, (prepared, response) in enumerate(items):
            finish_started = time.perf_counter()
            try:
                stages.finish(model, result, index, prepared, response)
            except Exception as exc:
                results.append(exc)
                continue
            results.append((inference_s, time.perf_counter() - finish_started))
        return results


def _set_error(response: pb.SegmentResponse, code: grpc.StatusCode, message: str) -> None:
    for name in ("label_mask", "color_mask", "overlay", "confidence"):
        response.ClearField(name)
    del response.class_share[:]
    response.error.code = code.value[0]
    response.error.message = message
