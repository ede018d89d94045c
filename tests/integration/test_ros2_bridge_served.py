"""The ROS 2 bridge against a real server: the bridge core, the node (on stand-ins of rclpy) and the script."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from segstream.client import InvalidRequestError
from segstream.ros2 import (
    PARAMETERS,
    BridgeCore,
    BridgeOutput,
    BridgeSettings,
    CompressedImage,
    Header,
    Image,
    Time,
    image_array,
)
from segstream.ros2.node import NODE_NAME, BridgeNode
from segstream.wire.palette import blend, colorize
from tests.conftest import ServerFactory
from tests.unit import test_ros2_bridge as offline
from tests.unit.test_ros2_convert import camera_image

U8 = npt.NDArray[np.uint8]
SCRIPT = offline.SCRIPT
# The stand-ins of rclpy and launch, installed on sys.path for one test.
fake_ros = offline.fake_ros


class ListLogger:
    """Collects log lines as (level, text)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def debug(self, message: str, /) -> None:
        self.lines.append(("debug", message))

    def info(self, message: str, /) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str, /) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str, /) -> None:
        self.lines.append(("error", message))

    def text(self, level: str) -> str:
        return "\n".join(text for lvl, text in self.lines if lvl == level)


@pytest.fixture
def camera_rgb(sample_bgr: U8) -> U8:
    small = sample_bgr[::8, ::8][:48, :64]
    return np.ascontiguousarray(small[:, :, ::-1])


async def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def check_output(out: BridgeOutput[Image], msg: Image, rgb: U8) -> None:
    """The three messages carry the input's own header and the expected pixels."""
    messages = out.messages
    assert messages.header is msg.header
    assert messages.mask is not None and messages.color_mask is not None and messages.overlay is not None
    for image in (messages.mask, messages.color_mask, messages.overlay):
        assert image.header is msg.header
        assert (image.height, image.width) == (msg.height, msg.width)
    assert (messages.mask.encoding, messages.mask.step) == ("mono8", msg.width)
    assert (messages.color_mask.encoding, messages.color_mask.step) == ("rgb8", 3 * msg.width)
    assert (messages.overlay.encoding, messages.overlay.step) == ("rgb8", 3 * msg.width)
    labels = image_array(messages.mask)
    np.testing.assert_array_equal(image_array(messages.color_mask), colorize(labels))
    frame = np.repeat(rgb[:, :, :1], 3, axis=2) if msg.encoding == "mono8" else rgb
    np.testing.assert_array_equal(image_array(messages.overlay), blend(frame, colorize(labels)))
    assert out.result.timestamp_ns == msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


# -- the bridge core ------------------------------------------------------------------------------


async def test_three_camera_messages_come_back_as_three_triples_with_their_headers(
    server_factory: ServerFactory, camera_rgb: U8
) -> None:
    messages = [
        camera_image(camera_rgb, "rgb8", header=Header(Time(1_700_000_000, 1), "cam_rgb")),
        camera_image(camera_rgb, "bgr8", padding=8, header=Header(Time(1_700_000_001, 999_999_999), "cam_bgr")),
        camera_image(camera_rgb, "mono8", padding=3, header=Header(Time(1_700_000_002, 0), "cam_mono")),
    ]
    logger = ListLogger()
    outputs: asyncio.Queue[BridgeOutput[Image]] = asyncio.Queue()
    async with server_factory() as server:
        settings = BridgeSettings(server=f"127.0.0.1:{server.port}")
        core = BridgeCore(settings, outputs.put_nowait, message_factory=Image, logger=logger)
        runner = asyncio.create_task(core.run())
        received = []
        for msg in messages:
            core.submit(msg)
            received.append(await asyncio.wait_for(outputs.get(), 10))
        core.stop()
        await asyncio.wait_for(runner, 10)
    for out, msg in zip(received, messages, strict=True):
        check_output(out, msg, camera_rgb)
    assert [out.messages.header.frame_id for out in received] == ["cam_rgb", "cam_bgr", "cam_mono"]
    assert (core.stats.received, core.stats.sent, core.stats.published) == (3, 3, 3)
    assert core.stats.replaced == core.stats.failed == core.stats.reconnects == 0
    assert "streaming image_raw to 127.0.0.1" in logger.text("info")


async def test_the_newest_message_wins_and_bad_ones_are_skipped_with_a_warning(
    server_factory: ServerFactory, camera_rgb: U8
) -> None:
    logger = ListLogger()
    outputs: asyncio.Queue[BridgeOutput[Image]] = asyncio.Queue()
    async with server_factory() as server:
        settings = BridgeSettings(server=f"127.0.0.1:{server.port}", overlay_topic="", drop_log_interval_s=0.0)
        core = BridgeCore(settings, outputs.put_nowait, message_factory=Image, logger=logger)
        # Three arrive before the stream is up: only the newest is worth segmenting.
        for i in range(3):
            core.submit(camera_image(camera_rgb, "rgb8", header=Header(Time(10, i), f"old{i}")))
        runner = asyncio.create_task(core.run())
        first = await asyncio.wait_for(outputs.get(), 10)
        core.submit(Image(Header(Time(11, 0), "depth"), 2, 2, "mono16", 0, 4, bytes(8)))
        await wait_until(lambda: core.stats.failed == 1)
        compressed = CompressedImage(Header(Time(11, 5), "cam_jpeg"), "png", _png(camera_rgb))
        core.submit(compressed)
        second = await asyncio.wait_for(outputs.get(), 10)
        core.stop()
        await asyncio.wait_for(runner, 10)
    assert first.messages.header.frame_id == "old2"
    assert first.messages.overlay is None and first.messages.mask is not None
    assert second.messages.header is compressed.header and second.messages.mask is not None
    assert second.messages.mask.width == camera_rgb.shape[1]
    assert core.stats.replaced == 2 and core.stats.published == 2
    assert "'mono16' is not supported" in logger.text("warning")
    assert "1 replaced by a newer one before sending" in logger.text("info")  # each drop: interval 0


def _png(rgb: U8) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return bytes(buf)


async def test_the_bridge_reconnects_with_backoff_while_the_server_is_away(
    server_factory: ServerFactory, camera_rgb: U8
) -> None:
    port = offline.free_port()
    logger = ListLogger()
    outputs: asyncio.Queue[BridgeOutput[Image]] = asyncio.Queue()
    settings = BridgeSettings(
        server=f"127.0.0.1:{port}", reconnect_initial_s=0.05, reconnect_max_s=0.2, color_topic="", overlay_topic=""
    )
    core = BridgeCore(settings, outputs.put_nowait, message_factory=Image, logger=logger)
    runner = asyncio.create_task(core.run())

    async def segment_one(frame_id: str) -> BridgeOutput[Image]:
        # A message that waited through an outage is discarded on reconnecting: keep offering one.
        msg = camera_image(camera_rgb, "rgb8", header=Header(Time(20, 0), frame_id))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            core.submit(msg)
            try:
                return await asyncio.wait_for(outputs.get(), 0.3)
            except TimeoutError:
                continue
        raise AssertionError("no result")

    await wait_until(lambda: core.stats.reconnects >= 2)  # nothing listens yet
    async with server_factory(port=port):
        first = await segment_one("up-once")
    lost_before = core.stats.reconnects
    await wait_until(lambda: core.stats.reconnects > lost_before)
    async with server_factory(port=port):
        second = await segment_one("up-again")
    core.stop()
    await asyncio.wait_for(runner, 10)
    assert first.messages.header.frame_id == "up-once" and second.messages.header.frame_id == "up-again"
    assert "reconnecting in" in logger.text("warning")


async def test_an_unknown_model_stops_the_bridge_instead_of_retrying(server_factory: ServerFactory) -> None:
    logger = ListLogger()
    async with server_factory() as server:
        settings = BridgeSettings(server=f"127.0.0.1:{server.port}", model="no-such-model")
        core: BridgeCore[Image] = BridgeCore(settings, lambda out: None, message_factory=Image, logger=logger)
        with pytest.raises(InvalidRequestError, match="no-such-model"):
            await asyncio.wait_for(core.run(), 10)
    assert "refused the stream" in logger.text("error")
    assert core.stats.reconnects == 0


# -- the node and the console script --------------------------------------------------------------


async def test_the_node_wires_parameters_qos_topics_and_publishes_with_headers(
    fake_ros: Path, server_factory: ServerFactory, camera_rgb: U8
) -> None:
    rclpy: Any = importlib.import_module("rclpy")
    qos: Any = importlib.import_module("rclpy.qos")
    async with server_factory() as server:
        server_arg = f"server:=127.0.0.1:{server.port}"
        topics = ["-p", "input_topic:=/camera/color/image_raw", "-p", "overlay_topic:="]
        rclpy.init(args=["segstream-ros2-bridge", "--ros-args", "-p", server_arg, *topics])
        bridge = BridgeNode(environ={})
        node = bridge.node
        assert node.name == NODE_NAME
        assert set(node.parameters) == {p.name for p in PARAMETERS}
        assert all(d.read_only and d.dynamic_typing and d.description for d in node.descriptors.values())
        ((msg_type, topic, callback, camera_qos),) = node.subscriptions
        assert (msg_type, topic) == (Image, "/camera/color/image_raw")
        assert camera_qos.reliability is qos.ReliabilityPolicy.BEST_EFFORT and camera_qos.depth == 1
        assert camera_qos.history is qos.HistoryPolicy.KEEP_LAST
        assert set(node.publishers) == {"segmentation/mask", "segmentation/color_mask"}
        mask_pub, color_pub = node.publishers["segmentation/mask"], node.publishers["segmentation/color_mask"]
        assert mask_pub.qos.reliability is qos.ReliabilityPolicy.RELIABLE

        runner = asyncio.create_task(bridge.run())
        await asyncio.sleep(0)
        sent = [camera_image(camera_rgb, "bgr8", header=Header(Time(30 + i, i), f"cam{i}")) for i in range(3)]
        for count, msg in enumerate(sent, start=1):
            await asyncio.to_thread(callback, msg)  # from another thread, as rclpy's executor calls it
            await wait_until(lambda: len(mask_pub.published) >= count)  # noqa: B023 - awaited at once
        bridge.stop()
        await asyncio.wait_for(runner, 10)
        bridge.destroy()
        rclpy.try_shutdown()
    assert [m.header for m in mask_pub.published] == [m.header for m in sent]
    assert [m.header for m in color_pub.published] == [m.header for m in sent]
    assert all(m.encoding == "mono8" and m.step == m.width for m in mask_pub.published)
    assert node.destroyed


async def test_the_script_exits_1_when_the_server_refuses_the_model(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    env = dict(os.environ, PYTHONPATH=str(offline.write_fake_ros(tmp_path)))
    async with server_factory() as server:
        args = ["--ros-args", "-p", f"server:=127.0.0.1:{server.port}", "-p", "model:=no-such-model"]
        process = await asyncio.create_subprocess_exec(
            str(SCRIPT), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 1
    assert "[ERROR] segstream server 127.0.0.1" in stderr.decode() and "no-such-model" in stderr.decode()
