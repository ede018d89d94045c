"""segstream-bench against running servers: LATEST accounting, pacing, an end-to-end run, the transport floor."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from segstream.bench import run as bench_run
from segstream.bench.cli import main
from segstream.bench.cpu import CpuMeter
from segstream.bench.frames import encoded_frames, load_photos
from segstream.bench.report import StreamStats
from segstream.bench.served import LoadSpec, run_load
from segstream.client import StreamOptions
from segstream.server.app import SegstreamServer
from segstream.server.config import ModelSpec, ServerConfig
from segstream.server.engine import BatchResult, U8Array
from tests.fakes import GatedModel
from tests.unit.test_bench import REQUIRED_KEYS


class SlowModel(GatedModel):
    """The fake engine taking a fixed time per batch, so that a fast LATEST sender overtakes it."""

    def run(self, head: str, frames: Sequence[U8Array], output_size: tuple[int, int]) -> BatchResult:
        time.sleep(0.02)
        return super().run(head, frames, output_size)


async def test_latest_accounting_answered_plus_dropped_is_sent(tiny_model: Path) -> None:
    config = ServerConfig(models=(ModelSpec("slow", tiny_model),), host="127.0.0.1", port=0, size=32, warmup=False)
    server = SegstreamServer(config, models={"slow": SlowModel()})
    port = await server.start()
    try:
        frames = encoded_frames(load_photos())[:2]
        spec = LoadSpec(streams=2, frames=25, options=StreamOptions(policy="latest"))
        meter = CpuMeter()
        streams, wall = await run_load(f"127.0.0.1:{port}", frames, spec)
        cpu = meter.stop()
    finally:
        await server.stop(grace=1.0)
    assert wall > 0 and cpu.wall_s >= wall
    for stats in streams:
        assert stats.sent == 25 and stats.errors == 0
        assert stats.answered + stats.dropped == stats.sent
        assert stats.dropped > 0  # 25 frames sent at once to a 20 ms engine
        assert len(stats.latencies_ms) == stats.answered


async def test_rate_paces_the_sends(tiny_model: Path) -> None:
    config = ServerConfig(models=(ModelSpec("gated", tiny_model),), host="127.0.0.1", port=0, size=32, warmup=False)
    server = SegstreamServer(config, models={"gated": GatedModel()})
    port = await server.start()
    try:
        frames = encoded_frames(load_photos())[:1]
        spec = LoadSpec(streams=1, frames=6, options=StreamOptions(policy="ordered"), window=4, rate=50.0)
        streams, wall = await run_load(f"127.0.0.1:{port}", frames, spec)
    finally:
        await server.stop(grace=1.0)
    assert streams[0].answered == 6
    # The sixth frame is due 100 ms after the first; a server keeping up is credited the rate, not
    # more: the wall covers the six frames' intervals.
    assert wall >= 6 / 50.0


def test_end_to_end_prints_one_json_line_last(
    tiny_model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    measure = bench_run.InProcess.measure

    def slice_spy(self: bench_run.InProcess, index: int, server_pid: int | None) -> None:
        order.append(f"slice {index}")
        measure(self, index, server_pid)

    async def round_spy(target: str, frames: Sequence[bytes], spec: LoadSpec) -> tuple[list[StreamStats], float]:
        order.append(f"round of {spec.frames}")
        return await run_load(target, frames, spec)

    monkeypatch.setattr(bench_run.InProcess, "measure", slice_spy)
    monkeypatch.setattr("segstream.bench.run.run_load", round_spy)
    argv = ["--model", str(tiny_model), "--size", "32", "--threads", "1", "--streams", "2", "--frames", "3"]
    code = main([*argv, "--iterations", "5", "--rounds", "2", "--warmup", "1", "--resolution", "inference", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report.keys() >= REQUIRED_KEYS
    assert (report["streams"], report["frames"], report["policy"], report["size"]) == (2, 3, "ordered", 32)
    assert report["model"] == "tiny" and report["provider"] == "CPUExecutionProvider"
    assert report["resolution"] == "inference" and report["errors"] == 0
    assert report["sent"] == report["answered"] == 6 and report["dropped"] == 0
    assert report["ratio_raw"] == pytest.approx(report["served_fps"] / report["raw_fps"], rel=1e-3)
    assert report["ratio_pipeline"] == pytest.approx(report["served_fps"] / report["pipeline_fps"], rel=1e-3)
    # 2 rounds of 1 and 2 frames per stream; the loops' 5 runs in slices of 1, 2 and 2 around them.
    assert report["rounds"] == 2
    assert order == ["slice 0", "round of 1", "slice 1", "round of 2", "slice 2"]
    assert report["raw_iterations"] == report["pipeline_iterations"] == 5
    assert report["pipeline_drift"] is not None
    assert report["server_peak_rss_mb"] > 0 and report["bench_peak_rss_mb"] > 0
    assert "served/pipeline" in err
    assert err.index("reference served/raw") < err.index("served/pipeline")


def test_transport_floor_script_times_a_bare_round_trip() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "transport_floor.py"
    argv = [sys.executable, str(script), "--pause-ms", "5", "--frames", "10", "--event-loop", "asyncio"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    match = re.search(r"measured pause ([\d.]+) ms, round trip above the pause ([\d.]+) ms", done.stdout)
    assert match, done.stdout
    pause, above = float(match[1]), float(match[2])
    assert pause >= 5.0 and 0.0 < above < 50.0
