"""Choosing ONNX Runtime execution providers and checking which one really loaded."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort

from segstream.server.config import Device
from segstream.server.engine import EngineError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ProviderList = list[str | tuple[str, dict[str, Any]]]


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA kernel driver is loaded; without it the CUDA provider cannot load."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def provider_list(device: Device) -> ProviderList:
    """Providers to ask ONNX Runtime for, most preferred first."""
    if device == "auto":
        # onnxruntime-gpu lists CUDA as available even on machines without a GPU; trying it there
        # only fills the log with library errors, so look for the driver first.
        usable = CUDA in ort.get_available_providers() and nvidia_gpu_present()
        device = "cuda" if usable else "cpu"
    if device == "cpu":
        return [CPU]
    _preload_cuda_libraries()
    cuda: tuple[str, dict[str, Any]] = (CUDA, {"cudnn_conv_algo_search": "EXHAUSTIVE"})
    if device == "cuda":
        return [cuda, CPU]
    return [(TENSORRT, {}), cuda, CPU]


def _name(provider: str | tuple[str, dict[str, Any]]) -> str:
    return provider if isinstance(provider, str) else provider[0]


def check_loaded(device: Device, wanted: ProviderList, session: ort.InferenceSession, model: str) -> str:
    """The provider the session really got; raises EngineError if an explicit GPU device did not load."""
    got: str = session.get_providers()[0]
    first = _name(wanted[0])
    if device != "auto" and got != first:
        raise EngineError(
            f"model {model}: --device {device} asked for {first} but ONNX Runtime loaded {got}; "
            "check the NVIDIA driver (>= 580 for CUDA 13), the CUDA/cuDNN libraries and onnxruntime-gpu, "
            "or start with --device cpu"
        )
    if device == "auto" and first != CPU and got == CPU:
        log.warning("model %s: CUDA did not load, running on the CPU", model)
    return got


def _preload_cuda_libraries() -> None:
    # onnxruntime-gpu can load CUDA/cuDNN from the nvidia-* wheels (or PyTorch) when asked to.
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # best effort: the session's own load reports what is missing
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
