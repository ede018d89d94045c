"""Segmentation results for Foxglove: live over the Foxglove WebSocket protocol, recorded to MCAP.

Uses the official `foxglove-sdk` (the `foxglove` extra); no ROS installation is needed. Every image
message carries the frame's capture time as its `timestamp` and log time, and the coordinate frame
`frame_id` (default "camera"), so the images of one frame line up in Foxglove's panels and timeline.

Topics (`TOPICS`):
    /segstream/camera      foxglove.CompressedImage, JPEG: the frame as it was sent for segmentation
    /segstream/overlay     foxglove.CompressedImage, JPEG: the frame blended with the colour mask
    /segstream/color_mask  foxglove.CompressedImage, PNG (lossless): each pixel's class colour
    /segstream/labels      foxglove.RawImage, mono8: each pixel's class index (step = width)
    /segstream/frame       JSON (segstream.Frame): the frame's id, latency, drops and the classes in view
    /segstream/classes     JSON (segstream.Classes): the model's class names and colours, by index

The class list is published once, with the first frame (and again to each live viewer that subscribes
to it later, since the WebSocket protocol keeps no messages for late subscribers). Nothing is encoded for
a topic that no sink wants: a live server without viewers costs almost nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import foxglove
import numpy as np
from foxglove.channels import CompressedImageChannel, RawImageChannel
from foxglove.messages import CompressedImage, RawImage, Timestamp
from foxglove.websocket import ChannelView, Client, ServerListener, WebSocketServer

from segstream.client._legend import Annotator, class_name, rgb_palette
from segstream.client._results import ModelInfo, SegmentResult
from segstream.wire.codec import U8Array, as_u8

DEFAULT_PORT = 8765  # Foxglove's own default for a WebSocket data source
DEFAULT_FRAME_ID = "camera"
TOPIC_CAMERA = "/segstream/camera"
TOPIC_OVERLAY = "/segstream/overlay"
TOPIC_COLOR_MASK = "/segstream/color_mask"
TOPIC_LABELS = "/segstream/labels"
TOPIC_FRAME = "/segstream/frame"
TOPIC_CLASSES = "/segstream/classes"
TOPICS = (TOPIC_CAMERA, TOPIC_OVERLAY, TOPIC_COLOR_MASK, TOPIC_LABELS, TOPIC_FRAME, TOPIC_CLASSES)
_JPEG_QUALITY = 90
_PNG_COMPRESSION = 1  # masks are flat colour: the fastest level is nearly as small
_NS = 1_000_000_000

_TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}},
}
CLASSES_SCHEMA: dict[str, Any] = {
    "title": "segstream.Classes",
    "description": "The classes of a segmentation model: index (the value in /segstream/labels), name, colour",
    "type": "object",
    "properties": {
        "timestamp": _TIME_SCHEMA,
        "model": {"type": "string"},
        "synthetic": {"type": "boolean", "description": "random weights: the masks are meaningless"},
        "classes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "name": {"type": "string"},
                    "color": {"type": "string", "description": "#rrggbb, as in /segstream/color_mask"},
                    "r": {"type": "integer"},
                    "g": {"type": "integer"},
                    "b": {"type": "integer"},
                },
            },
        },
    },
}
FRAME_SCHEMA: dict[str, Any] = {
    "title": "segstream.Frame",
    "description": "One segmented frame: its segstream id, capture time, latency and the classes in view",
    "type": "object",
    "properties": {
        "timestamp": _TIME_SCHEMA,
        "frame_id": {"type": "integer", "description": "the frame's id in its segstream stream"},
        "ok": {"type": "boolean"},
        "error": {"type": "string"},
        "latency_ms": {"type": ["number", "null"]},
        "dropped_frames": {"type": "integer"},
        "model": {"type": "string"},
        "classes": {"type": "array", "items": {"type": "integer"}, "description": "class indices in view"},
    },
}


def timestamp(stamp_ns: int) -> Timestamp:
    """A time in ns since the Unix epoch as Foxglove's Timestamp."""
    sec, nsec = divmod(int(stamp_ns), _NS)
    return Timestamp(sec, nsec)


def _time_json(stamp_ns: int) -> dict[str, int]:
    sec, nsec = divmod(int(stamp_ns), _NS)
    return {"sec": sec, "nsec": nsec}


def classes_message(model: ModelInfo, stamp_ns: int) -> dict[str, Any]:
    """The /segstream/classes message: every class of `model` with its palette colour."""
    table = rgb_palette(model)
    classes = []
    for index in range(min(len(model.class_names), 256)):
        r, g, b = (int(v) for v in table[index])
        color = f"#{r:02x}{g:02x}{b:02x}"
        classes.append({"index": index, "name": class_name(model, index), "color": color, "r": r, "g": g, "b": b})
    return {"timestamp": _time_json(stamp_ns), "model": model.name, "synthetic": model.synthetic, "classes": classes}


class _Channels:
    """The channels of one Foxglove context (one per sink, so each sink's class list goes out on its own)."""

    def __init__(self, context: foxglove.Context) -> None:
        self.context = context
        self.camera = CompressedImageChannel(TOPIC_CAMERA, context=context)
        self.overlay = CompressedImageChannel(TOPIC_OVERLAY, context=context)
        self.color_mask = CompressedImageChannel(TOPIC_COLOR_MASK, context=context)
        self.labels = RawImageChannel(TOPIC_LABELS, context=context)
        self.frame = foxglove.Channel(TOPIC_FRAME, schema=FRAME_SCHEMA, context=context)
        self.classes = foxglove.Channel(TOPIC_CLASSES, schema=CLASSES_SCHEMA, context=context)
        self.classes_due = threading.Event()  # set: send the class list with the next frame
        self.classes_due.set()

    def close(self) -> None:
        for channel in (self.camera, self.overlay, self.color_mask, self.labels, self.frame, self.classes):
            channel.close()


class _Listener(ServerListener):
    """Hears live viewers subscribe; one that subscribes to the class list is sent it with the next frame."""

    def __init__(self, channels: _Channels) -> None:
        self._channels = channels

    def on_subscribe(self, client: Client, channel: ChannelView) -> None:
        if channel.topic == TOPIC_CLASSES:
            self._channels.classes_due.set()


class _Lazy:
    """A message built on first use only, so that no sink wanting it costs nothing."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._built = False
        self._value: Any = None

    def get(self) -> Any:
        if not self._built:
            self._value, self._built = self._build(), True
        return self._value


class FoxglovePublisher:
    """Publishes each frame's images to a live Foxglove WebSocket server and/or an MCAP file.

    Args:
        model: The model the results come from (class names and colours).
        mcap: Record to this MCAP file (overwritten), or None.
        serve: Serve live on (host, port) over the Foxglove WebSocket protocol (port 0: a free one), or None.
        frame_id: The coordinate frame every image names.
        annotator: Draws onto the overlay (the synthetic-model mark, a legend); None draws nothing.

    Raises OSError when the MCAP file cannot be written or the address cannot be served.
    """

    def __init__(
        self,
        model: ModelInfo,
        *,
        mcap: Path | None = None,
        serve: tuple[str, int] | None = None,
        frame_id: str = DEFAULT_FRAME_ID,
        annotator: Annotator | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.frame_id = frame_id
        self._annotator = annotator or Annotator(model, legend=False)
        self._palette_bgr = np.ascontiguousarray(rgb_palette(model)[:, ::-1])
        self._sinks: list[_Channels] = []
        self._writer: foxglove.MCAPWriter | None = None
        self.server: WebSocketServer | None = None
        self.published = 0
        try:
            if mcap is not None:
                channels = _Channels(foxglove.Context())
                try:
                    self._writer = foxglove.open_mcap(mcap, allow_overwrite=True, context=channels.context)
                except Exception as exc:  # the SDK raises its own error types for file problems
                    raise OSError(f"cannot write {mcap}: {exc}") from None
                info = {"model": model.name, "synthetic": str(model.synthetic).lower(), **(metadata or {})}
                self._writer.write_metadata("segstream", info)
                self._sinks.append(channels)
            if serve is not None:
                channels = _Channels(foxglove.Context())
                host, port = serve
                try:
                    self.server = foxglove.start_server(
                        name="segstream",
                        host=host,
                        port=port,
                        context=channels.context,
                        server_listener=_Listener(channels),
                    )
                except Exception as exc:
                    raise OSError(f"cannot serve Foxglove on {host}:{port}: {exc}") from None
                self._sinks.append(channels)
        except BaseException:
            self.close()
            raise

    @property
    def port(self) -> int | None:
        """The live server's port (the one chosen when 0 was asked for), or None without one."""
        return None if self.server is None else self.server.port

    def app_url(self) -> str | None:
        """A Foxglove app link that opens the live server as a data source, or None without one."""
        return None if self.server is None else self.server.app_url()

    def publish(self, result: SegmentResult | None, original: U8Array | None, stamp_ns: int) -> None:
        """Publish one frame: `original` (BGR, as sent) and what `result` holds, all stamped `stamp_ns`.

        `result` None (a frame never answered) publishes the camera image alone.
        """
        if not self._sinks:
            return
        stamp = timestamp(stamp_ns)
        frame_id = self.frame_id
        good = result if result is not None and result.ok else None
        labels = None if good is None else good.labels

        def jpeg(image: U8Array) -> bytes:
            return _encode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])

        def camera() -> CompressedImage | None:
            if original is None:
                return None
            return CompressedImage(timestamp=stamp, frame_id=frame_id, data=jpeg(original), format="jpeg")

        def overlay() -> CompressedImage | None:
            if good is None or good.overlay is None:
                return None
            bgr = as_u8(cv2.cvtColor(good.overlay, cv2.COLOR_RGB2BGR))
            data = jpeg(self._annotator.annotate(bgr, labels))
            return CompressedImage(timestamp=stamp, frame_id=frame_id, data=data, format="jpeg")

        def color_mask() -> CompressedImage | None:
            if good is None:
                return None
            if good.color_mask is not None:
                bgr = as_u8(cv2.cvtColor(good.color_mask, cv2.COLOR_RGB2BGR))
            elif labels is not None:
                bgr = as_u8(self._palette_bgr[labels])
            else:
                return None
            data = _encode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION])
            return CompressedImage(timestamp=stamp, frame_id=frame_id, data=data, format="png")

        def label_image() -> RawImage | None:
            if labels is None:
                return None
            height, width = labels.shape[:2]
            data = np.ascontiguousarray(labels).tobytes()
            return RawImage(
                timestamp=stamp, frame_id=frame_id, width=width, height=height, encoding="mono8", step=width, data=data
            )

        def frame_info() -> dict[str, Any] | None:
            if result is None:
                return None
            present = [] if labels is None else [int(i) for i in np.flatnonzero(np.bincount(labels.ravel()))]
            return {
                "timestamp": _time_json(stamp_ns),
                "frame_id": result.frame_id,
                "ok": result.ok,
                "error": "" if result.error is None else str(result.error),
                "latency_ms": None if result.latency_ms is None else round(result.latency_ms, 3),
                "dropped_frames": result.dropped_frames,
                "model": result.model,
                "classes": present,
            }

        messages = [_Lazy(build) for build in (camera, overlay, color_mask, label_image, frame_info)]
        for sink in self._sinks:
            if sink.classes_due.is_set():
                sink.classes_due.clear()
                sink.classes.log(classes_message(self.model, stamp_ns), log_time=stamp_ns)
            channels: Sequence[Any] = (sink.camera, sink.overlay, sink.color_mask, sink.labels, sink.frame)
            for channel, message in zip(channels, messages, strict=True):
                if channel.has_sinks() and (value := message.get()) is not None:
                    channel.log(value, log_time=stamp_ns)
        self.published += 1

    def close(self) -> None:
        """Finish the MCAP file and stop the live server; further calls do nothing."""
        writer, self._writer = self._writer, None
        server, self.server = self.server, None
        try:
            if writer is not None:
                writer.close()
        finally:
            if server is not None:
                server.stop()
            for sink in self._sinks:
                sink.close()
            self._sinks.clear()

    def __enter__(self) -> FoxglovePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode(suffix: str, image: U8Array, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(suffix, image, params)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} image as {suffix}")
    return bytes(buffer.tobytes())
