"""The serving graph's label map and scores -> the results a stream asked for.

Runs in the inference worker right after the network, while the worker's output buffers are valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from segstream.client import codec
from segstream.client.palette import blend, colorize
from segstream.v1 import segmentation_pb2 as pb

U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]


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


def postprocess(
    labels: U8Array,
    confidence: float,
    share: F32Array,
    image: U8Array,
    spec: OutputSpec,
    response: pb.SegmentResponse,
) -> None:
    """Fill the requested result fields of `response`.

    `labels` is the HxW class-id map at the output resolution and `image` the RGB frame at that
    same resolution (for the overlay).
    """
    if spec.wants(pb.OUTPUT_CONFIDENCE):
        response.confidence = confidence
    if spec.wants(pb.OUTPUT_CLASS_SHARE):
        response.class_share.extend(share.tolist())
    if spec.wants(pb.OUTPUT_LABEL_MASK):
        response.label_mask.CopyFrom(codec.encode_mask(labels, spec.mask_encoding))
    if spec.wants(pb.OUTPUT_COLOR_MASK) or spec.wants(pb.OUTPUT_OVERLAY):
        color = colorize(labels, len(share))
        if spec.wants(pb.OUTPUT_COLOR_MASK):
            response.color_mask.CopyFrom(codec.encode_image(color, spec.image_encoding, spec.jpeg_quality))
        if spec.wants(pb.OUTPUT_OVERLAY):
            overlay = blend(image, color)
            response.overlay.CopyFrom(codec.encode_image(overlay, spec.image_encoding, spec.jpeg_quality))
