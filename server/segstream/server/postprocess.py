"""Network logits -> the results a stream asked for (label mask, colour mask, overlay, scores).

Runs in the inference worker right after the network, while the worker's output buffer is valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from segstream.client import codec
from segstream.client.palette import blend, class_share, colorize
from segstream.v1 import segmentation_pb2 as pb

F32Array = npt.NDArray[np.float32]
U8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class OutputSpec:
    """What one stream wants back, resolved from its StreamConfig with defaults filled in."""

    outputs: frozenset[int] = frozenset({pb.OUTPUT_LABEL_MASK})
    mask_encoding: int = pb.MASK_ENCODING_RAW
    image_encoding: int = pb.IMAGE_ENCODING_JPEG
    resolution: int = pb.OUTPUT_RESOLUTION_FRAME
    jpeg_quality: int = 90

    def wants(self, output: int) -> bool:
        return output in self.outputs

    @property
    def needs_labels(self) -> bool:
        return bool(self.outputs - {pb.OUTPUT_CONFIDENCE})


def resize_logits(logits: F32Array, height: int, width: int) -> F32Array:
    """Bilinear (half-pixel centres, as the network's own upsampling) resize of CxHxW logits."""
    if logits.shape[1:] == (height, width):
        return logits
    out = np.empty((logits.shape[0], height, width), np.float32)
    # Channel by channel: cv2 is fastest on single-channel planes and needs no HWC transpose.
    for c in range(logits.shape[0]):
        cv2.resize(logits[c], (width, height), dst=out[c], interpolation=cv2.INTER_LINEAR)
    return out


def argmax_labels(logits: F32Array) -> U8Array:
    labels: U8Array = np.argmax(logits, axis=0).astype(np.uint8)
    return labels


def confidence(logits: F32Array) -> float:
    """The model card's frame score: mean over pixels of the maximum logit."""
    return float(np.max(logits, axis=0).mean(dtype=np.float64))


def postprocess(
    logits: F32Array,
    frame: U8Array,
    resized: U8Array,
    spec: OutputSpec,
    response: pb.SegmentResponse,
) -> None:
    """Fill the requested result fields of `response` from one frame's CxHxW logits.

    `frame` is the decoded RGB frame, `resized` the same frame at the inference resolution.
    """
    if spec.wants(pb.OUTPUT_CONFIDENCE):
        response.confidence = confidence(logits)
    if not spec.needs_labels:
        return
    image = frame if spec.resolution == pb.OUTPUT_RESOLUTION_FRAME else resized
    labels = argmax_labels(resize_logits(logits, image.shape[0], image.shape[1]))
    num_classes = logits.shape[0]
    if spec.wants(pb.OUTPUT_LABEL_MASK):
        response.label_mask.CopyFrom(codec.encode_mask(labels, spec.mask_encoding))
    if spec.wants(pb.OUTPUT_COLOR_MASK) or spec.wants(pb.OUTPUT_OVERLAY):
        color = colorize(labels, num_classes)
        if spec.wants(pb.OUTPUT_COLOR_MASK):
            response.color_mask.CopyFrom(codec.encode_image(color, spec.image_encoding, spec.jpeg_quality))
        if spec.wants(pb.OUTPUT_OVERLAY):
            response.overlay.CopyFrom(codec.encode_image(blend(image, color), spec.image_encoding, spec.jpeg_quality))
    if spec.wants(pb.OUTPUT_CLASS_SHARE):
        response.class_share.extend(class_share(labels, num_classes).tolist())
