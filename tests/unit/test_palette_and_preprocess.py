"""The model card's palette, normalisation and resize rule."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from segstream.bench.inprocess import normalize_into
from segstream.models.serving import MEAN, STD
from segstream.server.preprocess import inference_shape, resize_rgb
from segstream.wire.palette import VOC_CLASSES, blend, class_share, colorize, voc_palette


def test_palette_follows_the_card() -> None:
    palette = voc_palette()
    assert palette.shape == (21, 3) and tuple(palette[0]) == (0, 0, 0)
    for k in range(1, 21):
        expected = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(k / 21, 0.75, 0.75))
        assert tuple(int(v) for v in palette[k]) == expected
    assert tuple(palette[15]) != tuple(palette[12])  # person and dog differ
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"


def test_colorize_blend_and_share() -> None:
    labels = np.array([[0, 15], [15, 20]], np.uint8)
    color = colorize(labels)
    assert tuple(color[0, 1]) == tuple(voc_palette()[15])
    image = np.full((2, 2, 3), 200, np.uint8)
    mixed = blend(image, color)
    assert tuple(mixed[0, 0]) == (100, 100, 100)
    np.testing.assert_allclose(class_share(labels)[[0, 15, 20]], [0.25, 0.5, 0.25])
    with pytest.raises(ValueError, match="differ in shape"):
        blend(image, color[:1])


@pytest.mark.parametrize(
    ("height", "width", "size", "expected"),
    [(480, 640, 520, (520, 693)), (640, 480, 520, (693, 520)), (520, 520, 520, (520, 520)), (240, 320, 0, (240, 320))],
)
def test_short_side_resize_keeps_the_aspect(height: int, width: int, size: int, expected: tuple[int, int]) -> None:
    assert inference_shape(height, width, size) == expected


def test_a_frame_already_at_its_inference_shape_is_not_copied() -> None:
    rgb = np.zeros((48, 64, 3), np.uint8)
    assert resize_rgb(rgb, inference_shape(48, 64, 0)) is rgb
    assert resize_rgb(rgb, inference_shape(48, 64, 24)).shape == (24, 32, 3)


def test_the_raw_benchmark_input_is_normalised_as_the_card_says() -> None:
    # The serving graph normalises on its own; the raw ONNX Runtime loop feeds the plain model file.
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    tensor = normalize_into(rgb, np.empty((3, 48, 64), np.float32))
    expected = ((rgb / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(tensor, expected, atol=1e-5)
