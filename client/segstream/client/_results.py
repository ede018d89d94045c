"""What the server sends back, as frozen dataclasses of numpy arrays and plain values."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import cv2
import grpc
import numpy as np
import numpy.typing as npt

from segstream.client._options import HeadName
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire.codec import U8Array, decode_image, decode_mask

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_HEAD_NAMES: dict[int, HeadName] = {pb.HEAD_OUT: "out", pb.HEAD_AUX: "aux"}


def _read_only(array: npt.NDArray[np.generic]) -> None:
    # Results are shared values; a caller who wants to draw on one copies it first.
    array.flags.writeable = False


@dataclass(frozen=True)
class StageTimings:
    """Server-side time spent on one frame, in milliseconds (see the proto's StageTimings)."""

    decode_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_ms: float = 0.0

    @classmethod
    def from_proto(cls, timings: pb.StageTimings) -> StageTimings:
        """The timings a response carries."""
        return cls(
            timings.decode_ms,
            timings.queue_ms,
            timings.inference_ms,
            timings.postprocess_ms,
            timings.total_ms,
        )


@dataclass(frozen=True)
class FrameError:
    """Why one frame has no result; the stream it belongs to goes on."""

    code: grpc.StatusCode
    message: str

    @classmethod
    def from_proto(cls, error: pb.FrameError) -> FrameError:
        """A response's error, its numeric code as a grpc.StatusCode (UNKNOWN for one grpc lacks)."""
        return cls(_STATUS_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN), error.message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


@dataclass(frozen=True, eq=False)
class SegmentResult:
    """The result for one frame. Arrays are read-only (copy one to draw on it) and None unless requested.

    Attributes:
        frame_id, timestamp_ns: The frame's own id and capture time, echoed by the server.
        labels: HxW uint8 class indices ("label_mask").
        color_mask, overlay: HxWx3 uint8 RGB images ("color_mask", "overlay").
        confidence: Mean per-pixel maximum logit ("confidence").
        class_share: float32 fraction of pixels per class index ("class_share").
        timings: Server-side stage timings.
        dropped_frames: Frames of this stream dropped so far (policy "latest"): by the server, and,
            when `stream(..., reconnect=...)` reconnected, every frame a broken stream left unanswered.
        model: The model that produced the result.
        inference_size: (width, height) the network ran at.
        error: Why this frame failed, or None.
        latency_ms: Client-measured time from sending the frame to receiving this result, or None
            when the send time is unknown.
    """

    frame_id: int
    timestamp_ns: int
    labels: U8Array | None = None
    color_mask: U8Array | None = None
    overlay: U8Array | None = None
    confidence: float | None = None
    class_share: npt.NDArray[np.float32] | None = None
    timings: StageTimings = StageTimings()
    dropped_frames: int = 0
    model: str = ""
    inference_size: tuple[int, int] = (0, 0)
    error: FrameError | None = None
    latency_ms: float | None = None

    @property
    def ok(self) -> bool:
        """True when the frame was segmented (no `error`)."""
        return self.error is None

    @classmethod
    def from_proto(
        cls, resp: pb.SegmentResponse, sent_at: float | None = None, received_at: float | None = None
    ) -> SegmentResult:
        """Decode a response; `sent_at`/`received_at` are `time.perf_counter()` readings.

        A result whose images cannot be decoded becomes a DATA_LOSS `error` rather than an exception,
        so one corrupt message does not end a stream.
        """
        received = time.perf_counter() if received_at is None else received_at
        base = cls(
            frame_id=resp.frame_id,
            timestamp_ns=resp.capture_time.ToNanoseconds(),
            timings=StageTimings.from_proto(resp.timings),
            dropped_frames=resp.dropped_frames,
            model=resp.model,
            inference_size=(resp.inference_width, resp.inference_height),
            latency_ms=None if sent_at is None else (received - sent_at) * 1000.0,
        )
        if resp.HasField("error"):
            return replace(base, error=FrameError.from_proto(resp.error))
        try:
            labels = decode_mask(resp.label_mask) if resp.HasField("label_mask") else None
            color = decode_image(resp.color_mask) if resp.HasField("color_mask") else None
            overlay = decode_image(resp.overlay) if resp.HasField("overlay") else None
        except (ValueError, cv2.error) as exc:
            return replace(base, error=FrameError(grpc.StatusCode.DATA_LOSS, f"result could not be decoded: {exc}"))
        share = np.array(resp.class_share, np.float32) if resp.class_share else None
        for array in (labels, color, overlay, share):
            if array is not None:
                _read_only(array)
        return replace(
            base,
            labels=labels,
            color_mask=color,
            overlay=overlay,
            confidence=resp.confidence if resp.HasField("confidence") else None,
            class_share=share,
        )


@dataclass(frozen=True, eq=False)
class ModelInfo:
    """One served model.

    Attributes:
        name: The name to put in `StreamOptions.model`.
        class_names: Class names by class index (0 is the background).
        palette: Nx3 uint8 RGB colour of each class index, read-only.
        inference_size: Short side frames are resized to before the network (0: no resize).
        execution_provider: The ONNX Runtime provider actually running it.
        heads: The heads it offers, "out" and/or "aux".
        synthetic: True when its weights are random: its masks are meaningless.
        is_default: True for the model an empty `StreamOptions.model` selects.
        inference_shapes: (width, height) of each fixed network input shape (the server's shape
            buckets); each frame is resized to the one closest to its aspect ratio. Empty: the
            short side is resized to `inference_size`, aspect ratio kept.
    """

    name: str
    class_names: tuple[str, ...]
    palette: U8Array
    inference_size: int
    execution_provider: str
    heads: tuple[HeadName, ...]
    synthetic: bool
    is_default: bool
    inference_shapes: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_proto(cls, info: pb.ModelInfo) -> ModelInfo:
        """A ListModels entry, its palette as a read-only Nx3 RGB array."""
        palette = np.array([(c.r, c.g, c.b) for c in info.palette], np.uint8).reshape(-1, 3)
        _read_only(palette)
        return cls(
            name=info.name,
            class_names=tuple(info.class_names),
            palette=palette,
            inference_size=info.inference_size,
            execution_provider=info.execution_provider,
            heads=tuple(_HEAD_NAMES[h] for h in info.heads if h in _HEAD_NAMES),
            synthetic=info.synthetic,
            is_default=info.is_default,
            inference_shapes=tuple((s.width, s.height) for s in info.inference_shapes),
        )
