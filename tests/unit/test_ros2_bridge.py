"""The ROS 2 bridge without ROS 2 or a server: settings, the LATEST slot, the node and its launch file
against minimal stand-ins of rclpy/launch, and the console script (the runs against a real server are
in tests/integration/test_ros2_bridge_served.py)."""

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from segstream.ros2 import (
    PARAMETERS,
    BridgeSettings,
    LatestSlot,
    settings_from_parameters,
)
from segstream.ros2.node import BridgeNode, launch_file

U8 = npt.NDArray[np.uint8]
SCRIPT = Path(sys.executable).with_name("segstream-ros2-bridge")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
