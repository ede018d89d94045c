"""Every frame a server receives is counted once as answered, failed or dropped, per model and per stream.

A real in-process server on 127.0.0.1 with two models: the tiny one, and the tiny one slowed down so
that a LATEST stream flooded with frames drops some. Good, corrupt and flood frames, and a stream
cancelled with frames in flight; then /metrics is scraped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from segstream.server.app import SegstreamServer
from segstream.server.config import ModelSpec, ServerConfig
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.integration.background_server import HeldModel
from tests.integration.grpc_helpers import channel, segment

pytestmark = pytest.mark.timeout(120)

_SAMPLE = re.compile(r"^segstream_frames_(received|answered|failed|dropped)_total\{([^}]*)\} (\S+)$", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _counts(text: str) -> dict[str, dict[str, float]]:
    """Per model: received, answered, failed, dropped, and dropped:<reason>."""
    counts: dict[str, dict[str, float]] = {}
    for kind, labels, value in _SAMPLE.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        mine = counts.setdefault(fields["model"], dict.fromkeys(("received", "answered", "failed", "dropped"), 0.0))
        mine[kind] += float(value)
        if kind == "dropped":
            mine[f"dropped:{fields['reason']}"] = mine.get(f"dropped:{fields['reason']}", 0.0) + float(value)
    return counts


def _balanced(model: dict[str, float]) -> bool:
    return model["received"] == model["answered"] + model["failed"] + model["dropped"]


@pytest.fixture
def small(sample_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(sample_bgr[::4, ::4])


def _good(image: npt.NDArray[np.uint8], frame_id: int) -> pb.Frame:
    return codec.frame_from_array(image, frame_id=frame_id, encoding="jpeg")


def _corrupt(frame_id: int) -> pb.Frame:
    return pb.Frame(frame_id=frame_id, encoded=pb.EncodedImage(data=b"\xff\xd8\xff junk"))


async def test_received_is_answered_plus_failed_plus_dropped(
    tiny_model: Path, small: npt.NDArray[np.uint8], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="segstream.server.service")
    port = _free_port()
    config = ServerConfig(
        models=(ModelSpec("tiny", tiny_model), ModelSpec("slow", tiny_model)),
        host="127.0.0.1",
        port=0,
        size=64,
        device="cpu",
        threads=1,
        metrics_port=port,
    )
    models = {"tiny": HeldModel(tiny_model, name="tiny"), "slow": HeldModel(tiny_model, delay=0.05, name="slow")}
    server = SegstreamServer(config, models)
    await server.start()
    try:
        # ORDERED on the tiny model: 5 good frames and 2 corrupt ones, every one answered.
        frames = [_good(small, i) if i % 3 else _corrupt(i) for i in range(7)]
        ordered = await segment(server, pb.StreamConfig(model="tiny"), frames)
        assert len(ordered) == 7 and sum(r.HasField("error") for r in ordered) == 3

        # LATEST on the slow model, flooded: 40 frames at once, every fifth corrupt; most are dropped.
        flood = [_corrupt(i) if i % 5 == 4 else _good(small, i) for i in range(40)]
        latest = await segment(server, pb.StreamConfig(model="slow", policy=pb.FRAME_POLICY_LATEST), flood)
        assert latest[-1].frame_id == 39
        # What the client sees of its stream adds up too: every frame answered or counted as dropped.
        assert len(latest) + latest[-1].dropped_frames == 40
        assert latest[-1].dropped_frames > 0

        # ORDERED on the slow model, cancelled after its first answer while later frames are in flight.
        async with channel(server) as ch:
            stub = pb_grpc.SegmentationStub(ch)

            async def messages() -> AsyncIterator[pb.SegmentRequest]:
                yield pb.SegmentRequest(config=pb.StreamConfig(model="slow"))
                for i in range(12):
                    yield pb.SegmentRequest(frame=_good(small, i))

            call = stub.Segment(messages())
            first = await call.read()
            assert isinstance(first, pb.SegmentResponse)
            call.cancel()

        deadline = time.monotonic() + 10
        while True:
            counts = _counts(await asyncio.to_thread(_scrape, port))
            settled = all(_balanced(model) for model in counts.values())
            if settled or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await server.stop(grace=1.0)

    tiny, slow = counts["tiny"], counts["slow"]
    assert (tiny["received"], tiny["answered"], tiny["failed"], tiny["dropped"]) == (7, 4, 3, 0)
    assert _balanced(slow), slow
    assert slow["dropped:stale"] == latest[-1].dropped_frames
    assert slow["dropped:cancelled"] >= 1  # the cancelled stream's frames in flight
    assert slow["received"] >= 40 + 2
    assert slow["failed"] >= 1 and slow["answered"] >= 2

    # Each stream's own counts, as its close is logged, add up as well.
    closed = [
        tuple(int(n) for n in match.groups())
        for record in caplog.records
        if (
            match := re.search(
                r"(\d+) frames received, (\d+) answered, (\d+) failed, (\d+) dropped", record.getMessage()
            )
        )
    ]
    assert len(closed) == 3, caplog.text
    for received, answered, failed, dropped in closed:
        assert received == answered + failed + dropped
    assert closed[0] == (7, 4, 3, 0)
    assert closed[1][0] == 40 and closed[1][3] == latest[-1].dropped_frames
