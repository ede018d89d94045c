"""`StreamOptions`: what a stream (or one image) asks the server for, as plain Python values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

from segstream.v1 import segmentation_pb2 as pb

HeadName = Literal["out", "aux"]
OutputName = Literal["label_mask", "color_mask", "overlay", "confidence", "class_share"]
MaskEncodingName = Literal["raw", "png"]
ImageEncodingName = Literal["jpeg", "png", "raw"]
ResolutionName = Literal["frame", "inference"]
PolicyName = Literal["ordered", "latest"]

HEADS: Mapping[str, pb.Head] = {"out": pb.HEAD_OUT, "aux": pb.HEAD_AUX}
OUTPUTS: Mapping[str, pb.Output] = {
    "label_mask": pb.OUTPUT_LABEL_MASK,
    "color_mask": pb.OUTPUT_COLOR_MASK,
    "overlay": pb.OUTPUT_OVERLAY,
    "confidence": pb.OUTPUT_CONFIDENCE,
    "class_share": pb.OUTPUT_CLASS_SHARE,
}
_MASK_ENCODINGS: Mapping[str, pb.MaskEncoding] = {
    "raw": pb.MASK_ENCODING_RAW,
    "png": pb.MASK_ENCODING_PNG,
}
_IMAGE_ENCODINGS: Mapping[str, pb.ImageEncoding] = {
    "jpeg": pb.IMAGE_ENCODING_JPEG,
    "png": pb.IMAGE_ENCODING_PNG,
    "raw": pb.IMAGE_ENCODING_RAW_RGB,
}
_RESOLUTIONS: Mapping[str, pb.OutputResolution] = {
    "frame": pb.OUTPUT_RESOLUTION_FRAME,
    "inference": pb.OUTPUT_RESOLUTION_INFERENCE,
}
_POLICIES: Mapping[str, pb.FramePolicy] = {
    "ordered": pb.FRAME_POLICY_ORDERED,
    "latest": pb.FRAME_POLICY_LATEST,
}

_T = TypeVar("_T")


def _pick(field: str, value: object, choices: Mapping[str, _T]) -> _T:
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"StreamOptions.{field} must be one of {allowed}; got {value!r}")
    return choices[value]


@dataclass(frozen=True)
class StreamOptions:
    """Settings for one stream or one `segment()` call; every default matches the server's.

    Attributes:
        model: Name of a served model (see `models()`); "" selects the server's default.
        head: "out" (main head) or "aux" (cheaper, less accurate).
        outputs: Results to compute: any of "label_mask", "color_mask", "overlay", "confidence",
            "class_share". Repeats are dropped; a single name is accepted as a one-element tuple.
        mask_encoding: How the label mask travels: "raw" bytes or lossless "png" (smaller).
        image_encoding: How color_mask and overlay travel: "jpeg", "png" or "raw" RGB.
        resolution: "frame" returns results at the frame's size, "inference" at the network's.
        policy: "ordered" answers every frame in order (files); "latest" lets the server drop
            stale frames so results stay fresh (live cameras).
        jpeg_quality: 1-100, for image_encoding "jpeg".

    Example:
        >>> StreamOptions(outputs=("label_mask", "overlay"), policy="latest").to_proto().policy
        1
    """

    model: str = ""
    head: HeadName = "out"
    outputs: tuple[OutputName, ...] = ("label_mask",)
    mask_encoding: MaskEncodingName = "raw"
    image_encoding: ImageEncodingName = "jpeg"
    resolution: ResolutionName = "frame"
    policy: PolicyName = "ordered"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise TypeError(f"StreamOptions.model must be a model name string; got {self.model!r}")
        if self.model != self.model.strip():
            raise ValueError(f"StreamOptions.model {self.model!r} has surrounding whitespace; strip it")
        # Accept any iterable of names (or one name) but store a tuple, so the options stay hashable.
        if not isinstance(self.outputs, Iterable):
            raise TypeError(f"StreamOptions.outputs must be a tuple of output names; got {self.outputs!r}")
        outputs: Iterable[object] = (self.outputs,) if isinstance(self.outputs, str) else self.outputs
        names = tuple(dict.fromkeys(outputs))
        if not names:
            raise ValueError(
                "StreamOptions.outputs is empty; ask for at least one of " + ", ".join(get_args(OutputName))
            )
        for name in names:
            _pick("outputs", name, OUTPUTS)
        object.__setattr__(self, "outputs", names)
        _pick("head", self.head, HEADS)
        _pick("mask_encoding", self.mask_encoding, _MASK_ENCODINGS)
        _pick("image_encoding", self.image_encoding, _IMAGE_ENCODINGS)
        _pick("resolution", self.resolution, _RESOLUTIONS)
        _pick("policy", self.policy, _POLICIES)
        quality = self.jpeg_quality
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"StreamOptions.jpeg_quality must be an integer from 1 to 100; got {quality!r}")

    def to_proto(self) -> pb.StreamConfig:
        """The wire `StreamConfig`; every field is set explicitly, so server defaults never surprise."""
        return pb.StreamConfig(
            model=self.model,
            head=HEADS[self.head],
            outputs=[OUTPUTS[name] for name in self.outputs],
            mask_encoding=_MASK_ENCODINGS[self.mask_encoding],
            image_encoding=_IMAGE_ENCODINGS[self.image_encoding],
            resolution=_RESOLUTIONS[self.resolution],
            policy=_POLICIES[self.policy],
            jpeg_quality=self.jpeg_quality,
        )


# Frozen, so one shared default instance is safe as a parameter default.
DEFAULT_OPTIONS = StreamOptions()
