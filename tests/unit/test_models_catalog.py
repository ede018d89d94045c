"""The catalog of published models: checksums and sources as MODEL.md gives them."""

from __future__ import annotations

import pytest

from segstream.models.catalog import MODELS, UnknownModelError, find_by_sha256, get_model

ZOO_PATH = "validated/vision/object_detection_segmentation/fcn/model"


@pytest.mark.parametrize(
    ("name", "file_name", "size", "sha256", "weights"),
    [
        (
            "fcn-resnet50",
            "fcn-resnet50-11.onnx",
            141_193_553,
            "8abd3ae6c258e6fd210d8fb296261ea5c0603c6cc2f568db6097f6fbaaeff0d5",
            "fcn_resnet50_coco-1167a1af.pth",
        ),
        (
            "fcn-resnet101",
            "fcn-resnet101-11.onnx",
            217_069_155,
            "fd63d026cf4b2e54ef2bffb766914ddbffef9bd7a67eba0e67dbf1514bcf539d",
            "fcn_resnet101_coco-7ecb50ca.pth",
        ),
    ],
)
def test_published_models(name: str, file_name: str, size: int, sha256: str, weights: str) -> None:
    model = get_model(name)
    assert (model.name, model.file_name, model.size, model.sha256) == (name, file_name, size, sha256)
    assert model.license == "MIT"
    assert model.torchvision_weights_file == weights
    assert model.torchvision_weights_url == f"https://download.pytorch.org/models/{weights}"
    assert find_by_sha256(sha256.upper()) is model


def test_sources_try_github_then_the_hub() -> None:
    sources = MODELS["fcn-resnet50"].sources
    assert sources[0] == f"https://github.com/onnx/models/raw/main/{ZOO_PATH}/fcn-resnet50-11.onnx"
    assert sources[1] == f"https://media.githubusercontent.com/media/onnx/models/main/{ZOO_PATH}/fcn-resnet50-11.onnx"
    hub = [s for s in sources if s.startswith("https://huggingface.co/onnxmodelzoo/")]
    assert hub and all("/resolve/main/" in s and s.endswith("/fcn-resnet50-11.onnx") for s in hub)
    assert sources.index(hub[0]) > 1
    assert all(m.file_name in s for m in MODELS.values() for s in m.sources)


def test_unknown_name() -> None:
    with pytest.raises(UnknownModelError, match="fcn-resnet50, fcn-resnet101"):
        get_model("fcn-resnet152")
    assert find_by_sha256("0" * 64) is None
