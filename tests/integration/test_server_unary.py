"""SegmentImage, ListModels, health, reflection and multi-model serving against a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from segstream.server.app import SegstreamServer, worker_count
from segstream.server.config import ModelSpec, ServerConfig
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from segstream.wire.palette import VOC_CLASSES, voc_palette
from tests.conftest import ServerFactory
from tests.fakes import GatedModel
from tests.integration.grpc_helpers import channel, segment


async def test_segment_image_and_per_frame_errors(
    server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    frame = codec.frame_from_array(sample_bgr, frame_id=9, encoding="png")
    async with server_factory() as server, channel(server) as ch:
        stub = pb_grpc.SegmentationStub(ch)
        ok = await stub.SegmentImage(pb.SegmentImageRequest(frame=frame), timeout=30)
        bad = await stub.SegmentImage(
            pb.SegmentImageRequest(frame=pb.Frame(frame_id=10, encoded=pb.EncodedImage(data=b"\x89PNG\r\n\x1a\nxx"))),
            timeout=30,
        )
        streamed = await segment(server, None, [frame])
    assert ok.frame_id == 9 and not ok.HasField("error")
    np.testing.assert_array_equal(codec.decode_mask(ok.label_mask), codec.decode_mask(streamed[0].label_mask))
    assert bad.frame_id == 10 and bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_list_models_describes_what_is_served(
    server_factory: ServerFactory, tiny_model: Path, tiny_model_b: Path
) -> None:
    models = (ModelSpec("first", tiny_model), ModelSpec("second", tiny_model_b))
    async with server_factory(models=models, size=96) as server, channel(server) as ch:
        response = await pb_grpc.SegmentationStub(ch).ListModels(pb.ListModelsRequest(), timeout=30)
    assert [m.name for m in response.models] == ["first", "second"]
    first = response.models[0]
    assert first.is_default and not response.models[1].is_default
    assert tuple(first.class_names) == VOC_CLASSES
    assert [(c.r, c.g, c.b) for c in first.palette] == [tuple(int(v) for v in rgb) for rgb in voc_palette()]
    assert first.inference_size == 96
    assert not first.inference_shapes  # no shape buckets: the short side is resized, aspect kept
    assert first.execution_provider == "CPUExecutionProvider"
    assert list(first.heads) == [pb.HEAD_OUT, pb.HEAD_AUX]
    assert first.synthetic


async def test_models_and_heads_are_addressed_by_name(
    server_factory: ServerFactory, tiny_model: Path, tiny_model_b: Path, sample_bgr: npt.NDArray[np.uint8]
) -> None:
    frame = codec.frame_from_array(sample_bgr, encoding="jpeg")
    models = (ModelSpec("first", tiny_model), ModelSpec("second", tiny_model_b))
    async with server_factory(models=models) as server:
        default = await segment(server, None, [frame])
        first = await segment(server, pb.StreamConfig(model="first", outputs=[pb.OUTPUT_CONFIDENCE]), [frame])
        second = await segment(server, pb.StreamConfig(model="second", outputs=[pb.OUTPUT_CONFIDENCE]), [frame])
        aux = await segment(
            server, pb.StreamConfig(model="first", head=pb.HEAD_AUX, outputs=[pb.OUTPUT_CONFIDENCE]), [frame]
        )
    assert default[0].model == "first" and second[0].model == "second"
    # Different weights and different heads give different scores.
    assert len({first[0].confidence, second[0].confidence, aux[0].confidence}) == 3
    assert not first[0].HasField("label_mask")  # only what was asked for


async def test_health_goes_serving_and_reflection_lists_the_services(server_factory: ServerFactory) -> None:
    async with server_factory() as server, channel(server) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "segstream.v1.Segmentation"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def ask() -> object:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        replies = [r async for r in stub.ServerReflectionInfo(ask(), timeout=10)]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"segstream.v1.Segmentation", "grpc.health.v1.Health"} <= names


async def test_health_is_not_serving_until_models_are_warmed_up(tiny_model: Path) -> None:
    model = GatedModel()
    model.gate.clear()  # hold the warm-up run
    config = ServerConfig(models=(ModelSpec("gated", tiny_model),), host="127.0.0.1", port=0, size=32)
    server = SegstreamServer(config, models={"gated": model})
    starting = asyncio.create_task(server.start())
    try:
        for _ in range(100):
            if server.port:
                break
            await asyncio.sleep(0.02)
        async with channel(server) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            request = health_pb2.HealthCheckRequest(service="")
            assert (await health.Check(request, timeout=10)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.SegmentationStub(ch).SegmentImage(pb.SegmentImageRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            model.gate.set()
            await asyncio.wait_for(starting, 30)
            assert (await health.Check(request, timeout=10)).status == health_pb2.HealthCheckResponse.SERVING
            # Every inference worker warmed its own bindings up before health turned SERVING.
            assert model.runs == worker_count(config, {"gated": model})
    finally:
        model.gate.set()
        await asyncio.wait_for(starting, 30)
        await server.stop(grace=1)
