"""`segstream-bench` options: the argument parser and the checks that turn its namespace into a BenchConfig."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from segstream.bench.frames import HEIGHT, WIDTH
from segstream.client import StreamOptions
from segstream.server.config import DEVICES, Device, ModelSpec, ServerConfig
from segstream.server.ranges import check_range
from segstream.wire.argparsing import OneLineParser

PROG = "segstream-bench"
# The settings the bench hands on to the server it starts default to the server's own defaults (a
# dataclass keeps each field's default as a class attribute).
_SERVER = ServerConfig
ARCHS = ("resnet50", "resnet101", "tiny")
OUTPUT_NAMES = ("label_mask", "color_mask", "overlay", "confidence", "class_share")


class UsageError(ValueError):
    """A bad option; the message says which and how to fix it."""


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segstream" / "models"


def build_parser() -> argparse.ArgumentParser:
    """segstream-bench's argument parser; the server's own settings default to ServerConfig's."""
    p = OneLineParser(
        prog=PROG,
        description="Benchmark segstream: N concurrent streams of M JPEG frames (640x480 unless "
        "--frame-size) through a real segstream-server, then, on the same model, size, provider and threads, "
        "raw ONNX Runtime alone and the whole per-frame pipeline (decode, resize, run, postprocess) in one "
        "loop. Prints first served/raw, the product against the network alone (the reference), then fps, latency "
        "percentiles, drops, and served/pipeline as a diagnostic.",
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
        default=_SERVER.size,
        help=f"short side frames are resized to before the network (default {_SERVER.size}; 0: the frame's own size)",
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
        default=_SERVER.threads,
        help=f"ONNX Runtime intra-op threads, server and in-process alike (default {_SERVER.threads}: all cores)",
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
        "--resolution",
        choices=("frame", "inference"),
        default="frame",
        help="resolution of the returned images: the frame's own (the label map upsampled to it) or the "
        "network's (default frame)",
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
        help="measured runs of the raw ONNX Runtime loop and of the pipeline loop, in slices before, between "
        "and after the served rounds (default 50)",
    )
    load.add_argument(
        "--rounds",
        metavar="R",
        type=int,
        default=4,
        help="rounds the served frames are split into, with a slice of the in-process loops before each and "
        "after the last, so that a machine whose speed drifts moves both sides of the ratios alike (default 4)",
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
        default=_SERVER.max_batch,
        help=f"the started server's --max-batch (default {_SERVER.max_batch})",
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
    rounds: int
    frame_size: tuple[int, int]  # width, height
    samples: Path | None
    server: str | None
    max_batch: int
    server_args: tuple[str, ...]
    startup_timeout: float
    json: bool


def _check_range(flag: str, value: float, low: float, high: float) -> None:
    check_range(flag, value, low, high, UsageError)


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
    _check_range("--rounds", args.rounds, 1, 1000)
    _check_range("--max-batch", args.max_batch, 1, 256)
    if not args.startup_timeout > 0:
        raise UsageError(f"--startup-timeout {args.startup_timeout:g}: must be positive")
    names = tuple(dict.fromkeys(n.strip() for n in args.outputs.split(",") if n.strip()))
    if not names or any(n not in OUTPUT_NAMES for n in names):
        raise UsageError(f"--outputs {args.outputs!r}: a comma-separated list of {', '.join(OUTPUT_NAMES)}")
    # StreamOptions checks the names again; its Literal types cannot see that they were checked here.
    options = StreamOptions(outputs=cast(Any, names), head=args.head, policy=args.policy, resolution=args.resolution)
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
        rounds=args.rounds,
        frame_size=(int(width), int(height)),
        samples=args.samples,
        server=args.server,
        max_batch=args.max_batch,
        server_args=tuple(args.server_arg),
        startup_timeout=args.startup_timeout,
        json=args.json,
    )
