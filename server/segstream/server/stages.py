"""One frame's stages, as plain synchronous functions: resolve, prepare, infer, finish.

    resolve   a stream's StreamConfig -> StreamSettings (once per stream)
    prepare   a Frame -> Prepared (the network input and the output-size image): `decode`, then `resize`
    infer     the model on a batch of Prepared frames that share a batch key -> BatchResult
    finish    one frame's share of a BatchResult -> the results its stream asked for, in its response

Each frame's response comes from `response_for`; `resize` notes the inference size in it.

The server's Pipeline only schedules them (prepare in a decode thread, infer and finish in an
inference worker); the benchmark's in-process pipeline and the evaluation's in-process predictor
call these same functions in one thread, so what they measure and score is what the server runs.

Example:
    >>> shaping = Shaping.of(config)  # doctest: +SKIP
    >>> settings = resolve(pb.StreamConfig(), {"fcn": model}, "fcn")  # doctest: +SKIP
    >>> response = response_for(frame, settings)  # doctest: +SKIP
    >>> prepared = prepare(frame, settings, shaping, response)  # doctest: +SKIP
    >>> finish(model, infer(model, [prepared]), 0, prepared, response)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from segstream.server.config import ServerConfig
from segstream.server.engine import BatchResult, Model, U8Array
from segstream.server.errors import InvalidConfigError
from segstream.server.frame_limits import FrameLimits
from segstream.server.postprocess import OutputSpec, postprocess
from segstream.server.preprocess import resize_rgb, snap_to_bucket
from segstream.server.untrusted import clip
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec

_HEAD_NAMES = {pb.HEAD_UNSPECIFIED: "out", pb.HEAD_OUT: "out", pb.HEAD_AUX: "aux"}


@dataclass(frozen=True)
class StreamSettings:
    """A StreamConfig checked against the served models, defaults filled in."""

    model: str
    head: str
    spec: OutputSpec
    policy: int


@dataclass(frozen=True)
class Shaping:
    """How the server turns a decoded frame into the network's input: --size, --buckets and its limits."""

    # Short side of the network input; 0 runs frames at their own resolution.
    size: int
    # Inference shapes frames snap to; empty: short side = size, aspect kept.
    buckets: tuple[tuple[int, int], ...] = ()
    # What one frame may cost the network; None checks nothing (an offline evaluation's own images).
    limits: FrameLimits | None = field(default_factory=FrameLimits)
    max_frame_pixels: int = codec.DEFAULT_MAX_PIXELS

    @classmethod
    def of(cls, config: ServerConfig) -> Shaping:
        """The shaping a server started with `config` applies to every frame."""
        return cls(
            size=config.size,
            buckets=config.buckets,
            limits=FrameLimits(config.max_inference_pixels, config.max_aspect),
            max_frame_pixels=config.max_frame_pixels,
        )

    def network_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a height x width frame runs the network at."""
        return snap_to_bucket(height, width, self.size, self.buckets)


@dataclass(frozen=True, slots=True)
class Prepared:
    """One frame ready for the network: its input at the inference size and its image at the output size."""

    resized: U8Array  # network input: the frame at the inference size
    image: U8Array  # the frame at the output resolution, for the overlay
    settings: StreamSettings

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) the frame's results are wanted at."""
        return self.image.shape[0], self.image.shape[1]

    @property
    def batch_key(self) -> Hashable:
        """Frames batch together when they share model, head, inference and output shape."""
        return self.settings.model, self.settings.head, self.resized.shape, self.output_size


def resolve(config: pb.StreamConfig, models: Mapping[str, Model], default_model: str) -> StreamSettings:
    """Checks a StreamConfig against `models`; raises InvalidConfigError with what to fix."""
    name = config.model or default_model
    model = models.get(name)
    if model is None:
        raise InvalidConfigError(f"unknown model {clip(name)!r}: this server serves {sorted(models)}")
    head = _HEAD_NAMES.get(config.head)
    if head is None or head not in model.heads:
        raise InvalidConfigError(f"model {name!r} has no head {config.head}: heads are {list(model.heads)}")
    _check_enum(config.mask_encoding, pb.MaskEncoding, "mask_encoding")
    _check_enum(config.image_encoding, pb.ImageEncoding, "image_encoding")
    _check_enum(config.resolution, pb.OutputResolution, "resolution")
    _check_enum(config.policy, pb.FramePolicy, "policy")
    outputs = set(config.outputs) or {pb.OUTPUT_LABEL_MASK}
    for output in outputs:
        _check_enum(output, pb.Output, "outputs")
    outputs.discard(pb.OUTPUT_UNSPECIFIED)
    if config.jpeg_quality > 100:
        raise InvalidConfigError(f"jpeg_quality {config.jpeg_quality}: use 1-100, or 0 for the default")
    spec = OutputSpec(
        outputs=frozenset(outputs or {pb.OUTPUT_LABEL_MASK}),
        mask_encoding=config.mask_encoding or pb.MASK_ENCODING_RAW,
        image_encoding=config.image_encoding or pb.IMAGE_ENCODING_JPEG,
        resolution=config.resolution or pb.OUTPUT_RESOLUTION_FRAME,
        jpeg_quality=config.jpeg_quality or 90,
    )
    return StreamSettings(name, head, spec, config.policy or pb.FRAME_POLICY_ORDERED)


def response_for(frame: pb.Frame, settings: StreamSettings) -> pb.SegmentResponse:
    """The empty response to `frame`, addressed to it; the stages fill it in."""
    response = pb.SegmentResponse(frame_id=frame.frame_id, model=settings.model)
    if frame.HasField("capture_time"):
        response.capture_time.CopyFrom(frame.capture_time)
    return response


def decode(frame: pb.Frame, shaping: Shaping) -> U8Array:
    """The first half of `prepare`: the frame's pixels as HxWx3 RGB; InvalidFrameError for a bad frame."""
    return codec.decode_frame(frame, shaping.max_frame_pixels)


def resize(rgb: U8Array, settings: StreamSettings, shaping: Shaping, response: pb.SegmentResponse) -> Prepared:
    """The second half of `prepare`: a decoded frame resized for the network, its inference size noted in `response`.

    Raises FrameOverLimitError for a frame whose network input would cost more than the limits allow.
    """
    shape = shaping.network_shape(rgb.shape[0], rgb.shape[1])
    if shaping.limits is not None:
        # Before the resize: a thin frame's network input can cost thousands of times the frame.
        shaping.limits.check(rgb.shape[0], rgb.shape[1], shape, shaping.size)
    resized = resize_rgb(rgb, shape)
    response.inference_width, response.inference_height = resized.shape[1], resized.shape[0]
    image = rgb if settings.spec.resolution == pb.OUTPUT_RESOLUTION_FRAME else resized
    return Prepared(resized, image, settings)


def prepare(frame: pb.Frame, settings: StreamSettings, shaping: Shaping, response: pb.SegmentResponse) -> Prepared:
    """Decodes a frame and resizes it for the network (see `decode` and `resize`)."""
    return resize(decode(frame, shaping), settings, shaping, response)


def infer(model: Model, batch: Sequence[Prepared]) -> BatchResult:
    """The model run once on frames of one batch key; labels come back at their output size.

    The result may live in buffers of the calling thread, valid until its next run: `finish` first.
    """
    first = batch[0]
    return model.run(first.settings.head, [item.resized for item in batch], first.output_size)


def finish(model: Model, result: BatchResult, index: int, prepared: Prepared, response: pb.SegmentResponse) -> None:
    """Fills `response` with what its stream asked for, from frame `index` of `result`."""
    postprocess(
        result.labels[index],
        float(result.confidence[index]),
        model.classes,
        prepared.image,
        prepared.settings.spec,
        response,
    )


def _check_enum(value: int, enum: Any, name: str) -> None:
    if value not in enum.values():
        raise InvalidConfigError(f"{name}: unknown value {value}; valid values are {list(enum.keys())}")
