"""`segstream-bench`: served throughput and latency next to raw ONNX Runtime and the in-process pipeline.

Exit status: 0 when every frame was answered without error and accounted for, 1 when the run
failed or frames went missing (the figures are still printed), 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import onnxruntime as ort

from segstream.bench.cpu import CpuMeter
from segstream.bench.frames import HEIGHT, WIDTH, encoded_frames, load_photos
from segstream.bench.inprocess import measure_pipeline, measure_raw, network_shape
from segstream.bench.report import LoopResult, ServedResult, build_report, render, to_json
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
from segstream.client import ModelInfo, StreamOptions
from segstream.client.codec import U8Array
from segstream.server.config import DEVICES, Device, ModelSpec, ServerConfig
from segstream.server.engine import EngineError

PROG = "segstream-bench"
ARCHS = ("resnet50", "resnet101", "tiny")
OUTPUT_NAMES = ("label_mask", "color_mask", "overlay", "confidence", "class_share")


class UsageError(ValueError):
    """A bad option; the message says which and how to fix it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, no usage dump.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segstream" / "models"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Benchmark segstream: N concurrent streams of M JPEG frames (640x480 unless "
        "--frame-size) through a real segstream-server, then, on the same model, size, provider and threads, "
        "raw ONNX Runtime alone and the whole per-frame pipeline (decode, resize, run, postprocess) in one "
        "loop. Prints fps, latency percentiles, drops and the ratios served/raw and served/pipeline.",
    )
    model = p.add_argument_group("model")
    model.add_argument("--model", type=Path, metavar="PATH", help="ONNX model file (default: a synthetic --arch)")
    model.add_argument(
        "--arch",
        choices=ARCHS,
        default="resnet50",
        help="without --model: build a synthetic FCN of this backbone (random weights, real cost) into "
        "--cache-dir once and use it (default resnet50)",
    )
    model.add_argument(
        "--cache-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="where synthetic models are built and kept (default $XDG_CACHE_HOME/segstream/models, "
        "else ~/.cache/segstream/models)",
    )
    model.add_argument(
        "--size",
        metavar="N",
        type=int,
        default=520,
        help="short side frames are resized to before the network (default 520; 0: the frame's own size)",
    )
    model.add_argument("--head", choices=("out", "aux"), default="out", help="model head to run (default out)")
    model.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="execution provider for the server and the in-process runs (default cpu)",
    )
    model.add_argument(
        "--threads",
        metavar="N",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads, server and in-process alike (default 0: all cores)",
    )

    load = p.add_argument_group("load")
    load.add_argument("--streams", metavar="N", type=int, default=1, help="concurrent streams (default 1)")
    load.add_argument("--frames", metavar="M", type=int, default=50, help="frames per stream (default 50)")
    load.add_argument(
        "--policy",
        choices=("ordered", "latest"),
        default="ordered",
        help="frame policy: ordered answers every frame; latest lets the server drop stale ones (default ordered)",
    )
    load.add_argument(
        "--rate",
        metavar="FPS",
        type=float,
        default=0.0,
        help="frames per second each stream sends, paced like a camera (default 0: as fast as the policy allows)",
    )
    load.add_argument(
        "--window",
        metavar="N",
        type=int,
        default=1,
        help="unanswered frames an ordered stream may have; 1 waits for each answer, so latency has no "
        "queueing of the stream's own frames (default 1)",
    )
    load.add_argument(
        "--outputs",
        metavar="LIST",
        default="label_mask",
        help=f"comma-separated outputs each frame asks for, of {', '.join(OUTPUT_NAMES)} (default label_mask)",
    )
    load.add_argument(
        "--warmup",
        metavar="N",
        type=int,
        default=5,
        help="frames of an uncounted warm-up stream, and uncounted runs before each in-process loop (default 5)",
    )
    load.add_argument(
        "--iterations",
        metavar="K",
        type=int,
        default=50,
        help="measured runs of the raw ONNX Runtime loop and of the pipeline loop, half before the server "
        "starts and half after it stops (default 50)",
    )
    load.add_argument(
        "--frame-size",
        default=f"{WIDTH}x{HEIGHT}",
        metavar="WxH",
        help=f"size of the frames sent, cut and scaled from the sample photographs (default {WIDTH}x{HEIGHT})",
    )
    load.add_argument(
        "--samples",
        metavar="DIR",
        type=Path,
        default=None,
        help="folder with the two sample photographs (default: samples/ of the source tree)",
    )

    server = p.add_argument_group("server")
    server.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="benchmark this running server instead of starting one (its --size must match --size)",
    )
    server.add_argument(
        "--max-batch",
        metavar="B",
        type=int,
        default=1,
        help="the started server's --max-batch (default 1)",
    )
    server.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the started server, repeatable (e.g. --server-arg=--workers=2)",
    )
    server.add_argument(
        "--startup-timeout",
        metavar="SECONDS",
        type=float,
        default=300.0,
        help="seconds the server may take to load and warm up (default 300)",
    )

    p.add_argument("--json", action="store_true", help="also print the results as one JSON line on stdout, last")
    return p


@dataclass(frozen=True)
class BenchConfig:
    """Checked options of one run."""

    model: ModelSpec | None
    arch: str
    cache_dir: Path
    size: int
    device: Device
    threads: int
    streams: int
    frames: int
    rate: float
    window: int
    options: StreamOptions
    warmup: int
    iterations: int
    frame_size: tuple[int, int]  # width, height
    samples: Path | None
    server: str | None
    max_batch: int
    server_args: tuple[str, ...]
    startup_timeout: float
    json: bool


def _check_range(flag: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UsageError(f"{flag} {value:g}: must be between {low:g} and {high:g}")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Checks the options; raises UsageError saying what to fix."""
    _check_range("--size", args.size, 0, 4096)
    _check_range("--threads", args.threads, 0, 1024)
    _check_range("--streams", args.streams, 1, 1000)
    _check_range("--frames", args.frames, 1, 1_000_000)
    _check_range("--rate", args.rate, 0, 10_000)
    _check_range("--window", args.window, 1, 1024)
    _check_range("--warmup", args.warmup, 0, 10_000)
    _check_range("--iterations", args.iterations, 1, 1_000_000)
    _check_range("--max-batch", args.max_batch, 1, 256)
    if not args.startup_timeout > 0:
        raise UsageError(f"--startup-timeout {args.startup_timeout:g}: must be positive")
    names = tuple(dict.fromkeys(n.strip() for n in args.outputs.split(",") if n.strip()))
    if not names or any(n not in OUTPUT_NAMES for n in names):
        raise UsageError(f"--outputs {args.outputs!r}: a comma-separated list of {', '.join(OUTPUT_NAMES)}")
    # StreamOptions checks the names again; its Literal types cannot see that they were checked here.
    options = StreamOptions(outputs=cast(Any, names), head=args.head, policy=args.policy)
    model = None
    if args.model is not None:
        if not args.model.is_file():
            raise UsageError(f"--model {args.model}: no such file (or use --arch to build a synthetic model)")
        model = ModelSpec(name=args.model.stem, path=args.model)
    if args.server is not None:
        host, sep, port = args.server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--server {args.server!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
        if args.server_arg:
            raise UsageError("--server-arg only applies to a server the bench starts; drop --server or it")
    width, sep, height = args.frame_size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or not (16 <= int(width) <= 8192 >= int(height) >= 16):
        raise UsageError(f"--frame-size {args.frame_size!r}: expected WIDTHxHEIGHT of 16 to 8192 pixels, e.g. 640x480")
    if args.samples is not None and not args.samples.is_dir():
        raise UsageError(f"--samples {args.samples}: no such folder")
    return BenchConfig(
        model=model,
        arch=args.arch,
        cache_dir=args.cache_dir or _default_cache_dir(),
        size=args.size,
        device=args.device,
        threads=args.threads,
        streams=args.streams,
        frames=args.frames,
        rate=args.rate,
        window=args.window,
        options=options,
        warmup=args.warmup,
        iterations=args.iterations,
        frame_size=(int(width), int(height)),
        samples=args.samples,
        server=args.server,
        max_batch=args.max_batch,
        server_args=tuple(args.server_arg),
        startup_timeout=args.startup_timeout,
        json=args.json,
    )


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def synthetic_model(arch: str, cache_dir: Path) -> ModelSpec:
    """The synthetic FCN of `arch` in `cache_dir`, built (atomically) on first use."""
    path = cache_dir / f"fcn-{arch}-synthetic.onnx"
    if not path.is_file():
        import onnx

        from segstream.models.build import build_fcn

        _say(f"building a synthetic FCN-{arch} (random weights) into {path}")
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
        _say(f"using the server at {target}")
        info = _pick_model(await server_models(target, config.startup_timeout))
        if info.inference_size != config.size:
            raise UsageError(
                f"the server at {target} runs at size {info.inference_size}; pass --size {info.inference_size} "
                "so the in-process runs match"
            )
    else:
        process = ServerProcess(command)
        target = process.target
        _say(f"starting segstream-server on {target} (pid {process.pid})")
    try:
        if process is not None:
            info = _pick_model(await process.wait_ready(config.startup_timeout))
        _say(
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
    _say(f"in process, {when} the served phase: raw ONNX Runtime and the pipeline loop, {iterations} runs each")
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
    served, notes = asyncio.run(_served_phase(config, command, frames))
    for note in notes:
        _say(f"warning: {note}")
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
        "device": config.device,
        "threads": config.threads,
        "max_batch": config.max_batch,
        "warmup": config.warmup,
        "server": config.server or "started",
        "server_args": list(config.server_args),
        "onnxruntime": ort.__version__,
        "cpus": os.cpu_count(),
    }
    return build_report(settings, served, raw, pipeline, memory_mb().get("VmHWM"), drift)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        report = run(config)
    except (UsageError, FileNotFoundError) as exc:
        parser.exit(2, f"{PROG}: error: {exc}\n")
    except (BenchError, EngineError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(render(report), file=sys.stderr, flush=True)
    failed = bool(report["errors"] or report["unaccounted"])
    if report["errors"]:
        _say(f"error: {report['errors']} frame(s) answered with an error, the first: {report['first_error']}")
    if report["unaccounted"]:
        _say(f"error: {report['unaccounted']} frame(s) neither answered nor counted as dropped")
    if config.json:
        print(to_json(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
