"""`segstream-server`: the command line of the segmentation server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from segstream.server.config import DEVICES, ConfigError, ModelSpec, ServerConfig, env_default, env_option
from segstream.server.engine import EngineError
from segstream.server.event_loop import EVENT_LOOPS, EventLoopUnavailable, loop_factory
from segstream.server.frame_limits import DEFAULT_MAX_ASPECT, DEFAULT_MAX_INFERENCE_PIXELS
from segstream.server.gpu_cli import add_gpu_arguments, gpu_options_from_args
from segstream.server.logs import configure_logging
from segstream.wire.argparsing import OneLineParser

log = logging.getLogger("segstream.server")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="segstream-server",
        description="Serve FCN semantic segmentation of live video over gRPC (segstream.v1.Segmentation). "
        "Every option can also be set as SEGSTREAM_<OPTION> in the environment (e.g. SEGSTREAM_PORT).",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]PATH",
        help="ONNX model to serve (repeatable); NAME defaults to the file name without .onnx; the first is "
        "the default model (env SEGSTREAM_MODEL: comma-separated list)",
    )
    p.add_argument("--host", default=env_default("host", "[::]"), help="address to listen on (default: [::], all)")
    env_option(p, "--port", "50051", "port (default 50051; 0 picks a free one)", type=int)
    env_option(
        p,
        "--size",
        "520",
        "short side in pixels frames are resized to before the network (default 520, the model card's; 0: no resize)",
        type=int,
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=env_default("device", "auto"),
        help="execution provider: auto uses CUDA only when it really loads, else the CPU; cpu, cuda, tensorrt "
        "insist and fail at startup if unavailable (default auto)",
    )
    env_option(p, "--workers", "0", "inference worker threads (default 0: 1 on CPU, 2 on GPU)", type=int)
    env_option(p, "--threads", "0", "ONNX Runtime intra-op threads per session (default 0: all cores)", type=int)
    env_option(p, "--max-batch", "1", "largest batch of same-shape frames across streams (default 1)", type=int)
    env_option(p, "--max-delay-ms", "2", "longest wait for batch-mates in ms (default 2)", type=float)
    env_option(
        p,
        "--inflight",
        "4",
        "frames of one ORDERED stream in flight before the server stops reading (default 4)",
        type=int,
    )
    env_option(p, "--max-streams", "64", "concurrent streams; more get RESOURCE_EXHAUSTED (default 64)", type=int)
    env_option(
        p,
        "--max-unary",
        "32",
        "concurrent SegmentImage calls, counted apart from --max-streams; more get RESOURCE_EXHAUSTED (default 32)",
        type=int,
    )
    env_option(p, "--max-frame-pixels", str(7680 * 4320), "largest frame in pixels (default 33177600, 8K)", type=int)
    env_option(
        p,
        "--max-inference-pixels",
        str(DEFAULT_MAX_INFERENCE_PIXELS),
        "largest network input in pixels, after the resize to --size; costlier frames get RESOURCE_EXHAUSTED "
        f"(default {DEFAULT_MAX_INFERENCE_PIXELS}: --size 520 up to a 3.9:1 frame, or 1 MP with --size 0)",
        type=int,
    )
    env_option(
        p,
        "--max-aspect",
        f"{DEFAULT_MAX_ASPECT:g}",
        "largest ratio of a frame's long side to its short side; thinner frames get RESOURCE_EXHAUSTED "
        f"(default {DEFAULT_MAX_ASPECT:g})",
        type=float,
    )
    env_option(p, "--max-message-bytes", str(64 << 20), "largest gRPC message in bytes (default 64 MiB)", type=int)
    env_option(
        p,
        "--idle-timeout",
        "300",
        "close a stream that sends nothing for this many seconds (default 300; 0: never)",
        type=float,
    )
    env_option(
        p,
        "--keepalive-time",
        "30",
        "seconds between HTTP/2 keepalive pings on idle connections (default 30)",
        type=float,
    )
    env_option(
        p,
        "--keepalive-timeout",
        "10",
        "seconds to wait for a keepalive ping's answer before closing the connection (default 10)",
        type=float,
    )
    env_option(
        p,
        "--max-connection-age",
        "0",
        "ask connections older than this many seconds to reconnect, so long streams spread over "
        "replicas (default 0: never)",
        type=float,
    )
    env_option(
        p,
        "--max-connection-age-grace",
        "30",
        "seconds an aged connection's open streams get to finish (default 30)",
        type=float,
    )
    env_option(p, "--metrics-port", "0", "serve Prometheus metrics on this port at /metrics (default 0: off)", type=int)
    p.add_argument(
        "--reuse-port",
        action="store_true",
        default=env_default("reuse-port", "0").strip().lower() in ("1", "true", "yes", "on"),
        help="let several segstream-server processes listen on one --port (SO_REUSEPORT; the kernel spreads "
        "connections over them); without it a port already in use is a startup error",
    )
    env_option(
        p,
        "--max-engine-failures",
        "10",
        "consecutive frames lost to inference failures before health turns NOT_SERVING so an "
        "orchestrator restarts the server (default 10; 0: never)",
        type=int,
    )
    env_option(
        p,
        "--stall-timeout",
        "30",
        "seconds frames may wait while the inference engine completes no batch before health turns "
        "NOT_SERVING (SERVING again once batches complete; default 30; 0: never)",
        type=float,
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=env_default("log-format", "text"),
        help="log as text lines or as one JSON object per line with stream and frame ids (default text)",
    )
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=env_default("event-loop", "auto"),
        help="asyncio event loop: auto takes uvloop where it is installed (less time per frame), else the "
        "standard loop; uvloop insists (default auto)",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip running each model once before reporting SERVING")
    p.add_argument("--no-reflection", action="store_true", help="do not offer gRPC server reflection")
    env_option(
        p,
        "--tls-cert",
        None,
        "serve TLS with this PEM certificate chain (needs --tls-key; default: plaintext)",
        type=Path,
        metavar="PEM",
    )
    env_option(p, "--tls-key", None, "PEM private key of --tls-cert", type=Path, metavar="PEM")
    env_option(
        p,
        "--tls-client-ca",
        None,
        "mutual TLS: require client certificates signed by these PEM CA certificates (needs --tls-cert)",
        type=Path,
        metavar="PEM",
    )
    env_option(
        p,
        "--auth-token-file",
        None,
        "require 'authorization: Bearer <token>' on every call, server reflection included; FILE holds the "
        "accepted tokens, one per line (blank lines and # comments ignored); grpc.health.v1 health checks stay open",
        type=Path,
        metavar="FILE",
    )
    env_option(p, "--grace", "5", "seconds in-flight calls get to finish on SIGTERM/SIGINT (default 5)", type=float)
    p.add_argument(
        "--log-level",
        default=env_default("log-level", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)",
    )
    add_gpu_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    texts = args.model or [t for t in env_default("model", "").split(",") if t]
    return ServerConfig(
        models=tuple(ModelSpec.parse(t) for t in texts),
        host=args.host,
        port=args.port,
        size=args.size,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        inflight=args.inflight,
        max_streams=args.max_streams,
        max_unary=args.max_unary,
        max_frame_pixels=args.max_frame_pixels,
        max_inference_pixels=args.max_inference_pixels,
        max_aspect=args.max_aspect,
        max_message_bytes=args.max_message_bytes,
        warmup=not args.no_warmup,
        reflection=not args.no_reflection,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_token_file=args.auth_token_file,
        idle_timeout_s=args.idle_timeout,
        keepalive_time_s=args.keepalive_time,
        keepalive_timeout_s=args.keepalive_timeout,
        max_connection_age_s=args.max_connection_age,
        max_connection_age_grace_s=args.max_connection_age_grace,
        metrics_port=args.metrics_port,
        reuse_port=args.reuse_port,
        max_engine_failures=args.max_engine_failures,
        stall_timeout_s=args.stall_timeout,
        gpu=gpu_options_from_args(args),
    )


async def _serve(config: ServerConfig, grace: float) -> None:
    from segstream.server.app import SegstreamServer

    server = SegstreamServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(server.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
    try:
        await starting  # raises a load failure
    except asyncio.CancelledError:
        pass
    except BaseException:
        stopping.cancel()
        await server.stop(0)
        raise
    await stopping
    log.info("stopping: finishing in-flight calls for up to %.1f s", grace)
    await server.stop(grace)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.exit(2, f"segstream-server: error: {exc}\n")
    configure_logging(args.log_level, args.log_format)
    try:
        loop_name, new_loop = loop_factory(args.event_loop)
        log.info("event loop: %s", loop_name)
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(_serve(config, args.grace))
    except (EngineError, OSError, EventLoopUnavailable) as exc:
        print(f"segstream-server: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
