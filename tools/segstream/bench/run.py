"""One `segstream-bench` run: the in-process loops around the served phase, and the report's settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from segstream.bench.cpu import CpuMeter
from segstream.bench.frames import encoded_frames, load_photos
from segstream.bench.inprocess import PipelineLoop, RawLoop, network_shape
from segstream.bench.options import PROG, BenchConfig, UsageError
from segstream.bench.report import LoopResult, ServedResult, StreamStats, build_report
from segstream.bench.served import (
    BenchError,
    LoadSpec,
    ServerCommand,
    ServerProcess,
    memory_mb,
    run_load,
    server_models,
    warm_up,
)
from segstream.client import ModelInfo
from segstream.server.config import ModelSpec, ServerConfig
from segstream.server.event_loop import loop_factory
from segstream.wire.codec import U8Array


def say(message: str) -> None:
    """Prints a progress line on stderr, prefixed with the program's name."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def synthetic_model(arch: str, cache_dir: Path) -> ModelSpec:
    """The synthetic FCN of `arch` in `cache_dir`, built (atomically) on first use."""
    path = cache_dir / f"fcn-{arch}-synthetic.onnx"
    if not path.is_file():
        import onnx

        from segstream.models.build import build_fcn

        say(f"building a synthetic FCN-{arch} (random weights) into {path}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".onnx.part")
        os.close(fd)
        try:
            onnx.save(build_fcn(arch, seed=0), tmp)
            Path(tmp).replace(path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return ModelSpec(name=f"fcn-{arch}", path=path)


def _pick_model(models: Sequence[ModelInfo]) -> ModelInfo:
    default = next((m for m in models if m.is_default), None)
    if default is None:
        raise BenchError("the server lists no default model")
    return default


def server_config(command: ServerCommand) -> ServerConfig:
    """The ServerConfig the server builds from these flags, by the server's own parser.

    A flag the server refuses is a UsageError quoting the server parser's message, before anything starts.
    """
    from segstream.server import cli as server_cli

    refused = io.StringIO()
    try:
        with contextlib.redirect_stderr(refused), contextlib.redirect_stdout(refused):
            args = server_cli.build_parser().parse_args(command.flags(port=0))
    except SystemExit as exc:
        text = refused.getvalue().strip().splitlines() or [f"exit status {exc.code}"]
        raise UsageError(f"--server-arg {' '.join(command.extra_args)!r}: {text[-1]}") from None
    try:
        return server_cli.config_from_args(args)
    except ValueError as exc:  # ConfigError, or a GPU option the server refuses
        raise UsageError(f"the server's settings: {exc}") from exc


def split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts summing to `total`, none more than 1 apart, the last one the largest."""
    return [total * (k + 1) // parts - total * k // parts for k in range(parts)]


class InProcess:
    """The raw ONNX Runtime loop and the pipeline loop, measured in slices between the served rounds."""

    def __init__(self, raw: RawLoop, pipeline: PipelineLoop, slices: Sequence[int]) -> None:
        self._raw = raw
        self._pipeline = pipeline
        self._slices = list(slices)
        self._raws: list[LoopResult] = []
        self._pipelines: list[LoopResult] = []

    def measure(self, index: int, server_pid: int | None) -> None:
        """Slice `index`: its share of the iterations of each loop, each under its own CPU meter.

        `server_pid`: the idle server's process, so that any CPU it uses shows as its own.
        """
        iterations = self._slices[index]
        if iterations <= 0:
            return
        meter = CpuMeter(server_pid)
        raw = self._raw.measure(iterations)
        raw.cpu = meter.stop()
        meter = CpuMeter(server_pid)
        pipeline = self._pipeline.measure(iterations)
        pipeline.cpu = meter.stop()
        self._raws.append(raw)
        self._pipelines.append(pipeline)

    def results(self) -> tuple[LoopResult, LoopResult, float | None]:
        """Both loops' slices pooled, and how much slower the pipeline ran in its last slice than its first."""
        raw, pipeline = self._raws[0], self._pipelines[0]
        for more_raw, more_pipeline in zip(self._raws[1:], self._pipelines[1:], strict=True):
            raw, pipeline = raw.combine(more_raw), pipeline.combine(more_pipeline)
        drift = None
        if len(self._pipelines) > 1:
            first, last = self._pipelines[0].mean_ms, self._pipelines[-1].mean_ms
            drift = last / first - 1.0 if first and last else None
        return raw, pipeline, drift


async def _served_phase(
    config: BenchConfig, command: ServerCommand, frames: Sequence[bytes], between: Callable[[int, int | None], None]
) -> tuple[ServedResult, list[str]]:
    """Starts (or finds) the server, warms up, runs the rounds, stops the server it started.

    `between(k, server_pid)` runs before round k and, with k the number of rounds, after the last:
    the in-process slices, while the server idles. Each round starts with an uncounted warm-up
    stream, as the in-process slices start with an untimed run.
    """
    notes: list[str] = []
    spec = LoadSpec(config.streams, config.frames, config.options, config.window, config.rate)
    process: ServerProcess | None = None
    if config.server is not None:
        target = config.server
        say(f"using the server at {target}")
        info = _pick_model(await server_models(target, config.startup_timeout))
        if info.inference_size != config.size:
            raise UsageError(
                f"the server at {target} runs at size {info.inference_size}; pass --size {info.inference_size} "
                "so the in-process runs match"
            )
    else:
        process = ServerProcess(command)
        target = process.target
        say(f"starting segstream-server on {target} (pid {process.pid})")
    rounds = split(config.frames, min(config.rounds, config.frames))
    try:
        if process is not None:
            info = _pick_model(await process.wait_ready(config.startup_timeout))
        say(
            f"serving {info.name} on {info.execution_provider}; {config.streams} {config.options.policy} stream(s) x "
            f"{config.frames} frames"
            + (f" at {config.rate:g} fps" if config.rate else "")
            + f" in {len(rounds)} round(s), the in-process loops before, between and after them"
        )
        pid = process.pid if process is not None else None
        streams: list[StreamStats] | None = None
        wall = 0.0
        cpu = None
        for index, count in enumerate(rounds):
            between(index, pid)
            await warm_up(target, frames, spec, config.warmup)
            meter = CpuMeter(pid)
            round_spec = dataclasses.replace(spec, frames=count, first=sum(rounds[:index]))
            round_streams, round_wall = await run_load(target, frames, round_spec)
            round_cpu = meter.stop()
            cpu = round_cpu if cpu is None else cpu.combine(round_cpu)
            wall += round_wall
            if streams is None:
                streams = round_streams
            else:  # stream i of every round is the same stream, going on
                streams = [a.combine(b) for a, b in zip(streams, round_streams, strict=True)]
        between(len(rounds), pid)
        memory = process.memory() if process is not None else {}
    finally:
        if process is not None:
            status = process.stop()
            if status != 0:
                notes.append(f"segstream-server exited with status {status}")
    result = ServedResult(
        streams=streams or [],
        wall_s=wall,
        provider=info.execution_provider,
        model=info.name,
        synthetic=info.synthetic,
        server_peak_rss_mb=memory.get("VmHWM"),
        server_rss_mb=memory.get("VmRSS"),
        cpu=cpu,
    )
    return result, notes


def run(config: BenchConfig) -> dict[str, Any]:
    """One benchmark run; returns the report (see segstream.bench.report.build_report).

    The served load runs in `config.rounds` rounds, and the in-process loops in slices before,
    between and after them, one server started for all: a machine whose speed drifts over the run
    (this one's drifts by a quarter within minutes) moves both sides of the ratios alike.
    """
    photos: list[U8Array] = load_photos(config.samples)
    width, height = config.frame_size
    frames = encoded_frames(photos, width, height)
    model = config.model or synthetic_model(config.arch, config.cache_dir)
    command = ServerCommand(
        model.name, model.path, config.size, config.device, config.threads, config.max_batch, config.server_args
    )
    settings_of_server = server_config(command)
    rounds = min(config.rounds, config.frames)
    say(f"loading the in-process loops: raw ONNX Runtime and the pipeline, {config.iterations} runs each in all")
    raw_loop = RawLoop(settings_of_server, config.options.head, frames[0], config.warmup)
    try:
        pipeline_loop = PipelineLoop(settings_of_server, config.options, frames, config.warmup)
        try:
            in_process = InProcess(raw_loop, pipeline_loop, split(config.iterations, rounds + 1))
            # The client side runs on the same loop the server picks by default, so that its own
            # per-message cost weighs on the measured latency no more than it must.
            loop_name, new_loop = loop_factory("auto")
            with asyncio.Runner(loop_factory=new_loop) as runner:
                served, notes = runner.run(_served_phase(config, command, frames, in_process.measure))
        finally:
            pipeline_loop.close()
    finally:
        raw_loop.close()
    for note in notes:
        say(f"warning: {note}")
    raw, pipeline, drift = in_process.results()
    settings: dict[str, Any] = {
        "streams": config.streams,
        "frames": config.frames,
        "policy": config.options.policy,
        "rate": config.rate,
        "window": config.window,
        "rounds": rounds,
        "model": model.name,
        "model_path": str(model.path),
        "size": config.size,
        "frame_size": list(config.frame_size),
        "inference_shape": list(network_shape(settings_of_server, height, width)),
        "head": config.options.head,
        "outputs": list(config.options.outputs),
        "resolution": config.options.resolution,
        "device": config.device,
        "threads": config.threads,
        "max_batch": config.max_batch,
        "warmup": config.warmup,
        "server": config.server or "started",
        "server_args": list(config.server_args),
        "onnxruntime": ort.__version__,
        "client_event_loop": loop_name,
        "cpus": os.cpu_count(),
    }
    return build_report(settings, served, raw, pipeline, memory_mb().get("VmHWM"), drift)
