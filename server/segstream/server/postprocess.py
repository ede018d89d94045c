"""The serving graph's label map and scores -> the results a stream asked for.

Runs in the inference worker right after the network, while the worker's output buffers are valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from segstream.models.classes import ClassList
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec
from segstream.wire.palette import blend, class_share

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
        """Whether the stream asked for `output` (a pb.Output value)."""
        return output in self.outputs


def postprocess(
    labels: U8Array,
    confidence: float,
    classes: ClassList,
    image: U8Array,
    spec: OutputSpec,
    response: pb.SegmentResponse,
) -> None:
    """Fill the requested result fields of `response`.

    `labels` is the HxW class-id map at the output resolution and `image` the RGB frame at that
    same resolution (for the overlay); `classes` are the model's, with the colours masks take.
    """
    if spec.wants(pb.OUTPUT_CONFIDENCE):
        response.confidence = confidence
    if spec.wants(pb.OUTPUT_CLASS_SHARE):
        # A bincount of the uint8 map on the host costs well under a millisecond; in the graph the
        # one-hot comparison over every class and pixel cost several on a CPU, asked for or not.
        response.class_share.extend(class_share(labels, len(classes)).tolist())
    if spec.wants(pb.OUTPUT_LABEL_MASK):
        response.label_mask.CopyFrom(codec.encode_mask(labels, spec.mask_encoding))
    if spec.wants(pb.OUTPUT_COLOR_MASK) or spec.wants(pb.OUTPUT_OVERLAY):
        color = classes.table[labels]
        if spec.wants(pb.OUTPUT_COLOR_MASK):
            response.color_mask.CopyFrom(codec.encode_image(color, spec.image_encoding, spec.jpeg_quality))
        if spec.wants(pb.OUTPUT_OVERLAY):
            overlay = blend(image, color)
            response.overlay.CopyFrom(codec.encode_image(overlay, spec.image_encoding, spec.jpeg_quality))
