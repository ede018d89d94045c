"""ROS 2 launch file for the segstream bridge node (`segstream-ros2-bridge`).

Every node parameter is also a launch argument of the same name, with the same default:

    ros2 launch "$(segstream-ros2-bridge --launch-file)" server:=gpu-box:50051 \\
        camera:=/camera/color/image_raw tls_ca:=/etc/segstream/ca.pem token_file:=/etc/segstream/token

`camera` remaps the node's input topic (image_raw, or image_raw/compressed), `namespace` puts the
node and its relative output topics under a namespace, `node_name` renames it.
"""

from __future__ import annotations

import os
from typing import Any

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from segstream.ros2.settings import parameters


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def generate_launch_description() -> Any:
    """The entry point `ros2 launch` calls: the launch arguments and the bridge node they configure."""
    arguments: list[Any] = [
        DeclareLaunchArgument("camera", default_value="", description="camera topic to remap the input to"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("node_name", default_value="segstream_bridge", description="name of the node"),
    ]
    values: dict[str, Any] = {}
    for parameter in parameters(os.environ):  # SEGSTREAM_SERVER still sets the default server
        arguments.append(
            DeclareLaunchArgument(
                parameter.name, default_value=_text(parameter.default), description=parameter.description
            )
        )
        # Typed explicitly: launch would otherwise read "12" as an int and "" as nothing at all.
        values[parameter.name] = ParameterValue(LaunchConfiguration(parameter.name), value_type=type(parameter.default))

    input_topic = PythonExpression(
        ["'image_raw' if '", LaunchConfiguration("input_type"), "' == 'raw' else 'image_raw/compressed'"]
    )
    has_camera = PythonExpression(["'", LaunchConfiguration("camera"), "' != ''"])

    def bridge(remap: bool) -> Any:
        return Node(
            executable="segstream-ros2-bridge",
            name=LaunchConfiguration("node_name"),
            namespace=LaunchConfiguration("namespace"),
            parameters=[values],
            remappings=[(input_topic, LaunchConfiguration("camera"))] if remap else [],
            output="screen",
            emulate_tty=True,
            condition=IfCondition(has_camera) if remap else UnlessCondition(has_camera),
        )

    return LaunchDescription([*arguments, bridge(True), bridge(False)])
