"""Results as a printed summary with a per-class table, or as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from segstream.evaluation._evaluate import TorchvisionResult, ZooResult
from segstream.evaluation._predictors import ModelDescription
from segstream.wire.palette import VOC_CLASSES


@dataclass(frozen=True)
class Report:
    """Everything one run found, for `format_text` and `to_json`."""

    model: ModelDescription
    torchvision: TorchvisionResult | None = None
    torchvision_size: int = 520
    zoo: ZooResult | None = None
    warnings: tuple[str, ...] = ()


def _number(value: Fraction | None) -> float | None:
    return None if value is None else float(value)


def _percent(value: Fraction | None, width: int = 0) -> str:
    return f"{'nan':>{width}}" if value is None else f"{100 * float(value):{width}.2f}"


def _share(value: Fraction | None) -> str:
    """A summary figure as a percentage with its sign, "60.50%"; nan when undefined."""
    return "nan" if value is None else f"{_percent(value)}%"


def _class_name(index: int) -> str:
    return VOC_CLASSES[index] if index < len(VOC_CLASSES) else f"class {index}"


def format_text(report: Report) -> str:
    """The human-readable report: the model, then the figures of each protocol that ran."""
    model = report.model
    lines = [f"model {model.name} (head {model.head}) via {model.source} on {model.provider}"]
    if model.synthetic:
        lines.append("SYNTHETIC WEIGHTS: the figures below are meaningless")
    if report.torchvision is not None:
        lines += ["", *_torchvision_lines(report.torchvision, report.torchvision_size)]
    if report.zoo is not None:
        lines += ["", *_zoo_lines(report.zoo)]
    return "\n".join(lines) + "\n"


def _torchvision_lines(result: TorchvisionResult, size: int) -> list[str]:
    matrix = result.matrix
    resize = f"short side {size}" if size else "no resize"
    lines = [
        f"Protocol 1, torchvision: one confusion matrix over all pixels ({resize}, overlaps ignored)",
        f"  images            {result.images}",
    ]
    mean = matrix.mean_iou()
    iou = matrix.iou()
    if mean is None:
        present = sum(v is not None for v in iou)
        lines += [
            f"  mean IoU          nan (as torchvision reports it: {len(iou) - present} of {len(iou)} classes are "
            "in neither ground truth nor predictions)",
            f"  mean IoU, present {_share(matrix.mean_iou_present())} (over the other {present} classes)",
        ]
    else:
        lines.append(f"  mean IoU          {_share(mean)}")
    lines += [f"  pixel accuracy    {_share(matrix.pixel_accuracy())}", ""]
    lines.append(f"  {'class':<16}{'IoU %':>8}{'acc %':>8}{'truth px':>14}{'predicted px':>14}")
    rows = zip(iou, matrix.class_accuracy(), matrix.target_pixels, matrix.predicted_pixels, strict=True)
    for index, (class_iou, accuracy, truth, predicted) in enumerate(rows):
        lines.append(
            f"  {_class_name(index):<16}{_percent(class_iou, 8)}{_percent(accuracy, 8)}{truth:>14}{predicted:>14}"
        )
    return lines


def _zoo_lines(result: ZooResult) -> list[str]:
    return [
        "Protocol 2, ONNX model zoo notebook: per-image IoU pooled over the 20 foreground classes (no resize)",
        f"  images            {result.images} ({result.skipped} without a VOC instance skipped)",
        f"  mean IoU          {_share(result.mean_iou())}",
        f"  pixel accuracy    {_share(result.pixel_accuracy())} (true negatives of all 20 class channels count)",
    ]


def to_json(report: Report) -> dict[str, Any]:
    """Plain JSON values; IoU and accuracy as fractions of 1 (0.605, where the text shows 60.50%) in floats,
    undefined ones (torchvision's nan) as null; docs/evaluation.md lists every field."""
    out: dict[str, Any] = {
        "model": asdict(report.model),
        "synthetic": report.model.synthetic,
        "warnings": list(report.warnings),
    }
    if report.torchvision is not None:
        matrix = report.torchvision.matrix
        ious, accuracies = matrix.iou(), matrix.class_accuracy()
        tps, truths, predicted = matrix.true_positives, matrix.target_pixels, matrix.predicted_pixels
        out["torchvision"] = {
            "images": report.torchvision.images,
            "size": report.torchvision_size,
            "mean_iou": _number(matrix.mean_iou()),
            "mean_iou_present_classes": _number(matrix.mean_iou_present()),
            "pixel_accuracy": _number(matrix.pixel_accuracy()),
            "classes": [
                {
                    "index": index,
                    "name": _class_name(index),
                    "iou": _number(ious[index]),
                    "accuracy": _number(accuracies[index]),
                    "true_positives": tps[index],
                    "target_pixels": truths[index],
                    "predicted_pixels": predicted[index],
                }
                for index in range(matrix.num_classes)
            ],
            "confusion_matrix": matrix.matrix.tolist(),
        }
    if report.zoo is not None:
        out["zoo"] = {
            "images": report.zoo.images,
            "skipped_images": report.zoo.skipped,
            "mean_iou": _number(report.zoo.mean_iou()),
            "pixel_accuracy": _number(report.zoo.pixel_accuracy()),
            "per_image": [
                {
                    "image_id": score.image_id,
                    "iou": float(score.iou),
                    "pixel_accuracy": float(score.pixel_accuracy),
                    "intersection": score.intersection,
                    "union": score.union,
                }
                for score in report.zoo.accumulator.scores
            ],
        }
    return out
