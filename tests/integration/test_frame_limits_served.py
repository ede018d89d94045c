"""Frames beyond a limit get per-frame code 8 from a real server, quickly, and the stream goes on."""

from __future__ import annotations

import time

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.conftest import ServerFactory
from tests.integration.grpc_helpers import channel, segment

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _grey(frame_id: int, height: int, width: int) -> pb.Frame:
    raw = pb.RawImage(data=bytes(height * width), width=width, height=height, format=pb.PIXEL_FORMAT_GRAY8)
    return pb.Frame(frame_id=frame_id, raw=raw)


async def test_thin_frames_get_resource_exhausted_at_once_and_the_stream_goes_on(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    # At --size 64 a 2x150 frame used to become a 64x4800 network input (5.5 s), 1x300 a 64x19200 one (21.7 s).
    normal = codec.frame_from_array(sample_bgr, frame_id=9, pixel_format="bgr")
    frames = [_grey(1, 2, 150), _grey(2, 1, 300), _grey(3, 300, 1), normal]
    async with server_factory() as server:
        started = time.perf_counter()
        responses = await segment(server, None, frames, deadline=30)
        elapsed = time.perf_counter() - started
        again = await segment(server, None, [normal], deadline=30)
    assert [r.frame_id for r in responses] == [1, 2, 3, 9]
    for refused, (width, height) in zip(responses[:3], [(150, 2), (300, 1), (1, 300)], strict=True):
        assert refused.error.code == EXHAUSTED, refused.error
        assert f"frame of {width}x{height}" in refused.error.message and "crop it" in refused.error.message
        assert not refused.HasField("label_mask")
    assert not responses[3].HasField("error")
    assert codec.decode_mask(responses[3].label_mask).shape == sample_bgr.shape[:2]
    assert not again[0].HasField("error")
    assert elapsed < 10, f"{elapsed:.1f} s for three refused frames and one normal one"


async def test_a_latest_stream_answers_the_next_frame_after_a_refused_one(server_factory: ServerFactory) -> None:
    config = pb.StreamConfig(policy=pb.FRAME_POLICY_LATEST)
    async with server_factory() as server, channel(server) as ch:
        call = pb_grpc.SegmentationStub(ch).Segment(timeout=30)
        await call.write(pb.SegmentRequest(config=config))
        await call.write(pb.SegmentRequest(frame=_grey(1, 1, 300)))
        refused = await call.read()
        await call.write(pb.SegmentRequest(frame=_grey(2, 48, 64)))
        answered = await call.read()
        await call.done_writing()
    assert refused.frame_id == 1 and refused.error.code == EXHAUSTED
    assert answered.frame_id == 2 and not answered.HasField("error")


async def test_costly_network_inputs_and_oversized_frames_get_code_8_and_bad_frames_code_3(
    server_factory: ServerFactory,
) -> None:
    frames = [
        _grey(1, 64, 300),  # 4.7:1 is within --max-aspect, but 64x300 is over 6400 network pixels
        _grey(2, 64, 100),  # 64x100 = 6400: at the limit
        _grey(3, 150, 150),  # 22500 pixels: over --max-frame-pixels
        pb.Frame(frame_id=4, raw=pb.RawImage(data=b"\0" * 10, width=4, height=4, format=pb.PIXEL_FORMAT_RGB8)),
    ]
    async with server_factory(max_inference_pixels=6400, max_frame_pixels=20_000) as server:
        responses = await segment(server, None, frames, deadline=30)
        async with channel(server) as ch:
            image = await pb_grpc.SegmentationStub(ch).SegmentImage(
                pb.SegmentImageRequest(frame=_grey(5, 64, 300)), timeout=30
            )
    assert [r.error.code for r in responses] == [EXHAUSTED, 0, EXHAUSTED, INVALID]
    assert "at most 1.56:1 (e.g. 100x64)" in responses[0].error.message
    assert "exceeds the limit of 20000 pixels" in responses[2].error.message
    assert image.frame_id == 5 and image.error.code == EXHAUSTED


async def test_a_message_over_the_size_limit_ends_the_call_with_resource_exhausted(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(max_message_bytes=1 << 20) as server:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await segment(server, None, [_grey(1, 1024, 1200)], deadline=30)  # 1.2 MB of pixels
        answered = await segment(server, None, [_grey(2, 48, 64)], deadline=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not answered[0].HasField("error")
