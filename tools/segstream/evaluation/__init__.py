"""segstream.evaluation: mean IoU and pixel accuracy on COCO-format datasets, by two published protocols.

Protocol 1 is torchvision's (references/segmentation), which gives the published 60.5 / 63.7 mean
IoU of fcn-resnet50 / fcn-resnet101: one confusion matrix over every pixel at the inference size,
pixels under two or more instances ignored. Protocol 2 is the ONNX model zoo's validation notebook:
per-image IoU pooled over the 20 foreground classes at the images' own resolution, averaged over
the images with a VOC-class instance. docs/evaluation.md says how each was matched.

Example:
    >>> from segstream.evaluation import load_dataset, evaluate_torchvision, EnginePredictor
    >>> samples = load_dataset(Path("instances_val2017.json"), Path("val2017"))  # doctest: +SKIP
    >>> result = evaluate_torchvision(samples, EnginePredictor.load(Path("m.onnx"), 520))  # doctest: +SKIP
    >>> float(result.mean_iou())  # doctest: +SKIP
    0.605

Any object with `predict(rgb, resolution) -> labels` (the `Predictor` protocol) can stand in for a model.
"""

from __future__ import annotations

from segstream.evaluation._coco import (
    COCO_TO_VOC,
    NUM_CLASSES,
    VOC_TO_COCO,
    DatasetError,
    Instance,
    Sample,
    check_dataset,
    instance_mask,
    instance_masks,
    load_dataset,
    read_rgb,
)
from segstream.evaluation._evaluate import TorchvisionResult, ZooResult, evaluate_torchvision, evaluate_zoo
from segstream.evaluation._metrics import (
    IGNORE,
    ConfusionMatrix,
    ZooAccumulator,
    ZooImageScore,
    class_planes,
    resize_target,
    semantic_target,
    zoo_image_score,
)
from segstream.evaluation._predictors import (
    EnginePredictor,
    ModelDescription,
    PredictionError,
    Predictor,
    Resolution,
    ServerPredictor,
    StreamingPredictor,
    predict_all,
)
from segstream.evaluation._report import Report, format_text, to_json

__all__ = [
    "COCO_TO_VOC",
    "IGNORE",
    "NUM_CLASSES",
    "VOC_TO_COCO",
    "ConfusionMatrix",
    "DatasetError",
    "EnginePredictor",
    "Instance",
    "ModelDescription",
    "PredictionError",
    "Predictor",
    "Report",
    "Resolution",
    "Sample",
    "ServerPredictor",
    "StreamingPredictor",
    "TorchvisionResult",
    "ZooAccumulator",
    "ZooImageScore",
    "ZooResult",
    "check_dataset",
    "class_planes",
    "evaluate_torchvision",
    "evaluate_zoo",
    "format_text",
    "instance_mask",
    "instance_masks",
    "load_dataset",
    "predict_all",
    "read_rgb",
    "resize_target",
    "semantic_target",
    "to_json",
    "zoo_image_score",
]
