"""Client-supplied text is cut short in status messages and logs (segstream.server.untrusted)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from segstream.server.config import ModelSpec
from segstream.server.untrusted import CLIP_LIMIT, clip
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.conftest import ServerFactory
from tests.integration.grpc_helpers import channel, requests

HUGE_NAME = "m" * 100_000


@pytest.fixture
def small_frame(sample_bgr: npt.NDArray[np.uint8]) -> pb.Frame:
    return codec.frame_from_array(np.ascontiguousarray(sample_bgr[::8, ::8]), frame_id=1, encoding="jpeg")


def test_clip_keeps_short_text_and_says_how_much_was_cut() -> None:
    assert clip("fcn-resnet50") == "fcn-resnet50"
    assert clip("x" * CLIP_LIMIT) == "x" * CLIP_LIMIT
    cut = clip("ab" * 50_000)
    assert cut.startswith("ab" * (CLIP_LIMIT // 2))
    assert cut.endswith(f"[... {100_000 - CLIP_LIMIT} more characters]")
    assert len(cut) < CLIP_LIMIT + 40
    assert clip("abcdef", limit=3) == "abc[... 3 more characters]"


def _longest_line(caplog: pytest.LogCaptureFixture) -> int:
    return max((len(record.getMessage()) for record in caplog.records), default=0)


async def test_a_huge_model_name_is_invalid_argument_with_a_short_message(
    server_factory: ServerFactory, small_frame: pb.Frame, caplog: pytest.LogCaptureFixture
) -> None:
    config = pb.StreamConfig(model=HUGE_NAME)
    with caplog.at_level(logging.INFO, logger="segstream"):
        async with server_factory() as server, channel(server) as ch:
            stub = pb_grpc.SegmentationStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                _ = [r async for r in stub.Segment(requests(config, [small_frame]), timeout=30)]
            with pytest.raises(grpc.aio.AioRpcError) as single:
                await stub.SegmentImage(pb.SegmentImageRequest(config=config, frame=small_frame), timeout=30)
            # The server still answers the same client normally afterwards.
            reply = await stub.SegmentImage(pb.SegmentImageRequest(frame=small_frame), timeout=30)
            assert not reply.HasField("error")
    for error in (streamed.value, single.value):
        details = error.details() or ""
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), details[:200])
        assert details.startswith("unknown model 'mmm")
        assert f"{100_000 - CLIP_LIMIT} more characters" in details
        assert "this server serves ['tiny']" in details
        assert len(details) < 1000
    assert "stream 1 ended: INVALID_ARGUMENT: unknown model" in caplog.text
    assert _longest_line(caplog) < 1000


async def test_a_huge_method_name_is_cut_in_the_refusal_log(
    server_factory: ServerFactory, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token\n")
    tokens.chmod(0o600)
    method = "/segstream.v1.Segmentation/" + "X" * 5000
    with caplog.at_level(logging.INFO, logger="segstream"):
        async with (
            server_factory((ModelSpec("tiny", tiny_model),), auth_token_file=tokens) as server,
            channel(server) as ch,
        ):
            call = ch.unary_unary(method, None, None)  # raw bytes both ways
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"", timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "refused /segstream.v1.Segmentation/XXX" in caplog.text
    assert "more characters]" in caplog.text
    assert _longest_line(caplog) < 1000
    assert "secret-token" not in caplog.text
