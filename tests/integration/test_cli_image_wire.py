"""`segstream-client image` sends a JPEG or PNG file's own bytes; `--wire` chooses raw pixels or a re-encode.

The server is real and in-process; what it received is read at its decoding step.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from segstream.client._errors import error_from_rpc
from segstream.client._frames import EncodedFrame, FrameEncoder
from segstream.client.cli import main
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec
from segstream.wire.codec import U8Array
from segstream.wire.imageinfo import image_kind
from tests.conftest import SAMPLES
from tests.integration.background_server import BackgroundServer, background_server, tiny_config

pytestmark = pytest.mark.timeout(180)

PHOTO = SAMPLES / "000000017968.jpg"


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[BackgroundServer]:
    with background_server(tiny_config(tiny_model)) as running:
        yield running


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[pb.Frame]:
    """Every frame the server decodes, as it arrived."""
    frames: list[pb.Frame] = []
    decode = codec.decode_frame

    def recording(frame: pb.Frame, max_pixels: int = codec.DEFAULT_MAX_PIXELS) -> U8Array:
        frames.append(frame)
        return decode(frame, max_pixels)

    monkeypatch.setattr(codec, "decode_frame", recording)
    return frames


def _segment(server: BackgroundServer, source: Path, tmp_path: Path, *wire: str) -> tuple[U8Array, U8Array]:
    out, mask = tmp_path / "overlay.png", tmp_path / "mask.png"
    argv = ["--server", server.target, "--timeout", "120", "image", str(source), "--out", str(out)]
    assert main([*argv, "--mask-out", str(mask), *wire]) == 0
    overlay, labels = cv2.imread(str(out)), cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    assert overlay is not None and labels is not None
    return np.asarray(overlay, np.uint8), np.asarray(labels, np.uint8)


def _pixels(path: Path) -> U8Array:
    image = cv2.imread(str(path))
    assert image is not None, path
    return np.asarray(image, np.uint8)


def test_a_jpeg_file_is_sent_as_its_own_bytes(
    server: BackgroundServer, received: list[pb.Frame], tmp_path: Path
) -> None:
    # Named .png: the format is told by the bytes, not the name.
    source = tmp_path / "photo.png"
    shutil.copyfile(PHOTO, source)
    overlay, labels = _segment(server, source, tmp_path)
    [frame] = received
    assert frame.WhichOneof("image") == "encoded" and frame.encoded.data == source.read_bytes()
    height, width = _pixels(PHOTO).shape[:2]
    assert labels.shape == (height, width) and overlay.shape == (height, width, 3)


def test_a_png_file_is_sent_as_its_own_bytes(
    server: BackgroundServer, received: list[pb.Frame], tmp_path: Path
) -> None:
    source = tmp_path / "drawing.jpg"
    image = _pixels(PHOTO)[:100, :150]
    ok, data = cv2.imencode(".png", image)
    assert ok
    source.write_bytes(data.tobytes())
    _, labels = _segment(server, source, tmp_path)
    [frame] = received
    assert frame.encoded.data == source.read_bytes() and image_kind(frame.encoded.data) == "png"
    assert labels.shape == (100, 150)


def test_wire_raw_sends_the_decoded_pixels(server: BackgroundServer, received: list[pb.Frame], tmp_path: Path) -> None:
    _, labels = _segment(server, PHOTO, tmp_path, "--wire", "raw")
    [frame] = received
    image = _pixels(PHOTO)
    height, width = image.shape[:2]
    assert frame.WhichOneof("image") == "raw"
    assert (frame.raw.width, frame.raw.height, frame.raw.format) == (width, height, pb.PIXEL_FORMAT_BGR8)
    assert frame.raw.data == image.tobytes()
    assert labels.shape == (height, width)


def test_wire_jpeg_or_png_reencodes_only_another_format(
    server: BackgroundServer, received: list[pb.Frame], tmp_path: Path
) -> None:
    png = tmp_path / "in.png"
    assert cv2.imwrite(str(png), _pixels(PHOTO))
    _segment(server, PHOTO, tmp_path, "--wire", "jpeg")  # already JPEG: as it is
    _segment(server, png, tmp_path, "--wire", "jpeg")  # PNG: re-encoded
    _segment(server, PHOTO, tmp_path, "--wire", "png")  # JPEG: re-encoded, losslessly
    as_is, jpeg, lossless = (frame.encoded.data for frame in received)
    assert as_is == PHOTO.read_bytes()
    assert image_kind(jpeg) == "jpeg" and jpeg != PHOTO.read_bytes()
    assert image_kind(lossless) == "png"
    assert np.array_equal(codec.decode_encoded(lossless), cv2.cvtColor(_pixels(PHOTO), cv2.COLOR_BGR2RGB))


def test_other_formats_go_as_lossless_png(server: BackgroundServer, received: list[pb.Frame], tmp_path: Path) -> None:
    bitmap = tmp_path / "in.bmp"
    image = _pixels(PHOTO)[:64, :80]
    assert cv2.imwrite(str(bitmap), image)
    _, labels = _segment(server, bitmap, tmp_path)
    [frame] = received
    assert image_kind(frame.encoded.data) == "png"
    assert np.array_equal(codec.decode_encoded(frame.encoded.data), cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    assert labels.shape == (64, 80)


def test_a_corrupt_jpeg_header_is_refused_before_sending(
    server: BackgroundServer, received: list[pb.Frame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "cut.jpg"
    source.write_bytes(PHOTO.read_bytes()[:40])
    argv = ["--server", server.target, "image", str(source), "--out", str(tmp_path / "o.png")]
    assert main(argv) == 1
    assert "JPEG header is corrupt or truncated" in capsys.readouterr().err
    assert received == []


def test_a_27_megapixel_jpeg_is_segmented_whole(
    server: BackgroundServer, received: list[pb.Frame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 6000x4500 is 81 MB of raw pixels, over the 64 MiB message limit; as a JPEG it is well under 1 MB.
    source = tmp_path / "large.jpg"
    large = cv2.resize(_pixels(PHOTO), (6000, 4500), interpolation=cv2.INTER_LINEAR)
    assert cv2.imwrite(str(source), large, [cv2.IMWRITE_JPEG_QUALITY, 30])
    del large
    overlay, labels = _segment(server, source, tmp_path)
    assert received[0].encoded.data == source.read_bytes()
    assert labels.shape == (4500, 6000) and overlay.shape == (4500, 6000, 3)
    # Raw pixels do not fit, and the error says what to do instead.
    argv = ["--server", server.target, "image", str(source), "--out", str(tmp_path / "o.png"), "--wire", "raw"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "larger than max" in err and "--wire jpeg" in err, err
    assert len(received) == 1


def test_encoded_frames_go_out_as_they_are() -> None:
    data = PHOTO.read_bytes()
    frame = FrameEncoder("bgr", "raw", 90).encode(EncodedFrame(data, frame_id=7, timestamp_ns=11))
    assert frame.encoded.data == data and frame.frame_id == 7 and frame.capture_time.ToNanoseconds() == 11
    with pytest.raises(ValueError, match="neither a JPEG nor a PNG"):
        EncodedFrame(b"BM" + bytes(60))


def test_the_message_size_error_says_how_to_send_less() -> None:
    details = "Sent message larger than max (81000060 vs. 67108864)"
    meta = grpc.aio.Metadata()
    error = error_from_rpc(grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, meta, meta, details, ""), "h:1")
    assert "--wire jpeg" in str(error) and "max_message_bytes" in str(error)
