"""The bridge's settings: one frozen dataclass, and the ROS 2 parameters that fill it.

`PARAMETERS` lists every node parameter with its default and description; the node declares them,
the launch file turns them into launch arguments, and `settings_from_parameters` checks the values.
Precedence: a parameter that is set > `SEGSTREAM_SERVER` / `SEGSTREAM_TOKEN` in the environment > default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

from segstream.client import StreamOptions
from segstream.client._options import (
    HeadName,
    ImageEncodingName,
    MaskEncodingName,
    OutputName,
    ResolutionName,
)
from segstream.client._security import read_token_file
from segstream.wire.codec import WireEncoding

InputType = Literal["raw", "compressed"]
DEFAULT_SERVER = "localhost:50051"
SERVER_ENV = "SEGSTREAM_SERVER"
TOKEN_ENV = "SEGSTREAM_TOKEN"
_DEFAULT_TOPICS = {"raw": "image_raw", "compressed": "image_raw/compressed"}


class ClientKwargs(TypedDict):
    """The `AsyncSegmentationClient` arguments the settings select."""

    wire_encoding: WireEncoding
    pixel_format: Literal["rgb"]
    tls: bool | None
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    server_name_override: str | None
    token: str | None


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"parameter {name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class BridgeSettings:
    """Everything the bridge needs; strings are "" when unset, as ROS 2 string parameters are.

    Attributes:
        server: "host:port" of the segstream server.
        input_type: "raw" (sensor_msgs/Image) or "compressed" (sensor_msgs/CompressedImage).
        input_topic: Camera topic; "" picks "image_raw" or "image_raw/compressed" by input_type.
        mask_topic, color_topic, overlay_topic: Output topics; "" turns that output off (and the server
            does not compute it).
        model, head, resolution: What the server runs (see `StreamOptions`).
        mask_encoding, image_encoding: How results travel from the server ("raw" costs no decoding;
            "png" is lossless and smaller; "jpeg" only for the colour mask and overlay).
        wire_encoding: How camera frames travel to the server: "raw", "jpeg" or "png".
        tls, tls_ca, tls_cert, tls_key, server_name_override, token: Connection security, as the client's
            arguments of the same names; `tls` False still means TLS when a CA or certificate is given.
        queue_depth: Depth of the camera subscription (best effort, keep last).
        max_in_flight: Frames sent to the server and not answered yet, at most; newer camera messages
            wait in a one-message slot where each replaces the last.
        reconnect_initial_s, reconnect_max_s: Backoff between attempts to reach the server.
        header_capacity: Headers of unanswered frames kept at most.
        drop_log_interval_s: Drops are summed up in one log line at most this often.
    """

    server: str = DEFAULT_SERVER
    input_type: InputType = "raw"
    input_topic: str = ""
    mask_topic: str = "segmentation/mask"
    color_topic: str = "segmentation/color_mask"
    overlay_topic: str = "segmentation/overlay"
    model: str = ""
    head: HeadName = "out"
    resolution: ResolutionName = "frame"
    mask_encoding: MaskEncodingName = "raw"
    image_encoding: ImageEncodingName = "raw"
    wire_encoding: WireEncoding = "raw"
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    server_name_override: str = ""
    token: str = field(default="", repr=False)
    queue_depth: int = 1
    max_in_flight: int = 2
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    header_capacity: int = 64
    drop_log_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.server.strip():
            raise ValueError("parameter server is empty; set it to the segstream server's host:port")
        _choice("input_type", self.input_type, get_args(InputType))
        _choice("wire_encoding", self.wire_encoding, get_args(WireEncoding))
        if not self.outputs:
            raise ValueError("mask_topic, color_topic and overlay_topic are all empty: nothing to publish")
        for name in ("queue_depth", "max_in_flight", "header_capacity"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"parameter {name} must be at least 1; got {getattr(self, name)}")
        if self.header_capacity < self.max_in_flight:
            raise ValueError(
                f"header_capacity ({self.header_capacity}) must be >= max_in_flight ({self.max_in_flight})"
            )
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise ValueError(
                "reconnect delays must satisfy 0 < reconnect_initial_s <= reconnect_max_s; "
                f"got {self.reconnect_initial_s} and {self.reconnect_max_s}"
            )
        self.stream_options()  # StreamOptions checks model, head, resolution and encodings

    @property
    def topic(self) -> str:
        """The camera topic to subscribe to."""
        return self.input_topic or _DEFAULT_TOPICS[self.input_type]

    @property
    def outputs(self) -> tuple[OutputName, ...]:
        """The server outputs the non-empty output topics need."""
        wanted: list[OutputName] = []
        if self.mask_topic:
            wanted.append("label_mask")
        if self.color_topic:
            wanted.append("color_mask")
        if self.overlay_topic:
            wanted.append("overlay")
        return tuple(wanted)

    def stream_options(self) -> StreamOptions:
        """The stream's options: policy "latest", the outputs the topics need."""
        return StreamOptions(
            model=self.model,
            head=self.head,
            outputs=self.outputs,
            mask_encoding=self.mask_encoding,
            image_encoding=self.image_encoding,
            resolution=self.resolution,
            policy="latest",
        )

    def client_kwargs(self) -> ClientKwargs:
        """Arguments of the `AsyncSegmentationClient` the bridge opens (camera frames travel as RGB)."""
        return ClientKwargs(
            wire_encoding=self.wire_encoding,
            pixel_format="rgb",
            tls=True if self.tls else None,
            tls_ca=self.tls_ca or None,
            tls_cert=self.tls_cert or None,
            tls_key=self.tls_key or None,
            server_name_override=self.server_name_override or None,
            token=self.token or None,
        )


@dataclass(frozen=True)
class Parameter:
    """One ROS 2 parameter of the node: its name, typed default and description."""

    name: str
    default: str | bool | int | float
    description: str


_DESCRIPTIONS: dict[str, str] = {
    "server": f"host:port of the segstream server (${SERVER_ENV} sets the default)",
    "input_type": "raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage, JPEG/PNG)",
    "input_topic": "camera topic; empty: image_raw, or image_raw/compressed for input_type compressed",
    "mask_topic": "mono8 class mask topic (empty: off)",
    "color_topic": "rgb8 colour mask topic (empty: off)",
    "overlay_topic": "rgb8 overlay topic (empty: off)",
    "model": "model name (segstream-client models); empty: the server's default",
    "head": "out (main head) or aux (cheaper, less accurate)",
    "resolution": "frame (the camera's size) or inference (the network's, smaller)",
    "mask_encoding": "how masks travel from the server: raw or png",
    "image_encoding": "how colour mask and overlay travel from the server: raw, png or jpeg",
    "wire_encoding": "how camera frames travel to the server: raw, jpeg or png",
    "tls": "connect over TLS (also on when tls_ca, tls_cert or tls_key is set)",
    "tls_ca": "PEM file of the CA that signed the server's certificate; empty: the system's CAs",
    "tls_cert": "PEM client certificate, for servers that require mutual TLS (with tls_key)",
    "tls_key": "PEM private key of tls_cert",
    "server_name_override": "name the server's certificate must carry, instead of the server's host",
    "token": f"bearer token (visible to anyone who can list parameters: prefer token_file or ${TOKEN_ENV})",
    "token_file": "file whose first line that is not blank or a # comment is the bearer token",
    "queue_depth": "depth of the camera subscription (best effort, keep last)",
    "max_in_flight": "camera frames sent and not answered yet, at most",
    "reconnect_max_s": "longest wait, in seconds, between attempts to reach the server",
}

_NOT_PARAMETERS = {"reconnect_initial_s", "header_capacity", "drop_log_interval_s"}


def parameters(environ: Mapping[str, str] | None = None) -> tuple[Parameter, ...]:
    """Every node parameter with its default; `environ` supplies SEGSTREAM_SERVER's default."""
    defaults: dict[str, Any] = {f.name: f.default for f in fields(BridgeSettings) if f.name not in _NOT_PARAMETERS}
    defaults["token_file"] = ""
    if environ and environ.get(SERVER_ENV):
        defaults["server"] = environ[SERVER_ENV]
    return tuple(Parameter(name, defaults[name], description) for name, description in _DESCRIPTIONS.items())


PARAMETERS: tuple[Parameter, ...] = parameters()
"""The node's parameters with their built-in defaults (no environment)."""


def _read_token(path: Path) -> str:
    try:
        return read_token_file(path)
    except ValueError as exc:
        raise ValueError(f"parameter token_file {path}: {exc}") from None


def settings_from_parameters(values: Mapping[str, object], environ: Mapping[str, str] | None = None) -> BridgeSettings:
    """`BridgeSettings` from parameter values (missing ones take their defaults).

    Raises ValueError, naming the parameter, for an unknown name or a bad value.
    """
    environ = environ or {}
    known = {p.name: p for p in parameters(environ)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    merged: dict[str, Any] = {name: values.get(name, p.default) for name, p in known.items()}
    for name, p in known.items():
        value = merged[name]
        expected = type(p.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            merged[name] = value = float(value)
        if type(value) is not expected:
            # ROS 2 reads -p values as YAML, so a numeric token or model name arrives as a number.
            hint = (
                f" (quote it: -p {name}:=\"'{value}'\")" if expected is str and isinstance(value, int | float) else ""
            )
            raise ValueError(f"parameter {name} must be a {expected.__name__}; got {value!r}{hint}")
    token_file = merged.pop("token_file")
    if merged["token"] and token_file:
        raise ValueError("set token or token_file, not both")
    if token_file:
        merged["token"] = _read_token(Path(token_file))
    elif not merged["token"]:
        merged["token"] = environ.get(TOKEN_ENV, "")
    if merged["reconnect_max_s"] > 0:
        merged["reconnect_initial_s"] = min(BridgeSettings.reconnect_initial_s, merged["reconnect_max_s"])
    return BridgeSettings(**merged)
