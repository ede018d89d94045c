"""segstream-bench without a server: options, frames, the report's arithmetic, a device that cannot load.

The runs against a server are in tests/integration/test_bench_served.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from segstream.bench.cli import build_parser, main
from segstream.bench.cpu import CpuUse
from segstream.bench.frames import HEIGHT, WIDTH, encoded_frames, load_photos
from segstream.bench.options import config_from_args
from segstream.bench.report import LoopResult, ServedResult, StreamStats, build_report, render, to_json
from segstream.bench.run import split
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire.codec import decode_encoded
from tests.cli_help import assert_every_option_documented

REQUIRED_KEYS = {
    "gap_raw_ms",
    "served_fps",
    "raw_fps",
    "pipeline_fps",
    "ratio_raw",
    "ratio_pipeline",
    "p50_ms",
    "p99_ms",
    "pipeline_ms",
    "dropped",
    "streams",
    "frames",
    "policy",
    "model",
    "provider",
    "size",
}


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--help" in capsys.readouterr().out
    assert_every_option_documented(build_parser())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--streams", "0"], "--streams 0: must be between 1 and"),
        (["--frames", "0"], "--frames 0: must be between 1 and"),
        (["--rate", "-1"], "--rate -1: must be between 0 and"),
        (["--window", "0"], "--window 0"),
        (["--iterations", "0"], "--iterations 0"),
        (["--rounds", "0"], "--rounds 0: must be between 1 and"),
        (["--size", "-5"], "--size -5"),
        (["--max-batch", "0"], "--max-batch 0"),
        (["--startup-timeout", "0"], "--startup-timeout 0: must be positive"),
        (["--outputs", "label_mask,bogus"], "--outputs 'label_mask,bogus': a comma-separated list of"),
        (["--outputs", ","], "--outputs ','"),
        (["--model", "/nonexistent/m.onnx"], "--model /nonexistent/m.onnx: no such file"),
        (["--server", "localhost"], "expected HOST:PORT"),
        (["--server", "localhost:99999"], "expected HOST:PORT"),
        (["--server", "127.0.0.1:50051", "--server-arg=--workers=2"], "--server-arg only applies"),
        (["--samples", "/nonexistent"], "--samples /nonexistent: no such folder"),
        (["--frame-size", "640"], "--frame-size '640': expected WIDTHxHEIGHT"),
        (["--frame-size", "8x8"], "--frame-size '8x8'"),
        (["--policy", "newest"], "invalid choice"),
        (["--device", "tpu"], "invalid choice"),
        (["--streams", "four"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("segstream-bench: error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("server_args", "message"),
    [
        (["--server-arg=--bogus"], "--server-arg '--bogus': segstream-server: error: unrecognized arguments: --bogus"),
        (["--server-arg=--inflight=0"], "the server's settings: --inflight 0: must be between 1 and"),
    ],
)
def test_server_flags_are_checked_by_the_servers_parser_before_anything_starts(
    tiny_model: Path, server_args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--model", str(tiny_model), *server_args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_resolution_goes_into_the_stream_options() -> None:
    assert config_from_args(build_parser().parse_args([])).options.resolution == "frame"
    config = config_from_args(build_parser().parse_args(["--resolution", "inference"]))
    assert config.options.resolution == "inference"
    assert config.options.to_proto().resolution == pb.OUTPUT_RESOLUTION_INFERENCE


def test_frames_are_640x480_jpegs_of_the_samples() -> None:
    frames = encoded_frames(load_photos())
    assert len(frames) == 6 and len(set(frames)) == 6
    for data in frames:
        assert data[:2] == b"\xff\xd8"
        assert decode_encoded(data).shape == (HEIGHT, WIDTH, 3)
    wide = encoded_frames(load_photos(), 1280, 720)
    assert {decode_encoded(data).shape for data in wide} == {(720, 1280, 3)}


def _stream(latencies: Sequence[float], sent: int, dropped: int = 0, errors: int = 0) -> StreamStats:
    stats = StreamStats(sent=sent, answered=len(latencies) + errors, errors=errors, dropped=dropped)
    stats.latencies_ms.extend(latencies)
    for stage in stats.stage_sums_ms:
        stats.stage_sums_ms[stage] = 10.0 * len(latencies)
    return stats


def _settings(streams: int, policy: str = "ordered", rate: float = 0.0) -> dict[str, object]:
    return {
        "streams": streams,
        "frames": 4,
        "policy": policy,
        "rate": rate,
        "window": 1,
        "model": "m",
        "size": 64,
        "inference_shape": [64, 85],
        "threads": 0,
        "max_batch": 1,
        "outputs": ["label_mask"],
    }


def test_report_ratios_percentiles_and_targets() -> None:
    served = ServedResult(
        streams=[_stream([10.0, 20.0, 30.0, 40.0], 4), _stream([50.0, 60.0, 70.0, 80.0], 4)],
        wall_s=2.0,
        provider="CPUExecutionProvider",
        model="m",
        synthetic=True,
    )
    raw = LoopResult(times_ms=[20.0] * 5, total_s=0.1, provider="CPUExecutionProvider")  # 50 fps
    pipeline = LoopResult(times_ms=[25.0] * 4, total_s=0.8, provider="CPUExecutionProvider")  # 5 fps
    report = build_report(_settings(2), served, raw, pipeline, 100.0)
    assert report.keys() >= REQUIRED_KEYS
    assert report["served_fps"] == 4.0  # 8 frames in 2 s
    assert report["raw_fps"] == 50.0 and report["pipeline_fps"] == 5.0
    assert report["ratio_raw"] == pytest.approx(4.0 / 50.0)
    assert report["ratio_pipeline"] == pytest.approx(4.0 / 5.0)
    assert report["p50_ms"] == pytest.approx(45.0)
    assert report["p99_ms"] == pytest.approx(79.3)
    assert report["pipeline_ms"] == 25.0
    assert report["overhead_ms"] is None and report["overhead_excl_model_ms"] is None  # one stream only
    assert report["server_stage_ms"]["total"] == pytest.approx(10.0)
    # The targets judge the product against the network alone, never against its own pipeline.
    assert report["targets"] == {"ratio_raw": {"value": 0.08, "op": ">=", "limit": 0.92, "met": False}}
    assert next(iter(report)) == "ratio_raw"  # the reference comes first in the JSON
    assert json.loads(to_json(report)) == report
    text = render(report)
    assert text.splitlines()[0].startswith("reference served/raw 0.080")
    assert "served/pipeline 0.800" in text


def test_report_overhead_for_one_stream_and_latest_target() -> None:
    served = ServedResult([_stream([26.0, 26.5, 27.0], 3)], 0.1, "CPUExecutionProvider", "m", True)
    stages = {"decode": 1.0, "resize": 0.5, "inference": 23.5, "postprocess": 0.5}
    pipeline = LoopResult([25.0, 25.5, 26.0], 0.0765, "CPUExecutionProvider", stages)
    raw = LoopResult([20.0], 0.02, "CPUExecutionProvider")
    one = build_report(_settings(1), served, raw, pipeline, None)
    assert one["overhead_ms"] == pytest.approx(1.0)  # p50 26.5 - pipeline p50 25.5
    assert one["gap_raw_ms"] == pytest.approx(6.5)  # p50 26.5 - network p50 20.0
    assert one["targets"]["gap_raw_ms"] == {"value": 6.5, "op": "<=", "limit": 3.0, "met": False}
    # One stream waits for each answer: its own throughput limit against the network alone.
    assert one["targets"]["ratio_raw"]["limit"] == 0.85
    assert "overhead_ms" not in one["targets"] and "ratio_pipeline" not in one["targets"]
    # Without either side's model time: (26.5 - 10 server inference) - (25.5 - 23.5 loop inference).
    assert one["overhead_excl_model_ms"] == pytest.approx(14.5)
    assert sum(one["overhead_parts_ms"].values()) == pytest.approx(14.5)
    assert one["overhead_parts_ms"]["transport"] == pytest.approx(26.5 - 10.0)
    latest = build_report(
        _settings(1, "latest", 30.0),
        ServedResult([_stream([30.0, 40.0, 50.0], 10, dropped=7)], 1.0, "CPU", "m", True),
        raw,
        pipeline,
        None,
    )
    assert latest["dropped"] == 7 and latest["unaccounted"] == 0
    assert latest["latency_x_pipeline"] == pytest.approx(40.0 / 25.5, abs=1e-4)
    assert latest["latency_x_raw"] == pytest.approx(40.0 / 20.0, abs=1e-4)
    # Paced LATEST streams do not saturate the server: no throughput or latency target applies.
    assert latest["targets"] == {}


def test_slices_of_a_loop_pool_into_one() -> None:
    before = LoopResult([10.0, 10.0], 0.02, "CPU", {"inference": 9.0}, CpuUse(1.0, 2.0, None, 0.0))
    after = LoopResult([20.0], 0.02, "CPU", {"inference": 18.0}, CpuUse(3.0, 1.0, None, 0.4))
    both = before.combine(after)
    assert both.times_ms == [10.0, 10.0, 20.0] and both.fps == pytest.approx(3 / 0.04)
    assert both.stage_means_ms == {"inference": pytest.approx(12.0)}
    assert both.cpu is not None and both.cpu.bench == pytest.approx(1.25) and both.cpu.other == pytest.approx(0.3)
    assert both.cpu.server is None


def test_a_streams_rounds_pool_into_one() -> None:
    first = StreamStats(sent=5, answered=3, dropped=2, latencies_ms=[1.0, 2.0, 3.0])
    first.stage_sums_ms["decode"] = 6.0
    second = StreamStats(sent=4, answered=3, errors=1, dropped=1, latencies_ms=[4.0, 5.0], first_error="bad")
    second.stage_sums_ms["decode"] = 4.0
    both = first.combine(second)
    assert (both.sent, both.answered, both.errors, both.dropped, both.unaccounted) == (9, 6, 1, 3, 0)
    assert both.latencies_ms == [1.0, 2.0, 3.0, 4.0, 5.0] and both.first_error == "bad"
    assert both.stage_sums_ms["decode"] == 10.0 and both.stage_sums_ms["total"] == 0.0


@pytest.mark.parametrize(("total", "parts"), [(150, 5), (100, 4), (3, 5), (1, 1), (7, 3)])
def test_counts_split_evenly_into_rounds_and_slices(total: int, parts: int) -> None:
    counts = split(total, parts)
    assert len(counts) == parts and sum(counts) == total
    assert max(counts) - min(counts) <= 1 and counts[-1] == max(counts)  # the last slice is never empty


def test_report_without_answers_has_no_figures_but_valid_json() -> None:
    served = ServedResult([_stream([], 3, errors=3)], 0.5, "CPU", "m", True)
    loop = LoopResult([1.0], 0.001, "CPU")
    report = build_report(_settings(1), served, loop, loop, None)
    assert report["served_fps"] == 0.0 and report["p50_ms"] is None and report["errors"] == 3
    json.loads(to_json(report))


def test_a_device_that_cannot_load_is_one_line_and_exit_1(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segstream.server.providers import nvidia_gpu_present

    if nvidia_gpu_present():
        pytest.skip("this machine has an NVIDIA driver")
    code = main(["--model", str(tiny_model), "--device", "cuda", "--frames", "1", "--iterations", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("segstream-bench: error: ") and "--device cuda" in err[-1]
