"""`segstream-ros2-bridge`: the ROS 2 node around `BridgeCore`.

The node subscribes to a camera (sensor_msgs/Image or CompressedImage; best effort, keep last,
depth `queue_depth`), streams it to a segstream server with policy "latest", and publishes the mono8
class mask, the rgb8 colour mask and the rgb8 overlay, each with the camera message's own header.

rclpy is imported only when the node is built, so `import segstream.ros2` works without ROS 2. Threads:
rclpy's executor spins on a thread of its own and hands messages to the asyncio loop (main thread),
where the bridge streams and publishes.

Usage (with ROS 2 sourced):
    segstream-ros2-bridge --ros-args -p server:=gpu-box:50051 -r image_raw:=/camera/color/image_raw
    segstream-ros2-bridge --help          # every parameter, no ROS 2 needed
    segstream-ros2-bridge --launch-file   # path of the launch file, for `ros2 launch`
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segstream.client import SegstreamError
from segstream.ros2.bridge import BridgeCore, BridgeOutput, CameraMessage
from segstream.ros2.messages import ros_image_factory
from segstream.ros2.settings import BridgeSettings, parameters, settings_from_parameters

PROG = "segstream-ros2-bridge"
NODE_NAME = "segstream_bridge"
NO_ROS_MESSAGE = (
    f"{PROG}: error: ROS 2 (rclpy) cannot be imported{{reason}}: install ROS 2 (Jazzy or newer) and source its "
    "setup script (e.g. `source /opt/ros/jazzy/setup.bash`) in a Python environment that also has segstream"
)


def launch_file() -> Path:
    """The bridge's ROS 2 launch file, for `ros2 launch <path>`."""
    return Path(__file__).resolve().parent / "launch" / "segstream_bridge.launch.py"


class BridgeNode:
    """An rclpy node (`self.node`) that feeds a camera topic to a `BridgeCore` and publishes its results.

    Needs rclpy.init() first. Parameters are read once, here; change them by restarting the node.
    Raises ValueError, naming the parameter, for a bad value.
    """

    def __init__(self, node_name: str = NODE_NAME, *, environ: Mapping[str, str] | None = None) -> None:
        rclpy_node = importlib.import_module("rclpy.node")
        qos = importlib.import_module("rclpy.qos")
        rcl_msgs = importlib.import_module("rcl_interfaces.msg")
        sensor_msgs = importlib.import_module("sensor_msgs.msg")

        self.node: Any = rclpy_node.Node(node_name)
        values: dict[str, object] = {}
        for parameter in parameters(environ):
            # Typed here rather than by rclpy, so a wrong type gets the same message as a wrong value.
            descriptor = rcl_msgs.ParameterDescriptor(
                description=parameter.description, read_only=True, dynamic_typing=True
            )
            self.node.declare_parameter(parameter.name, parameter.default, descriptor)
            values[parameter.name] = self.node.get_parameter(parameter.name).value
        self.settings: BridgeSettings = settings_from_parameters(values, environ)
        settings = self.settings

        self.core: BridgeCore[Any] = BridgeCore(
            settings,
            self._publish,
            message_factory=ros_image_factory(sensor_msgs.Image),
            logger=self.node.get_logger(),
        )
        keep_last = qos.HistoryPolicy.KEEP_LAST
        volatile = qos.DurabilityPolicy.VOLATILE
        camera_qos = qos.QoSProfile(
            history=keep_last,
            depth=settings.queue_depth,
            reliability=qos.ReliabilityPolicy.BEST_EFFORT,
            durability=volatile,
        )
        # Reliable outputs reach best-effort and reliable subscribers alike; keep-last never blocks.
        output_qos = qos.QoSProfile(
            history=keep_last,
            depth=settings.queue_depth,
            reliability=qos.ReliabilityPolicy.RELIABLE,
            durability=volatile,
        )
        self._publishers: dict[str, Any] = {}
        for name, topic in (
            ("mask", settings.mask_topic),
            ("color_mask", settings.color_topic),
            ("overlay", settings.overlay_topic),
        ):
            if topic:
                self._publishers[name] = self.node.create_publisher(sensor_msgs.Image, topic, output_qos)
        camera_type = sensor_msgs.Image if settings.input_type == "raw" else sensor_msgs.CompressedImage
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscription = self.node.create_subscription(camera_type, settings.topic, self._on_camera, camera_qos)
        self.node.get_logger().info(
            f"segmenting {self.node.resolve_topic_name(settings.topic)} ({settings.input_type}) with "
            f"{settings.server}; publishing {', '.join(self._publishers)}"
        )

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop camera messages are handed to (from the executor's thread)."""
        self._loop = loop

    def _on_camera(self, msg: CameraMessage) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(self.core.submit, msg)

    def _publish(self, output: BridgeOutput[Any]) -> None:
        messages = output.messages
        for name, msg in (("mask", messages.mask), ("color_mask", messages.color_mask), ("overlay", messages.overlay)):
            publisher = self._publishers.get(name)
            if publisher is not None and msg is not None:
                publisher.publish(msg)

    async def run(self) -> None:
        """Stream until `stop()`; see `BridgeCore.run`."""
        self.attach(asyncio.get_running_loop())
        try:
            await self.core.run()
        finally:
            self._loop = None

    def stop(self) -> None:
        """Stop streaming (call on the event loop)."""
        self.core.stop()

    def destroy(self) -> None:
        """Release the ROS 2 node (its publishers and subscription) once streaming has stopped."""
        self.node.destroy_node()


def usage() -> str:
    """The --help text: options, and every node parameter with its description and default."""
    lines = [
        f"usage: {PROG} [--help] [--launch-file] [--ros-args -p NAME:=VALUE ... -r FROM:=TO ...]",
        "",
        "Segments a ROS 2 camera topic with a segstream server and publishes the mono8 class mask, the",
        "rgb8 colour mask and the rgb8 overlay with each camera message's header. Needs ROS 2 sourced.",
        "",
        "  --help         show this message and exit",
        "  --launch-file  print the path of the ROS 2 launch file and exit",
        "",
        "parameters (-p NAME:=VALUE):",
    ]
    for parameter in parameters(os.environ):
        default = repr(parameter.default) if isinstance(parameter.default, str) else str(parameter.default).lower()
        lines.append(f"  {parameter.name:<21} {parameter.description} [default: {default}]")
    return "\n".join(lines)


def _spin(executor: Any, node: Any) -> None:
    try:
        executor.spin()
    except Exception as exc:  # a shut-down context ends the spin; anything else is worth a line
        node.get_logger().debug(f"executor stopped: {exc!r}")


async def _serve(bridge: BridgeNode, executor: Any) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, bridge.stop)
    bridge.attach(loop)  # before the executor spins, so no camera message finds the node detached
    spinner = threading.Thread(target=_spin, args=(executor, bridge.node), name="rclpy-executor", daemon=True)
    spinner.start()
    try:
        await bridge.run()
    finally:
        executor.shutdown()
        await asyncio.to_thread(spinner.join, 5.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node; returns the exit status (0, 1 for a failure or no ROS 2, 2 for bad parameters)."""
    args = list(sys.argv[1:] if argv is None else argv)
    own = args[: args.index("--ros-args")] if "--ros-args" in args else args
    if "-h" in own or "--help" in own:
        print(usage())
        return 0
    if "--launch-file" in own:
        print(launch_file())
        return 0
    try:
        rclpy = importlib.import_module("rclpy")
        signals = importlib.import_module("rclpy.signals")
        executors = importlib.import_module("rclpy.executors")
        utilities = importlib.import_module("rclpy.utilities")
    except ImportError as exc:
        print(NO_ROS_MESSAGE.format(reason=f" ({exc})"), file=sys.stderr)
        return 1
    # The asyncio loop owns SIGINT/SIGTERM, so a stop lets results already on their way be published.
    rclpy.init(args=[PROG, *args], signal_handler_options=signals.SignalHandlerOptions.NO)
    try:
        leftover = utilities.remove_ros_args([PROG, *args])[1:]
        if leftover:
            print(f"{PROG}: error: unknown arguments {' '.join(leftover)} (see {PROG} --help)", file=sys.stderr)
            return 2
        try:
            bridge = BridgeNode(environ=os.environ)
        except ValueError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        executor = executors.SingleThreadedExecutor()
        executor.add_node(bridge.node)
        try:
            asyncio.run(_serve(bridge, executor))
        except SegstreamError:  # the server refused the stream; the bridge has logged why
            return 1
        except Exception as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        finally:
            bridge.destroy()
        return 0
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
