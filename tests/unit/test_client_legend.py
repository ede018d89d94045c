"""Legends, the synthetic mark and the class colours `models` prints; the `--view`/`--legend` options."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest

from segstream.client._cli_view import view_address, webcam_outputs
from segstream.client._legend import (
    SYNTHETIC_MARK,
    Annotator,
    class_lines,
    classes_present,
    display_name,
    draw_legend,
    rgb_palette,
)
from segstream.client._results import ModelInfo
from segstream.client.cli import build_parser
from segstream.wire.codec import U8Array
from segstream.wire.palette import VOC_CLASSES, voc_palette

MARK_BGR = (0, 0, 200)


def _model(synthetic: bool = False) -> ModelInfo:
    return ModelInfo(
        name="m",
        class_names=VOC_CLASSES,
        palette=voc_palette(),
        inference_size=64,
        execution_provider="CPUExecutionProvider",
        heads=("out",),
        synthetic=synthetic,
        is_default=True,
    )


def _bgr(index: int) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in voc_palette()[index])
    return b, g, r


def _exact(image: U8Array, bgr: tuple[int, int, int]) -> int:
    return int(np.all(image == np.array(bgr, np.uint8), axis=-1).sum())


def _labels(classes: list[int], shape: tuple[int, int] = (240, 320)) -> U8Array:
    labels = np.zeros(shape, np.uint8)
    for n, index in enumerate(classes):  # vertical bands, one per class
        labels[:, n * shape[1] // len(classes) :] = index
    return labels


def test_classes_present_lists_each_class_once_with_name_colour_and_share() -> None:
    labels = _labels([0, 7, 15, 15])
    entries = classes_present(labels, _model())
    assert [e.index for e in entries] == [0, 7, 15]
    assert [e.name for e in entries] == ["background", "car", "person"]
    assert entries[2].rgb == tuple(int(c) for c in voc_palette()[15])
    assert entries[2].hex == "#{:02x}{:02x}{:02x}".format(*voc_palette()[15])
    assert sum(e.share for e in entries) == pytest.approx(1.0)
    assert entries[2].share == pytest.approx(0.5)
    assert display_name("__background__") == "background" and display_name("person") == "person"


def test_legend_swatches_hold_the_exact_class_colours_of_the_classes_present() -> None:
    image = np.full((240, 320, 3), 128, np.uint8)
    out = Annotator(_model(), legend=True).annotate(image, _labels([0, 7, 15]))
    assert out is not image and (image == 128).all(), "the caller's image is drawn on a copy"
    for present in (7, 15):
        assert _exact(out, _bgr(present)) >= 60, f"no swatch of class {present}"
    for absent in (3, 12):
        assert _exact(out, _bgr(absent)) == 0, f"class {absent} is not in the mask"
    # The panel sits at the top left; the rest of the frame is untouched.
    assert (out[-40:, -100:] == 128).all()
    assert _exact(out, MARK_BGR) == 0, "no synthetic mark on a real model's output"


def test_synthetic_output_carries_the_mark_with_or_without_a_legend() -> None:
    image = np.full((240, 320, 3), 128, np.uint8)
    marks = Annotator(_model(synthetic=True), legend=False)
    out = marks.annotate(image, _labels([0, 7]))
    strip = out[-15:]
    assert _exact(strip, MARK_BGR) > strip.shape[0] * strip.shape[1] * 0.6
    white = np.all(strip > 200, axis=-1).sum()
    assert white > 50, "the mark's text is written in the strip"
    assert (out[:200] == 128).all(), "no legend without --legend"
    assert _exact(out, _bgr(7)) == 0
    # A frame without a mask (a failed frame) still gets the mark.
    assert _exact(marks.annotate(image, None), MARK_BGR) > 1000
    assert "MEANINGLESS" in SYNTHETIC_MARK


def test_nothing_to_draw_returns_the_image_itself() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    marks = Annotator(_model(), legend=False)
    assert not marks.active and marks.annotate(image, _labels([1], (10, 10))) is image
    assert Annotator(_model(), legend=True).annotate(image, None) is not None


@pytest.mark.parametrize("shape", [(24, 32), (48, 64), (240, 320), (1080, 1920)])
def test_a_legend_of_every_class_fits_any_frame_size(shape: tuple[int, int]) -> None:
    labels = (np.arange(shape[0] * shape[1]) % 21).astype(np.uint8).reshape(shape)
    out = Annotator(_model(synthetic=True), legend=True).annotate(np.zeros((*shape, 3), np.uint8), labels)
    assert out.shape == (*shape, 3)
    if shape[0] >= 240:
        assert _exact(out, _bgr(20)) > 0 or _exact(out, _bgr(1)) > 0


def test_a_legend_too_long_for_the_frame_ends_in_more() -> None:
    image = np.zeros((60, 80, 3), np.uint8)
    entries = classes_present((np.arange(60 * 80) % 21).astype(np.uint8).reshape(60, 80), _model())
    draw_legend(image, entries)
    shown = sum(_exact(image, _bgr(i)) > 0 for i in range(1, 21))
    assert 0 < shown < 20


def test_rgb_palette_is_a_full_table_with_unknown_classes_black() -> None:
    table = rgb_palette(_model())
    assert table.shape == (256, 3) and (table[:21] == voc_palette()).all() and not table[21:].any()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_models_lists_every_class_with_its_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = class_lines(_model(), io.StringIO())
    assert lines[0] == "  21 classes (index, colour, name):"
    r, g, b = voc_palette()[15]
    assert f"    15 #{r:02x}{g:02x}{b:02x} person" in lines
    assert "     0 #000000 __background__" in lines
    assert not any("\x1b" in line for line in lines), "no escape codes into a file or pipe"
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    coloured = class_lines(_model(), _Terminal())
    assert f"\x1b[48;2;{r};{g};{b}m  \x1b[0m 15 #{r:02x}{g:02x}{b:02x} person" in "\n".join(coloured)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not any("\x1b" in line for line in class_lines(_model(), _Terminal()))


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("8080", ("127.0.0.1", 8080)),
        ("0", ("127.0.0.1", 0)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("localhost:9000", ("localhost", 9000)),
        ("[::1]:8080", ("::1", 8080)),
        (":8080", ("127.0.0.1", 8080)),
    ],
)
def test_view_address(text: str, address: tuple[str, int]) -> None:
    assert view_address(text) == address


@pytest.mark.parametrize("text", ["", "web", "65536", "-1", "host:", "::1:8080", "host:port"])
def test_bad_view_address(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        view_address(text)


def test_view_and_legend_options_parse() -> None:
    parser = build_parser({})
    args = parser.parse_args(["webcam", "--view", "8080", "--legend"])
    assert args.view == ("127.0.0.1", 8080) and args.legend
    assert parser.parse_args(["video", "in.mp4", "--out", "o.mp4", "--view", "0.0.0.0:1"]).view == ("0.0.0.0", 1)
    assert parser.parse_args(["image", "in.png", "--out", "o.png", "--legend"]).legend
    assert parser.parse_args(["webcam"]).view is None


def test_webcam_asks_for_what_it_shows() -> None:
    def outputs(show: bool, *argv: str) -> tuple[str, ...]:
        return webcam_outputs(show, build_parser({}).parse_args(["webcam", *argv]))

    assert outputs(True) == ("overlay",)
    assert outputs(False) == ("label_mask",)
    assert outputs(True, "--legend") == ("overlay", "label_mask")
    assert outputs(False, "--view", "0") == ("overlay", "label_mask")
