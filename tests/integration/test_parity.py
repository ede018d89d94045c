"""The served label map and confidence equal a plain ONNX Runtime + numpy run of the model card's pipeline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec
from tests.conftest import SAMPLES, ServerFactory
from tests.integration.grpc_helpers import segment
from tests.integration.reference import reference


@pytest.mark.parametrize("image_name", ["000000017968.jpg", "000000025205.jpg"])
@pytest.mark.parametrize(("size", "head"), [(520, "out"), (520, "aux"), (0, "out"), (200, "out")])
async def test_served_masks_match_the_reference_pipeline(
    server_factory: ServerFactory, tiny_model: Path, image_name: str, size: int, head: str
) -> None:
    image = cv2.imread(str(SAMPLES / image_name))
    assert image is not None
    bgr = np.asarray(image, np.uint8)
    rgb = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)
    expected_labels, expected_confidence = reference(tiny_model, rgb, size, head)
    config = pb.StreamConfig(
        outputs=[pb.OUTPUT_LABEL_MASK, pb.OUTPUT_CONFIDENCE],
        head=pb.HEAD_AUX if head == "aux" else pb.HEAD_OUT,
    )
    frame = codec.frame_from_array(bgr, encoding="png")  # lossless: both sides see the same pixels
    async with server_factory(size=size) as server:
        (response,) = await segment(server, config, [frame])
    labels = codec.decode_mask(response.label_mask)
    assert labels.shape == expected_labels.shape
    agreement = float((labels == expected_labels).mean())
    assert agreement >= 0.999, f"only {agreement:.5f} of pixels agree"
    assert len(np.unique(expected_labels)) >= 3  # a constant mask would make this check empty
    assert response.confidence == pytest.approx(expected_confidence, rel=1e-4)
