"""The Segment stream against a real server (tiny model, real ONNX Runtime) on 127.0.0.1."""

from __future__ import annotations

import asyncio

import cv2
import grpc
import numpy as np
import numpy.typing as npt
import pytest

from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from segstream.wire.palette import colorize
from tests.conftest import ServerFactory
from tests.integration.grpc_helpers import channel, requests, segment

ALL_OUTPUTS = [
    pb.OUTPUT_LABEL_MASK,
    pb.OUTPUT_COLOR_MASK,
    pb.OUTPUT_OVERLAY,
    pb.OUTPUT_CONFIDENCE,
    pb.OUTPUT_CLASS_SHARE,
]


def jpeg_frames(image: npt.NDArray[np.uint8], count: int) -> list[pb.Frame]:
    return [
        codec.frame_from_array(image, frame_id=100 + i, timestamp_ns=1_700_000_000_123_456_789 + i, encoding="jpeg")
        for i in range(count)
    ]


async def test_ordered_answers_every_frame_in_order_with_ids_and_timestamps(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    frames = jpeg_frames(sample_bgr, 12)
    config = pb.StreamConfig(outputs=ALL_OUTPUTS, policy=pb.FRAME_POLICY_ORDERED, image_encoding=pb.IMAGE_ENCODING_PNG)
    async with server_factory() as server:
        responses = await segment(server, config, frames)
    assert [r.frame_id for r in responses] == [f.frame_id for f in frames]
    for frame, response in zip(frames, responses, strict=True):
        assert not response.HasField("error")
        assert response.capture_time == frame.capture_time
        assert response.model == "tiny"
        assert response.dropped_frames == 0
        labels = codec.decode_mask(response.label_mask)
        assert labels.shape == sample_bgr.shape[:2]
        assert len(np.unique(labels)) >= 2
        color = codec.decode_image(response.color_mask)
        np.testing.assert_array_equal(color, colorize(labels))
        overlay = codec.decode_image(response.overlay)
        assert overlay.shape == (*sample_bgr.shape[:2], 3)
        share = np.array(response.class_share)
        assert share.shape == (21,) and abs(share.sum() - 1) < 1e-5
        np.testing.assert_allclose(share, np.bincount(labels.ravel(), minlength=21) / labels.size, atol=1e-6)
        assert np.isfinite(response.confidence)
        t = response.timings
        assert 0 < t.inference_ms <= t.total_ms and t.decode_ms > 0 and t.queue_ms >= 0
        assert (response.inference_width, response.inference_height) == (85, 64)


async def test_overlay_is_the_50_50_blend_in_rgb(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    config = pb.StreamConfig(
        outputs=[pb.OUTPUT_LABEL_MASK, pb.OUTPUT_OVERLAY], image_encoding=pb.IMAGE_ENCODING_RAW_RGB
    )
    frame = codec.frame_from_array(sample_bgr, pixel_format="bgr", encoding="raw")
    async with server_factory() as server:
        (response,) = await segment(server, config, [frame])
    rgb = cv2.cvtColor(sample_bgr, cv2.COLOR_BGR2RGB)
    expected = cv2.addWeighted(rgb, 0.5, colorize(codec.decode_mask(response.label_mask)), 0.5, 0)
    np.testing.assert_array_equal(codec.decode_image(response.overlay), expected)


async def test_corrupt_frames_get_their_own_error_and_the_stream_goes_on(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    good = jpeg_frames(sample_bgr, 1)[0]
    jpeg = good.encoded.data
    bad = [
        pb.Frame(frame_id=1, encoded=pb.EncodedImage(data=jpeg[: len(jpeg) // 3])),  # truncated
        pb.Frame(frame_id=2, encoded=pb.EncodedImage(data=b"GIF89a not supported")),
        pb.Frame(frame_id=3, raw=pb.RawImage(data=b"\0" * 10, width=4, height=4, format=pb.PIXEL_FORMAT_RGB8)),
        pb.Frame(frame_id=4, raw=pb.RawImage(data=b"", width=60000, height=60000, format=pb.PIXEL_FORMAT_RGB8)),
        pb.Frame(frame_id=5),  # no image at all
        pb.Frame(frame_id=6, raw=pb.RawImage(data=b"\0" * 48, width=4, height=4)),  # no pixel format
    ]
    frames = [good, *bad, good]
    async with server_factory() as server:
        responses = await segment(server, None, frames)
        # The server is still healthy for a new stream afterwards.
        again = await segment(server, None, [good])
    assert [r.frame_id for r in responses] == [f.frame_id for f in frames]
    assert not responses[0].HasField("error") and not responses[-1].HasField("error")
    for response in responses[1:-1]:
        # Frame 4 is well formed but over the pixel limit: RESOURCE_EXHAUSTED, as the proto says.
        over = grpc.StatusCode.RESOURCE_EXHAUSTED if response.frame_id == 4 else grpc.StatusCode.INVALID_ARGUMENT
        assert response.error.code == over.value[0]
        assert response.error.message
        assert not response.HasField("label_mask")
    # Truncated JPEGs may still decode partially (libjpeg pads them); either way the frame is answered.
    assert "neither JPEG nor PNG" in responses[2].error.message
    assert "needs" in responses[3].error.message
    assert "exceeds the limit" in responses[4].error.message
    assert "no image" in responses[5].error.message
    assert "pixel format" in responses[6].error.message
    assert not again[0].HasField("error")


async def test_raw_frames_in_every_pixel_format_and_padded_rows(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    rgb = np.ascontiguousarray(sample_bgr[:, :, ::-1])
    grey = np.asarray(cv2.cvtColor(sample_bgr, cv2.COLOR_BGR2GRAY), np.uint8)
    padded = np.zeros((rgb.shape[0], rgb.shape[1] * 3 + 16), np.uint8)
    padded[:, : rgb.shape[1] * 3] = rgb.reshape(rgb.shape[0], -1)
    height, width = rgb.shape[:2]
    frames = [
        codec.frame_from_array(rgb, frame_id=0, pixel_format="rgb"),
        codec.frame_from_array(sample_bgr, frame_id=1, pixel_format="bgr"),
        codec.frame_from_array(grey, frame_id=2),
        pb.Frame(
            frame_id=3,
            raw=pb.RawImage(
                data=padded.tobytes(), width=width, height=height, stride=padded.shape[1], format=pb.PIXEL_FORMAT_RGB8
            ),
        ),
    ]
    async with server_factory() as server:
        responses = await segment(server, None, frames)
    masks = [codec.decode_mask(r.label_mask) for r in responses]
    np.testing.assert_array_equal(masks[0], masks[1])  # RGB and BGR of the same picture agree
    np.testing.assert_array_equal(masks[0], masks[3])  # row padding is skipped
    assert masks[2].shape == grey.shape


async def test_png_masks_and_inference_resolution(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    frame = jpeg_frames(sample_bgr, 1)[0]
    raw_cfg = pb.StreamConfig(resolution=pb.OUTPUT_RESOLUTION_INFERENCE)
    png_cfg = pb.StreamConfig(resolution=pb.OUTPUT_RESOLUTION_INFERENCE, mask_encoding=pb.MASK_ENCODING_PNG)
    async with server_factory() as server:
        (raw,) = await segment(server, raw_cfg, [frame])
        (png,) = await segment(server, png_cfg, [frame])
    assert png.label_mask.encoding == pb.MASK_ENCODING_PNG
    assert (raw.label_mask.width, raw.label_mask.height) == (85, 64)
    np.testing.assert_array_equal(codec.decode_mask(raw.label_mask), codec.decode_mask(png.label_mask))


async def test_latest_drops_stale_frames_and_counts_them(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    big = np.asarray(cv2.resize(sample_bgr, (1280, 960)), np.uint8)
    sent = 30
    frames = [codec.frame_from_array(big, frame_id=i, encoding="raw") for i in range(sent)]
    config = pb.StreamConfig(policy=pb.FRAME_POLICY_LATEST, outputs=[pb.OUTPUT_CONFIDENCE])
    async with server_factory(size=256) as server:
        responses = await segment(server, config, frames)
    ids = [r.frame_id for r in responses]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[-1] == sent - 1  # the newest frame always wins
    assert responses[-1].dropped_frames == sent - len(responses)
    assert len(responses) < sent  # frames arrive far faster than 1280x960 inference
    assert [r.dropped_frames for r in responses] == sorted(r.dropped_frames for r in responses)


async def test_many_concurrent_streams_each_get_their_own_frames(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    async def one(server_id: int, server: object) -> list[int]:
        frames = [codec.frame_from_array(sample_bgr, frame_id=server_id * 1000 + i, encoding="jpeg") for i in range(6)]
        return [r.frame_id for r in await segment(server, None, frames)]  # type: ignore[arg-type]

    async with server_factory(max_batch=4, max_delay_ms=5) as server:
        results = await asyncio.gather(*(one(s, server) for s in range(5)))
    for s, ids in enumerate(results):
        assert ids == [s * 1000 + i for i in range(6)]


async def test_stream_level_errors_end_the_call_with_a_message(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    frame = jpeg_frames(sample_bgr, 1)[0]
    cases = [
        ([pb.SegmentRequest(config=pb.StreamConfig(model="nope"))], "unknown model 'nope'"),
        (
            [pb.SegmentRequest(config=pb.StreamConfig()), pb.SegmentRequest(config=pb.StreamConfig())],
            "only be sent once",
        ),
        ([pb.SegmentRequest(frame=frame), pb.SegmentRequest(config=pb.StreamConfig())], "only be sent once"),
        ([pb.SegmentRequest(config=pb.StreamConfig(outputs=[99]))], "outputs: unknown value 99"),  # type: ignore[list-item]
        ([pb.SegmentRequest(frame=frame), pb.SegmentRequest()], "empty SegmentRequest"),
    ]
    async with server_factory() as server, channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)
        for messages, expected in cases:

            async def gen(msgs: list[pb.SegmentRequest] = messages) -> object:
                for m in msgs:
                    yield m

            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [r async for r in stub.Segment(gen(), timeout=30)]
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert expected in (info.value.details() or "")
        # An empty stream is answered with an empty stream, and the server still serves.
        assert [r async for r in stub.Segment(requests(None, []), timeout=30)] == []
        assert len([r async for r in stub.Segment(requests(None, [frame]), timeout=30)]) == 1


async def test_stream_limit_gives_resource_exhausted(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    frame = jpeg_frames(sample_bgr, 1)[0]
    async with server_factory(max_streams=1) as server, channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)
        hold = asyncio.Event()

        async def slow() -> object:
            yield pb.SegmentRequest(frame=frame)
            await hold.wait()

        first = stub.Segment(slow(), timeout=30)
        assert (await first.read()).frame_id == frame.frame_id
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in stub.Segment(requests(None, [frame]), timeout=30)]
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        hold.set()
        first.cancel()
        # Once the first stream is gone, a new one is admitted.
        for _ in range(50):
            if server.service.open_streams == 0:
                break
            await asyncio.sleep(0.05)
        assert len([r async for r in stub.Segment(requests(None, [frame]), timeout=30)]) == 1
