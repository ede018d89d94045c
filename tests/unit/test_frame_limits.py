"""--max-inference-pixels and --max-aspect: the checks, their messages, the settings, and code 8 for limits."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from segstream.server.cli import build_parser, config_from_args
from segstream.server.config import ConfigError, ModelSpec, ServerConfig
from segstream.server.errors import status_for
from segstream.server.frame_limits import DEFAULT_MAX_ASPECT, DEFAULT_MAX_INFERENCE_PIXELS, FrameLimits
from segstream.server.preprocess import inference_shape
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec
from segstream.wire.codec import FrameOverLimitError, InvalidFrameError


def _check(limits: FrameLimits, height: int, width: int, size: int) -> None:
    limits.check(height, width, inference_shape(height, width, size), size)


def _example(message: str) -> tuple[int, int]:
    """The (height, width) of the 'e.g. WxH' a refusal suggests."""
    match = re.search(r"e\.g\. (\d+)x(\d+)", message)
    assert match, message
    return int(match[2]), int(match[1])


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(2, 150, 64), (1, 300, 64), (300, 1, 64), (2, 150, 520), (100, 801, 64), (40000, 9, 0), (1000, 20000, 0)],
)
def test_thin_frames_are_refused_with_a_crop_that_passes(height: int, width: int, size: int) -> None:
    limits = FrameLimits()
    with pytest.raises(FrameOverLimitError) as refused:
        _check(limits, height, width, size)
    message = str(refused.value)
    assert f"frame of {width}x{height}" in message and "aspect ratio" in message and "crop it" in message
    _check(limits, *_example(message), size)  # what it says to send is accepted


@pytest.mark.parametrize(("height", "width"), [(100, 800), (800, 100), (1, 8), (480, 640), (1080, 1920)])
def test_frames_up_to_the_aspect_limit_pass(height: int, width: int) -> None:
    _check(FrameLimits(), height, width, 64)


@pytest.mark.parametrize(
    ("height", "width", "size", "limit"),
    [
        (100, 500, 520, DEFAULT_MAX_INFERENCE_PIXELS),
        (64, 300, 64, 64 * 100),
        (1000, 1500, 0, 1 << 20),
        (99, 97, 0, 4096),
    ],
)
def test_costly_network_inputs_are_refused_with_what_to_send(height: int, width: int, size: int, limit: int) -> None:
    limits = FrameLimits(max_inference_pixels=limit)
    with pytest.raises(FrameOverLimitError) as refused:
        _check(limits, height, width, size)
    message = str(refused.value)
    assert f"limit of {limit} pixels for the network input" in message
    assert ("crop it to an aspect ratio" if size else "resize it to at most") in message
    _check(limits, *_example(message), size)


def test_the_default_limits_take_the_default_size_on_wide_frames_but_not_thin_ones() -> None:
    limits = FrameLimits()
    assert (limits.max_inference_pixels, limits.max_aspect) == (DEFAULT_MAX_INFERENCE_PIXELS, DEFAULT_MAX_ASPECT)
    for height, width in [(480, 640), (1080, 1920), (1080, 2560), (1440, 5120), (4320, 7680)]:  # up to 32:9
        _check(limits, height, width, 520)
    with pytest.raises(FrameOverLimitError):
        _check(limits, 100, 400, 520)  # 4:1 at --size 520: 520x2080 pixels
    _check(limits, 720, 1280, 0)  # --size 0: a 720p frame runs at its own resolution
    with pytest.raises(FrameOverLimitError):
        _check(limits, 1080, 1920, 0)


def test_limits_and_message_size_answer_resource_exhausted_and_bad_frames_invalid_argument() -> None:
    over = pb.Frame(raw=pb.RawImage(width=5000, height=5000, format=pb.PIXEL_FORMAT_GRAY8))
    with pytest.raises(FrameOverLimitError) as refused:
        codec.decode_frame(over, max_pixels=1000)
    assert status_for(refused.value)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(FrameOverLimitError("thin"))[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(InvalidFrameError) as bad:
        codec.decode_frame(pb.Frame(raw=pb.RawImage(width=4, height=4, data=b"\0", format=pb.PIXEL_FORMAT_RGB8)))
    assert not isinstance(bad.value, FrameOverLimitError)
    assert status_for(bad.value)[0] is grpc.StatusCode.INVALID_ARGUMENT


def test_settings_under_which_every_frame_would_be_refused_fail_at_startup(tiny_model: Path) -> None:
    models = (ModelSpec("tiny", tiny_model),)
    with pytest.raises(ConfigError, match=r"--size 1100 runs even a square frame at 1210000 pixels"):
        ServerConfig(models=models, size=1100)
    ServerConfig(models=models, size=1100, max_inference_pixels=1100 * 1500)
    with pytest.raises(ConfigError, match=r"--buckets 1080x1920 has 2073600 pixels, beyond --max-inference-pixels"):
        ServerConfig(models=models, buckets=((520, 693), (1080, 1920)))
    with pytest.raises(ConfigError, match=r"--max-aspect 0\.5: must be between 1 and 10000"):
        ServerConfig(models=models, max_aspect=0.5)
    with pytest.raises(ConfigError, match="--max-inference-pixels 10: must be between 64 and"):
        ServerConfig(models=models, size=4, max_inference_pixels=10)


def test_command_line_and_environment_set_the_limits(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_from_args(build_parser().parse_args(["--model", str(tiny_model)]))
    assert (config.max_inference_pixels, config.max_aspect) == (DEFAULT_MAX_INFERENCE_PIXELS, DEFAULT_MAX_ASPECT)
    argv = ["--model", str(tiny_model), "--max-inference-pixels", "2073600", "--max-aspect", "3.5"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.max_inference_pixels, config.max_aspect) == (2073600, 3.5)
    monkeypatch.setenv("SEGSTREAM_MAX_ASPECT", "12")
    monkeypatch.setenv("SEGSTREAM_MAX_INFERENCE_PIXELS", "500000")
    config = config_from_args(build_parser().parse_args(["--model", str(tiny_model)]))
    assert (config.max_inference_pixels, config.max_aspect) == (500000, 12.0)
