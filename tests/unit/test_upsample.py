"""Host upsampling of label maps against ONNX Runtime's Resize(linear, half_pixel) + ArgMax, the old in-graph path."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from segstream.models.serving import CONFIDENCE, FRAMES, LABELS, LOGITS, OUTPUT_SIZE, serving_graph
from segstream.server import label_kernel, upsample
from segstream.server.config import ModelSpec
from segstream.server.ort_model import OrtModel
from segstream.server.preprocess import inference_shape, resize_rgb
from tests.conftest import SAMPLES

F32Array = npt.NDArray[np.float32]
U8Array = npt.NDArray[np.uint8]

# Labels may differ from ONNX Runtime's only where two classes' interpolated logits are float near-ties.
MIN_EQUAL = 0.99999


@pytest.fixture(scope="module")
def resize_argmax() -> ort.InferenceSession:
    """ONNX Runtime's own Resize(linear, half_pixel) + ArgMax on [1, C, h, w] logits: the old graph's tail."""
    nodes = [
        helper.make_node(
            "Resize",
            ["logits", "empty", "empty", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("ArgMax", ["resized"], ["labels"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "resize_argmax",
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "c", "h", "w"]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        ],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, [1, "H", "W"])],
        [numpy_helper.from_array(np.zeros(0, np.float32), "empty")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference(session: ort.InferenceSession, logits: F32Array, out: tuple[int, int]) -> U8Array:
    sizes = np.array([1, logits.shape[0], *out], np.int64)
    labels = session.run(None, {"logits": logits[None], "sizes": sizes})[0]
    return np.asarray(labels[0], np.uint8)


def _host(logits: F32Array, out: tuple[int, int]) -> U8Array:
    return upsample.upsample_labels(logits.argmax(0).astype(np.uint8), logits, np.empty(out, np.uint8))


def _smooth_logits(rng: np.random.Generator, classes: int, height: int, width: int) -> F32Array:
    """Logits whose argmax forms regions (like a real network's), so both paths of the upsampling run."""
    coarse = rng.standard_normal((classes, max(1, height // 6), max(1, width // 6))).astype(np.float32)
    return np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse]).astype(np.float32)


SHAPES = [
    (5, 7, 13, 29),  # up, odd ratios
    (64, 85, 480, 640),  # up, the tiny model's inference size to a VGA frame
    (33, 47, 13, 17),  # down
    (520, 693, 478, 640),  # down slightly, as at the default --size on a sample photo
    (13, 17, 5, 61),  # down in height, up in width
    (1, 1, 3, 4),  # a single source pixel
    (1, 9, 1, 4),  # one-pixel dims kept
    (9, 1, 20, 1),
    (7, 1, 3, 9),
    (3, 4, 1, 1),  # down to one pixel
    (64, 64, 64, 200),  # one axis unchanged
    (2, 3, 301, 257),  # a large ratio
    (8, 8, 8, 8),  # the inference size itself
]


# The compiled kernel; or without it, REFINE_SHARE 0 resizes every channel wherever it may
# (upscaling), 2 always refines boundary pixels.
PATHS = {"kernel": None, "each_channel": 0.0, "refine": 2.0}


def _use(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    share = PATHS[path]
    assert share is not None or label_kernel.available()  # the server extras install Numba
    monkeypatch.setattr(upsample, "USE_KERNEL", share is None)
    if share is not None:
        monkeypatch.setattr(upsample, "REFINE_SHARE", share)


@pytest.mark.parametrize(("height", "width", "out_height", "out_width"), SHAPES)
@pytest.mark.parametrize("kind", ["random", "smooth"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_labels_match_onnx_runtime_resize_and_argmax(
    resize_argmax: ort.InferenceSession,
    monkeypatch: pytest.MonkeyPatch,
    height: int,
    width: int,
    out_height: int,
    out_width: int,
    kind: str,
    path: str,
) -> None:
    _use(monkeypatch, path)
    rng = np.random.default_rng(height * 1000 + width)
    if kind == "random":
        logits = (rng.standard_normal((21, height, width)) * 4).astype(np.float32)
    else:
        logits = _smooth_logits(rng, 21, height, width)
    out = (out_height, out_width)
    expected = _reference(resize_argmax, logits, out)
    got = _host(logits, out)
    assert got.shape == out and got.dtype == np.uint8
    assert (got == expected).mean() >= MIN_EQUAL


def test_strips_and_chunks_of_any_size_give_the_same_labels(
    resize_argmax: ort.InferenceSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    logits = _smooth_logits(rng, 21, 37, 53)
    logits[:, 10:20] = (rng.standard_normal((21, 10, 53)) * 3).astype(np.float32)  # a noisy band: many chunks
    expected = _reference(resize_argmax, logits, (211, 97))
    _use(monkeypatch, "refine")
    for strip, source, chunk in [(97, 53 * 3, 7), (1, 1, 1), (1000, 100, 64)]:
        # One output row per strip, a strip reading a single source row, chunks of one pixel...
        monkeypatch.setattr(upsample, "STRIP_PIXELS", strip)
        monkeypatch.setattr(upsample, "STRIP_SOURCE_PIXELS", source)
        monkeypatch.setattr(upsample, "CHUNK_PIXELS", chunk)
        np.testing.assert_array_equal(_host(logits, (211, 97)), expected)


def test_the_kernel_gives_the_same_labels_in_stretches_or_whole_rows(
    resize_argmax: ort.InferenceSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert label_kernel.available()  # the server extras install Numba
    rng = np.random.default_rng(11)
    logits = _smooth_logits(rng, 21, 37, 53)
    logits[:, 10:20] = (rng.standard_normal((21, 10, 53)) * 3).astype(np.float32)
    for out in [(211, 97), (20, 30), (37, 200)]:
        expected = _reference(resize_argmax, logits, out)
        results = []
        # Stretches never bridged, stretches bridged across the whole row, and each pair of source
        # rows in stretches only, in whole rows only (kept for the next pair), or as its share says.
        for gap, dense in [(0, 2.0), (10**6, 2.0), (0, 0.0), (16, 0.2), (16, 0.5)]:
            monkeypatch.setattr(label_kernel, "RUN_GAP", gap)
            monkeypatch.setattr(label_kernel, "DENSE_SHARE", dense)
            results.append(_host(logits, out))
            assert (results[-1] == expected).mean() >= MIN_EQUAL
        for other in results[1:]:
            np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("dense", [2.0, 0.0])  # candidate classes only; every class in whole rows
def test_a_class_no_corner_ranks_first_still_wins_between_them(
    resize_argmax: ort.InferenceSession, monkeypatch: pytest.MonkeyPatch, dense: float
) -> None:
    # Class 2 is no source pixel's argmax, yet wins between them: the candidates of a cell must come
    # from the bounds of every class, not from the corners' labels. Class 3 is just below the floor
    # (left out) and class 4 a hair above it (kept); neither may change a label.
    monkeypatch.setattr(label_kernel, "DENSE_SHARE", dense)
    logits = np.zeros((5, 2, 2), np.float32)
    logits[0] = [[1.0, 0.0], [1.0, 0.0]]
    logits[1] = [[0.0, 1.0], [0.0, 1.0]]
    logits[2] = 0.9
    logits[3] = np.float32(0.9) - np.float32(1e-3)
    logits[4] = 0.9
    logits[4, 1, 1] = np.float32(0.9) - np.float32(1e-7)
    labels = _host(logits, (9, 17))
    assert 2 in labels and 0 in labels and 1 in labels and 3 not in labels
    np.testing.assert_array_equal(labels, _reference(resize_argmax, logits, (9, 17)))


def _nan_and_subnormal_cases() -> list[F32Array]:
    """Logits where a careless bound would leave out the winner: NaN corners, subnormal values."""
    nan, tiny = np.float32(np.nan), np.float32(2.0**-149)
    # Class 0 holds a NaN that min and max would pass over; with it, nothing else may win there.
    first = np.array([[[-10, nan], [-10, -10]], [[1, 0], [0, 0]], [[0, 1], [0, 0]]], np.float32)
    # A NaN in a class that would rank first among the candidates, where class 0 would be left out.
    second = np.array([[[-10, -10], [-10, -10]], [[nan, 0], [0, 0]], [[0, 1], [1, 0]]], np.float32)
    # Subnormal logits, whose sums round in absolute steps: class 0 ties class 1 in places.
    third = np.zeros((10, 2, 2), np.float32)
    third[0], third[1], third[2, 0, 1] = 3 * tiny, 4 * tiny, 5 * tiny
    return [first, second, third]


@pytest.mark.parametrize("case", range(3))
def test_candidate_classes_give_the_labels_of_every_class_on_nan_and_subnormal_logits(
    monkeypatch: pytest.MonkeyPatch, case: int
) -> None:
    logits = _nan_and_subnormal_cases()[case]
    labels = np.nan_to_num(logits, nan=-np.inf).argmax(0).astype(np.uint8)
    results = []
    for dense in [2.0, 0.0]:  # candidate classes only; every class in whole rows
        monkeypatch.setattr(label_kernel, "DENSE_SHARE", dense)
        results.append(upsample.upsample_labels(labels, logits, np.empty((4, 4), np.uint8)))
    np.testing.assert_array_equal(results[0], results[1])


def test_the_kernel_split_across_threads_gives_the_same_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    logits = _smooth_logits(rng, 21, 37, 53)
    logits[:, 5:9] = (rng.standard_normal((21, 4, 53)) * 3).astype(np.float32)
    labels = logits.argmax(0).astype(np.uint8)
    monkeypatch.setattr(label_kernel, "SPLIT_PIXELS", 1)  # split even this small frame
    for gap, dense in [(16, 0.5), (0, 0.0), (0, 2.0)]:  # as served, whole rows only, stretches only
        monkeypatch.setattr(label_kernel, "RUN_GAP", gap)
        monkeypatch.setattr(label_kernel, "DENSE_SHARE", dense)
        whole = upsample.upsample_labels(labels, logits, np.empty((211, 97), np.uint8))
        for parts in [2, 3, 7, 211, 500]:  # more parts than rows: one row per band at most
            np.testing.assert_array_equal(
                upsample.upsample_labels(labels, logits, np.empty((211, 97), np.uint8), parts), whole
            )
    monkeypatch.setattr(label_kernel, "SPLIT_PIXELS", 1 << 16)
    threads: set[str] = set()
    run = label_kernel._run

    def spy(*args: Any) -> None:
        threads.add(threading.current_thread().name)
        run(*args)

    monkeypatch.setattr(label_kernel, "_run", spy)
    upsample.upsample_labels(labels, logits, np.empty((211, 97), np.uint8), 2)
    assert threads == {threading.current_thread().name}  # 20,467 pixels: not worth a hand-over
    upsample.upsample_labels(labels, logits, np.empty((480, 640), np.uint8), 2)
    assert len(threads) == 2 and any(t.startswith("segstream-labels") for t in threads)


def test_the_kernel_agrees_with_the_refined_path_on_a_large_noisy_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    # ONNX Runtime's Resize would hold 21 x 1080 x 1920 floats here; the refined path is exact to it.
    logits = (np.random.default_rng(5).standard_normal((21, 64, 114)) * 4).astype(np.float32)
    kernel = _host(logits, (1080, 1920))
    _use(monkeypatch, "refine")
    assert (kernel == _host(logits, (1080, 1920))).mean() >= MIN_EQUAL


def test_the_kernel_compiles_where_numba_cannot_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import numba

    real = numba.njit
    asked: list[bool] = []

    def njit(*args: Any, cache: bool = False, **options: Any) -> Any:
        asked.append(cache)
        if cache:  # what Numba raises when neither the package nor a home directory is writable
            raise RuntimeError("cannot cache function '_interpolate_argmax': no locator available")
        return real(*args, **options)

    monkeypatch.setattr(numba, "njit", njit)
    assert label_kernel._compile() is not None
    assert asked == [True, False]


def test_without_a_working_numba_the_kernel_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # not installed: the import fails
    assert label_kernel._compile() is None

    class Broken:
        """A Numba whose compiler fails on the first call."""

        @staticmethod
        def njit(**options: Any) -> Any:
            def wrap(function: Any) -> Any:
                def compiled(*args: Any) -> None:
                    raise TypeError("cannot determine Numba type of <class 'object'>")

                return compiled

            return wrap

    monkeypatch.setitem(sys.modules, "numba", Broken())
    assert label_kernel._compile() is None


def test_without_numba_the_numpy_paths_serve(
    resize_argmax: ort.InferenceSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(label_kernel, "_KERNEL", None)
    assert not label_kernel.available()
    logits = (np.random.default_rng(2).standard_normal((21, 16, 20)) * 4).astype(np.float32)
    assert (_host(logits, (120, 150)) == _reference(resize_argmax, logits, (120, 150))).mean() >= MIN_EQUAL
    axis = label_kernel.Axis(
        np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, np.float32)
    )
    with pytest.raises(RuntimeError, match="needs Numba"):
        label_kernel.upsample(
            np.zeros((1, 1), np.uint8), np.zeros((2, 1, 1), np.float32), axis, axis, np.empty((1, 1), np.uint8)
        )


@pytest.mark.parametrize("path", sorted(PATHS))
def test_exact_ties_go_to_the_first_class_like_argmax(
    resize_argmax: ort.InferenceSession, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    _use(monkeypatch, path)
    logits = np.zeros((4, 3, 5), np.float32)
    logits[2, 1, 2] = 1.0
    logits[3, 1, 2] = 1.0  # a tie at the source pixel itself
    np.testing.assert_array_equal(_host(logits, (11, 7)), _reference(resize_argmax, logits, (11, 7)))


def test_labels_and_logits_must_share_the_inference_size() -> None:
    with pytest.raises(ValueError, match="disagree on the inference size"):
        upsample.upsample_labels(
            np.zeros((2, 3), np.uint8), np.zeros((21, 3, 2), np.float32), np.empty((4, 4), np.uint8)
        )


def test_host_graph_outputs_labels_confidence_and_logits_at_the_inference_size(tiny_model: Path) -> None:
    host = serving_graph(onnx.load(str(tiny_model)), "out", resize_in_graph=False)
    assert [i.name for i in host.graph.input] == [FRAMES]  # no output_size: nothing is resized
    assert [o.name for o in host.graph.output] == [LABELS, CONFIDENCE, LOGITS]
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    labels, confidence, logits = ort.InferenceSession(host.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {FRAMES: frames}
    )
    assert logits.shape == (2, 21, 40, 56) and logits.dtype == np.float32
    np.testing.assert_array_equal(labels, logits.argmax(1).astype(np.uint8))
    np.testing.assert_allclose(confidence, logits.max(1).mean((1, 2)), rtol=1e-5)
    resizing = serving_graph(onnx.load(str(tiny_model)), "out")
    assert OUTPUT_SIZE in [i.name for i in resizing.graph.input]


@pytest.fixture(scope="module")
def both_paths(tiny_model: Path) -> tuple[OrtModel, OrtModel]:
    spec = ModelSpec("tiny", tiny_model)
    host = OrtModel(spec, device="cpu", threads=1)
    graph = OrtModel(spec, device="cpu", threads=1, cpu_resize_in_graph=True)
    return host, graph


@pytest.mark.parametrize("photo", sorted(p.name for p in SAMPLES.glob("*.jpg")))
@pytest.mark.parametrize("size", [64, 200, 520])
def test_sample_photos_get_the_labels_of_the_resizing_graph(
    both_paths: tuple[OrtModel, OrtModel], photo: str, size: int
) -> None:
    host, graph = both_paths
    assert host.host_upsample and not graph.host_upsample
    bgr = cv2.imread(str(SAMPLES / photo))
    assert bgr is not None
    rgb = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)
    shape = inference_shape(rgb.shape[0], rgb.shape[1], size)
    frames = [resize_rgb(rgb, shape), resize_rgb(np.ascontiguousarray(rgb[::-1]), shape)]  # a batch of two
    for output in [rgb.shape[:2], shape, (301, 97)]:
        # Results are views into per-thread buffers: copy before the other model runs.
        got = host.run("out", frames, output)
        labels, confidence = got.labels.copy(), got.confidence.copy()
        expected = graph.run("out", frames, output)
        assert labels.shape == (2, *output)
        assert (labels == expected.labels).mean() >= MIN_EQUAL
        np.testing.assert_array_equal(confidence, expected.confidence)


def test_the_path_follows_the_share_of_cells_to_refine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upsample, "USE_KERNEL", False)
    rng = np.random.default_rng(7)
    noisy = rng.standard_normal((21, 64, 85)).astype(np.float32)
    assert upsample._boundary_share(noisy.argmax(0).astype(np.uint8)) > 0.9
    assert upsample._boundary_share(np.zeros((64, 85), np.uint8)) == 0.0
    calls: list[str] = []
    each_channel = upsample._resize_each_channel

    def spy(logits: F32Array, out: U8Array) -> U8Array:
        calls.append("each_channel")
        return each_channel(logits, out)

    monkeypatch.setattr(upsample, "_resize_each_channel", spy)
    smooth = np.zeros((21, 64, 85), np.float32)
    smooth[3, :, 40:] = 1.0  # two regions: one boundary column of cells
    for logits, out, expected in [
        (noisy, (480, 640), ["each_channel"]),
        (smooth, (480, 640), []),  # 1% of cells to refine
        (noisy, (32, 640), []),  # downscaling in height: only the refined strips match ONNX Resize there
    ]:
        calls.clear()
        _host(logits, out)
        assert calls == expected
    monkeypatch.setattr(upsample, "DENSE_PIXELS", 640 * 480 - 1)
    calls.clear()
    _host(noisy, (480, 640))  # past the pixels whose two float planes it may keep
    assert calls == []


def test_overlapping_cpu_runs_take_the_one_thread_session_with_the_same_labels(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("segstream.server.cores.available_cores", lambda: 2)
    model = OrtModel(ModelSpec("tiny", tiny_model), device="cpu", workers=2)
    rgb = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected = model.run("out", [rgb], (96, 128)).labels.copy()
    assert model.concurrent_runs == 0  # alone: the all-core session
    start = threading.Barrier(2)
    results: list[U8Array] = []

    def worker() -> None:
        start.wait()
        for _ in range(20):
            results.append(model.run("out", [rgb], (96, 128)).labels.copy())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 40
    assert model.concurrent_runs > 0  # some runs started while the other thread's was running
    for labels in results:
        assert (labels == expected).mean() >= MIN_EQUAL
    assert model.overlap_session
    # One worker, or one thread per session anyway: no second session.
    assert not OrtModel(ModelSpec("tiny", tiny_model), device="cpu", workers=1).overlap_session
    assert not OrtModel(ModelSpec("tiny", tiny_model), device="cpu", threads=1, workers=2).overlap_session
    # On more cores the overlapping run gets its share of them, not one.
    monkeypatch.setattr("segstream.server.cores.available_cores", lambda: 16)
    wide = OrtModel(ModelSpec("tiny", tiny_model), device="cpu", workers=2)
    assert wide._narrow["out"].get_session_options().intra_op_num_threads == 8


def test_a_run_alone_splits_its_upsampling_and_an_overlapping_one_does_not(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("segstream.server.cores.available_cores", lambda: 2)
    model = OrtModel(ModelSpec("tiny", tiny_model), device="cpu", workers=2)
    parts: list[int] = []
    real = upsample.upsample_labels

    def spy(labels: U8Array, logits: F32Array, out: U8Array, n: int = 1) -> U8Array:
        parts.append(n)
        return real(labels, logits, out, n)

    monkeypatch.setattr("segstream.server.ort_model.upsample_labels", spy)
    rgb = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    alone = model.run("out", [rgb], (480, 640)).labels.copy()
    assert parts == [2]
    parts.clear()
    model._running = 1  # as while the other worker's network runs
    overlapping = model.run("out", [rgb], (480, 640)).labels.copy()
    assert parts == [1]
    np.testing.assert_array_equal(overlapping, alone)


def test_numba_is_imported_only_when_a_label_map_is_upsampled() -> None:
    # Importing it costs about 130 MB of resident memory, which a GPU server never needs.
    code = (
        "import sys; import segstream.server.app, segstream.server.ort_model; "
        "assert 'numba' not in sys.modules, 'imported early'; "
        "from segstream.server import label_kernel; assert label_kernel.available(); "
        "assert 'numba' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_axis_set_up_is_shared_and_read_only() -> None:
    rows = upsample._axis(64, 480)
    assert upsample._axis(64, 480) is rows  # computed once per pair of sizes
    with pytest.raises(ValueError, match="read-only"):
        rows.low[0] = 1
