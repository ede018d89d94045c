"""Class names and colours of a segmentation model: the ONNX metadata that carries them, class files, checks.

A model names its classes in its own ONNX file, as metadata (``metadata_props``):

    segstream.classes   JSON list of the class names, class 0 first: ["background", "road", "car"]
    segstream.palette   JSON list of one [r, g, b] (0-255) per class, optional: [[0, 0, 0], [128, 64, 128], ...]

``segstream-models label`` writes them into a file, ``segstream-models export`` and ``build`` write the
Pascal VOC ones. A class file says the same for a model whose file carries none
(``segstream-server --classes``, ``segstream-models label --classes``), in either form:

- text: one class name per line in class order, optionally followed by its colour as ``#rrggbb``
  (``traffic light #faaa1e``); blank lines and lines that start with ``#`` are skipped;
- JSON: a list of names, or ``{"classes": [...], "palette": [[r, g, b], ...]}``.

Classes given without a colour get the generated palette: class 0 black, class k of n the HSV colour
(k/n, 0.75, 0.75), the model card's rule for its 21 classes extended to any count.

Example:
    >>> classes = parse_classes("background\\nroad #804080\\ncar\\n", "names.txt")
    >>> classes.names, [int(v) for v in classes.palette[1]]
    (('background', 'road', 'car'), [128, 64, 128])
    >>> classes.metadata()[CLASSES_KEY]
    '["background", "road", "car"]'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from segstream.wire.palette import VOC_CLASSES, palette_table, voc_palette

CLASSES_KEY = "segstream.classes"
PALETTE_KEY = "segstream.palette"
# Class ids travel as uint8 label maps; an argmax needs a logit per class, so one channel is no classifier.
MIN_CLASSES = 2
MAX_CLASSES = 256
# A class file is a list of names, not a data set: anything larger is the wrong file.
_MAX_FILE_BYTES = 1 << 20
_COLOURED_LINE = re.compile(r"^(?P<name>.*?)\s+#(?P<hex>[0-9a-fA-F]{6})$")

U8Array = npt.NDArray[np.uint8]


class ClassListError(ValueError):
    """Class names or colours that cannot describe a model's classes; the message says where and why."""


@dataclass(frozen=True, eq=False)
class ClassList:
    """A model's class names by class id, their RGB colours, and where they came from."""

    names: tuple[str, ...]
    palette: U8Array  # [len(names), 3] RGB, read-only
    source: str  # e.g. "the file's metadata", "--classes names.txt", "Pascal VOC (21 classes)"

    @classmethod
    def of(cls, names: Sequence[Any], palette: Sequence[Any] | U8Array | None = None, source: str = "") -> ClassList:
        """Checks names (and colours, one [r, g, b] per name, if given); raises ClassListError saying what is wrong.

        Without colours, classes get the generated palette of their count.
        """
        checked = _names(names, source)
        colours = generated_palette(len(checked)) if palette is None else _palette(palette, len(checked), source)
        colours = np.array(colours, np.uint8).reshape(-1, 3)
        colours.flags.writeable = False
        return cls(checked, colours, source)

    def __len__(self) -> int:
        """The number of classes."""
        return len(self.names)

    @cached_property
    def table(self) -> U8Array:
        """A read-only 256-entry colour lookup table: `table[labels]` colours a uint8 label map."""
        return palette_table(self.palette)

    def metadata(self) -> dict[str, str]:
        """The ONNX metadata entries that carry these classes (see the module docstring)."""
        return {
            CLASSES_KEY: json.dumps(list(self.names), ensure_ascii=False),
            PALETTE_KEY: json.dumps([[int(c) for c in rgb] for rgb in self.palette]),
        }

    def summary(self, shown: int = 5) -> str:
        """'N classes (from SOURCE): a, b, c, ...', with the first `shown` names."""
        names = ", ".join(self.names[:shown])
        more = f", ... ({len(self.names) - shown} more)" if len(self.names) > shown else ""
        return f"{len(self.names)} classes (from {self.source}): {names}{more}"


def generated_palette(count: int) -> U8Array:
    """The colours of `count` classes named without colours: class 0 black, class k HSV (k/count, 0.75, 0.75)."""
    return voc_palette(count)


@cache
def voc_classes() -> ClassList:
    """The 21 Pascal VOC classes and the model card's palette: what the published FCN files segment."""
    return ClassList.of(VOC_CLASSES, voc_palette(), f"Pascal VOC ({len(VOC_CLASSES)} classes)")


def classes_from_metadata(metadata: Mapping[str, str], source: str = "the file's metadata") -> ClassList | None:
    """The classes a model's metadata names, or None when it names none; ClassListError when malformed."""
    names_text = metadata.get(CLASSES_KEY)
    palette_text = metadata.get(PALETTE_KEY)
    if names_text is None:
        if palette_text is not None:
            raise ClassListError(f"{source}: {PALETTE_KEY} without {CLASSES_KEY}: name the classes too")
        return None
    names = _json(names_text, f"{source}: {CLASSES_KEY}")
    if not isinstance(names, list):
        raise ClassListError(f"{source}: {CLASSES_KEY} must be a JSON list of class names")
    palette = None if palette_text is None else _json(palette_text, f"{source}: {PALETTE_KEY}")
    return ClassList.of(names, palette, source)


def parse_classes(text: str, source: str) -> ClassList:
    """The classes of a class file's text (plain text or JSON, see the module docstring)."""
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        return _parse_json(stripped, source)
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _COLOURED_LINE.match(line)
        if match is None:
            names.append(line)
            colours.append(None)
            continue
        value = int(match["hex"], 16)
        names.append(match["name"].strip())
        colours.append((value >> 16, (value >> 8) & 0xFF, value & 0xFF))
        if not names[-1]:
            raise ClassListError(f"{source}: line {number}: a colour without a class name")
    plain = ClassList.of(names, None, source)
    if not any(c is not None for c in colours):
        return plain
    # Classes without a colour of their own keep the generated palette's.
    palette = [c if c is not None else tuple(int(v) for v in plain.palette[i]) for i, c in enumerate(colours)]
    return ClassList.of(names, palette, source)


def read_classes_file(path: str | Path) -> ClassList:
    """The classes a class file names; ClassListError for a file that cannot be read or says too little."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ClassListError(f"cannot read class file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ClassListError(f"{path}: more than {_MAX_FILE_BYTES >> 20} MiB: not a list of class names")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ClassListError(f"{path}: not UTF-8 text") from None
    return parse_classes(text, str(path))


def set_class_metadata(model: onnx.ModelProto, classes: ClassList) -> None:
    """Writes the classes into `model`'s metadata, replacing any it had and keeping every other entry."""
    entries = classes.metadata()
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        model.metadata_props.add(key=key, value=value)


def _parse_json(text: str, source: str) -> ClassList:
    document = _json(text, source)
    if isinstance(document, list):
        return ClassList.of(document, None, source)
    if not isinstance(document, dict) or not isinstance(document.get("classes"), list):
        raise ClassListError(f'{source}: JSON must be a list of names or {{"classes": [...], "palette": [...]}}')
    unknown = sorted(set(document) - {"classes", "palette"})
    if unknown:
        raise ClassListError(f"{source}: unknown key(s) {', '.join(unknown)}; expected classes and palette")
    return ClassList.of(document["classes"], document.get("palette"), source)


def _json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ClassListError(f"{source}: not valid JSON ({exc})") from None


def _names(names: Sequence[Any], source: str) -> tuple[str, ...]:
    if not MIN_CLASSES <= len(names) <= MAX_CLASSES:
        raise ClassListError(
            f"{source}: {len(names)} class name(s); a model has {MIN_CLASSES} to {MAX_CLASSES} classes "
            "(one logit channel per class, class ids are 8-bit)"
        )
    checked: list[str] = []
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "\r\n\0"):
            raise ClassListError(f"{source}: class {index}: {name!r} is not a class name (a non-empty line of text)")
        name = name.strip()
        if name in seen:
            raise ClassListError(f"{source}: class {index}: {name!r} already names class {seen[name]}")
        seen[name] = index
        checked.append(name)
    return tuple(checked)


def _palette(palette: Any, count: int, source: str) -> list[list[int]]:
    if not isinstance(palette, list | tuple | np.ndarray) or len(palette) != count:
        size = len(palette) if isinstance(palette, list | tuple | np.ndarray) else "no list of"
        raise ClassListError(f"{source}: {size} colours for {count} classes: give one [r, g, b] per class")
    colours = []
    for index, rgb in enumerate(palette):
        values = list(rgb) if isinstance(rgb, list | tuple | np.ndarray) else None
        if values is None or len(values) != 3 or not all(_is_channel(v) for v in values):
            raise ClassListError(f"{source}: colour of class {index}: {rgb!r} is not [r, g, b] with values 0-255")
        colours.append([int(v) for v in values])
    return colours


def _is_channel(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(0 <= value <= 255)
