"""Client pieces that need no server: options, results, errors, frames, the public surface, CLI parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import grpc
import grpc.aio
import numpy as np
import pytest

import segstream.client
from segstream.client import (
    AuthenticationError,
    DeadlineExceededError,
    FrameInput,
    InvalidRequestError,
    ResourceExhaustedError,
    SegmentationClient,
    SegmentResult,
    SegstreamError,
    ServerError,
    ServerNotReadyError,
    ServerUnavailableError,
    StreamOptions,
)
from segstream.client._errors import error_from_rpc
from segstream.client._frames import FrameEncoder, SendLog
from segstream.client.cli import build_parser, main
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire.codec import decode_frame, encode_image, encode_mask
from tests.cli_help import assert_every_option_documented


def test_public_names_are_sorted_and_pinned() -> None:
    assert segstream.client.__all__ == sorted(segstream.client.__all__)
    assert set(segstream.client.__all__) == {
        "AsyncSegmentationClient", "AuthenticationError", "CameraSource", "DeadlineExceededError", "FrameError",
        "EncodedFrame", "FrameInput", "FrameLike", "InvalidFrameError", "InvalidRequestError", "ModelInfo", "Reconnect",
        "ResourceExhaustedError", "SegmentResult", "SegmentationClient", "SegstreamError", "ServerError",
        "ServerNotReadyError", "ServerUnavailableError", "StageTimings", "StreamOptions", "VideoSourceError",
    }  # fmt: skip


def test_the_client_never_imports_the_server() -> None:
    code = (
        "import sys, segstream.client, segstream.client.cli; "
        "sys.exit(any(m.startswith('segstream.server') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=30, check=False).returncode == 0


def test_stream_options_defaults_and_to_proto() -> None:
    config = StreamOptions().to_proto()
    assert list(config.outputs) == [pb.OUTPUT_LABEL_MASK]
    assert (config.head, config.policy, config.mask_encoding) == (pb.HEAD_OUT, pb.FRAME_POLICY_ORDERED, 1)
    assert (config.image_encoding, config.resolution, config.jpeg_quality) == (
        1,
        pb.OUTPUT_RESOLUTION_FRAME,
        90,
    )
    options = StreamOptions(
        model="m",
        head="aux",
        outputs=["overlay", "class_share", "overlay"],  # type: ignore[arg-type]
        mask_encoding="png",
        image_encoding="raw",
        resolution="inference",
        policy="latest",
        jpeg_quality=70,
    )
    assert options.outputs == ("overlay", "class_share")
    config = options.to_proto()
    assert list(config.outputs) == [pb.OUTPUT_OVERLAY, pb.OUTPUT_CLASS_SHARE]
    assert (config.model, config.head, config.policy) == ("m", pb.HEAD_AUX, pb.FRAME_POLICY_LATEST)
    assert (config.image_encoding, config.resolution) == (
        pb.IMAGE_ENCODING_RAW_RGB,
        pb.OUTPUT_RESOLUTION_INFERENCE,
    )
    assert StreamOptions(outputs="overlay").outputs == ("overlay",)  # type: ignore[arg-type]
    assert hash(options) == hash(StreamOptions(**{**options.__dict__}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"head": "main"}, r"head must be one of 'out', 'aux'; got 'main'"),
        ({"outputs": ("mask",)}, r"outputs must be one of 'label_mask'"),
        ({"outputs": ()}, r"outputs is empty; ask for at least one of label_mask"),
        ({"policy": "newest"}, r"policy must be one of 'ordered', 'latest'"),
        ({"image_encoding": "webp"}, r"image_encoding must be one of"),
        ({"jpeg_quality": 0}, r"jpeg_quality must be an integer from 1 to 100; got 0"),
        ({"jpeg_quality": True}, r"jpeg_quality must be an integer"),
        ({"model": " fcn "}, r"surrounding whitespace; strip it"),
    ],
)
def test_stream_options_say_how_to_fix_bad_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StreamOptions(**changes)  # type: ignore[arg-type]


def test_segment_result_from_proto() -> None:
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    resp = pb.SegmentResponse(frame_id=5, dropped_frames=2, model="m", inference_width=4, inference_height=3)
    resp.capture_time.FromNanoseconds(123)
    resp.label_mask.CopyFrom(encode_mask(labels, pb.MASK_ENCODING_PNG))
    resp.overlay.CopyFrom(encode_image(np.full((3, 4, 3), 9, np.uint8), pb.IMAGE_ENCODING_RAW_RGB))
    resp.class_share.extend([0.25, 0.75])
    resp.confidence = 0.5
    resp.timings.inference_ms = 4.0
    result = SegmentResult.from_proto(resp, sent_at=10.0, received_at=10.025)
    assert result.ok and result.error is None and result.frame_id == 5 and result.timestamp_ns == 123
    assert result.labels is not None and (result.labels == labels).all()
    assert result.overlay is not None and result.overlay.shape == (3, 4, 3) and result.color_mask is None
    assert result.class_share is not None and result.class_share.tolist() == [0.25, 0.75]
    assert result.confidence == 0.5 and result.timings.inference_ms == 4.0
    assert result.latency_ms == pytest.approx(25.0)
    assert (result.dropped_frames, result.model, result.inference_size) == (2, "m", (4, 3))
    assert SegmentResult.from_proto(pb.SegmentResponse()).latency_ms is None

    failed = SegmentResult.from_proto(pb.SegmentResponse(error=pb.FrameError(code=3, message="bad frame")))
    assert not failed.ok and failed.error is not None and failed.error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert str(failed.error) == "INVALID_ARGUMENT: bad frame"
    unknown = SegmentResult.from_proto(pb.SegmentResponse(error=pb.FrameError(code=99)))
    assert unknown.error is not None and unknown.error.code is grpc.StatusCode.UNKNOWN
    corrupt = pb.SegmentResponse(overlay=pb.Image(data=b"junk", width=2, height=2))
    damaged = SegmentResult.from_proto(corrupt)
    assert damaged.error is not None and damaged.error.code is grpc.StatusCode.DATA_LOSS


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.UNAVAILABLE, ServerUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.NOT_FOUND, InvalidRequestError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
        (grpc.StatusCode.INTERNAL, ServerError),
        (grpc.StatusCode.UNIMPLEMENTED, ServerError),
    ],
)
def test_rpc_errors_map_to_the_hierarchy(code: grpc.StatusCode, cls: type[SegstreamError]) -> None:
    rpc_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "why", "")
    error = error_from_rpc(rpc_error, "host:1")
    assert type(error) is cls and error.code is code
    assert str(error).startswith(f"{code.name} from host:1: why")
    assert issubclass(ServerNotReadyError, ServerUnavailableError) and issubclass(ServerNotReadyError, TimeoutError)


def test_a_status_lost_by_grpc_aio_is_explained() -> None:
    debug = 'Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object at 0x1>,)'
    meta = grpc.aio.Metadata()
    rpc_error = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, meta, meta, "Internal error from Core", debug)
    error = error_from_rpc(rpc_error, "host:1")
    assert isinstance(error, ServerError) and "grpc/grpc#36066" in str(error)


def test_frame_encoder_numbers_frames_and_keeps_channel_order() -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200  # red
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    encoder = FrameEncoder("bgr", "raw", 90)
    frames = [
        encoder.encode(bgr),
        encoder.encode(FrameInput(bgr, frame_id=77, timestamp_ns=5)),
        encoder.encode(bgr),
    ]
    assert [f.frame_id for f in frames] == [0, 77, 2]
    assert frames[1].capture_time.ToNanoseconds() == 5
    assert (decode_frame(frames[0]) == rgb).all()
    assert (decode_frame(FrameEncoder("rgb", "png", 90).encode(rgb)) == rgb).all()
    grey = FrameEncoder("bgr", "raw", 90).encode(np.full((2, 3), 50, np.uint8))
    assert grey.raw.format == pb.PIXEL_FORMAT_GRAY8
    assert FrameEncoder("bgr", "jpeg", 90).encode(bgr).encoded.data[:2] == b"\xff\xd8"
    with pytest.raises(TypeError, match="uint8"):
        encoder.encode(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="frame_id"):
        FrameInput(bgr, frame_id=-1)


def test_send_log_forgets_frames_dropped_before_an_answer() -> None:
    log = SendLog()
    for frame_id in (1, 2, 3, 4):
        log.sent(frame_id)
    assert log.answered(3) is not None
    assert len(log) == 1 and log.answered(1) is None and log.answered(4) is not None


def test_client_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="wire_encoding must be one of raw, jpeg, png"):
        SegmentationClient(wire_encoding="webp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_in_flight"):
        SegmentationClient(max_in_flight=0)


_OPTIONS = {
    "video": ["--out", "--mask-out", "--png-dir", "--wire", "--max-frames", "--no-progress", "IN", "--mcap"],
    "webcam": ["--device", "--max-frames", "--no-display", "--wire", "--out", "--foxglove", "--mcap", "--frame-id"],
    "image": ["--out", "--mask-out", "--wire", "IN"],
    "models": [],
    "wait": [],
}
_GLOBAL = ["--server", "--model", "--head", "--timeout"]


@pytest.mark.parametrize("command", sorted(_OPTIONS))
def test_help_mentions_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for option in [*_OPTIONS[command], *_GLOBAL]:
        assert option in text, option


def test_every_option_of_every_command_is_documented() -> None:
    assert_every_option_documented(build_parser({}))


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(word in text for word in [*_OPTIONS, *_GLOBAL, "SEGSTREAM_SERVER"])


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        ([], 2, "required: COMMAND"),
        (["video"], 2, "required: IN"),
        (["video", __file__], 1, "nothing to write: give --out FILE, --mcap FILE or --foxglove"),
        (["video", "x.mp4", "--out", "y.mp4", "--max-frames", "0"], 2, "must be a positive integer"),
        (["--head", "left", "models"], 2, "invalid choice: 'left'"),
        (["wait", "--timeout", "soon"], 2, "argument --timeout: must be a number of seconds >= 0, got 'soon'"),
        (["video", "missing.mp4", "--out", "y.mp4"], 1, "input video missing.mp4 does not exist"),
        (["image", "missing.png", "--out", "y.png"], 1, "input image missing.png does not exist"),
        (["video", __file__, "--out", "y.mp4"], 1, f"cannot open input video {__file__!r}: it is missing or not"),
        (["webcam", "--device", "/no/such/camera", "--no-display"], 1, "cannot open video source"),
        (["image", __file__, "--out", "y.png"], 1, "not an image OpenCV can decode"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("segstream-client: error: ") and message in err, err


def test_server_comes_from_flag_then_environment_then_default() -> None:
    assert build_parser({}).parse_args(["models"]).server == "localhost:50051"
    parser = build_parser({"SEGSTREAM_SERVER": "robot:7000"})
    assert parser.parse_args(["models"]).server == "robot:7000"
    assert parser.parse_args(["--server", "a:1", "models"]).server == "a:1"
    args = parser.parse_args(["--server", "a:1", "--timeout", "3", "wait", "--server", "b:2"])
    assert (args.server, args.timeout) == ("b:2", 3.0)


def test_video_output_must_be_mp4_or_avi(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (16, 16))
    writer.write(np.zeros((16, 16, 3), np.uint8))
    writer.release()
    assert main(["video", str(source), "--out", str(tmp_path / "out.gif")]) == 1
    assert "use a .mp4 or .avi file name" in capsys.readouterr().err
