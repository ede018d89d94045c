"""Runs a predictor over a dataset under protocol 1 (torchvision) or 2 (the model zoo notebook)."""

from __future__ import annotations

import sys
from collections.abc import Generator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NoReturn

from tqdm import tqdm

from segstream.evaluation._coco import Sample, instance_masks, read_rgb
from segstream.evaluation._metrics import (
    ConfusionMatrix,
    ZooAccumulator,
    resize_target,
    semantic_target,
    zoo_image_score,
)
from segstream.evaluation._predictors import PredictionError, Predictor, Resolution, predict_all
from segstream.wire.codec import U8Array


@dataclass(frozen=True)
class TorchvisionResult:
    """Protocol 1: one confusion matrix over every pixel of every image, at the inference size."""

    images: int
    matrix: ConfusionMatrix

    def mean_iou(self) -> Fraction | None:
        """Mean IoU over all classes, background included; None when one is in neither targets nor predictions."""
        return self.matrix.mean_iou()

    def pixel_accuracy(self) -> Fraction | None:
        """The share of counted pixels predicted right; None without any."""
        return self.matrix.pixel_accuracy()


@dataclass(frozen=True)
class ZooResult:
    """Protocol 2: per-image pooled IoU and pixel accuracy, averaged over the images with a VOC instance."""

    skipped: int
    accumulator: ZooAccumulator = field(default_factory=ZooAccumulator)

    @property
    def images(self) -> int:
        """Images scored: those with at least one VOC-class instance."""
        return self.accumulator.images

    def mean_iou(self) -> Fraction | None:
        """The per-image IoU averaged over the scored images; None without any."""
        return self.accumulator.mean_iou()

    def pixel_accuracy(self) -> Fraction | None:
        """The per-image pixel accuracy averaged over the scored images; None without any."""
        return self.accumulator.pixel_accuracy()


def _predictions(
    samples: Sequence[Sample], predictor: Predictor, resolution: Resolution, progress: tqdm[NoReturn]
) -> Generator[tuple[Sample, U8Array], None, None]:
    images = (read_rgb(sample) for sample in samples)
    predictions = predict_all(predictor, images, resolution)
    try:
        for sample in samples:
            prediction = next(predictions, None)
            if prediction is None:
                raise PredictionError(f"the predictor stopped before image {sample.image_id}")
            if prediction.ndim != 2:
                raise PredictionError(f"image {sample.image_id}: prediction of shape {prediction.shape} is not HxW")
            yield sample, prediction
            progress.update()
    finally:
        close = getattr(predictions, "close", None)
        if close is not None:
            close()


def _bar(total: int, label: str, progress: bool) -> tqdm[NoReturn]:
    return tqdm(total=total, desc=label, unit="image", disable=not progress, file=sys.stderr, dynamic_ncols=True)


def evaluate_torchvision(
    samples: Sequence[Sample], predictor: Predictor, *, progress: bool = False
) -> TorchvisionResult:
    """Protocol 1 over every sample: the predictor answers at its inference size ("inference"),
    the ground truth is resized to that size by nearest neighbour and compared pixel by pixel."""
    matrix = ConfusionMatrix()
    with (
        _bar(len(samples), "protocol 1 (torchvision)", progress) as bar,
        closing(_predictions(samples, predictor, "inference", bar)) as pairs,
    ):
        for sample, prediction in pairs:
            target = semantic_target(instance_masks(sample), (sample.height, sample.width))
            matrix.update(resize_target(target, (prediction.shape[0], prediction.shape[1])), prediction)
            accuracy = matrix.pixel_accuracy()
            if accuracy is not None:
                bar.set_postfix_str(f"pixel acc {100 * float(accuracy):.1f}%", refresh=False)
    return TorchvisionResult(len(samples), matrix)


def evaluate_zoo(samples: Sequence[Sample], predictor: Predictor, *, progress: bool = False) -> ZooResult:
    """Protocol 2 over the samples with at least one VOC-class instance, at their own resolution ("frame")."""
    kept = [s for s in samples if s.has_voc_instance]
    result = ZooResult(skipped=len(samples) - len(kept))
    running = 0.0
    with (
        _bar(len(kept), "protocol 2 (model zoo)", progress) as bar,
        closing(_predictions(kept, predictor, "frame", bar)) as pairs,
    ):
        for sample, prediction in pairs:
            if prediction.shape != (sample.height, sample.width):
                raise PredictionError(
                    f"image {sample.image_id}: prediction is {prediction.shape[1]}x{prediction.shape[0]}, "
                    f"the image {sample.width}x{sample.height}: protocol 2 compares at the image's own size"
                )
            score = zoo_image_score(instance_masks(sample), prediction, sample.image_id)
            result.accumulator.update(score)
            running += float(score.iou)
            bar.set_postfix_str(f"mean IoU {100 * running / result.images:.1f}%", refresh=False)
    return result
