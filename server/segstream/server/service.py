"""The thin gRPC servicer: turns calls into Pipeline work and domain errors into statuses."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from segstream.client.palette import VOC_CLASSES, voc_palette
from segstream.server.errors import (
    InvalidConfigError,
    NotReadyError,
    StreamError,
    TooManyStreamsError,
    status_for,
)
from segstream.server.pipeline import Pipeline, StreamSettings
from segstream.server.streams import latest, ordered
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_HEADS = {"out": pb.HEAD_OUT, "aux": pb.HEAD_AUX}


class SegmentationService(pb_grpc.SegmentationServicer):
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        size: int,
        inflight: int,
        max_streams: int,
        ready: Callable[[], bool],
    ) -> None:
        self._pipeline = pipeline
        self._size = size
        self._inflight = inflight
        self._max_streams = max_streams
        self._ready = ready
        self.open_streams = 0

    async def Segment(
        self, requests: AsyncIterator[pb.SegmentRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SegmentResponse]:
        try:
            self._admit()
        except StreamError as exc:
            await context.abort(*status_for(exc))
        self.open_streams += 1
        try:
            first = await anext(aiter(requests), None)
            if first is None:
                return  # an empty stream is answered with an empty stream
            config = first.config if first.HasField("config") else pb.StreamConfig()
            settings = self._pipeline.resolve(config)
            frames = _frames(requests, None if first.HasField("config") else first)

            async def process(frame: pb.Frame, received: float) -> pb.SegmentResponse:
                return await self._pipeline.process(frame, settings, received)

            policy = (
                latest(frames, process)
                if settings.policy == pb.FRAME_POLICY_LATEST
                else (ordered(frames, process, self._inflight))
            )
            async for response in policy:
                yield response
        except StreamError as exc:
            await context.abort(*status_for(exc))
        finally:
            self.open_streams -= 1

    async def SegmentImage(
        self, request: pb.SegmentImageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SegmentResponse:
        try:
            self._admit()
            settings: StreamSettings = self._pipeline.resolve(request.config)
        except StreamError as exc:
            await context.abort(*status_for(exc))
        return await self._pipeline.process(request.frame, settings, time.perf_counter())

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse()
        palette = voc_palette()
        for name, model in self._pipeline.models.items():
            response.models.add(
                name=name,
                class_names=VOC_CLASSES[: model.num_classes],
                palette=[pb.Color(r=int(r), g=int(g), b=int(b)) for r, g, b in palette[: model.num_classes]],
                inference_size=self._size,
                execution_provider=model.provider,
                heads=[_HEADS[h] for h in model.heads],
                synthetic=model.synthetic,
                is_default=name == self._pipeline.default_model,
            )
        return response

    def _admit(self) -> None:
        if not self._ready():
            raise NotReadyError("the server is loading its models or shutting down; retry shortly")
        if self.open_streams >= self._max_streams:
            raise TooManyStreamsError(
                f"the server already serves its maximum of {self._max_streams} streams; retry later"
            )


async def _frames(
    requests: AsyncIterator[pb.SegmentRequest], first: pb.SegmentRequest | None
) -> AsyncIterator[pb.Frame]:
    if first is not None:
        yield _frame_of(first)
    async for request in requests:
        yield _frame_of(request)


def _frame_of(request: pb.SegmentRequest) -> pb.Frame:
    if request.HasField("config"):
        raise InvalidConfigError("StreamConfig may only be sent once, as the first message of the stream")
    if not request.HasField("frame"):
        raise InvalidConfigError("empty SegmentRequest: set either config (first message only) or frame")
    return request.frame
