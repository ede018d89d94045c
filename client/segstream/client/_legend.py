"""Which colour is which class: legends and the synthetic-model mark, drawn into images or printed.

A legend lists the classes present in one label mask with their palette colours; its swatches are
filled with the exact palette colour, so a swatch can be matched against the mask by eye or by value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import cv2
import numpy as np

from segstream.client._results import ModelInfo
from segstream.wire.codec import U8Array
from segstream.wire.palette import voc_palette

SYNTHETIC_MARK = "SYNTHETIC MODEL: MASKS ARE MEANINGLESS"
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE = (255, 255, 255)
_PANEL_BGR = (32, 32, 32)
_MARK_BGR = (0, 0, 200)  # a red no class colour of the VOC palette matches
# Hershey Simplex capitals are about 22 px tall at scale 1.
_CAP_HEIGHT_AT_SCALE_1 = 22.0


def display_name(name: str) -> str:
    """A class name as people read it ("__background__" is the background)."""
    return name.strip("_") or name


@dataclass(frozen=True)
class ClassEntry:
    """One class in a legend: its index, readable name, RGB colour and share of the mask's pixels."""

    index: int
    name: str
    rgb: tuple[int, int, int]
    share: float

    @property
    def hex(self) -> str:
        """The colour as CSS/HTML writes it, e.g. #bf3030."""
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)


def rgb_palette(model: ModelInfo) -> U8Array:
    """A 256-entry RGB table for the model's class indices; indices the model lacks stay black."""
    table = np.zeros((256, 3), np.uint8)
    palette = model.palette if len(model.palette) else voc_palette(max(len(model.class_names), 1))
    table[: min(len(palette), 256)] = palette[:256]
    return table


def class_name(model: ModelInfo, index: int) -> str:
    """The readable name of class `index`, or "class N" for an index the model does not name."""
    return display_name(model.class_names[index]) if index < len(model.class_names) else f"class {index}"


def classes_present(labels: U8Array, model: ModelInfo, palette: U8Array | None = None) -> list[ClassEntry]:
    """The classes with at least one pixel in `labels`, by class index."""
    table = rgb_palette(model) if palette is None else palette
    counts = np.bincount(labels.ravel(), minlength=256)
    total = max(int(labels.size), 1)
    return [
        ClassEntry(int(i), class_name(model, int(i)), _rgb(table[i]), float(counts[i]) / total)
        for i in np.flatnonzero(counts)
    ]


def _rgb(color: U8Array) -> tuple[int, int, int]:
    return int(color[0]), int(color[1]), int(color[2])


def _scale_for(height_px: float) -> float:
    return height_px / _CAP_HEIGHT_AT_SCALE_1


def _mark_height(image_height: int) -> int:
    return int(np.clip(round(image_height / 16), 10, 36))


def draw_synthetic_mark(image: U8Array) -> None:
    """Draw a red strip along the bottom of a BGR image saying that its masks are meaningless."""
    height, width = image.shape[:2]
    strip = min(_mark_height(height), height)
    cv2.rectangle(image, (0, height - strip), (width - 1, height - 1), _MARK_BGR, cv2.FILLED)
    (text_w, text_h), _ = cv2.getTextSize(SYNTHETIC_MARK, _FONT, 1.0, 1)
    scale = min(strip * 0.6 / text_h, (width - 8) / text_w)
    if scale <= 0.15:  # too narrow to write in: the strip alone still shows
        return
    thickness = 2 if scale >= 0.9 else 1
    (text_w, text_h), _ = cv2.getTextSize(SYNTHETIC_MARK, _FONT, scale, thickness)
    origin = ((width - text_w) // 2, height - (strip - text_h) // 2 - 1)
    cv2.putText(image, SYNTHETIC_MARK, origin, _FONT, scale, _WHITE, thickness, cv2.LINE_AA)


def draw_legend(image: U8Array, entries: Sequence[ClassEntry], bottom_reserved: int = 0) -> None:
    """Draw a legend panel (a colour swatch and the name of each entry) at the top left of a BGR image.

    Entries that do not fit in columns above `bottom_reserved` rows end in a "+N more" line.
    """
    if not entries:
        return
    height, width = image.shape[:2]
    row = int(np.clip(round(height / 22), 12, 28))
    pad = max(2, row // 6)
    swatch = row - 2 * pad
    scale = _scale_for(row * 0.5)
    thickness = 2 if row >= 26 else 1
    usable = height - bottom_reserved - 2 * pad
    per_column = max(1, usable // row)
    texts = [entry.name for entry in entries]
    text_w = max(cv2.getTextSize(text, _FONT, scale, thickness)[0][0] for text in [*texts, "+99 more"])
    column_w = pad + swatch + pad + text_w + 2 * pad
    columns = max(1, min(-(-len(entries) // per_column), (width - 2 * pad) // column_w))
    shown = list(entries)
    if len(shown) > columns * per_column:
        keep = columns * per_column - 1
        shown, hidden = shown[:keep], len(shown) - keep
    else:
        hidden = 0
    rows = min(per_column, len(shown) + (hidden > 0))
    used_columns = max(1, -(-(len(shown) + (hidden > 0)) // per_column))
    panel = (min(width, pad + used_columns * column_w), min(height, pad + rows * row + pad))
    cv2.rectangle(image, (0, 0), (panel[0] - 1, panel[1] - 1), _PANEL_BGR, cv2.FILLED)
    baseline = (row + cv2.getTextSize("Ag", _FONT, scale, thickness)[0][1]) // 2
    for n, entry in enumerate(shown):
        x, y = pad + (n // per_column) * column_w, pad + (n % per_column) * row
        r, g, b = entry.rgb
        # Thin light frame first, then the exact colour inside it: a black swatch stays visible.
        cv2.rectangle(image, (x, y + pad - 1), (x + swatch + 1, y + pad + swatch), (160, 160, 160), 1)
        cv2.rectangle(image, (x + 1, y + pad), (x + swatch, y + pad + swatch - 1), (b, g, r), cv2.FILLED)
        cv2.putText(
            image, entry.name, (x + swatch + 2 * pad, y + baseline), _FONT, scale, _WHITE, thickness, cv2.LINE_AA
        )
    if hidden:
        n = len(shown)
        x, y = pad + (n // per_column) * column_w, pad + (n % per_column) * row
        cv2.putText(image, f"+{hidden} more", (x, y + baseline), _FONT, scale, _WHITE, thickness, cv2.LINE_AA)


class Annotator:
    """Draws what a viewer of an annotated image must know: the synthetic mark, and the legend if asked.

    The mark goes on every image of a synthetic model; the legend (classes present in the image's
    label mask) only with `legend` and a mask.
    """

    def __init__(self, model: ModelInfo, legend: bool) -> None:
        self._model = model
        self._palette = rgb_palette(model)
        self.legend = legend
        self.synthetic = model.synthetic

    @property
    def active(self) -> bool:
        """Whether `annotate` draws anything at all."""
        return self.legend or self.synthetic

    def annotate(self, image: U8Array, labels: U8Array | None) -> U8Array:
        """A BGR image with the marks drawn on a copy; `image` itself when there is nothing to draw."""
        if not self.active:
            return image
        out = np.array(image, np.uint8, copy=True)
        reserved = 0
        if self.synthetic:
            draw_synthetic_mark(out)
            reserved = _mark_height(out.shape[0])
        if self.legend and labels is not None:
            draw_legend(out, classes_present(labels, self._model, self._palette), bottom_reserved=reserved)
        return out


def _wants_colour(stream: TextIO) -> bool:
    # https://no-color.org: any non-empty NO_COLOR turns colour off.
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM", "") != "dumb"


def class_lines(model: ModelInfo, stream: TextIO | None = None) -> list[str]:
    """The lines `segstream-client models` prints for a model's classes: index, colour, name.

    On a colour terminal each line also starts with a swatch in the class's colour.
    """
    colour = stream is not None and _wants_colour(stream)
    table = rgb_palette(model)
    width = len(str(max(len(model.class_names) - 1, 0)))
    lines = [f"  {len(model.class_names)} classes (index, colour, name):"]
    for index, name in enumerate(model.class_names):
        r, g, b = _rgb(table[index]) if index < 256 else (0, 0, 0)
        swatch = f"\x1b[48;2;{r};{g};{b}m  \x1b[0m " if colour else ""
        lines.append(f"    {swatch}{index:>{width}} #{r:02x}{g:02x}{b:02x} {name}")
    return lines
