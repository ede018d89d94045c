"""The thin gRPC servicer: turns calls into Pipeline work and domain errors into statuses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from segstream.server.errors import (
    InvalidConfigError,
    NotReadyError,
    StreamError,
    TooManyCallsError,
    TooManyStreamsError,
    status_for,
)
from segstream.server.metrics import FrameTally, Metrics
from segstream.server.pipeline import Pipeline
from segstream.server.stages import StreamSettings
from segstream.server.streams import CANCELLED, RequestReader, latest, ordered
from segstream.server.untrusted import clip
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_HEADS = {"out": pb.HEAD_OUT, "aux": pb.HEAD_AUX}
# The UNAVAILABLE message of every call made before the models are warm; clients look for "loading".
LOADING = "the server is still loading its models; retry in a few seconds (health reports SERVING once it is ready)"


class SegmentationService(pb_grpc.SegmentationServicer):
    """The Segmentation service; it refuses calls as still loading until `serve` hands it a Pipeline."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        inflight: int,
        max_streams: int,
        ready: Callable[[], bool],
        idle_timeout: float = 0.0,
        max_unary: int = 32,
    ) -> None:
        """Registered with the gRPC server before it starts, while the models still load."""
        self._metrics = metrics
        # Set once by `serve`, when the models are loaded and warm; until then calls are refused.
        self._pipeline: Pipeline | None = None
        self._inflight = inflight
        self._max_streams = max_streams
        self._max_unary = max_unary
        self._ready = ready
        self._idle_timeout = idle_timeout
        self._ids = itertools.count(1)
        self.open_streams = 0
        # SegmentImage calls between admission and their answer; each holds a whole image in memory.
        self.open_unary = 0
        # Set when the server drains: streams stop reading, answer what they took, then end.
        self.draining = asyncio.Event()
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    def serve(self, pipeline: Pipeline) -> None:
        """Starts answering calls with `pipeline`, whose models are loaded and warm."""
        self._pipeline = pipeline

    async def Segment(
        self, requests: AsyncIterator[pb.SegmentRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SegmentResponse]:
        """A stream: the first message may carry a StreamConfig, then one response per frame."""
        metrics = self._metrics
        try:
            pipeline = self._admit()
        except StreamError as exc:
            metrics.rejected.labels(type(exc).__name__).inc()
            await context.abort(*status_for(exc))
        stream = next(self._ids)
        log_extra = {"stream": stream, "peer": clip(context.peer())}
        self._opened()
        answered = 0
        tally: FrameTally | None = None
        reader = RequestReader(self.draining, self._idle_timeout)
        try:
            messages = reader.read(requests)
            first = await anext(messages, None)
            if first is None:
                return  # an empty stream is answered with an empty stream
            config = first.config if first.HasField("config") else pb.StreamConfig()
            settings = pipeline.resolve(config)
            log.info(
                "stream %d opened: model %s, %s", stream, settings.model, _policy_name(settings.policy), extra=log_extra
            )
            # Each frame counts as received here, then as answered, failed or dropped (see streams).
            tally = metrics.tally(settings.model)
            frames = _frames(messages, None if first.HasField("config") else first, tally.arrived)

            async def process(frame: pb.Frame, received: float) -> pb.SegmentResponse:
                response = await pipeline.process(frame, settings, received)
                tally.done(response)
                return response

            policy = (
                latest(frames, process, tally.drop, pipeline.admission)
                if settings.policy == pb.FRAME_POLICY_LATEST
                else ordered(frames, process, self._inflight, tally.drop)
            )
            # Closed as soon as this stream is: frames it still holds are counted dropped right away.
            async with contextlib.aclosing(policy) as responses:
                async for response in responses:
                    answered += 1
                    yield response
            if reader.drained:
                raise NotReadyError(
                    f"the server is shutting down; the {answered} frames it received were answered: reconnect"
                )
        except StreamError as exc:
            code, message = status_for(exc)
            log.info("stream %d ended: %s: %s", stream, code.name, message, extra=log_extra)
            await context.abort(code, message)
        finally:
            self._closed()
            counts = f"; {tally}" if tally is not None else ""
            log.info("stream %d closed after %d responses%s", stream, answered, counts, extra=log_extra)

    def _opened(self) -> None:
        self.open_streams += 1
        self.all_closed.clear()
        self._metrics.open_streams.set(self.open_streams)

    def _closed(self) -> None:
        self.open_streams -= 1
        self._metrics.open_streams.set(self.open_streams)
        if self.open_streams == 0:
            self.all_closed.set()

    async def SegmentImage(
        self, request: pb.SegmentImageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SegmentResponse:
        """One image, one response: the frame path of a stream without the stream."""
        try:
            pipeline = self._admit_unary()
            settings: StreamSettings = pipeline.resolve(request.config)
        except StreamError as exc:
            if isinstance(exc, TooManyCallsError):
                self._metrics.rejected.labels(type(exc).__name__).inc()
            await context.abort(*status_for(exc))
        # Counted from here to the answer, however the call ends (a client that cancels included):
        # no await between the check above and this increment, so the limit cannot be overrun.
        self._unary_changed(+1)
        tally = self._metrics.tally(settings.model)
        tally.arrived()
        try:
            return await pipeline.process(request.frame, settings, time.perf_counter())
        except asyncio.CancelledError:
            tally.drop(CANCELLED)
            raise
        finally:
            self._unary_changed(-1)

    def _unary_changed(self, delta: int) -> None:
        self.open_unary += delta
        self._metrics.open_unary.set(self.open_unary)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        """The served models with their classes, palette, heads and inference shapes."""
        pipeline = self._pipeline
        if pipeline is None:
            # An empty list would read as "this server serves no models" rather than "wait a moment".
            await context.abort(grpc.StatusCode.UNAVAILABLE, LOADING)
        response = pb.ListModelsResponse()
        shaping = pipeline.shaping
        for name, model in pipeline.models.items():
            classes = model.classes
            response.models.add(
                name=name,
                class_names=classes.names,
                palette=[pb.Color(r=int(r), g=int(g), b=int(b)) for r, g, b in classes.palette],
                inference_size=shaping.size,
                execution_provider=model.provider,
                heads=[_HEADS[h] for h in model.heads],
                synthetic=model.synthetic,
                is_default=name == pipeline.default_model,
                inference_shapes=[pb.InferenceShape(width=w, height=h) for h, w in shaping.buckets],
            )
        return response

    def _admit(self) -> Pipeline:
        pipeline = self._check_ready()
        if self.open_streams >= self._max_streams:
            raise TooManyStreamsError(
                f"the server already serves its maximum of {self._max_streams} streams; retry later"
            )
        return pipeline

    def _admit_unary(self) -> Pipeline:
        pipeline = self._check_ready()
        if self.open_unary >= self._max_unary:
            raise TooManyCallsError(
                f"the server already answers its maximum of {self._max_unary} SegmentImage calls at once "
                "(--max-unary); retry later"
            )
        return pipeline

    def _check_ready(self) -> Pipeline:
        if self._pipeline is None:
            raise NotReadyError(LOADING)
        if not self._ready():
            raise NotReadyError("the server is not serving (shutting down, or unhealthy); retry shortly")
        return self._pipeline


async def _frames(
    requests: AsyncIterator[pb.SegmentRequest], first: pb.SegmentRequest | None, arrived: Callable[[], None]
) -> AsyncIterator[pb.Frame]:
    """The stream's frames, each counted by `arrived` as it is handed on."""
    if first is not None:
        frame = _frame_of(first)
        arrived()
        yield frame
    async for request in requests:
        frame = _frame_of(request)
        arrived()
        yield frame


def _frame_of(request: pb.SegmentRequest) -> pb.Frame:
    if request.HasField("config"):
        raise InvalidConfigError("StreamConfig may only be sent once, as the first message of the stream")
    if not request.HasField("frame"):
        raise InvalidConfigError("empty SegmentRequest: set either config (first message only) or frame")
    return request.frame


def _policy_name(policy: int) -> str:
    return "LATEST" if policy == pb.FRAME_POLICY_LATEST else "ORDERED"
