"""COCO-format datasets: the instances JSON read into samples, images read, instances rasterised.

Only what both accuracy protocols need is kept: per image its file, size and the instances whose
category is one of the 20 Pascal VOC classes (crowd instances included, as both references keep
them). Polygons and RLE (uncompressed and compressed) are rasterised by pycocotools, the library
both references use, so that the ground truth is bit-identical to theirs.
"""

from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from segstream.wire.codec import U8Array
from segstream.wire.imageinfo import image_kind, image_size

BoolArray = npt.NDArray[np.bool_]

# Position = VOC class index, value = COCO category id (torchvision's references/segmentation CAT_LIST).
# Index 0 is the background; COCO has no category 0, so no annotation ever maps to it.
VOC_TO_COCO: tuple[int, ...] = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
COCO_TO_VOC: Mapping[int, int] = {coco: voc for voc, coco in enumerate(VOC_TO_COCO) if voc}
NUM_CLASSES = len(VOC_TO_COCO)


class DatasetError(ValueError):
    """The images or the instances JSON cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Instance:
    """One annotated object of a VOC class.

    Attributes:
        voc_index: Its class, 1..20 (see segstream.wire.palette.VOC_CLASSES).
        segmentation: As in the JSON: a list of polygons, or an RLE dict (list or string counts).
        iscrowd: The annotation's crowd flag (crowd regions count like any instance in both protocols).
        annotation_id: The annotation's id, for error messages.
    """

    voc_index: int
    segmentation: object
    iscrowd: bool = False
    annotation_id: int = 0


@dataclass(frozen=True)
class Sample:
    """One image of the dataset and its VOC-class instances."""

    image_id: int
    path: Path
    height: int
    width: int
    instances: tuple[Instance, ...] = ()

    @property
    def has_voc_instance(self) -> bool:
        """Whether protocol 2 (the model zoo notebook) evaluates this image."""
        return bool(self.instances)


def load_dataset(annotations: Path, images: Path, limit: int | None = None) -> list[Sample]:
    """The samples of a COCO instances file, sorted by image id (torchvision's CocoDetection order).

    `limit` keeps the first N images of that order; images without any VOC instance are kept
    (protocol 1 evaluates them as all background).
    """
    try:
        data = json.loads(annotations.read_text("utf-8"))
    except OSError as exc:
        raise DatasetError(f"{annotations}: cannot read it ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{annotations}: not a JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{annotations}: not a COCO instances file (no 'images' list)")
    problems: list[str] = []
    by_image: dict[int, list[Instance]] = {}
    for ann in data.get("annotations") or []:
        try:
            image_id, category = int(ann["image_id"]), int(ann["category_id"])
            voc = COCO_TO_VOC.get(category)
            if voc is None:
                continue
            instance = Instance(voc, ann["segmentation"], bool(ann.get("iscrowd", 0)), int(ann.get("id", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"annotation {_describe(ann)} lacks a valid {exc}")
            continue
        by_image.setdefault(image_id, []).append(instance)
    samples = []
    for entry in data["images"]:
        try:
            image_id = int(entry["id"])
            sample = Sample(
                image_id=image_id,
                path=images / str(entry["file_name"]),
                height=int(entry["height"]),
                width=int(entry["width"]),
                instances=tuple(by_image.get(image_id, ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"image {_describe(entry)} lacks a valid {exc}")
            continue
        samples.append(sample)
    if problems:
        raise problems_error(f"{annotations} is not usable", problems)
    samples.sort(key=lambda s: s.image_id)
    return samples if limit is None else samples[:limit]


def problems_error(what: str, problems: Sequence[str]) -> DatasetError:
    """One DatasetError listing every problem, one per line, under `what`."""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return DatasetError("\n  ".join([f"{what} ({count}):", *problems]))


def _describe(entry: object) -> str:
    if isinstance(entry, dict) and "id" in entry:
        return f"id {entry['id']!r}"
    return repr(entry)[:80]


def check_dataset(samples: Sequence[Sample]) -> None:
    """Check every image and annotation of `samples` before any is evaluated; one DatasetError lists all problems.

    Each image must exist, be readable, have a JPEG or PNG header that can be read (other formats are
    decoded whole) and the size its entry in the JSON states; each instance's segmentation must be
    polygons or RLE that pycocotools accepts, an RLE of the image's size. Pixels of JPEG and PNG
    images are not decoded here, so this takes seconds on val2017, not minutes.
    """
    setup: list[str] = []
    api: Any = None
    if any(sample.instances for sample in samples):
        try:
            api = _mask_api()
        except DatasetError as exc:
            setup.append(str(exc))
    images: list[str] = []
    instances: list[str] = []
    for sample in samples:
        problem = _image_problem(sample)
        if problem is not None:
            images.append(problem)
        if api is not None:
            instances.extend(_instance_problems(api, sample))
    if len(samples) > 1 and len(images) == len(samples) and all(p.endswith(_MISSING) for p in images):
        images = [
            f"none of the {len(samples)} images exists in {samples[0].path.parent}: is --images the right "
            f"folder? (the first: {images[0]})"
        ]
    problems = [*setup, *images, *instances]
    if problems:
        raise problems_error("the dataset has problems; nothing was evaluated", problems)


_MISSING = "does not exist"
# A PNG's size is in its first 24 bytes; a JPEG's in its start-of-frame segment, most often within the
# first few KiB (the whole file is read when EXIF or ICC segments push it further).
_HEADER_BYTES = 8192


def _image_problem(sample: Sample) -> str | None:
    """What stops `read_rgb` on this sample, found from the file's header; None when nothing does."""
    where = f"image {sample.image_id}: {sample.path}"
    try:
        with sample.path.open("rb") as file:
            head = file.read(_HEADER_BYTES)
            size = image_size(head)
            if size is None and image_kind(head) == "jpeg":
                head += file.read()  # a start-of-frame further in, after large metadata
                size = image_size(head)
    except FileNotFoundError:
        return f"{where} {_MISSING}"
    except OSError as exc:
        return f"{where}: cannot read it ({exc.strerror or exc})"
    kind = image_kind(head)
    if kind is None:  # neither JPEG nor PNG: only decoding tells
        bgr = cv2.imread(str(sample.path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            return f"{where}: not an image OpenCV can read"
        size = (bgr.shape[1], bgr.shape[0])
    elif size is None:
        return f"{where}: its {kind.upper()} header is corrupt or truncated"
    if size != (sample.width, sample.height):
        return (
            f"{where} is {size[0]}x{size[1]} but the annotations say {sample.width}x{sample.height}; "
            "--images and --annotations do not belong together"
        )
    return None


def _instance_problems(api: Any, sample: Sample) -> list[str]:
    """What stops `instance_mask` on the sample's instances, found without drawing any mask."""

    def where(instance: Instance) -> str:
        return f"annotation {instance.annotation_id} (image {sample.image_id})"

    problems = []
    for instance in sample.instances:
        try:
            rle = _rle(api, instance, sample.height, sample.width)
            if rle is None:
                continue
            height, width = (int(n) for n in rle["size"])
            api.area(rle)  # parses the counts without drawing the mask
        except Exception as exc:  # pycocotools raises plain Exceptions for input it does not support
            problems.append(f"{where(instance)}: unusable segmentation ({exc})")
            continue
        if (height, width) != (sample.height, sample.width):
            problems.append(f"{where(instance)}: its RLE is {width}x{height}, the image {sample.width}x{sample.height}")
    return problems


def read_rgb(sample: Sample) -> U8Array:
    """The image's pixels as HxWx3 RGB, checked against the size the JSON gives.

    EXIF orientation is ignored, as PIL's Image.open (used by both references) ignores it: COCO's
    annotations are relative to the stored pixels. Grey images become three equal channels.
    """
    if not sample.path.is_file():
        raise DatasetError(f"image {sample.image_id}: {sample.path} does not exist; is --images the right folder?")
    bgr = cv2.imread(str(sample.path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise DatasetError(f"image {sample.image_id}: cannot read {sample.path} (not an image?)")
    if bgr.shape[:2] != (sample.height, sample.width):
        raise DatasetError(
            f"image {sample.image_id}: {sample.path} is {bgr.shape[1]}x{bgr.shape[0]} but the annotations say "
            f"{sample.width}x{sample.height}; --images and --annotations do not belong together"
        )
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _mask_api() -> Any:
    try:
        return importlib.import_module("pycocotools.mask")
    except ImportError:
        raise DatasetError(
            "COCO polygons and RLE need pycocotools: pip install 'segstream[eval]' (or pycocotools)"
        ) from None


def instance_mask(instance: Instance, height: int, width: int) -> BoolArray:
    """The instance's pixels as an HxW bool mask (the polygons of one instance OR-ed together)."""
    api = _mask_api()
    try:
        rle = _rle(api, instance, height, width)
        if rle is None:
            return np.zeros((height, width), np.bool_)
        with warnings.catch_warnings():
            # pycocotools' RLE objects predate numpy 2's copy keyword; harmless, and noisy once per instance.
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            mask = np.asarray(api.decode(rle), np.uint8)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise DatasetError(f"annotation {instance.annotation_id}: unusable segmentation ({exc})") from None
    if mask.shape != (height, width):
        raise DatasetError(
            f"annotation {instance.annotation_id}: its RLE is {mask.shape[1]}x{mask.shape[0]}, "
            f"the image {width}x{height}"
        )
    return mask.astype(np.bool_)


def _rle(api: Any, instance: Instance, height: int, width: int) -> Any:
    """The instance's segmentation as one pycocotools RLE; None for an empty list of polygons."""
    seg = instance.segmentation
    if isinstance(seg, list):
        return api.merge(api.frPyObjects(seg, height, width)) if seg else None
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        return api.frPyObjects(seg, height, width)
    if isinstance(seg, dict) and isinstance(seg.get("counts"), str | bytes):
        counts = seg["counts"]
        return {"size": list(seg["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise TypeError("neither polygons nor RLE")


def instance_masks(sample: Sample) -> list[tuple[int, BoolArray]]:
    """(VOC class, mask) of every VOC-class instance of the sample, at the image's own size."""
    return [(i.voc_index, instance_mask(i, sample.height, sample.width)) for i in sample.instances]


def check_instances(instances: Sequence[tuple[int, BoolArray]], shape: tuple[int, int]) -> None:
    """Refuse an instance of a non-foreground class, or one whose mask is not the image's size."""
    for voc, mask in instances:
        if not 1 <= voc < NUM_CLASSES:
            raise ValueError(f"instance class {voc} is not a VOC foreground class (1..{NUM_CLASSES - 1})")
        if mask.shape != shape:
            raise ValueError(f"instance mask of shape {mask.shape} on an image of shape {shape}")
