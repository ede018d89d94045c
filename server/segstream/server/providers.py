"""Choosing ONNX Runtime execution providers and checking which one really loaded.

The option dicts themselves are built in segstream.server.gpu_options (pure, tested without a GPU).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from segstream.server.buckets import Bucket
from segstream.server.config import Device
from segstream.server.engine import EngineError
from segstream.server.gpu_options import CPU, CUDA, TENSORRT, GpuOptions, ProviderList, build_provider_list

__all__ = ["CPU", "CUDA", "TENSORRT", "ProviderList", "check_loaded", "nvidia_gpu_present", "provider_list"]

log = logging.getLogger(__name__)

_DRIVER = Path("/proc/driver/nvidia/version")

_HINTS = {
    CUDA: "check the NVIDIA driver (>= 580 for CUDA 13), the CUDA/cuDNN libraries "
    "(pip install 'onnxruntime-gpu[cuda,cudnn]') and onnxruntime-gpu, or start with --device cpu",
    TENSORRT: "check that TensorRT's libraries matching onnxruntime-gpu (libnvinfer.so.10, libnvonnxparser.so.10) "
    "are on LD_LIBRARY_PATH next to CUDA/cuDNN, or start with --device cuda",
}


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA kernel driver is loaded; without it the CUDA provider cannot load."""
    return _DRIVER.exists() or Path("/dev/nvidia0").exists()


def provider_list(
    device: Device, gpu: GpuOptions | None = None, max_batch: int = 1, buckets: Sequence[Bucket] = ()
) -> ProviderList:
    """Providers to ask ONNX Runtime for, most preferred first; `buckets` shape TensorRT's profile.

    An explicit cuda or tensorrt device on a machine without the NVIDIA driver fails here with
    one clear line instead of ONNX Runtime's library errors.
    """
    gpu = gpu or GpuOptions()
    if device == "auto":
        # onnxruntime-gpu lists CUDA as available even on machines without a GPU; trying it there
        # only fills the log with library errors, so look for the driver first.
        usable = CUDA in ort.get_available_providers() and nvidia_gpu_present()
        device = "cuda" if usable else "cpu"
    elif device != "cpu" and not nvidia_gpu_present():
        wanted = TENSORRT if device == "tensorrt" else CUDA
        raise EngineError(
            f"--device {device} asked for {wanted} but this machine has no NVIDIA driver "
            f"({_DRIVER} is missing): install the driver, or start with --device cpu"
        )
    if device != "cpu":
        _preload_cuda_libraries()
    return build_provider_list(device, gpu, max_batch, buckets)


def _name(provider: str | tuple[str, object]) -> str:
    return provider if isinstance(provider, str) else provider[0]


def check_loaded(device: Device, wanted: ProviderList, session: ort.InferenceSession, model: str) -> str:
    """The provider the session really got; raises EngineError if an explicit GPU device did not load."""
    got: str = session.get_providers()[0]
    first = _name(wanted[0])
    if device != "auto" and got != first:
        raise EngineError(
            f"model {model}: --device {device} asked for {first} but ONNX Runtime loaded {got}; "
            f"{_HINTS.get(first, 'start with --device cpu')}"
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
