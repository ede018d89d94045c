"""The two accuracy protocols' arithmetic, as pure functions and accumulators over numpy arrays.

Protocol 1, torchvision's (references/segmentation): `semantic_target` -> `resize_target` ->
`ConfusionMatrix.update`, one matrix over every pixel of every image.
Protocol 2, the ONNX model zoo notebook's (fcn/dependencies/validation_accuracy.ipynb):
`zoo_image_score` per image, averaged by `ZooAccumulator`.

Every figure is an exact `Fraction` of integer pixel counts (None where torchvision's float
arithmetic gives nan), so results do not depend on summation order or float width.

Example:
    >>> target = np.array([[0, 15], [15, 255]], np.uint8)
    >>> matrix = ConfusionMatrix()
    >>> matrix.update(target, np.array([[0, 15], [0, 3]], np.uint8))
    >>> matrix.pixel_accuracy()
    Fraction(2, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import cv2
import numpy as np
import numpy.typing as npt

from segstream.evaluation._coco import NUM_CLASSES, BoolArray, check_instances
from segstream.wire.codec import U8Array

IGNORE = 255
"""Target value of pixels covered by two or more instances; protocol 1 leaves them out."""


def semantic_target(instances: Sequence[tuple[int, BoolArray]], shape: tuple[int, int]) -> U8Array:
    """Protocol 1's ground truth: each pixel's VOC class, 0 where unlabelled, IGNORE under 2+ instances.

    `instances` are (VOC class 1..20, HxW mask) pairs, one per instance (crowd ones included).
    Instances of the same class overlapping also give IGNORE, as in torchvision's
    ConvertCocoPolysToMask (`target[masks.sum(0) > 1] = 255`).
    """
    check_instances(instances, shape)
    target = np.zeros(shape, np.uint8)
    covered = np.zeros(shape, np.uint16)
    for voc, mask in instances:
        target[mask] = voc
        covered += mask
    target[covered > 1] = IGNORE
    return target


def resize_target(target: U8Array, shape: tuple[int, int]) -> U8Array:
    """The target at `shape` (height, width) by nearest neighbour, as PIL's Image.NEAREST does it.

    torchvision resizes its PIL target with InterpolationMode.NEAREST; OpenCV's INTER_NEAREST_EXACT
    samples the same source pixel (floor((i + 0.5) * scale)), plain INTER_NEAREST does not.
    """
    if target.shape == shape:
        return target
    resized = cv2.resize(target, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return np.asarray(resized, np.uint8)


def _ratio(numerator: int, denominator: int) -> Fraction | None:
    return Fraction(numerator, denominator) if denominator else None


def _check_prediction(prediction: U8Array, shape: tuple[int, ...], num_classes: int) -> None:
    if prediction.shape != shape:
        raise ValueError(f"prediction of shape {prediction.shape} for ground truth of shape {shape}")
    if prediction.size and int(prediction.max()) >= num_classes:
        raise ValueError(f"prediction holds class {int(prediction.max())}; the model has {num_classes} classes")


@dataclass
class ConfusionMatrix:
    """torchvision's ConfusionMatrix: rows are ground-truth classes, columns predicted ones.

    Pixels whose target is outside 0..num_classes-1 (IGNORE) are left out. A class that is in
    neither the targets nor the predictions has IoU 0/0: torchvision gets nan and its mean IoU
    (`iu.mean()`) is then nan too; here such values are None. `mean_iou_present` is the mean over
    the classes whose IoU is defined, for small subsets that miss some classes.
    """

    num_classes: int = NUM_CLASSES
    matrix: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, target: U8Array, prediction: U8Array) -> None:
        """Count one image's pixels: `target` and `prediction` are same-shape class-index maps."""
        n = self.num_classes
        _check_prediction(prediction, target.shape, n)
        valid = target < n
        index = n * target[valid].astype(np.int64) + prediction[valid]
        self.matrix += np.bincount(index, minlength=n * n).reshape(n, n)

    @property
    def true_positives(self) -> list[int]:
        """Pixels of each class predicted as that class (the diagonal): TP."""
        return [int(v) for v in np.diag(self.matrix)]

    @property
    def target_pixels(self) -> list[int]:
        """Pixels of each class in the ground truth (row sums): TP + FN."""
        return [int(v) for v in self.matrix.sum(axis=1)]

    @property
    def predicted_pixels(self) -> list[int]:
        """Counted pixels predicted as each class (column sums): TP + FP."""
        return [int(v) for v in self.matrix.sum(axis=0)]

    def iou(self) -> list[Fraction | None]:
        """Per class TP / (TP + FP + FN); None for 0/0."""
        tp, rows, cols = self.true_positives, self.target_pixels, self.predicted_pixels
        return [_ratio(t, r + c - t) for t, r, c in zip(tp, rows, cols, strict=True)]

    def class_accuracy(self) -> list[Fraction | None]:
        """Per class TP / (TP + FN), torchvision's 'average row correct'; None for a class not in the targets."""
        return [_ratio(t, r) for t, r in zip(self.true_positives, self.target_pixels, strict=True)]

    def mean_iou(self) -> Fraction | None:
        """Mean IoU over all classes, background included; None (torchvision: nan) if any is undefined."""
        values = self.iou()
        if any(v is None for v in values):
            return None
        return sum((v for v in values if v is not None), Fraction(0)) / len(values)

    def mean_iou_present(self) -> Fraction | None:
        """Mean IoU over the classes whose IoU is defined (numpy's nanmean of torchvision's values)."""
        values = [v for v in self.iou() if v is not None]
        return sum(values, Fraction(0)) / len(values) if values else None

    def pixel_accuracy(self) -> Fraction | None:
        """trace / sum: the share of counted pixels predicted right (torchvision's 'global correct')."""
        return _ratio(int(np.trace(self.matrix)), int(self.matrix.sum()))


def class_planes(instances: Sequence[tuple[int, BoolArray]], shape: tuple[int, int]) -> dict[int, BoolArray]:
    """Protocol 2's ground truth: per VOC class present, the OR of its instances' masks (no ignore value)."""
    check_instances(instances, shape)
    planes: dict[int, BoolArray] = {}
    for voc, mask in instances:
        plane = planes.get(voc)
        planes[voc] = mask.copy() if plane is None else plane | mask
    return planes


@dataclass(frozen=True)
class ZooImageScore:
    """One image under protocol 2, as counts over the 20 foreground one-hot channels (1..20).

    Attributes:
        intersection: Channel-pixels set in both the prediction and the ground truth.
        union: Channel-pixels set in either.
        agreement: Channel-pixels where prediction and ground truth agree (true negatives included).
        channel_pixels: 20 x height x width.
    """

    image_id: int
    intersection: int
    union: int
    agreement: int
    channel_pixels: int

    @property
    def iou(self) -> Fraction:
        """intersection / union, 1 when the union is empty (the notebook: 'a perfect score')."""
        return Fraction(self.intersection, self.union) if self.union else Fraction(1)

    @property
    def pixel_accuracy(self) -> Fraction:
        """agreement / channel_pixels: the notebook's `pixelwise_accuracy`."""
        return Fraction(self.agreement, self.channel_pixels)


def zoo_image_score(
    instances: Sequence[tuple[int, BoolArray]],
    prediction: U8Array,
    image_id: int = 0,
    num_classes: int = NUM_CLASSES,
) -> ZooImageScore:
    """The notebook's `iou` and `pixelwise_accuracy` of one image, without building 2 x 21 one-hot planes.

    A pixel predicted as class c sets channel c only, so over channels 1..20:
    intersection = sum_c |pred == c and GT_c|, union = |pred in 1..20| + sum_c |GT_c| - intersection,
    disagreement = union - intersection, agreement = 20 * H * W - disagreement.
    """
    shape = (int(prediction.shape[0]), int(prediction.shape[1]))
    _check_prediction(prediction, shape, num_classes)
    planes = class_planes(instances, shape)
    predicted = int(np.count_nonzero(prediction))  # classes 1..20: every non-background pixel
    truth = sum(int(np.count_nonzero(plane)) for plane in planes.values())
    intersection = sum(int(np.count_nonzero(plane & (prediction == voc))) for voc, plane in planes.items())
    union = predicted + truth - intersection
    channel_pixels = (num_classes - 1) * shape[0] * shape[1]
    return ZooImageScore(image_id, intersection, union, channel_pixels - (union - intersection), channel_pixels)


@dataclass
class ZooAccumulator:
    """Protocol 2 over a dataset: per-image IoU and pixel accuracy, each averaged over images."""

    scores: list[ZooImageScore] = field(default_factory=list)

    def update(self, score: ZooImageScore) -> None:
        """Add one image's score."""
        self.scores.append(score)

    @property
    def images(self) -> int:
        """Images scored so far."""
        return len(self.scores)

    def mean_iou(self) -> Fraction | None:
        """The images' IoU averaged, each image weighing the same; None without images."""
        return sum((s.iou for s in self.scores), Fraction(0)) / len(self.scores) if self.scores else None

    def pixel_accuracy(self) -> Fraction | None:
        """The images' pixel accuracy averaged, each image weighing the same; None without images."""
        if not self.scores:
            return None
        return sum((s.pixel_accuracy for s in self.scores), Fraction(0)) / len(self.scores)
