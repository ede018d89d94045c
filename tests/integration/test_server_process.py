"""SIGTERM drain, client disconnects and a soak run against a segstream-server process on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.integration.server_process import server_process


def _frame(image: npt.NDArray[np.uint8], frame_id: int) -> pb.Frame:
    return codec.frame_from_array(image, frame_id=frame_id, encoding="raw")


def _paced(config: pb.StreamConfig, frames: list[pb.Frame], interval: float = 0.0) -> Iterator[pb.SegmentRequest]:
    yield pb.SegmentRequest(config=config)
    for frame in frames:
        yield pb.SegmentRequest(frame=frame)
        if interval:
            time.sleep(interval)


@pytest.fixture(scope="module")
def small(sample_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(sample_bgr[::10, ::10])


def test_sigterm_drains_in_flight_frames_and_exits_zero(tiny_model: Path, small: npt.NDArray[np.uint8]) -> None:
    with server_process(tiny_model, "--size", "64", "--grace", "10") as server:

        def endless() -> Iterator[pb.SegmentRequest]:
            yield pb.SegmentRequest(config=pb.StreamConfig())
            for i in range(100_000):  # bounded; the server stops reading long before
                yield pb.SegmentRequest(frame=_frame(small, i))
                time.sleep(0.005)

        with grpc.insecure_channel(server.target) as ch:
            call = pb_grpc.SegmentationStub(ch).Segment(endless(), timeout=60)
            received: list[int] = []
            error: grpc.RpcError | None = None
            try:
                for response in call:
                    received.append(response.frame_id)
                    if len(received) == 20:
                        server.process.send_signal(signal.SIGTERM)
            except grpc.RpcError as exc:
                error = exc
            output = server.wait(timeout=30)
    assert server.process.returncode == 0, output
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert "shutting down" in (error.details() or "")
    # Every answered frame is a prefix of what was sent: nothing skipped, nothing answered twice.
    assert received == list(range(len(received))) and len(received) >= 20
    assert "Traceback" not in output


def test_disconnecting_clients_leave_nothing_behind(tiny_model: Path, small: npt.NDArray[np.uint8]) -> None:
    with server_process(tiny_model, "--size", "96", "--inflight", "8") as server:
        with grpc.insecure_channel(server.target) as ch:
            stub = pb_grpc.SegmentationStub(ch)
            for _ in range(5):
                call = stub.Segment(_paced(pb.StreamConfig(), [_frame(small, i) for i in range(50)]), timeout=30)
                next(call)  # the server is busy with this stream
                call.cancel()
            # A stream after all that is served normally.
            responses = list(stub.Segment(_paced(pb.StreamConfig(), [_frame(small, 7)]), timeout=30))
            assert [r.frame_id for r in responses] == [7]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if server.metric("segstream_open_streams") == 0 and server.metric("segstream_inflight_frames") == 0:
                break
            time.sleep(0.1)
        assert server.metric("segstream_open_streams") == 0
        assert server.metric("segstream_inflight_frames") == 0
        # Cancelled streams' queued frames were withdrawn, not run: far fewer than 5 x 50 were answered.
        assert server.metric("segstream_frames_answered_total") < 5 * 50
        assert server.terminate() is not None
    assert server.process.returncode == 0


@pytest.mark.parametrize("policy", ["ordered", "latest"])
def test_soak_eight_streams_of_500_frames(tiny_model: Path, small: npt.NDArray[np.uint8], policy: str) -> None:
    # `make soak` runs the same test longer through these variables.
    streams = int(os.environ.get("SEGSTREAM_SOAK_STREAMS", "8"))
    per_stream = int(os.environ.get("SEGSTREAM_SOAK_FRAMES", "500"))
    latest = policy == "latest"
    config = pb.StreamConfig(
        policy=pb.FRAME_POLICY_LATEST if latest else pb.FRAME_POLICY_ORDERED,
        outputs=[pb.OUTPUT_LABEL_MASK, pb.OUTPUT_OVERLAY],
    )
    with server_process(tiny_model, "--size", "32", "--max-batch", "8") as server:
        rss: list[int] = []
        results: dict[int, list[pb.SegmentResponse]] = {}
        errors: list[BaseException] = []

        def run(stream: int, count: int = per_stream) -> None:
            frames = [_frame(small, stream * 100_000 + i) for i in range(count)]
            try:
                with grpc.insecure_channel(server.target) as ch:
                    # LATEST sources send like a fast camera, so the run lasts long enough to measure.
                    call = pb_grpc.SegmentationStub(ch).Segment(_paced(config, frames, 0.002 * latest), timeout=3600)
                    results[stream] = list(call)
            except BaseException as exc:
                errors.append(exc)

        # A short warm-up first: buffers and arenas for every batch size are allocated once, not leaked.
        warmups = [threading.Thread(target=run, args=(s, 40)) for s in range(streams)]
        for t in warmups:
            t.start()
        for t in warmups:
            t.join(timeout=120)
        threads = [threading.Thread(target=run, args=(s,)) for s in range(streams)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append(server.rss_kib())
            time.sleep(0.1)
        for t in threads:
            t.join(timeout=3600)
        assert not errors, errors
        for stream in range(streams):
            ids = [r.frame_id - stream * 100_000 for r in results[stream]]
            assert all(not r.HasField("error") for r in results[stream])
            if latest:
                answered, dropped = len(ids), results[stream][-1].dropped_frames
                assert answered + dropped == per_stream
                assert ids == sorted(set(ids)) and ids[-1] == per_stream - 1
            else:
                assert ids == list(range(per_stream))  # every frame exactly once, in order
        quarter = max(len(rss) // 4, 1)
        first, last = np.mean(rss[:quarter]), np.mean(rss[-quarter:])
        assert last < first * 1.10, f"resident memory grew from {first:.0f} to {last:.0f} KiB"
        server.terminate()
    assert server.process.returncode == 0
