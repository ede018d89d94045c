"""GPU options without a GPU: provider option building, shape buckets, flags, fp16 graphs on the CPU."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from segstream.models.build import build_fcn
from segstream.models.serving import serving_graph
from segstream.server.buckets import format_buckets, parse_buckets
from segstream.server.cli import build_parser, config_from_args, main
from segstream.server.config import ModelSpec
from segstream.server.engine import BatchResult
from segstream.server.gpu_options import (
    CPU,
    CUDA,
    TENSORRT,
    GpuOptions,
    build_provider_list,
    cuda_provider_options,
    parse_bytes,
    session_count,
    tensorrt_provider_options,
    trt_profile_shapes,
)
from segstream.server.ort_model import OrtModel
from segstream.server.preprocess import inference_shape, snap_to_bucket
from segstream.server.providers import nvidia_gpu_present

BUCKETS = ((520, 693), (693, 520), (520, 520))


# --- provider options -------------------------------------------------------------------------


def test_cuda_options_default_to_exhaustive_search_and_tf32() -> None:
    assert cuda_provider_options(GpuOptions()) == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "use_tf32": "1",
        "arena_extend_strategy": "kNextPowerOfTwo",
    }


def test_cuda_options_follow_every_flag() -> None:
    gpu = GpuOptions(
        device_id=1,
        conv_search="heuristic",
        tf32=False,
        mem_limit=8 << 30,
        arena_extend="same-as-requested",
        cuda_graph=True,
    )
    assert cuda_provider_options(gpu) == {
        "device_id": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "0",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": str(8 << 30),
        "enable_cuda_graph": "1",
    }
    assert cuda_provider_options(GpuOptions(conv_search="default"))["cudnn_conv_algo_search"] == "DEFAULT"


def test_tensorrt_options_cache_fp16_and_profiles(tmp_path: Path) -> None:
    assert tensorrt_provider_options(GpuOptions()) == {"device_id": "0", "trt_fp16_enable": "0"}
    # --fp16 means float16 engines on TensorRT too.
    assert tensorrt_provider_options(GpuOptions(fp16=True))["trt_fp16_enable"] == "1"
    options = tensorrt_provider_options(
        GpuOptions(device_id=2, trt_fp16=True, trt_cache_dir=tmp_path), max_batch=8, buckets=BUCKETS
    )
    assert options == {
        "device_id": "2",
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(tmp_path),
        **trt_profile_shapes(BUCKETS, 8),
    }


def test_one_trt_profile_spans_every_bucket_and_batch() -> None:
    assert trt_profile_shapes(BUCKETS, 8) == {
        "trt_profile_min_shapes": "frames:1x520x520x3,input:1x3x520x520",
        "trt_profile_opt_shapes": "frames:8x520x693x3,input:8x3x520x693",
        "trt_profile_max_shapes": "frames:8x693x693x3,input:8x3x693x693",
    }
    assert trt_profile_shapes([(720, 1280)])["trt_profile_min_shapes"] == "frames:1x720x1280x3,input:1x3x720x1280"
    with pytest.raises(ValueError, match="at least one bucket"):
        trt_profile_shapes([])


def test_provider_lists_per_device() -> None:
    gpu = GpuOptions()
    assert build_provider_list("cpu", gpu, buckets=BUCKETS) == [CPU]
    assert build_provider_list("cuda", gpu, buckets=BUCKETS) == [(CUDA, cuda_provider_options(gpu)), CPU]
    assert build_provider_list("tensorrt", gpu, 4, BUCKETS) == [
        (TENSORRT, tensorrt_provider_options(gpu, 4, BUCKETS)),
        (CUDA, cuda_provider_options(gpu)),
        CPU,
    ]
    with pytest.raises(ValueError, match="unknown device"):
        build_provider_list("tpu", gpu)


@pytest.mark.parametrize(
    ("provider", "gpu", "workers", "expected"),
    [
        (CPU, GpuOptions(), 0, 1),
        (CPU, GpuOptions(sessions_per_head=4), 4, 1),  # one CPU session already uses every core
        (CUDA, GpuOptions(), 0, 1),
        (CUDA, GpuOptions(), 4, 1),  # the CUDA provider runs sessions concurrently
        (CUDA, GpuOptions(cuda_graph=True), 0, 2),
        (CUDA, GpuOptions(cuda_graph=True), 3, 3),
        (TENSORRT, GpuOptions(), 0, 2),
        (TENSORRT, GpuOptions(), 5, 5),
        (TENSORRT, GpuOptions(sessions_per_head=1), 5, 1),
        (CUDA, GpuOptions(sessions_per_head=3), 0, 3),
    ],
)
def test_sessions_per_head(provider: str, gpu: GpuOptions, workers: int, expected: int) -> None:
    assert session_count(provider, gpu, workers) == expected


# --- parsing and buckets ----------------------------------------------------------------------


def test_parse_buckets_and_bytes() -> None:
    assert parse_buckets("") == ()
    assert parse_buckets("520x693, 693X520 ,520x520") == BUCKETS
    assert parse_buckets(format_buckets(BUCKETS)) == BUCKETS and format_buckets(()) == ""
    for bad, message in (("520", "not HEIGHTxWIDTH"), ("4x4", "between 8 and 4096"), ("64x64,64x64", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_buckets(bad)
    assert [parse_bytes(t) for t in ("0", "", "1024", "64K", "512M", "8G", "8GiB", "1T")] == [
        0,
        0,
        1024,
        64 << 10,
        512 << 20,
        8 << 30,
        8 << 30,
        1 << 40,
    ]
    with pytest.raises(ValueError, match="number of bytes"):
        parse_bytes("lots")


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (480, 640, (520, 693)),  # 4:3 landscape
        (720, 1280, (520, 693)),  # 16:9 is still closest to the landscape bucket
        (640, 480, (693, 520)),  # portrait
        (1080, 1080, (520, 520)),
        (500, 530, (520, 520)),  # nearly square
    ],
)
def test_frames_snap_to_the_bucket_of_closest_aspect(height: int, width: int, expected: tuple[int, int]) -> None:
    assert snap_to_bucket(height, width, 520, BUCKETS) == expected


def test_without_buckets_the_short_side_is_resized_and_ties_go_by_area() -> None:
    assert snap_to_bucket(480, 640, 520, ()) == inference_shape(480, 640, 520) == (520, 693)
    assert snap_to_bucket(480, 640, 0, ()) == (480, 640)
    # Same aspect ratio: the bucket closest in area to the short-side resize wins, in any order.
    assert snap_to_bucket(1080, 1920, 360, [(720, 1280), (360, 640)]) == (360, 640)
    assert snap_to_bucket(1080, 1920, 720, [(360, 640), (720, 1280)]) == (720, 1280)


# --- flags ------------------------------------------------------------------------------------


def test_flags_reach_the_config(tiny_model: Path, tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--model",
            str(tiny_model),
            "--device",
            "tensorrt",
            "--gpu",
            "1",
            "--cuda-conv-search",
            "heuristic",
            "--no-tf32",
            "--gpu-mem-limit",
            "6G",
            "--arena-extend-strategy",
            "same-as-requested",
            "--buckets",
            "520x693,693x520",
            "--trt-fp16",
            "--trt-cache-dir",
            str(tmp_path / "trt"),
            "--sessions-per-head",
            "3",
        ]
    )
    config = config_from_args(args)
    assert config.gpu == GpuOptions(
        device_id=1,
        conv_search="heuristic",
        tf32=False,
        mem_limit=6 << 30,
        arena_extend="same-as-requested",
        trt_fp16=True,
        trt_cache_dir=tmp_path / "trt",
        sessions_per_head=3,
    )
    # A server setting: on the CPU too the buckets are the inference shapes.
    assert config.buckets == ((520, 693), (693, 520))
    cuda = config_from_args(
        build_parser().parse_args(
            ["--model", str(tiny_model), "--device", "cuda", "--fp16", "--cuda-graph", "--buckets", "64x64"]
        )
    )
    assert (cuda.gpu, cuda.buckets) == (GpuOptions(fp16=True, cuda_graph=True), ((64, 64),))
    defaults = config_from_args(build_parser().parse_args(["--model", str(tiny_model)]))
    assert (defaults.gpu, defaults.buckets) == (GpuOptions(), ())


def test_flags_default_from_the_environment(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSTREAM_BUCKETS", "520x693,693x520")
    monkeypatch.setenv("SEGSTREAM_TF32", "0")
    monkeypatch.setenv("SEGSTREAM_GPU_MEM_LIMIT", "2G")
    monkeypatch.setenv("SEGSTREAM_FP16", "true")
    config = config_from_args(build_parser().parse_args(["--model", str(tiny_model), "--device", "cuda"]))
    gpu = config.gpu
    assert (config.buckets, gpu.tf32, gpu.mem_limit, gpu.fp16) == (((520, 693), (693, 520)), False, 2 << 30, True)
    # The command line still wins.
    config = config_from_args(build_parser().parse_args(["--model", str(tiny_model), "--tf32", "--buckets", ""]))
    assert config.gpu.tf32 and config.buckets == ()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--buckets", "520"], "argument --buckets: --buckets '520': '520' is not HEIGHTxWIDTH"),
        (["--buckets", "4x4"], "each side must be between 8 and 4096"),
        (["--buckets", "64x64,64x64"], "64x64 is listed twice"),
        (["--gpu-mem-limit", "lots"], "expected a number of bytes"),
        (["--cuda-conv-search", "fast"], "invalid choice"),
        (["--gpu", "99"], "--gpu 99: must be between 0 and 63"),
        (["--sessions-per-head", "-1"], "--sessions-per-head -1: must be between 0 and 64"),
        (["--device", "cuda", "--cuda-graph"], "--cuda-graph needs --buckets"),
        (["--device", "cpu", "--cuda-graph", "--buckets", "64x64"], "--cuda-graph needs --device cuda"),
        (["--device", "tensorrt", "--cuda-graph", "--buckets", "64x64"], "--cuda-graph needs --device cuda"),
        (["--device", "cuda", "--trt-fp16"], "--trt-fp16 applies to --device tensorrt only"),
        (["--device", "auto", "--trt-cache-dir", "/tmp/x"], "--trt-cache-dir applies to --device tensorrt only"),
        (["--device", "cpu", "--fp16"], "--fp16 needs a GPU"),
    ],
)
def test_bad_gpu_flags_are_one_line(
    argv: list[str], message: str, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--model", str(tiny_model), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_trt_cache_dir_must_not_be_a_file(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "engines"
    file.write_text("")
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_model), "--device", "tensorrt", "--trt-cache-dir", str(file)])
    assert "exists and is not a directory" in capsys.readouterr().err


# --- the engine on the CPU --------------------------------------------------------------------


def _copy(result: BatchResult) -> BatchResult:
    return BatchResult(result.labels.copy(), result.confidence.copy())


def test_cpu_keeps_one_session_and_binds_host_memory(tiny_model: Path) -> None:
    model = OrtModel(ModelSpec("tiny", tiny_model), device="cpu", threads=1, gpu=GpuOptions(sessions_per_head=4))
    assert model.provider == CPU and model.sessions_per_head == 1 and not model.cuda_graphs
    frame = np.full((64, 96, 3), 100, np.uint8)
    assert model.frames_devices() == set()
    first = _copy(model.run("out", [frame], (48, 72)))
    assert first.labels.shape == (1, 48, 72)
    assert model.frames_devices() == {"cpu"}


def test_fp16_on_auto_without_gpu_serves_float32(tiny_model: Path) -> None:
    if nvidia_gpu_present():
        pytest.skip("this machine has an NVIDIA GPU: auto may pick CUDA")
    model = OrtModel(ModelSpec("tiny", tiny_model), device="auto", threads=1, gpu=GpuOptions(fp16=True))
    assert model.provider == CPU and not model.float16


# --- float16 graphs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def float16_fcn() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    pytest.importorskip("onnxconverter_common", reason="the float16 variant needs onnxconverter-common")
    from segstream.models.fp16 import fcn_to_float16

    model = build_fcn("tiny", seed=0)
    return model, fcn_to_float16(model)


def test_fp16_graph_keeps_float32_io_and_postprocessing(float16_fcn: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    _, half = float16_fcn
    assert [(i.name, i.type.tensor_type.elem_type) for i in half.graph.input] == [("input", TensorProto.FLOAT)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in half.graph.output] == [
        ("out", TensorProto.FLOAT),
        ("aux", TensorProto.FLOAT),
    ]
    conv_weights = {n.input[1] for n in half.graph.node if n.op_type == "Conv"}
    assert {t.data_type for t in half.graph.initializer if t.name in conv_weights} == {TensorProto.FLOAT16}
    serving = onnx.shape_inference.infer_shapes(serving_graph(half, "out"))
    types = {v.name: v.type.tensor_type.elem_type for v in [*serving.graph.value_info, *serving.graph.output]}
    post = [n for n in serving.graph.node if n.op_type in ("ReduceMax", "ReduceMean", "ArgMax")]
    resize_to_output = [n for n in serving.graph.node if n.op_type == "Resize" and n.input[0] == "out"]
    assert len(post) == 3 and len(resize_to_output) == 1
    for node in [*post, *resize_to_output]:
        assert types[node.input[0]] in (TensorProto.FLOAT, TensorProto.INT64), node


def test_fp16_labels_agree_with_fp32_on_the_cpu(
    float16_fcn: tuple[onnx.ModelProto, onnx.ModelProto], sample_bgr: npt.NDArray[np.uint8]
) -> None:
    model, half = float16_fcn
    rgb = cv2.cvtColor(sample_bgr, cv2.COLOR_BGR2RGB)
    frames = np.stack([cv2.resize(rgb, (128, 96)), np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8)])
    feed = {"frames": frames, "output_size": np.array([96, 128], np.int64)}
    for head in ("out", "aux"):
        full, reduced = (
            ort.InferenceSession(serving_graph(m, head).SerializeToString(), providers=[CPU]).run(None, feed)
            for m in (model, half)
        )
        assert np.mean(full[0] == reduced[0]) >= 0.99
        np.testing.assert_allclose(reduced[1], full[1], rtol=1e-2)
