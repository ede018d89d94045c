"""Which colour is which class, in the command line's outputs: `--legend`, the synthetic mark, `models`
colours, and `video --view` while the video is written. The tiny test model is synthetic, so its
outputs must carry the mark."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segstream.client.cli import main
from segstream.wire.codec import U8Array
from segstream.wire.palette import VOC_CLASSES, voc_palette
from tests.conftest import SAMPLES
from tests.integration.background_server import HeldModel, background_server, tiny_config
from tests.integration.server_process import free_port

pytestmark = pytest.mark.timeout(90)

CLIP = SAMPLES / "coco-pan.mp4"  # 48 frames, 320x240
IMAGE = SAMPLES / "000000017968.jpg"
MARK_BGR = (0, 0, 200)


def _exact(image: U8Array, bgr: U8Array | tuple[int, int, int]) -> int:
    return int(np.all(image == np.asarray(bgr, np.uint8), axis=-1).sum())


def _near(image: U8Array, bgr: tuple[int, int, int], tolerance: int) -> int:
    return int((np.abs(image.astype(np.int16) - np.asarray(bgr, np.int16)).max(axis=-1) <= tolerance).sum())


def _read(path: Path) -> U8Array:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return np.asarray(image, np.uint8)


def _first_frame(path: Path) -> tuple[U8Array, int]:
    capture = cv2.VideoCapture(str(path))
    ok, first = capture.read()
    count = int(ok)
    while capture.read()[0]:
        count += 1
    capture.release()
    assert ok, path
    return np.asarray(first, np.uint8), count


def test_image_legend_shows_the_exact_colour_of_each_class_present(tiny_model: Path, tmp_path: Path) -> None:
    plain, legend, mask = tmp_path / "plain.png", tmp_path / "legend.png", tmp_path / "mask.png"
    with background_server(tiny_config(tiny_model)) as server:
        base = ["--server", server.target, "image", str(IMAGE)]
        assert main([*base, "--out", str(plain)]) == 0
        assert main([*base, "--out", str(legend), "--legend", "--mask-out", str(mask)]) == 0
    labels, without, with_legend = _read(mask), _read(plain), _read(legend)
    assert with_legend.shape == without.shape == (*labels.shape, 3)
    palette = voc_palette()
    present = [int(c) for c in np.unique(labels)]
    for c in present:
        if c != 0:
            extra = _exact(with_legend, palette[c][::-1]) - _exact(without, palette[c][::-1])
            assert extra >= 100, f"no swatch of class {c} ({VOC_CLASSES[c]})"
    for c in set(range(1, 21)) - set(present):
        assert _exact(with_legend, palette[c][::-1]) == _exact(without, palette[c][::-1]), c
    # The synthetic mark, with or without a legend: a red strip along the bottom.
    for image in (without, with_legend):
        strip = image[-8:]
        assert _exact(strip, MARK_BGR) > 0.5 * strip.shape[0] * strip.shape[1]
    # The class-index mask itself is data, never drawn on.
    assert labels.ndim == 2 and labels.max() < len(VOC_CLASSES)


def test_video_legend_and_mark_are_in_both_videos(tiny_model: Path, tmp_path: Path) -> None:
    out, masks = tmp_path / "out.avi", tmp_path / "masks.avi"
    with background_server(tiny_config(tiny_model)) as server:
        argv = ["--server", server.target, "video", str(CLIP), "--out", str(out), "--mask-out", str(masks)]
        assert main([*argv, "--legend", "--no-progress"]) == 0
    for path in (out, masks):
        first, count = _first_frame(path)
        assert count == 48, "still one output frame per input frame"
        strip = first[-6:]
        assert _near(strip, MARK_BGR, 40) > 0.5 * strip.shape[0] * strip.shape[1], path
        panel = first[2:10, 2:40]  # the legend's dark panel, its first swatch and text
        assert np.median(panel) < 90, path


def test_models_prints_each_class_colour(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with background_server(tiny_config(tiny_model)) as server:
        assert main(["--server", server.target, "models"]) == 0
    out = capsys.readouterr().out
    assert "21 classes (index, colour, name):" in out
    for index, name in enumerate(VOC_CLASSES):
        r, g, b = (int(c) for c in voc_palette()[index])
        assert f" {index:>2} #{r:02x}{g:02x}{b:02x} {name}\n" in out, name
    assert "\x1b[" not in out


def _fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_video_view_serves_while_the_video_is_written_and_closes_with_it(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    seen: dict[str, Any] = {}

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "frame" not in seen:
            try:
                stats = json.loads(_fetch(base + "stats.json")[1])
                if stats["results"] > 0:
                    seen["stats"] = stats
                    seen["frame"] = _fetch(base + "frame.jpg?mode=side&after=0")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)

    model = HeldModel(tiny_model, delay=0.05)  # about 2.5 s for the clip: time to look at it
    watcher = threading.Thread(target=watch, daemon=True)
    with background_server(tiny_config(tiny_model, warmup=False), {"tiny": model}) as server:
        watcher.start()
        argv = ["--server", server.target, "video", str(CLIP), "--out", str(tmp_path / "out.avi")]
        assert main([*argv, "--view", f"127.0.0.1:{port}", "--no-progress"]) == 0
    watcher.join(timeout=5)
    assert "frame" in seen, "the view never answered while the video was written"
    stats = seen["stats"]
    assert stats["command"] == "video" and stats["source"] == str(CLIP) and stats["model"]["synthetic"]
    assert stats["classes"] and all(c["color"].startswith("#") for c in stats["classes"])
    status, data = seen["frame"]
    side = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and side is not None and side.shape == (240, 640, 3), "the original beside the mask"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
