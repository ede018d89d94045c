"""Small helpers for tests that speak the wire protocol directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc

from segstream.server.app import SegstreamServer
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc


def channel(server: SegstreamServer) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    )


async def requests(config: pb.StreamConfig | None, frames: Iterable[pb.Frame]) -> AsyncIterator[pb.SegmentRequest]:
    if config is not None:
        yield pb.SegmentRequest(config=config)
    for frame in frames:
        yield pb.SegmentRequest(frame=frame)


async def segment(
    server: SegstreamServer, config: pb.StreamConfig | None, frames: Iterable[pb.Frame], deadline: float = 60
) -> list[pb.SegmentResponse]:
    async with channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)
        return [r async for r in stub.Segment(requests(config, frames), timeout=deadline)]
