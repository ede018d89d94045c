"""segstream-client's recordings against a real server: H.264 MP4s, MCAP files and the live Foxglove server."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from segstream.client._foxglove import TOPIC_CAMERA, TOPIC_CLASSES, TOPIC_FRAME, TOPIC_LABELS, TOPIC_OVERLAY
from segstream.client.cli import main
from tests.conftest import SAMPLES
from tests.integration.background_server import BackgroundServer, background_server, tiny_config
from tests.integration.server_process import free_port
from tests.mcap_read import read_mcap, stamp_ns

pytestmark = pytest.mark.timeout(60)

CLIP = SAMPLES / "coco-pan.mp4"  # 48 frames, 12 fps, 320x240
IMAGE_TOPICS = (TOPIC_CAMERA, TOPIC_OVERLAY, TOPIC_LABELS)


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[BackgroundServer]:
    with background_server(tiny_config(tiny_model)) as running:
        yield running


def _probe(path: Path) -> tuple[str, Fraction | None, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, stream.average_rate, sum(1 for _ in container.decode(stream))


def test_video_writes_h264_and_an_mcap_stamped_by_video_time(
    server: BackgroundServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, mcap = tmp_path / "overlay.mp4", tmp_path / "run.mcap"
    argv = ["--server", server.target, "video", str(CLIP), "--out", str(out), "--mcap", str(mcap), "--no-progress"]
    assert main([*argv, "--frame-id", "front"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "48 frames, 0 failed" in captured.out and str(mcap) in captured.out
    assert f"recorded {mcap} (48 frames)" in captured.err
    assert _probe(out) == ("h264", Fraction(12), 48)  # the source's rate, every frame
    recorded = read_mcap(mcap)
    frame_times = [i * 10**9 // 12 for i in range(48)]
    for topic in IMAGE_TOPICS:
        assert recorded.counts[topic] == 48, topic
        messages = recorded.messages[topic]
        assert [log_time for log_time, _ in messages] == frame_times
        assert [stamp_ns(message) for _, message in messages] == frame_times
        assert {message.frame_id for _, message in messages} == {"front"}
    assert recorded.counts[TOPIC_CLASSES] == 1
    assert [m["frame_id"] for _, m in recorded.messages[TOPIC_FRAME]] == list(range(48))
    labels = recorded.messages[TOPIC_LABELS][0][1]
    assert (labels.width, labels.height, labels.encoding) == (320, 240, "mono8")


def test_video_to_mcap_alone(server: BackgroundServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mcap = tmp_path / "only.mcap"
    argv = ["--server", server.target, "video", str(CLIP), "--mcap", str(mcap), "--max-frames", "5", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert read_mcap(mcap).counts[TOPIC_OVERLAY] == 5


def test_webcam_records_the_live_overlay_and_an_mcap(
    server: BackgroundServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, mcap = tmp_path / "live.mp4", tmp_path / "live.mcap"
    started = time.time_ns()
    # A file stands in for a camera, read at its own 12 fps: 24 frames take 2 s.
    argv = ["--server", server.target, "webcam", "--device", str(CLIP), "--max-frames", "24", "--no-display"]
    assert main([*argv, "--out", str(out), "--mcap", str(mcap)]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    recorded = read_mcap(mcap)
    answered = recorded.counts[TOPIC_OVERLAY]
    assert 1 <= answered <= 24
    stamps = [stamp_ns(message) for _, message in recorded.messages[TOPIC_OVERLAY]]
    assert stamps == sorted(set(stamps)) and started <= stamps[0] <= stamps[-1] <= time.time_ns()
    assert recorded.counts[TOPIC_CAMERA] == recorded.counts[TOPIC_LABELS] == answered
    assert f"wrote {out} ({answered} frames, h264)" in err
    codec, _, frames = _probe(out)
    assert (codec, frames) == ("h264", answered)
    with av.open(str(out)) as container:
        duration = float(container.duration or 0) / av.time_base
    # Timed by capture times: the video lasts as long as the frames it shows took to arrive.
    assert abs(duration - (stamps[-1] - stamps[0]) / 1e9) < 0.5


def _fast_clip(path: Path) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 100.0, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()


def test_webcam_serves_foxglove_live(server: BackgroundServer, tmp_path: Path) -> None:
    clip = tmp_path / "fast.avi"
    _fast_clip(clip)
    port = free_port()
    argv = ["--server", server.target, "webcam", "--device", str(clip), "--loop", "--no-display"]
    # 100 fps for at most 3 s: time enough to connect, subscribe and receive.
    argv += ["--max-frames", "300", "--foxglove", f"127.0.0.1:{port}"]
    status: list[int] = []
    runner = threading.Thread(target=lambda: status.append(main(argv)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 20
    received: bytes | None = None
    try:
        while True:
            try:
                ws = connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1"], open_timeout=2)  # type: ignore[list-item]
                break
            except OSError:
                assert runner.is_alive() and time.monotonic() < deadline, "the Foxglove server never listened"
                time.sleep(0.05)
        with ws:
            while received is None and time.monotonic() < deadline:
                message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
                if isinstance(message, str) and json.loads(message)["op"] == "advertise":
                    ids = {c["topic"]: c["id"] for c in json.loads(message)["channels"]}
                    ws.send(
                        json.dumps({"op": "subscribe", "subscriptions": [{"id": 9, "channelId": ids[TOPIC_CAMERA]}]})
                    )
                elif isinstance(message, bytes) and message[0] == 0x01:
                    received = message
    finally:
        runner.join(timeout=30)
    assert status == [0]
    assert received is not None, "no image message arrived"
    subscription, log_time = struct.unpack_from("<IQ", received, 1)
    assert subscription == 9 and abs(log_time - time.time_ns()) < 60 * 10**9
