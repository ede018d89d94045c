"""Re-exporting the real models from torchvision, for machines that have PyTorch and network access."""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from segstream.models.build import INPUT_NAME, OUTPUT_NAMES
from segstream.models.catalog import ModelFile, get_model
from segstream.models.classes import set_class_metadata, voc_classes

# The exporter traces at this size; height and width are declared dynamic afterwards.
_TRACE_SIZE = 520


class ExportError(RuntimeError):
    """The torchvision export could not run or produced an unusable file."""


def _import(module: str, model: ModelFile) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(
            f"exporting {model.name} needs PyTorch and torchvision ({exc}): "
            f"pip install torch torchvision; the export also needs network access to download "
            f"{model.torchvision_weights_url}"
        ) from None


def export_torchvision(name: str | ModelFile, out_path: str | os.PathLike[str], opset: int = 11) -> Path:
    """Export torchvision's pretrained FCN as ONNX with input `input` and outputs `out`, `aux`
    (batch, height and width dynamic), like the published model zoo files, plus the Pascal VOC class
    names and palette in its metadata.

    The weights are downloaded from download.pytorch.org into torch's cache on first use.
    """
    model = get_model(name) if isinstance(name, str) else name
    if model.torchvision_builder is None or model.torchvision_weights is None:
        raise ExportError(f"{model.name} has no torchvision counterpart to export")
    torch = _import("torch", model)
    tv_models = _import("torchvision.models", model)

    try:
        weights = tv_models.get_weight(model.torchvision_weights)
        net = tv_models.get_model(model.torchvision_builder, weights=weights, aux_loss=True).eval()
    except OSError as exc:  # urllib's URLError included: the weight download failed
        raise ExportError(
            f"could not load the {model.name} weights from {model.torchvision_weights_url}: {exc}"
        ) from exc

    class _Heads(torch.nn.Module):  # type: ignore[misc,name-defined]
        """torchvision's FCN returns a dict; the ONNX contract wants two named outputs."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> tuple[Any, Any]:
            result = self.inner(x)
            return result["out"], result["aux"]

    dynamic = {0: "batch", 2: "height", 3: "width"}
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": list(OUTPUT_NAMES),
        "dynamic_axes": dict.fromkeys((INPUT_NAME, *OUTPUT_NAMES), dynamic),
        "opset_version": opset,
        "do_constant_folding": True,
    }
    # PyTorch 2.9 made the dynamo exporter the default; it cannot emit opset 11, the traced
    # (TorchScript) exporter that produced the zoo files can.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with torch.no_grad():
            dummy = torch.randn(1, 3, _TRACE_SIZE, _TRACE_SIZE)
            torch.onnx.export(_Heads(net), (dummy,), str(tmp), **kwargs)
        exported = onnx.load(str(tmp))
        onnx.checker.check_model(exported)
        names = [o.name for o in exported.graph.output]
        if names != list(OUTPUT_NAMES):
            raise ExportError(f"export produced outputs {names}, expected {list(OUTPUT_NAMES)}")
        # The file names its classes itself, as segstream-server reads them (segstream.models.classes).
        set_class_metadata(exported, voc_classes())
        onnx.save(exported, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
