"""The ROS 2 bridge without ROS 2: settings, the LATEST slot, the bridge core against a real server, the
node and its launch file against minimal stand-ins of rclpy/launch, and the console script."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
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
    LatestSlot,
    Time,
    image_array,
    settings_from_parameters,
)
from segstream.ros2.node import NODE_NAME, BridgeNode, launch_file
from segstream.wire.palette import blend, colorize
from tests.conftest import ServerFactory
from tests.unit.test_ros2_convert import camera_image

U8 = npt.NDArray[np.uint8]
SCRIPT = Path(sys.executable).with_name("segstream-ros2-bridge")


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


# -- settings -------------------------------------------------------------------------------------


def test_parameters_default_to_a_local_server_and_all_three_outputs() -> None:
    settings = settings_from_parameters({})
    assert settings == BridgeSettings()
    assert settings.topic == "image_raw"
    options = settings.stream_options()
    assert options.policy == "latest" and options.outputs == ("label_mask", "color_mask", "overlay")
    assert settings.client_kwargs() == {
        "wire_encoding": "raw", "pixel_format": "rgb", "tls": None, "tls_ca": None, "tls_cert": None,
        "tls_key": None, "server_name_override": None, "token": None,
    }  # fmt: skip
    assert {p.name for p in PARAMETERS} >= {"server", "input_topic", "input_type", "tls_ca", "token", "model"}


def test_parameters_select_topics_outputs_security_and_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("# robot token\n\n  s3cret-token  \n")
    settings = settings_from_parameters(
        {
            "input_type": "compressed",
            "overlay_topic": "",
            "tls_ca": "/etc/ca.pem",
            "token_file": str(token_file),
            "reconnect_max_s": 3,
            "model": "r101",
        },
        environ={"SEGSTREAM_SERVER": "gpu-box:6000", "SEGSTREAM_TOKEN": "ignored"},
    )
    assert settings.server == "gpu-box:6000" and settings.topic == "image_raw/compressed"
    assert settings.outputs == ("label_mask", "color_mask") and settings.model == "r101"
    assert settings.reconnect_max_s == 3.0
    kwargs = settings.client_kwargs()
    assert kwargs["tls_ca"] == "/etc/ca.pem" and kwargs["token"] == "s3cret-token"
    assert "s3cret" not in repr(settings)
    assert settings_from_parameters({}, environ={"SEGSTREAM_TOKEN": "from-env"}).token == "from-env"
    assert settings_from_parameters({"tls": True}).client_kwargs()["tls"] is True


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"input_type": "video"}, "input_type must be one of raw, compressed"),
        ({"head": "middle"}, "StreamOptions.head"),
        ({"mask_topic": "", "color_topic": "", "overlay_topic": ""}, "nothing to publish"),
        ({"queue_depth": 0}, "queue_depth must be at least 1"),
        ({"token": 1234}, "token must be a str; got 1234 \\(quote it: -p token:=\"'1234'\"\\)"),
        ({"tls": "yes"}, "tls must be a bool"),
        ({"token": "a", "token_file": "/t"}, "token or token_file, not both"),
        ({"token_file": "/nonexistent/token"}, "cannot read it"),
        ({"colour_topic": "x"}, "unknown parameter"),
        ({"server": " "}, "server is empty"),
    ],
)
def test_bad_parameters_are_refused_by_name(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from_parameters(values)


# -- the LATEST slot ------------------------------------------------------------------------------


async def test_the_slot_keeps_only_the_newest_item() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert await slot.take() == 2
    waiter = asyncio.create_task(slot.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    slot.put(3)
    assert await asyncio.wait_for(waiter, 1) == 3
    slot.put(4)
    assert slot.clear() == 1 and slot.clear() == 0
    slot.close()
    assert await slot.take() is None


# -- the bridge core against a real server --------------------------------------------------------


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
    port = free_port()
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


# -- the node and launch file, against minimal stand-ins of the ROS 2 Python API ------------------

# Only what the node calls, so its wiring (parameters, QoS, topics, threads, shutdown) runs here.
# Whether these calls match the real rclpy is checked where ROS 2 is installed (docs/robotics.md).
FAKE_ROS = {
    "rclpy/__init__.py": """
        from rclpy import executors, utilities
        overrides = {}
        def init(*, args=None, signal_handler_options=None):
            overrides.clear()
            overrides.update(utilities.parameter_overrides(args or []))
        def try_shutdown():
            pass
    """,
    "rclpy/utilities.py": """
        def _split(args):
            own, ros, inside = [], [], False
            for arg in args:
                if arg in ("--ros-args", "--"):
                    inside = arg == "--ros-args"
                else:
                    (ros if inside else own).append(arg)
            return own, ros
        def remove_ros_args(args):
            return _split(args)[0]
        def _value(text):
            if text in ("true", "false"):
                return text == "true"
            for kind in (int, float):
                try:
                    return kind(text)
                except ValueError:
                    pass
            return text
        def parameter_overrides(args):
            ros = _split(args)[1]
            pairs = [ros[i + 1] for i, arg in enumerate(ros) if arg == "-p"]
            return {name: _value(value) for name, _, value in (p.partition(":=") for p in pairs)}
    """,
    "rclpy/signals.py": """
        import enum
        class SignalHandlerOptions(enum.Enum):
            NO = 0
            ALL = 1
    """,
    "rclpy/qos.py": """
        import enum
        class HistoryPolicy(enum.Enum):
            KEEP_LAST = 1
        class ReliabilityPolicy(enum.Enum):
            RELIABLE = 1
            BEST_EFFORT = 2
        class DurabilityPolicy(enum.Enum):
            VOLATILE = 2
        class QoSProfile:
            def __init__(self, *, history, depth, reliability, durability):
                self.history, self.depth, self.reliability, self.durability = history, depth, reliability, durability
    """,
    "rclpy/executors.py": """
        import threading
        class SingleThreadedExecutor:
            def __init__(self):
                self.nodes, self._stop = [], threading.Event()
            def add_node(self, node):
                self.nodes.append(node)
            def spin(self):
                self._stop.wait()
            def shutdown(self, timeout_sec=None):
                self._stop.set()
                return True
    """,
    "rclpy/node.py": """
        import sys
        import rclpy
        class _Value:
            def __init__(self, value):
                self.value = value
        class _Logger:
            def _line(self, level, message):
                print(f"[{level}] {message}", file=sys.stderr, flush=True)
            def debug(self, message): self._line("DEBUG", message)
            def info(self, message): self._line("INFO", message)
            def warning(self, message): self._line("WARN", message)
            def error(self, message): self._line("ERROR", message)
        class _Publisher:
            def __init__(self, msg_type, topic, qos):
                self.msg_type, self.topic, self.qos, self.published = msg_type, topic, qos, []
            def publish(self, msg):
                self.published.append(msg)
        class Node:
            def __init__(self, name):
                self.name, self.parameters, self.descriptors = name, {}, {}
                self.subscriptions, self.publishers, self.destroyed = [], {}, False
            def declare_parameter(self, name, value, descriptor):
                self.parameters[name] = rclpy.overrides.get(name, value)
                self.descriptors[name] = descriptor
                return _Value(self.parameters[name])
            def get_parameter(self, name):
                return _Value(self.parameters[name])
            def get_logger(self):
                return _Logger()
            def create_subscription(self, msg_type, topic, callback, qos):
                self.subscriptions.append((msg_type, topic, callback, qos))
                return object()
            def create_publisher(self, msg_type, topic, qos):
                self.publishers[topic] = _Publisher(msg_type, topic, qos)
                return self.publishers[topic]
            def resolve_topic_name(self, topic):
                return topic if topic.startswith("/") else "/" + topic
            def destroy_node(self):
                self.destroyed = True
    """,
    "rcl_interfaces/__init__.py": "",
    "rcl_interfaces/msg.py": """
        class ParameterDescriptor:
            def __init__(self, **fields):
                self.__dict__.update(fields)
    """,
    "sensor_msgs/__init__.py": "",
    "sensor_msgs/msg.py": "from segstream.ros2.messages import CompressedImage, Image\n",
    "launch/__init__.py": """
        class LaunchDescription(list):
            pass
    """,
    "launch/actions.py": """
        class DeclareLaunchArgument:
            def __init__(self, name, *, default_value, description):
                self.name, self.default_value, self.description = name, default_value, description
    """,
    "launch/conditions.py": """
        class IfCondition:
            def __init__(self, expression):
                self.expression = expression
        class UnlessCondition(IfCondition):
            pass
    """,
    "launch/substitutions.py": """
        class LaunchConfiguration:
            def __init__(self, name):
                self.name = name
        class PythonExpression:
            def __init__(self, parts):
                self.parts = parts
    """,
    "launch_ros/__init__.py": "",
    "launch_ros/actions.py": """
        class Node:
            def __init__(self, **fields):
                self.fields = fields
    """,
    "launch_ros/parameter_descriptions.py": """
        class ParameterValue:
            def __init__(self, value, *, value_type):
                self.value, self.value_type = value, value_type
    """,
}
_FAKE_PACKAGES = ("rclpy", "rcl_interfaces", "sensor_msgs", "launch", "launch_ros")


def write_fake_ros(root: Path) -> Path:
    for name, source in FAKE_ROS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def fake_ros(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = write_fake_ros(tmp_path / "fake_ros")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for module in list(sys.modules):
        if module.split(".")[0] in _FAKE_PACKAGES:
            del sys.modules[module]


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


def test_the_node_refuses_bad_parameters(fake_ros: Path) -> None:
    rclpy: Any = importlib.import_module("rclpy")
    rclpy.init(args=["x", "--ros-args", "-p", "input_type:=video"])
    with pytest.raises(ValueError, match="input_type must be one of raw, compressed"):
        BridgeNode(environ={})


def test_the_launch_file_declares_every_parameter_and_runs_the_console_script(fake_ros: Path) -> None:
    spec = importlib.util.spec_from_file_location("segstream_bridge_launch", launch_file())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = {a.name: a for a in description if hasattr(a, "default_value")}
    nodes = [a.fields for a in description if hasattr(a, "fields")]
    assert set(arguments) == {p.name for p in PARAMETERS} | {"camera", "namespace", "node_name"}
    for p in PARAMETERS:
        assert arguments[p.name].default_value == (
            str(p.default).lower() if isinstance(p.default, bool) else str(p.default)
        )
    assert len(nodes) == 2 and {n["executable"] for n in nodes} == {"segstream-ros2-bridge"}
    (values,) = nodes[0]["parameters"]
    assert {name: v.value_type for name, v in values.items()} == {p.name: type(p.default) for p in PARAMETERS}


# -- the console script ---------------------------------------------------------------------------


def run_script(*args: str, pythonpath: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: reinstall with pip install -e '.[headless,dev]'"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def test_without_rclpy_the_script_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    # A package that fails to import hides any rclpy this machine may have.
    (tmp_path / "rclpy").mkdir()
    (tmp_path / "rclpy" / "__init__.py").write_text("raise ImportError('No module named rclpy')\n")
    done = run_script("--ros-args", "-p", "server:=localhost:1", pythonpath=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("segstream-ros2-bridge: error: ROS 2 (rclpy) cannot be imported")
    assert "source its setup script" in lines[0]


def test_help_and_launch_file_need_no_ros() -> None:
    helped = run_script("--help")
    assert helped.returncode == 0
    for p in PARAMETERS:
        assert f"  {p.name} " in helped.stdout
    located = run_script("--launch-file")
    assert located.returncode == 0 and Path(located.stdout.strip()) == launch_file() and launch_file().is_file()


def test_bad_parameters_end_the_script_with_one_line(tmp_path: Path) -> None:
    done = run_script("--ros-args", "-p", "input_type:=video", pythonpath=write_fake_ros(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "segstream-ros2-bridge: error: parameter input_type must be one of raw, compressed; got 'video'"
    ]


def test_the_script_runs_until_sigint_and_retries_a_missing_server(tmp_path: Path) -> None:
    assert SCRIPT.exists()
    env = dict(os.environ, PYTHONPATH=str(write_fake_ros(tmp_path)))
    args = ["--ros-args", "-p", f"server:=127.0.0.1:{free_port()}", "-p", "reconnect_max_s:=0.2"]
    with subprocess.Popen([str(SCRIPT), *args], stderr=subprocess.PIPE, text=True, env=env) as process:
        assert process.stderr is not None
        seen = ""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + 20
            while "reconnecting in" not in seen and time.monotonic() < deadline and process.poll() is None:
                if selector.select(timeout=0.5):
                    seen += process.stderr.readline()
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=15)[1]
    assert "[INFO] segmenting /image_raw (raw) with 127.0.0.1:" in seen
    assert "reconnecting in" in seen
    assert process.returncode == 0, seen + rest


async def test_the_script_exits_1_when_the_server_refuses_the_model(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    env = dict(os.environ, PYTHONPATH=str(write_fake_ros(tmp_path)))
    async with server_factory() as server:
        args = ["--ros-args", "-p", f"server:=127.0.0.1:{server.port}", "-p", "model:=no-such-model"]
        process = await asyncio.create_subprocess_exec(
            str(SCRIPT), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 1
    assert "[ERROR] segstream server 127.0.0.1" in stderr.decode() and "no-such-model" in stderr.decode()
