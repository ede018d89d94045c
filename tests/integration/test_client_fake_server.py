"""The client library and the CLI against a fake Segmentation servicer on a real grpc.aio server.

The fake is the engine-free seam: it runs on 127.0.0.1, port 0, in its own event-loop thread (so the
blocking client and the CLI can call it from the test thread) and answers like the contract says:
labels are the frame's red channel // 13, ids and capture times are echoed, and frame 3 of the
default model always fails with INVALID_ARGUMENT while the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from segstream.client import (
    AsyncSegmentationClient,
    FrameInput,
    InvalidRequestError,
    SegmentationClient,
    ServerNotReadyError,
    ServerUnavailableError,
    StreamOptions,
)
from segstream.client.cli import main
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc
from segstream.wire.codec import U8Array, as_u8, decode_frame, encode_image, encode_mask
from segstream.wire.palette import VOC_CLASSES, blend, class_share, colorize, voc_palette
from tests.videos import count_frames

FAILING_FRAME = 3
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# How each frame the fake received travelled: "raw", or the encoded bytes' format ("jpeg", "png").
WIRE_KINDS: list[str] = []


def _wire_kind(frame: pb.Frame) -> str:
    if frame.WhichOneof("image") == "raw":
        return "raw"
    data = frame.encoded.data
    return "png" if data.startswith(b"\x89PNG") else "jpeg" if data.startswith(b"\xff\xd8") else "other"


def _respond(frame: pb.Frame, config: pb.StreamConfig) -> pb.SegmentResponse:
    WIRE_KINDS.append(_wire_kind(frame))
    model = config.model or "fake"
    resp = pb.SegmentResponse(frame_id=frame.frame_id, model=model, dropped_frames=0)
    resp.capture_time.CopyFrom(frame.capture_time)
    if frame.frame_id == FAILING_FRAME and model == "fake":
        resp.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        resp.error.message = "frame 3 is always refused by the fake"
        return resp
    rgb = decode_frame(frame)
    labels = (rgb[:, :, 0] // 13).astype(np.uint8)
    outputs = set(config.outputs) or {pb.OUTPUT_LABEL_MASK}
    color = colorize(labels)
    quality = config.jpeg_quality or 90
    if pb.OUTPUT_LABEL_MASK in outputs:
        resp.label_mask.CopyFrom(encode_mask(labels, config.mask_encoding))
    if pb.OUTPUT_COLOR_MASK in outputs:
        resp.color_mask.CopyFrom(encode_image(color, config.image_encoding, quality))
    if pb.OUTPUT_OVERLAY in outputs:
        resp.overlay.CopyFrom(encode_image(blend(rgb, color), config.image_encoding, quality))
    if pb.OUTPUT_CONFIDENCE in outputs:
        resp.confidence = 0.75
    if pb.OUTPUT_CLASS_SHARE in outputs:
        resp.class_share.extend(class_share(labels).tolist())
    resp.timings.total_ms = 1.5
    resp.inference_height, resp.inference_width = labels.shape
    return resp


class FakeSegmentation(segmentation_pb2_grpc.SegmentationServicer):
    """Serves "fake" (default; refuses frame 3) and "random" (synthetic; answers every frame)."""

    MODELS = ("fake", "random", "draining")
    # The "draining" model ends every stream with UNAVAILABLE after this many answers, as a server
    # that shuts down does: clients that reconnect get every frame answered over several streams.
    DRAIN_AFTER = 5

    async def _check_model(self, config: pb.StreamConfig, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if config.model not in ("", *self.MODELS):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown model {config.model!r}")

    async def Segment(
        self, requests: AsyncIterator[pb.SegmentRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SegmentResponse]:
        config: pb.StreamConfig | None = None
        answered = 0
        async for request in requests:
            if request.HasField("config"):
                if config is not None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "config sent twice")
                config = request.config
                await self._check_model(config, context)
                continue
            if config is not None and config.model == "draining" and answered == self.DRAIN_AFTER:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: reconnect")
            answered += 1
            yield _respond(request.frame, config or pb.StreamConfig())

    async def SegmentImage(
        self, request: pb.SegmentImageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SegmentResponse:
        await self._check_model(request.config, context)
        return _respond(request.frame, request.config)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        palette = [pb.Color(r=int(r), g=int(g), b=int(b)) for r, g, b in voc_palette()]
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=name,
                    class_names=VOC_CLASSES,
                    palette=palette,
                    inference_size=48,
                    execution_provider="CPUExecutionProvider",
                    heads=[pb.HEAD_OUT, pb.HEAD_AUX],
                    synthetic=name == "random",
                    is_default=name == "fake",
                    inference_shapes=[pb.InferenceShape(width=64, height=48)] if name == "random" else [],
                )
                for name in self.MODELS
            ]
        )


class FakeServer:
    """The fake servicer plus a health servicer on a grpc.aio server in a background event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # stubs lack .aio
        self.port = self._call(self._start())
        self.target = f"127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=5)

    async def _start(self) -> int:
        self._server = grpc.aio.server()
        add_servicer: Callable[[object, grpc.aio.Server], None] = (
            segmentation_pb2_grpc.add_SegmentationServicer_to_server  # untyped generated code
        )
        add_servicer(FakeSegmentation(), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        await self._health.set("", SERVING)
        port: int = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def set_health(self, status: int) -> None:
        self._call(self._health.set("", status))

    def stop(self) -> None:
        self._call(self._server.stop(0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.stop()


@pytest.fixture
def client(server: FakeServer) -> Iterator[SegmentationClient]:
    with SegmentationClient(server.target, timeout=5) as c:
        yield c


def _frame(index: int, height: int = 6, width: int = 8) -> U8Array:
    """A BGR frame whose red channel makes the fake's labels equal `index` everywhere."""
    bgr = np.zeros((height, width, 3), np.uint8)
    bgr[:, :, 2] = 13 * index + 5
    bgr[:, :, 1] = 40
    return bgr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- library ----------------------------------------------------------------------------------------


def test_stream_round_trip_echoes_ids_times_and_masks(client: SegmentationClient) -> None:
    options = StreamOptions(outputs=("label_mask", "overlay", "class_share"), image_encoding="png")
    frames = [FrameInput(_frame(i), timestamp_ns=1_000_000_000 + i) for i in range(6)]
    results = list(client.stream(frames, options))
    assert [r.frame_id for r in results] == list(range(6))
    assert [r.timestamp_ns for r in results] == [1_000_000_000 + i for i in range(6)]
    failed = results[FAILING_FRAME]
    assert not failed.ok and failed.error is not None
    assert failed.error.code is grpc.StatusCode.INVALID_ARGUMENT and failed.labels is None
    for r in results[:FAILING_FRAME] + results[FAILING_FRAME + 1 :]:
        assert r.ok and r.labels is not None and r.overlay is not None
        assert (r.labels == r.frame_id).all()
        rgb = as_u8(cv2.cvtColor(_frame(r.frame_id), cv2.COLOR_BGR2RGB))
        np.testing.assert_array_equal(r.overlay, blend(rgb, colorize(r.labels)))
        assert r.class_share is not None and r.class_share[r.frame_id] == pytest.approx(1.0)
        assert r.latency_ms is not None and r.latency_ms > 0
        assert r.inference_size == (8, 6) and r.timings.total_ms == 1.5 and r.model == "fake"
        assert not r.labels.flags.writeable


def test_stream_keeps_a_bounded_window_over_an_endless_source(server: FakeServer) -> None:
    pulled = 0

    def camera() -> Iterator[U8Array]:
        nonlocal pulled
        while True:
            pulled += 1
            yield _frame(1)

    with SegmentationClient(server.target, max_in_flight=2) as c:
        for answered, result in enumerate(c.stream(camera(), StreamOptions(model="random")), start=1):
            # A frame is pulled only once a window slot is free.
            assert pulled <= answered + 2
            assert result.ok
            if answered == 20:
                break
        # Leaving the loop cancelled the stream; the client still works.
        assert c.segment(_frame(2)).labels is not None


def test_stream_reraises_an_error_of_the_frame_source_after_the_sent_frames(
    client: SegmentationClient,
) -> None:
    def broken() -> Iterator[U8Array]:
        yield _frame(0)
        yield _frame(1)
        raise RuntimeError("camera unplugged")

    seen = []
    with pytest.raises(RuntimeError, match="camera unplugged"):
        for result in client.stream(broken()):
            seen.append(result.frame_id)
    assert seen == [0, 1]


def test_unknown_model_ends_the_stream_with_invalid_request(client: SegmentationClient) -> None:
    with pytest.raises(InvalidRequestError, match="unknown model"):
        list(client.stream([_frame(0)], StreamOptions(model="nope")))


async def test_async_stream_from_async_and_sync_sources(server: FakeServer) -> None:
    async def frames() -> AsyncIterator[U8Array]:
        for i in range(5):
            yield _frame(i)

    options = StreamOptions(outputs=("label_mask", "color_mask"), mask_encoding="png", policy="latest")
    async with AsyncSegmentationClient(server.target, pixel_format="bgr", max_in_flight=2) as c:
        results = [r async for r in c.stream(frames(), options)]
        assert [r.frame_id for r in results] == [0, 1, 2, 3, 4]
        assert results[FAILING_FRAME].error is not None
        assert all((r.labels == r.frame_id).all() for r in results if r.ok and r.labels is not None)
        assert results[0].color_mask is not None and results[0].color_mask.shape == (6, 8, 3)
        plain = [r async for r in c.stream([_frame(2)] * 3, StreamOptions(model="random"))]
        assert [r.frame_id for r in plain] == [0, 1, 2] and all(r.ok for r in plain)
        one = await c.segment(_frame(4), StreamOptions(outputs=("confidence",)), frame_id=9)
        assert one.frame_id == 9 and one.confidence == pytest.approx(0.75)
        assert [m.name for m in await c.models()] == ["fake", "random", "draining"]
        await c.wait_ready(timeout=2)


async def test_async_stream_errors_and_early_exit(server: FakeServer) -> None:
    def broken() -> Iterator[U8Array]:
        yield _frame(0)
        raise RuntimeError("camera unplugged")

    async def endless() -> AsyncIterator[U8Array]:
        while True:
            yield _frame(1)

    async with AsyncSegmentationClient(server.target, timeout=5) as c:
        # Frames race the server's refusal here; grpc.aio may lose its status (grpc/grpc#36066), and
        # the client then recovers the reason from the model list, so the error is the same.
        for _ in range(3):
            with pytest.raises(InvalidRequestError, match="unknown model 'nope'"):
                [r async for r in c.stream([_frame(0)] * 3, StreamOptions(model="nope"))]
        seen = []
        with pytest.raises(RuntimeError, match="camera unplugged"):
            async for result in c.stream(broken()):
                seen.append(result.frame_id)
        assert seen == [0]
        async with contextlib.aclosing(c.stream(endless(), StreamOptions(model="random"))) as results:
            async for result in results:
                assert result.ok
                break
        assert (await c.segment(_frame(2))).ok
    async with AsyncSegmentationClient(f"127.0.0.1:{_free_port()}", timeout=2) as c:
        with pytest.raises(ServerUnavailableError):
            await c.models()
        with pytest.raises(ServerNotReadyError):
            await c.wait_ready(timeout=0.2)


def test_segment_models_and_wait_ready(server: FakeServer, client: SegmentationClient) -> None:
    result = client.segment(_frame(7), StreamOptions(outputs=("label_mask", "overlay")), timestamp_ns=42)
    assert result.ok and result.timestamp_ns == 42 and result.labels is not None
    assert (result.labels == 7).all() and result.overlay is not None
    refused = client.segment(_frame(1), frame_id=FAILING_FRAME)
    assert refused.error is not None and refused.error.code is grpc.StatusCode.INVALID_ARGUMENT
    fake, random, _ = client.models()
    assert fake.is_default and not fake.synthetic and random.synthetic
    assert fake.palette.shape == (21, 3) and fake.palette.dtype == np.uint8
    assert fake.class_names[15] == "person" and fake.heads == ("out", "aux")
    client.wait_ready(timeout=2)


def test_wait_ready_waits_for_serving_then_times_out(server: FakeServer, client: SegmentationClient) -> None:
    server.set_health(NOT_SERVING)
    timer = threading.Timer(0.3, server.set_health, args=(SERVING,))
    timer.start()
    try:
        client.wait_ready(timeout=3)
    finally:
        timer.join()
    server.set_health(NOT_SERVING)
    with pytest.raises(ServerNotReadyError, match="NOT_SERVING"):
        client.wait_ready(timeout=0.3)


# --- command line -----------------------------------------------------------------------------------


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """A 12-frame 64x48 mp4 whose frame i would be labelled i if it were stored losslessly."""
    path = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 24.0, (64, 48))
    for i in range(12):
        writer.write(_frame(i, 48, 64))
    writer.release()
    return path


def _read(path: Path) -> U8Array:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return as_u8(image)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("segstream-client: error: ")
    return lines[0]


def test_cli_video_writes_every_frame_and_reports_the_failed_one(
    server: FakeServer, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, masks, pngs = tmp_path / "out.mp4", tmp_path / "masks.avi", tmp_path / "png"
    argv = ["video", str(video), "--out", str(out), "--mask-out", str(masks), "--png-dir", str(pngs)]
    assert main([*argv, "--no-progress", "--server", server.target]) == 1
    captured = capsys.readouterr()
    assert "12 frames, 1 failed" in captured.out and str(out) in captured.out
    assert "frame 3: INVALID_ARGUMENT" in _one_error_line(captured.err)
    assert count_frames(out) == 12 and count_frames(masks) == 12
    assert sorted(p.name for p in pngs.iterdir()) == [f"{i:06d}.png" for i in range(12) if i != FAILING_FRAME]
    mask = _read(pngs / "000007.png")
    assert mask.shape == (48, 64) and mask.dtype == np.uint8 and abs(int(np.median(mask)) - 7) <= 1


def test_cli_video_reconnects_and_loses_no_frame(
    server: FakeServer, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pngs = tmp_path / "out.mp4", tmp_path / "png"
    argv = ["--server", server.target, "--model", "draining", "video", str(video), "--out", str(out)]
    assert main([*argv, "--png-dir", str(pngs), "--no-progress"]) == 0
    assert "12 frames, 0 failed" in capsys.readouterr().out
    # 12 frames over three streams of at most five answers each, every one written once.
    assert sorted(p.name for p in pngs.iterdir()) == [f"{i:06d}.png" for i in range(12)]
    assert count_frames(out) == 12
    assert main([*argv, "--no-reconnect", "--no-progress"]) == 1
    assert "UNAVAILABLE" in _one_error_line(capsys.readouterr().err)


def test_cli_video_warns_about_a_synthetic_model(
    server: FakeServer, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.avi"
    argv = ["--server", server.target, "--model", "random", "video", str(video), "--out", str(out)]
    assert main([*argv, "--wire", "jpeg", "--max-frames", "5"]) == 0
    captured = capsys.readouterr()
    assert "SYNTHETIC" in captured.err and "MEANINGLESS" in captured.err
    assert "5 frames, 0 failed" in captured.out
    assert count_frames(out) == 5


@pytest.mark.parametrize("command", ["video", "webcam"])
@pytest.mark.parametrize("wire", ["raw", "jpeg", "png"])
def test_cli_video_and_webcam_send_frames_as_wire_says(
    server: FakeServer, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, wire: str
) -> None:
    WIRE_KINDS.clear()
    argv = ["--server", server.target, "--model", "random"]
    if command == "video":
        argv += ["video", str(video), "--out", str(tmp_path / "out.avi"), "--no-progress"]
    else:
        argv += ["webcam", "--device", str(video), "--no-display"]
    assert main([*argv, "--wire", wire, "--max-frames", "4"]) == 0
    assert WIRE_KINDS and set(WIRE_KINDS) == {wire}, WIRE_KINDS


def test_cli_image_writes_overlay_and_mask(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out, mask = tmp_path / "in.png", tmp_path / "out.jpg", tmp_path / "mask.png"
    cv2.imwrite(str(source), _frame(7, 48, 64))
    assert main(["image", str(source), "--out", str(out), "--mask-out", str(mask), "--server", server.target]) == 0
    assert "wrote" in capsys.readouterr().out
    assert _read(out).shape == (48, 64, 3)
    assert (_read(mask) == 7).all()


def test_cli_webcam_on_a_file_without_display(
    server: FakeServer, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--server", server.target, "webcam", "--device", str(video), "--no-display", "--max-frames", "5"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "5 read" in captured.out and "fps" in captured.out
    assert captured.err == ""


def test_cli_models_and_wait(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--server", server.target]) == 0
    out = capsys.readouterr().out
    assert "fake (default)" in out and "random SYNTHETIC" in out and "CPUExecutionProvider" in out
    assert "person" in out
    assert "inference size 48" in out and "inference shapes 64x48" in out
    assert main(["wait", "--server", server.target, "--timeout", "2", "--model", "random"]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert main(["wait", "--server", server.target, "--model", "nope"]) == 1
    assert "unknown model 'nope'" in _one_error_line(capsys.readouterr().err)
