"""One `segstream-bench` run: the in-process loops around the served phase, and the report's settings."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from segstream.bench.cpu import CpuMeter
from segstream.bench.frames import encoded_frames, load_photos
from segstream.bench.inprocess import measure_pipeline, measure_raw, network_shape
from segstream.bench.options import PROG, BenchConfig, UsageError
from segstream.bench.report import LoopResult, ServedResult, build_report
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


async def _served_phase(
    config: BenchConfig, command: ServerCommand, frames: Sequence[bytes]
) -> tuple[ServedResult, list[str]]:
    """Starts (or finds) the server, warms up, runs the streams, stops the server it started."""
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
    try:
        if process is not None:
            info = _pick_model(await process.wait_ready(config.startup_timeout))
        say(
            f"serving {info.name} on {info.execution_provider}; {config.streams} {config.options.policy} stream(s) x "
            f"{config.frames} frames" + (f" at {config.rate:g} fps" if config.rate else "")
        )
        await warm_up(target, frames, spec, config.warmup)
        meter = CpuMeter(process.pid if process is not None else None)
        streams, wall = await run_load(target, frames, spec)
        cpu = meter.stop()
        memory = process.memory() if process is not None else {}
    finally:
        if process is not None:
            status = process.stop()
            if status != 0:
                notes.append(f"segstream-server exited with status {status}")
    result = ServedResult(
        streams=streams,
        wall_s=wall,
        provider=info.execution_provider,
        model=info.name,
        synthetic=info.synthetic,
        server_peak_rss_mb=memory.get("VmHWM"),
        server_rss_mb=memory.get("VmRSS"),
        cpu=cpu,
    )
    return result, notes


def _inprocess(
    server: ServerConfig, config: BenchConfig, frames: Sequence[bytes], iterations: int, when: str
) -> tuple[LoopResult, LoopResult]:
    say(f"in process, {when} the served phase: raw ONNX Runtime and the pipeline loop, {iterations} runs each")
    meter = CpuMeter()
    raw = measure_raw(server, config.options.head, frames[0], iterations, config.warmup)
    raw.cpu = meter.stop()
    meter = CpuMeter()
    pipeline = measure_pipeline(server, config.options, frames, iterations, config.warmup)
    pipeline.cpu = meter.stop()
    return raw, pipeline


def run(config: BenchConfig) -> dict[str, Any]:
    """One benchmark run; returns the report (see segstream.bench.report.build_report).

    The in-process loops run half their iterations before the server starts and half after it has
    stopped, so that a machine whose speed drifts over the run moves both sides of the ratios alike.
    """
    photos: list[U8Array] = load_photos(config.samples)
    width, height = config.frame_size
    frames = encoded_frames(photos, width, height)
    model = config.model or synthetic_model(config.arch, config.cache_dir)
    command = ServerCommand(
        model.name, model.path, config.size, config.device, config.threads, config.max_batch, config.server_args
    )
    settings_of_server = server_config(command)
    first = (config.iterations + 1) // 2
    raw, pipeline = _inprocess(settings_of_server, config, frames, first, "before")
    # The client side runs on the same loop the server picks by default, so that its own
    # per-message cost weighs on the measured latency no more than it must.
    loop_name, new_loop = loop_factory("auto")
    with asyncio.Runner(loop_factory=new_loop) as runner:
        served, notes = runner.run(_served_phase(config, command, frames))
    for note in notes:
        say(f"warning: {note}")
    drift = None
    if config.iterations - first > 0:
        raw_after, pipeline_after = _inprocess(settings_of_server, config, frames, config.iterations - first, "after")
        before, after = pipeline.mean_ms, pipeline_after.mean_ms
        drift = after / before - 1.0 if before and after else None
        raw, pipeline = raw.combine(raw_after), pipeline.combine(pipeline_after)
    settings: dict[str, Any] = {
        "streams": config.streams,
        "frames": config.frames,
        "policy": config.options.policy,
        "rate": config.rate,
        "window": config.window,
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
