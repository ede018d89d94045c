"""Results for Foxglove: the MCAP file read back, and the live server spoken to as a WebSocket client."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from websockets.sync.client import ClientConnection, connect

from segstream.client._cli_support import CliError
from segstream.client._foxglove import (
    TOPIC_CAMERA,
    TOPIC_CLASSES,
    TOPIC_COLOR_MASK,
    TOPIC_FRAME,
    TOPIC_LABELS,
    TOPIC_OVERLAY,
    TOPICS,
    FoxglovePublisher,
)
from segstream.client._results import FrameError, ModelInfo, SegmentResult
from segstream.client.cli import build_parser
from segstream.wire.palette import voc_palette
from tests.mcap_read import read_mcap, stamp_ns

pytestmark = pytest.mark.timeout(30)

# The SDK speaks "foxglove.sdk.v1"; the older name is offered too, as the Foxglove app does.
SUBPROTOCOLS = ["foxglove.sdk.v1", "foxglove.websocket.v1"]
OP_MESSAGE_DATA = 0x01
T0 = 1_700_000_000_123_456_789


def _model(synthetic: bool = False) -> ModelInfo:
    names = ("__background__", "aeroplane", "bicycle")
    return ModelInfo("tiny", names, voc_palette(3), 64, "CPUExecutionProvider", ("out",), synthetic, True)


def _result(frame_id: int, stamp: int) -> tuple[SegmentResult, np.ndarray]:
    labels = np.zeros((48, 64), np.uint8)
    labels[10:20, 5 + frame_id : 30] = 2
    original = np.full((48, 64, 3), 40 + frame_id, np.uint8)
    overlay = np.full((48, 64, 3), 90, np.uint8)
    result = SegmentResult(frame_id=frame_id, timestamp_ns=stamp, labels=labels, overlay=overlay, latency_ms=7.5)
    return result, original


def test_mcap_holds_every_topic_stamped_with_the_capture_time(tmp_path: Path) -> None:
    path = tmp_path / "run.mcap"
    stamps = [T0 + i * 33_333_333 for i in range(3)]
    with FoxglovePublisher(_model(synthetic=True), mcap=path, frame_id="front_camera") as publisher:
        for i, stamp in enumerate(stamps):
            result, original = _result(i, stamp)
            publisher.publish(result, original, stamp)
        failed = SegmentResult(3, T0 + 10**8, error=FrameError(grpc.StatusCode.INTERNAL, "model failed"))
        publisher.publish(failed, np.zeros((48, 64, 3), np.uint8), T0 + 10**8)  # the camera frame alone
        publisher.publish(None, np.zeros((48, 64, 3), np.uint8), T0 + 2 * 10**8)  # never answered: the same
    recorded = read_mcap(path)
    assert recorded.schemas == {
        TOPIC_CAMERA: ("foxglove.CompressedImage", "protobuf"),
        TOPIC_OVERLAY: ("foxglove.CompressedImage", "protobuf"),
        TOPIC_COLOR_MASK: ("foxglove.CompressedImage", "protobuf"),
        TOPIC_LABELS: ("foxglove.RawImage", "protobuf"),
        TOPIC_FRAME: ("segstream.Frame", "json"),
        TOPIC_CLASSES: ("segstream.Classes", "json"),
    }
    assert recorded.counts == {
        TOPIC_CAMERA: 5,
        TOPIC_OVERLAY: 3,
        TOPIC_COLOR_MASK: 3,
        TOPIC_LABELS: 3,
        TOPIC_FRAME: 4,
        TOPIC_CLASSES: 1,
    }
    assert recorded.metadata["segstream"]["model"] == "tiny"
    for topic in (TOPIC_OVERLAY, TOPIC_COLOR_MASK, TOPIC_LABELS):
        messages = recorded.messages[topic]
        assert [log_time for log_time, _ in messages] == stamps
        assert [stamp_ns(message) for _, message in messages] == stamps
        assert {message.frame_id for _, message in messages} == {"front_camera"}
    camera = recorded.messages[TOPIC_CAMERA]
    assert [stamp_ns(m) for _, m in camera] == [*stamps, T0 + 10**8, T0 + 2 * 10**8]
    assert camera[0][1].format == "jpeg" and camera[0][1].data[:2] == b"\xff\xd8"
    assert recorded.messages[TOPIC_COLOR_MASK][0][1].format == "png"
    label = recorded.messages[TOPIC_LABELS][1][1]
    assert (label.encoding, label.width, label.height, label.step) == ("mono8", 64, 48, 64)
    expected, _ = _result(1, 0)
    assert expected.labels is not None
    assert np.array_equal(np.frombuffer(label.data, np.uint8).reshape(48, 64), expected.labels)
    frames = [message for _, message in recorded.messages[TOPIC_FRAME]]
    assert [f["frame_id"] for f in frames] == [0, 1, 2, 3]
    assert frames[0]["classes"] == [0, 2] and frames[0]["latency_ms"] == 7.5 and not frames[3]["ok"]
    (classes_time, classes), *_ = recorded.messages[TOPIC_CLASSES]
    assert classes_time == stamps[0] and classes["synthetic"] is True
    names = [(c["index"], c["name"]) for c in classes["classes"]]
    assert names == [(0, "background"), (1, "aeroplane"), (2, "bicycle")]
    assert classes["classes"][2]["color"] == "#{:02x}{:02x}{:02x}".format(*voc_palette(3)[2])


def _recv_json(ws: ClientConnection, op: str, deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(message, str) and (decoded := json.loads(message))["op"] == op:
            return dict(decoded)
    raise AssertionError(f"no {op} message")


def test_live_server_advertises_and_sends_subscribed_images() -> None:
    model = _model()
    with FoxglovePublisher(model, serve=("127.0.0.1", 0)) as publisher:
        assert publisher.port
        url = publisher.app_url()
        assert url is not None and str(publisher.port) in url
        deadline = time.monotonic() + 10
        with connect(f"ws://127.0.0.1:{publisher.port}", subprotocols=SUBPROTOCOLS, open_timeout=5) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol in SUBPROTOCOLS
            channels = _recv_json(ws, "advertise", deadline)["channels"]
            assert isinstance(channels, list)
            by_topic = {c["topic"]: c for c in channels}
            assert set(by_topic) == set(TOPICS)
            assert by_topic[TOPIC_OVERLAY]["schemaName"] == "foxglove.CompressedImage"
            assert by_topic[TOPIC_LABELS]["schemaName"] == "foxglove.RawImage"
            subscribe = [
                {"id": 1, "channelId": by_topic[TOPIC_OVERLAY]["id"]},
                {"id": 2, "channelId": by_topic[TOPIC_CLASSES]["id"]},
            ]
            ws.send(json.dumps({"op": "subscribe", "subscriptions": subscribe}))
            received: dict[int, tuple[int, bytes]] = {}
            frame = 0
            # Frames go on until both subscriptions have been served: the first ones may precede the subscription.
            while len(received) < 2 and time.monotonic() < deadline:
                result, original = _result(frame % 10, T0 + frame)
                publisher.publish(result, original, T0 + frame)
                frame += 1
                try:
                    message = ws.recv(timeout=0.05)
                except TimeoutError:
                    continue
                if isinstance(message, bytes) and message[0] == OP_MESSAGE_DATA:
                    subscription, log_time = struct.unpack_from("<IQ", message, 1)
                    received.setdefault(subscription, (log_time, message[13:]))
    assert set(received) == {1, 2}, received
    log_time, payload = received[1]
    assert T0 <= log_time < T0 + frame and b"jpeg" in payload and b"camera" in payload
    classes = json.loads(received[2][1])
    assert classes["model"] == "tiny" and len(classes["classes"]) == 3


def test_a_port_in_use_is_an_os_error() -> None:
    with FoxglovePublisher(_model(), serve=("127.0.0.1", 0)) as first, pytest.raises(OSError, match="cannot serve"):
        FoxglovePublisher(_model(), serve=("127.0.0.1", first.port or 0))


def test_without_the_sdk_the_cli_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from segstream.client._cli_record import start_recording

    monkeypatch.setitem(sys.modules, "foxglove", None)  # import foxglove now raises ImportError
    monkeypatch.delitem(sys.modules, "segstream.client._foxglove")
    args = build_parser({}).parse_args(["webcam", "--mcap", str(tmp_path / "x.mcap")])
    with pytest.raises(CliError, match=r"need the foxglove-sdk package: pip install 'segstream\[foxglove\]'"):
        start_recording(args, _model(), source="0", fps=30.0)
