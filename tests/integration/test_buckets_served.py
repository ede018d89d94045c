"""Shape buckets on a running server: every worker warms every bucket up, frames snap to them, clients see them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from segstream.client import ModelInfo
from segstream.server.app import SegstreamServer
from segstream.server.config import ModelSpec, ServerConfig
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.conftest import ServerFactory
from tests.fakes import GatedModel
from tests.integration.grpc_helpers import channel, segment


@pytest.mark.parametrize("workers", [1, 2])
async def test_warm_up_runs_every_head_and_bucket_on_every_worker(tiny_model: Path, workers: int) -> None:
    model = GatedModel()
    config = ServerConfig(
        models=(ModelSpec("gated", tiny_model),),
        host="127.0.0.1",
        port=0,
        workers=workers,
        buckets=((64, 80), (80, 64), (64, 64)),
    )
    server = SegstreamServer(config, models={"gated": model})
    await server.start()
    try:
        # Each worker owns its bindings (and, on a GPU, its session), so each warms up its own.
        assert model.runs == len(model.heads) * 3 * workers
        assert model.threads == {f"segstream-infer-{i}" for i in range(workers)}
    finally:
        await server.stop(grace=1.0)


async def test_server_snaps_frames_to_buckets(server_factory: ServerFactory, sample_bgr: npt.NDArray[np.uint8]) -> None:
    portrait = np.ascontiguousarray(np.rot90(sample_bgr))
    frames = [
        codec.frame_from_array(sample_bgr, frame_id=1),  # 640x480
        codec.frame_from_array(portrait, frame_id=2),  # 480x640
        codec.frame_from_array(sample_bgr[:300, :300], frame_id=3),  # square
    ]
    async with server_factory(buckets=((64, 80), (80, 64), (64, 64))) as server:
        responses = await segment(server, pb.StreamConfig(), frames)
        async with channel(server) as ch:
            listed = await pb_grpc.SegmentationStub(ch).ListModels(pb.ListModelsRequest(), timeout=30)
    # Clients learn the shapes frames snap to, as (width, height).
    assert ModelInfo.from_proto(listed.models[0]).inference_shapes == ((80, 64), (64, 80), (64, 64))
    shapes = [(r.inference_height, r.inference_width) for r in responses]
    assert shapes == [(64, 80), (80, 64), (64, 64)]
    assert [codec.decode_mask(r.label_mask).shape for r in responses] == [(480, 640), (640, 480), (300, 300)]
