"""The CUDA and TensorRT paths on a real NVIDIA GPU; skipped, with the reason, where they cannot load.

Run on a GPU machine with `pytest -m gpu tests/gpu` (scripts/bench_gpu.sh does, after installing
onnxruntime-gpu's CUDA libraries).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest

from segstream.models.build import build_fcn
from segstream.server.config import Device, ModelSpec
from segstream.server.engine import BatchResult, EngineError, U8Array
from segstream.server.gpu_options import CUDA, TENSORRT, GpuOptions
from segstream.server.ort_model import OrtModel
from segstream.server.providers import nvidia_gpu_present

pytestmark = pytest.mark.gpu

SHAPE = (96, 128)  # inference shape of the test frames (height, width)


def _load(
    spec: ModelSpec, device: Device, gpu: GpuOptions | None = None, buckets: tuple[tuple[int, int], ...] = ()
) -> OrtModel:
    if not nvidia_gpu_present():
        pytest.skip("no NVIDIA driver on this machine (/proc/driver/nvidia/version is missing)")
    try:
        return OrtModel(spec, device=device, gpu=gpu, buckets=buckets)
    except EngineError as exc:
        pytest.skip(f"{device} cannot load here: {exc}")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = tmp_path_factory.mktemp("gpu-models") / "tiny.onnx"
    onnx.save(build_fcn("tiny", seed=0), str(path))
    return ModelSpec("tiny", path)


@pytest.fixture(scope="module")
def cuda_model(spec: ModelSpec) -> OrtModel:
    return _load(spec, "cuda")


@pytest.fixture(scope="module")
def frames(sample_bgr: npt.NDArray[np.uint8]) -> list[U8Array]:
    rgb = cv2.cvtColor(sample_bgr, cv2.COLOR_BGR2RGB)
    noise = np.random.default_rng(0).integers(0, 256, (*SHAPE, 3), np.uint8)
    return [np.asarray(cv2.resize(rgb, SHAPE[::-1]), np.uint8), noise]


def _run(model: OrtModel, frames: Sequence[U8Array], head: str = "out") -> BatchResult:
    result = model.run(head, frames, (480, 640))
    return BatchResult(result.labels.copy(), result.confidence.copy())


def test_cuda_really_runs_on_cuda(cuda_model: OrtModel) -> None:
    # OrtModel reads the provider back from the session and refuses a CPU fallback for --device cuda.
    assert cuda_model.provider == CUDA


def test_cuda_labels_match_the_cpu(spec: ModelSpec, cuda_model: OrtModel, frames: list[U8Array]) -> None:
    cpu = OrtModel(spec, device="cpu")
    for head in cuda_model.heads:
        on_gpu, on_cpu = _run(cuda_model, frames, head), _run(cpu, frames, head)
        assert np.mean(on_gpu.labels == on_cpu.labels) >= 0.999
        np.testing.assert_allclose(on_gpu.confidence, on_cpu.confidence, rtol=1e-2)


def test_iobinding_inputs_live_on_the_device(cuda_model: OrtModel, frames: list[U8Array]) -> None:
    _run(cuda_model, frames[:1])
    assert cuda_model.frames_devices() == {"cuda"}


def test_fp16_agrees_with_fp32_on_cuda(spec: ModelSpec, cuda_model: OrtModel, frames: list[U8Array]) -> None:
    pytest.importorskip("onnxconverter_common", reason="the float16 variant needs onnxconverter-common")
    half = _load(spec, "cuda", GpuOptions(fp16=True))
    assert half.float16 and half.provider == CUDA
    assert np.mean(_run(half, frames).labels == _run(cuda_model, frames).labels) >= 0.99


def test_cuda_graphs_replay_new_frames(spec: ModelSpec, cuda_model: OrtModel, frames: list[U8Array]) -> None:
    graphs = _load(spec, "cuda", GpuOptions(cuda_graph=True), buckets=(SHAPE,))
    assert graphs.cuda_graphs and graphs.sessions_per_head == 2
    for frame in (frames[0], frames[1], frames[0], frames[1]):  # capture, then replays with new input
        replayed, plain = _run(graphs, [frame]), _run(cuda_model, [frame])
        assert np.mean(replayed.labels == plain.labels) >= 0.999
    assert graphs.frames_devices() == {"cuda"}


def test_tensorrt_with_bucket_profiles(
    spec: ModelSpec, frames: list[U8Array], tmp_path: Path, cuda_model: OrtModel
) -> None:
    trt = _load(spec, "tensorrt", GpuOptions(trt_cache_dir=tmp_path), buckets=(SHAPE, SHAPE[::-1]))
    assert trt.provider == TENSORRT and trt.sessions_per_head == 2
    assert np.mean(_run(trt, frames).labels == _run(cuda_model, frames).labels) >= 0.99
    assert any(tmp_path.iterdir()), "TensorRT wrote no engine cache"
