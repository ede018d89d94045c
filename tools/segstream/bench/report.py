"""Measurements of one benchmark run, the figures derived from them, and how they are printed.

`build_report` turns the three measurements into one flat dict (the `--json` object); `render`
writes the same figures as a table for people. The reference is the network alone on raw ONNX
Runtime, same model, same run: `ratio_raw` (served / raw frames per second) and, for one stream,
`gap_raw_ms` (served p50 latency minus the network's p50) are what the targets judge. The pipeline
loop runs the server's own stages in one thread; `ratio_pipeline` and `overhead_ms` (served p50
minus pipeline p50) only say where serving costs go, never whether the product is fast, since
they compare the product with itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segstream.bench.cpu import CpuUse

# The CPU targets, against the network alone, checked where a run's configuration is the one they are
# stated for: ORDERED streams sending as fast as answered, and one stream's latency.
TARGET_RATIO_RAW_STREAMS = 0.92  # several streams
TARGET_RATIO_RAW_ONE = 0.85  # one stream, which waits for each answer before sending the next frame
TARGET_GAP_RAW_MS = 3.0
# Cores other processes may use during a phase before the report calls the figures disturbed.
DISTURBED_CORES = 0.1

STAGES = ("decode", "queue", "inference", "postprocess", "total")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), or None without values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, np.float64), q))


def mean(values: Sequence[float]) -> float | None:
    """The arithmetic mean, or None without values (the report shows null, not nan)."""
    return float(np.mean(values)) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass
class StreamStats:
    """What one client stream saw."""

    sent: int = 0
    answered: int = 0  # responses, with or without an error
    errors: int = 0
    dropped: int = 0  # the server's count for this stream (LATEST), from the last response
    latencies_ms: list[float] = field(default_factory=list)  # send -> response, answered frames without error
    stage_sums_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    first_error: str = ""

    @property
    def unaccounted(self) -> int:
        """Frames sent that neither got an answer nor were counted as dropped (should be 0)."""
        return self.sent - self.answered - self.dropped

    def combine(self, other: StreamStats) -> StreamStats:
        """This stream's rounds as one: counts and stage sums added, latencies pooled."""
        return StreamStats(
            sent=self.sent + other.sent,
            answered=self.answered + other.answered,
            errors=self.errors + other.errors,
            dropped=self.dropped + other.dropped,
            latencies_ms=self.latencies_ms + other.latencies_ms,
            stage_sums_ms={k: v + other.stage_sums_ms.get(k, 0.0) for k, v in self.stage_sums_ms.items()},
            first_error=self.first_error or other.first_error,
        )


@dataclass
class ServedResult:
    """The served phase: N streams through a real server."""

    streams: list[StreamStats]
    wall_s: float  # first send to last response
    provider: str
    model: str
    synthetic: bool
    server_peak_rss_mb: float | None = None
    server_rss_mb: float | None = None
    cpu: CpuUse | None = None

    @property
    def sent(self) -> int:
        """Frames sent, over all streams."""
        return sum(s.sent for s in self.streams)

    @property
    def answered(self) -> int:
        """Responses received, over all streams, with or without an error."""
        return sum(s.answered for s in self.streams)

    @property
    def errors(self) -> int:
        """Responses that carried an error, over all streams."""
        return sum(s.errors for s in self.streams)

    @property
    def dropped(self) -> int:
        """Frames the server skipped to stay current (LATEST), over all streams."""
        return sum(s.dropped for s in self.streams)

    @property
    def unaccounted(self) -> int:
        """Frames neither answered nor counted as dropped, over all streams (should be 0)."""
        return sum(s.unaccounted for s in self.streams)

    @property
    def latencies_ms(self) -> list[float]:
        """Every stream's send-to-response latencies of frames answered without error."""
        return [v for s in self.streams for v in s.latencies_ms]

    @property
    def fps(self) -> float:
        """Frames segmented without error per second of the measured phase."""
        ok = self.answered - self.errors
        return ok / self.wall_s if self.wall_s > 0 else 0.0

    def stage_means_ms(self) -> dict[str, float | None]:
        """The server's mean time per stage over frames answered without error (None without any)."""
        ok = self.answered - self.errors
        return {stage: (sum(s.stage_sums_ms[stage] for s in self.streams) / ok if ok else None) for stage in STAGES}

    @property
    def first_error(self) -> str:
        """The first error any stream saw, for the report; "" without errors."""
        return next((s.first_error for s in self.streams if s.first_error), "")


@dataclass
class LoopResult:
    """An in-process loop: per-iteration times and the loop's total."""

    times_ms: list[float]
    total_s: float
    provider: str
    stage_means_ms: dict[str, float] = field(default_factory=dict)
    cpu: CpuUse | None = None

    @property
    def fps(self) -> float:
        """Iterations per second of the whole loop."""
        return len(self.times_ms) / self.total_s if self.total_s > 0 else 0.0

    @property
    def mean_ms(self) -> float | None:
        """The mean iteration time, or None without iterations."""
        return mean(self.times_ms)

    @property
    def p50_ms(self) -> float | None:
        """The median iteration time, or None without iterations."""
        return percentile(self.times_ms, 50)

    def combine(self, other: LoopResult) -> LoopResult:
        """Two slices of the same loop as one."""
        n, m = len(self.times_ms), len(other.times_ms)
        stages = {
            stage: (self.stage_means_ms[stage] * n + other.stage_means_ms.get(stage, 0.0) * m) / (n + m)
            for stage in self.stage_means_ms
        }
        cpu = self.cpu.combine(other.cpu) if self.cpu is not None and other.cpu is not None else None
        return LoopResult(self.times_ms + other.times_ms, self.total_s + other.total_s, self.provider, stages, cpu)


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def build_report(
    settings: Mapping[str, Any],
    served: ServedResult,
    raw: LoopResult,
    pipeline: LoopResult,
    bench_peak_rss_mb: float | None,
    pipeline_drift: float | None = None,
) -> dict[str, Any]:
    """The flat result object; `settings` holds the run's configuration (streams, frames, policy, ...).

    `pipeline_drift` is how much slower the pipeline loop ran in its last slice than in its first
    (0.02: 2% slower): the machine's own drift over the run. The slices alternate with the served
    rounds, so drift moves both sides of the ratios alike.
    """
    latencies = served.latencies_ms
    p50 = percentile(latencies, 50)
    pipeline_ms = pipeline.mean_ms
    pipeline_p50 = pipeline.p50_ms
    streams = int(settings["streams"])
    overhead = p50 - pipeline_p50 if streams == 1 and p50 is not None and pipeline_p50 is not None else None
    raw_p50 = raw.p50_ms
    gap = p50 - raw_p50 if streams == 1 and p50 is not None and raw_p50 is not None else None
    report: dict[str, Any] = {
        # The reference first: the product against the network alone.
        "ratio_raw": _round(ratio(served.fps, raw.fps), 6),
        "gap_raw_ms": _round(gap),
        "served_fps": _round(served.fps),
        "raw_fps": _round(raw.fps),
        "pipeline_fps": _round(pipeline.fps),
        "ratio_pipeline": _round(ratio(served.fps, pipeline.fps), 6),
        "p50_ms": _round(p50),
        "p95_ms": _round(percentile(latencies, 95)),
        "p99_ms": _round(percentile(latencies, 99)),
        "mean_ms": _round(mean(latencies)),
        "max_ms": _round(max(latencies) if latencies else None),
        "pipeline_ms": _round(pipeline_ms),
        "pipeline_p50_ms": _round(pipeline_p50),
        "raw_ms": _round(raw.mean_ms),
        "raw_p50_ms": _round(raw_p50),
        "overhead_ms": _round(overhead),
        "latency_x_raw": _round(ratio(p50, raw.mean_ms), 4),
        "latency_x_pipeline": _round(ratio(p50, pipeline_ms), 4),
        "sent": served.sent,
        "answered": served.answered,
        "dropped": served.dropped,
        "errors": served.errors,
        "unaccounted": served.unaccounted,
        "first_error": served.first_error,
        "wall_s": _round(served.wall_s),
        **dict(settings),
        "model": served.model or settings.get("model"),
        "synthetic": served.synthetic,
        "provider": served.provider,
        "inprocess_provider": pipeline.provider,
        "server_stage_ms": {k: _round(v) for k, v in served.stage_means_ms().items()},
        "pipeline_stage_ms": {k: _round(v) for k, v in pipeline.stage_means_ms.items()},
        "pipeline_drift": _round(pipeline_drift, 4),
        "raw_iterations": len(raw.times_ms),
        "pipeline_iterations": len(pipeline.times_ms),
        "server_peak_rss_mb": _round(served.server_peak_rss_mb, 1),
        "server_rss_mb": _round(served.server_rss_mb, 1),
        "bench_peak_rss_mb": _round(bench_peak_rss_mb, 1),
        "cpu_cores": {
            name: (phase.cpu.as_dict() if phase.cpu is not None else None)
            for name, phase in (("served", served), ("raw", raw), ("pipeline", pipeline))
        },
    }
    report.update(_overhead_breakdown(streams, mean(latencies), served.stage_means_ms(), pipeline))
    report["targets"] = targets(report)
    return report


def _overhead_breakdown(
    streams: int, latency_ms: float | None, server: Mapping[str, float | None], pipeline: LoopResult
) -> dict[str, Any]:
    """One stream's serving overhead measured within each phase, so that the machine's drift cancels.

    Served latency minus the server's own model time, against the pipeline loop's time minus its
    model time: what serving adds per frame besides the model. The parts: `decode_hop` (frame
    received -> decoded and resized, beyond the loop's own decode and resize), `queue` (batcher),
    `postprocess` (beyond the loop's), `handback` (result -> response handed to gRPC), `transport`
    (client send -> server receive and server send -> client receive, with both ends' gRPC work).
    """
    if streams != 1 or latency_ms is None or any(server[k] is None for k in STAGES):
        return {"overhead_excl_model_ms": None, "overhead_parts_ms": None}
    stage = {k: float(v) for k, v in server.items() if v is not None}
    loop = pipeline.stage_means_ms
    parts = {
        "decode_hop": stage["decode"] - loop.get("decode", 0.0) - loop.get("resize", 0.0),
        "queue": stage["queue"],
        "postprocess": stage["postprocess"] - loop.get("postprocess", 0.0),
        "handback": stage["total"] - stage["decode"] - stage["queue"] - stage["inference"] - stage["postprocess"],
        "transport": latency_ms - stage["total"],
    }
    return {
        "overhead_excl_model_ms": _round(sum(parts.values())),
        "overhead_parts_ms": {k: _round(v) for k, v in parts.items()},
    }


def targets(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets that apply to this run's configuration, each with its value and verdict.

    All of them compare the product with the network alone (raw ONNX Runtime, same model, same run).
    """
    checks: dict[str, dict[str, Any]] = {}
    saturating = report["policy"] == "ordered" and not report["rate"]
    if saturating and report["ratio_raw"] is not None:
        value = report["ratio_raw"]
        limit = TARGET_RATIO_RAW_STREAMS if report["streams"] > 1 else TARGET_RATIO_RAW_ONE
        checks["ratio_raw"] = _check(value, ">=", limit, value >= limit)
    if saturating and report["gap_raw_ms"] is not None:
        value = report["gap_raw_ms"]
        checks["gap_raw_ms"] = _check(value, "<=", TARGET_GAP_RAW_MS, value <= TARGET_GAP_RAW_MS)
    return checks


def _check(value: float, op: str, limit: float, met: bool) -> dict[str, Any]:
    return {"value": value, "op": op, "limit": limit, "met": met}


def to_json(report: Mapping[str, Any]) -> str:
    """The report as one line of JSON."""
    return json.dumps(report, separators=(", ", ": "), allow_nan=False)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(report: Mapping[str, Any]) -> str:
    """The report as a table for people."""
    r = report
    rate = f", {r['rate']:g} fps per stream" if r["rate"] else ""
    window = f", window {r['window']}" if r["policy"] == "ordered" else ""
    synthetic = " (synthetic weights)" if r["synthetic"] else ""
    height, width = r["inference_shape"]
    frame_size = " of {}x{} JPEG".format(*r["frame_size"]) if r.get("frame_size") else ""
    gap = f", served p50 - network p50 {r['gap_raw_ms']:.2f} ms" if r["gap_raw_ms"] is not None else ""
    lines = [
        f"reference served/raw {_num(r['ratio_raw'], 3)}: {_num(r['served_fps'])} fps served against "
        f"{_num(r['raw_fps'])} fps of the network alone (raw ONNX Runtime, same model, same run){gap}",
        f"model     {r['model']}{synthetic} on {r['provider']}, size {r['size']} (network input {width}x{height}), "
        f"threads {r['threads'] or 'all'}, max-batch {r['max_batch']}, outputs {','.join(r['outputs'])} "
        f"at {r.get('resolution', 'frame')} resolution",
        f"served    {r['streams']} stream(s) x {r['frames']} frames{frame_size}, {r['policy']}{window}{rate}: "
        f"{r['sent']} sent, {r['answered']} answered, {r['dropped']} dropped, {r['errors']} errors "
        f"in {_num(r['wall_s'])} s",
        f"          {_num(r['served_fps'])} fps   latency ms p50 {_ms(r['p50_ms'])}  p95 {_ms(r['p95_ms'])}  "
        f"p99 {_ms(r['p99_ms'])}  mean {_ms(r['mean_ms'])}",
        "          server stages, mean ms: " + "  ".join(f"{k} {_ms(v)}" for k, v in r["server_stage_ms"].items()),
        f"raw ORT   (the reference: the network alone) "
        f"{_num(r['raw_fps'])} fps   {_ms(r['raw_ms'])} ms/frame mean, p50 {_ms(r['raw_p50_ms'])}"
        f"   ({r['raw_iterations']} runs of float32 [1,3,{height},{width}])",
        f"pipeline  (diagnostic: the server's stages in one loop) "
        f"{_num(r['pipeline_fps'])} fps   {_ms(r['pipeline_ms'])} ms/frame mean, "
        f"p50 {_ms(r['pipeline_p50_ms'])}   ("
        + ", ".join(f"{k} {_ms(v)}" for k, v in r["pipeline_stage_ms"].items())
        + ")",
        f"diagnosis served/pipeline {_num(r['ratio_pipeline'], 3)}   served p50 / pipeline mean "
        f"{_num(r['latency_x_pipeline'], 2)}   served p50 / network mean {_num(r['latency_x_raw'], 2)}",
    ]
    if r.get("pipeline_drift") is not None:
        lines.append(
            f"drift     the pipeline loop ran {abs(r['pipeline_drift']) * 100:.1f}% "
            f"{'slower' if r['pipeline_drift'] > 0 else 'faster'} in its last slice than in its first; "
            f"the in-process slices alternate with the {r.get('rounds', 1)} served round(s)"
        )
    if r["overhead_ms"] is not None:
        lines.append(f"overhead  serving overhead per frame (served p50 - pipeline p50): {r['overhead_ms']:.2f} ms")
    if r.get("overhead_excl_model_ms") is not None:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["overhead_parts_ms"].items())
        lines.append(
            f"          without the model's own time, measured within each phase: {r['overhead_excl_model_ms']:.2f} ms "
            f"({parts})"
        )
    lines.append(
        f"memory    server peak RSS {_ms(r['server_peak_rss_mb'])} MB, bench process peak RSS "
        f"{_ms(r['bench_peak_rss_mb'])} MB"
    )
    for phase, cpu in r["cpu_cores"].items():
        if cpu is None:
            continue
        # Against a server the bench did not start, that server's own CPU time counts as "other".
        remote = phase == "served" and cpu["server"] is None
        used = ", ".join(
            f"{'other (the server included)' if remote and who == 'other' else who} {_num(cores)}"
            for who, cores in cpu.items()
            if cores is not None
        )
        lines.append(f"cpu       {phase}: cores busy on average: {used}")
        if not remote and cpu["other"] is not None and cpu["other"] > DISTURBED_CORES:
            lines.append(
                f"WARNING   other processes kept {cpu['other']:.2f} cores busy during the {phase} phase: "
                "its figures are disturbed; run again on a quiet machine"
            )
    for name, check in r["targets"].items():
        verdict = "met" if check["met"] else "MISSED"
        lines.append(f"target    {name} {check['op']} {check['limit']:g}: {check['value']:.3f} {verdict}")
    if r["unaccounted"]:
        lines.append(f"WARNING   {r['unaccounted']} frame(s) sent were neither answered nor counted as dropped")
    return "\n".join(lines)
