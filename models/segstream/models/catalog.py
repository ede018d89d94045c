"""The published FCN-ResNet ONNX files: identity, checksums and where they can be downloaded."""

from __future__ import annotations

from dataclasses import dataclass

# The onnx/models repository keeps the files in Git LFS; it announced that LFS downloads stop on
# 1 July 2025 and that the zoo moves to the `onnxmodelzoo` organisation on the Hugging Face hub, so
# every model lists both homes and fetch tries them in order.
_ZOO_FOLDER = "validated/vision/object_detection_segmentation/fcn/model"
TORCHVISION_WEIGHTS_BASE = "https://download.pytorch.org/models"


class UnknownModelError(ValueError):
    """A model name that is not in the catalog."""


@dataclass(frozen=True)
class ModelFile:
    """One downloadable model file and what it must hash to.

    Only name, file_name, size and sha256 matter to fetch; tests and mirrors can build their own
    entries. `arch` names the synthetic stand-in that `segstream-models build` can make offline.
    """

    name: str
    file_name: str
    size: int
    sha256: str
    sources: tuple[str, ...] = ()
    license: str = "MIT"
    arch: str | None = None
    torchvision_builder: str | None = None
    torchvision_weights: str | None = None
    torchvision_weights_file: str | None = None

    @property
    def torchvision_weights_url(self) -> str | None:
        """Where torchvision publishes the PyTorch weights this file was exported from, if known."""
        if self.torchvision_weights_file is None:
            return None
        return f"{TORCHVISION_WEIGHTS_BASE}/{self.torchvision_weights_file}"


def zoo_sources(file_name: str) -> tuple[str, ...]:
    """Known download URLs of an ONNX model zoo file, most authoritative first."""
    stem = file_name.removesuffix(".onnx")
    return (
        # github.com/.../raw/ answers with a redirect to the LFS media host; the media URL is
        # listed as well in case the redirecting host is the one that is blocked or failing.
        f"https://github.com/onnx/models/raw/main/{_ZOO_FOLDER}/{file_name}",
        f"https://media.githubusercontent.com/media/onnx/models/main/{_ZOO_FOLDER}/{file_name}",
        # The hub copy of the whole zoo keeps the repository's folder layout.
        f"https://huggingface.co/onnxmodelzoo/legacy_models/resolve/main/{_ZOO_FOLDER}/{file_name}",
        # Per-model repositories the organisation publishes for some files.
        f"https://huggingface.co/onnxmodelzoo/{stem}/resolve/main/{file_name}",
    )


MODELS: dict[str, ModelFile] = {
    "fcn-resnet50": ModelFile(
        name="fcn-resnet50",
        file_name="fcn-resnet50-11.onnx",
        size=141_193_553,
        sha256="8abd3ae6c258e6fd210d8fb296261ea5c0603c6cc2f568db6097f6fbaaeff0d5",
        sources=zoo_sources("fcn-resnet50-11.onnx"),
        arch="resnet50",
        torchvision_builder="fcn_resnet50",
        torchvision_weights="FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
        torchvision_weights_file="fcn_resnet50_coco-1167a1af.pth",
    ),
    "fcn-resnet101": ModelFile(
        name="fcn-resnet101",
        file_name="fcn-resnet101-11.onnx",
        size=217_069_155,
        sha256="fd63d026cf4b2e54ef2bffb766914ddbffef9bd7a67eba0e67dbf1514bcf539d",
        sources=zoo_sources("fcn-resnet101-11.onnx"),
        arch="resnet101",
        torchvision_builder="fcn_resnet101",
        torchvision_weights="FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
        torchvision_weights_file="fcn_resnet101_coco-7ecb50ca.pth",
    ),
}


def get_model(name: str) -> ModelFile:
    """The catalog entry called `name`; UnknownModelError lists the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def find_by_sha256(sha256: str) -> ModelFile | None:
    """The catalog entry whose published file has this checksum, if any."""
    return next((m for m in MODELS.values() if m.sha256 == sha256.lower()), None)
