"""`segstream-server`: the command line of the segmentation server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from segstream.server.config import (
    DEVICES,
    ConfigError,
    ModelSpec,
    ServerConfig,
    env_default,
    env_flag,
    env_option,
    with_model_options,
)
from segstream.server.engine import EngineError
from segstream.server.event_loop import EVENT_LOOPS, EventLoopUnavailable, loop_factory
from segstream.server.gpu_cli import add_gpu_arguments, gpu_options_from_args
from segstream.server.logs import configure_logging
from segstream.wire.argparsing import OneLineParser
from segstream.wire.extras import require_server_extra

log = logging.getLogger("segstream.server")

# A dataclass keeps each field's default as a class attribute: the flags below take their defaults,
# and their help texts the numbers they quote, from ServerConfig, so each default is written once.
_DEFAULT = ServerConfig
# Options of the command line alone, not of the server.
_GRACE_S = 5.0
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LOG_LEVEL = "INFO"
_LOG_FORMATS = ("text", "json")
_LOG_FORMAT = "text"
_EVENT_LOOP = "auto"


def build_parser() -> argparse.ArgumentParser:
    """segstream-server's argument parser; every option defaults to SEGSTREAM_<OPTION>, else ServerConfig's."""
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
    p.add_argument(
        "--classes",
        action="append",
        metavar="[MODEL=]FILE",
        help="class names of a model whose file does not name them (repeatable): one name per line in class "
        "order, optionally followed by #rrggbb, or JSON; MODEL may be left out when one model is served; "
        "without either, only a 21-class model is served, as Pascal VOC (env SEGSTREAM_CLASSES: comma-separated "
        "list; see docs/models.md)",
    )
    p.add_argument(
        "--head",
        action="append",
        metavar="[MODEL:]HEAD=OUTPUT",
        help="serve head out or aux of a model from the graph output OUTPUT, e.g. --head out=logits (repeatable; "
        "default: the outputs named out and aux; env SEGSTREAM_HEAD: comma-separated list)",
    )
    p.add_argument(
        "--host",
        default=env_default("host", _DEFAULT.host),
        help=f"address to listen on (default: {_DEFAULT.host}, all)",
    )
    env_option(p, "--port", _DEFAULT.port, f"port (default {_DEFAULT.port}; 0 picks a free one)", type=int)
    env_option(
        p,
        "--size",
        _DEFAULT.size,
        f"short side in pixels frames are resized to before the network (default {_DEFAULT.size}, the model card's; "
        "0: no resize)",
        type=int,
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=env_default("device", _DEFAULT.device),
        help="execution provider: auto uses CUDA only when it really loads, else the CPU; cpu, cuda, tensorrt "
        f"insist and fail at startup if unavailable (default {_DEFAULT.device})",
    )
    env_option(
        p,
        "--workers",
        _DEFAULT.workers,
        f"inference worker threads (default {_DEFAULT.workers}: 2, or 1 on a one-core CPU; on a CPU "
        "LATEST frames still run one at a time)",
        type=int,
    )
    env_option(
        p,
        "--threads",
        _DEFAULT.threads,
        f"ONNX Runtime intra-op threads per session (default {_DEFAULT.threads}: all cores)",
        type=int,
    )
    env_option(
        p,
        "--max-batch",
        _DEFAULT.max_batch,
        f"largest batch of same-shape frames across streams (default {_DEFAULT.max_batch})",
        type=int,
    )
    env_option(
        p,
        "--max-delay-ms",
        _DEFAULT.max_delay_ms,
        f"longest wait for batch-mates in ms (default {_DEFAULT.max_delay_ms:g})",
        type=float,
    )
    env_option(
        p,
        "--inflight",
        _DEFAULT.inflight,
        f"frames of one ORDERED stream in flight before the server stops reading (default {_DEFAULT.inflight})",
        type=int,
    )
    env_option(
        p,
        "--max-streams",
        _DEFAULT.max_streams,
        f"concurrent streams; more get RESOURCE_EXHAUSTED (default {_DEFAULT.max_streams})",
        type=int,
    )
    env_option(
        p,
        "--max-unary",
        _DEFAULT.max_unary,
        "concurrent SegmentImage calls, counted apart from --max-streams; more get RESOURCE_EXHAUSTED "
        f"(default {_DEFAULT.max_unary})",
        type=int,
    )
    env_option(
        p,
        "--max-frame-pixels",
        _DEFAULT.max_frame_pixels,
        f"largest frame in pixels (default {_DEFAULT.max_frame_pixels}, 8K)",
        type=int,
    )
    env_option(
        p,
        "--max-inference-pixels",
        _DEFAULT.max_inference_pixels,
        "largest network input in pixels, after the resize to --size; costlier frames get RESOURCE_EXHAUSTED "
        f"(default {_DEFAULT.max_inference_pixels}: --size {_DEFAULT.size} up to a 3.9:1 frame, or 1 MP with --size 0)",
        type=int,
    )
    env_option(
        p,
        "--max-aspect",
        _DEFAULT.max_aspect,
        "largest ratio of a frame's long side to its short side; thinner frames get RESOURCE_EXHAUSTED "
        f"(default {_DEFAULT.max_aspect:g})",
        type=float,
    )
    env_option(
        p,
        "--max-message-bytes",
        _DEFAULT.max_message_bytes,
        f"largest gRPC message in bytes (default {_DEFAULT.max_message_bytes >> 20} MiB)",
        type=int,
    )
    env_option(
        p,
        "--idle-timeout",
        _DEFAULT.idle_timeout_s,
        f"close a stream that sends nothing for this many seconds (default {_DEFAULT.idle_timeout_s:g}; 0: never)",
        type=float,
    )
    env_option(
        p,
        "--keepalive-time",
        _DEFAULT.keepalive_time_s,
        f"seconds between HTTP/2 keepalive pings on idle connections (default {_DEFAULT.keepalive_time_s:g})",
        type=float,
    )
    env_option(
        p,
        "--keepalive-timeout",
        _DEFAULT.keepalive_timeout_s,
        "seconds to wait for a keepalive ping's answer before closing the connection "
        f"(default {_DEFAULT.keepalive_timeout_s:g})",
        type=float,
    )
    env_option(
        p,
        "--max-connection-age",
        _DEFAULT.max_connection_age_s,
        "ask connections older than this many seconds to reconnect, so long streams spread over "
        f"replicas (default {_DEFAULT.max_connection_age_s:g}: never)",
        type=float,
    )
    env_option(
        p,
        "--max-connection-age-grace",
        _DEFAULT.max_connection_age_grace_s,
        f"seconds an aged connection's open streams get to finish (default {_DEFAULT.max_connection_age_grace_s:g})",
        type=float,
    )
    env_option(
        p,
        "--metrics-port",
        _DEFAULT.metrics_port,
        f"serve Prometheus metrics on this port at /metrics (default {_DEFAULT.metrics_port}: off)",
        type=int,
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        default=env_flag("reuse-port", _DEFAULT.reuse_port),
        help="let several segstream-server processes listen on one --port (SO_REUSEPORT; the kernel spreads "
        "connections over them); without it a port already in use is a startup error",
    )
    env_option(
        p,
        "--max-engine-failures",
        _DEFAULT.max_engine_failures,
        "consecutive frames lost to inference failures before health turns NOT_SERVING so an "
        f"orchestrator restarts the server (default {_DEFAULT.max_engine_failures}; 0: never)",
        type=int,
    )
    env_option(
        p,
        "--stall-timeout",
        _DEFAULT.stall_timeout_s,
        "seconds frames may wait while the inference engine completes no batch before health turns "
        f"NOT_SERVING (SERVING again once batches complete; default {_DEFAULT.stall_timeout_s:g}; 0: never); "
        "on shutdown, a batch still running that long after the engine's last progress is left behind",
        type=float,
    )
    p.add_argument(
        "--log-format",
        choices=_LOG_FORMATS,
        default=env_default("log-format", _LOG_FORMAT),
        help=f"log as text lines or as one JSON object per line with stream and frame ids (default {_LOG_FORMAT})",
    )
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=env_default("event-loop", _EVENT_LOOP),
        help="asyncio event loop: auto takes uvloop where it is installed (less time per frame), else the "
        f"standard loop; uvloop insists (default {_EVENT_LOOP})",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip running each model once before reporting SERVING")
    p.add_argument("--no-reflection", action="store_true", help="do not offer gRPC server reflection")
    env_option(
        p,
        "--tls-cert",
        _DEFAULT.tls_cert,
        "serve TLS with this PEM certificate chain (needs --tls-key; default: plaintext)",
        type=Path,
        metavar="PEM",
    )
    env_option(p, "--tls-key", _DEFAULT.tls_key, "PEM private key of --tls-cert", type=Path, metavar="PEM")
    env_option(
        p,
        "--tls-client-ca",
        _DEFAULT.tls_client_ca,
        "mutual TLS: require client certificates signed by these PEM CA certificates (needs --tls-cert)",
        type=Path,
        metavar="PEM",
    )
    env_option(
        p,
        "--auth-token-file",
        _DEFAULT.auth_token_file,
        "require 'authorization: Bearer <token>' on every call, server reflection included; FILE holds the "
        "accepted tokens, one per line (blank lines and # comments ignored); grpc.health.v1 health checks stay open",
        type=Path,
        metavar="FILE",
    )
    env_option(
        p,
        "--grace",
        _GRACE_S,
        f"seconds in-flight calls get to finish on SIGTERM/SIGINT (default {_GRACE_S:g})",
        type=float,
    )
    p.add_argument(
        "--log-level",
        default=env_default("log-level", _LOG_LEVEL),
        choices=_LOG_LEVELS,
        help=f"log level (default {_LOG_LEVEL})",
    )
    add_gpu_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of parsed flags; raises ConfigError for values that cannot work."""
    texts = args.model or _env_list("model")
    models = with_model_options(
        [ModelSpec.parse(t) for t in texts], args.classes or _env_list("classes"), args.head or _env_list("head")
    )
    return ServerConfig(
        models=models,
        host=args.host,
        port=args.port,
        size=args.size,
        buckets=args.buckets,
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


def _env_list(name: str) -> list[str]:
    return [t for t in env_default(name, "").split(",") if t]


async def _serve(config: ServerConfig, grace: float, loop_name: str) -> None:
    from segstream.server.app import SegstreamServer

    # Builds the credentials (a bad TLS or token file is a ConfigError) before anything is logged.
    server = SegstreamServer(config)
    log.info("event loop: %s", loop_name)
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
    except BaseException as exc:
        stopping.cancel()
        await server.stop(0)
        if server.abandoned_work:
            raise _WorkLeftRunning from exc
        raise
    await stopping
    log.info("stopping: finishing in-flight calls for up to %.1f s", grace)
    await server.stop(grace)
    if server.abandoned_work:
        raise _WorkLeftRunning
    log.info("stopped")


class _WorkLeftRunning(Exception):
    """The server stopped with a thread still inside ONNX Runtime (a hung run, or models still loading)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs segstream-server until SIGTERM/SIGINT: 0 when stopped, 1 when it cannot serve, 2 for bad settings.

    1 also when it stopped with an inference run that never returned (a hung engine), or while the
    models were still loading.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    require_server_extra("segstream-server")  # --help works without the server extra; serving does not
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.exit(2, f"segstream-server: error: {exc}\n")
    configure_logging(args.log_level, args.log_format)
    try:
        loop_name, new_loop = loop_factory(args.event_loop)
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(_serve(config, args.grace, loop_name))
    except ConfigError as exc:  # a TLS or token file that cannot serve, found as the server is built
        parser.exit(2, f"segstream-server: error: {exc}\n")
    except (EngineError, OSError, EventLoopUnavailable) as exc:
        print(f"segstream-server: error: {exc}", file=sys.stderr)
        return 1
    except _WorkLeftRunning as exc:
        if exc.__cause__ is not None:  # startup failed, then the stop left work running
            print(f"segstream-server: error: {exc.__cause__}", file=sys.stderr)
        # A thread still inside ONNX Runtime would hold up (or crash) the interpreter's exit, which
        # joins and finalises what that thread uses: leave at once, logs flushed.
        logging.shutdown()
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
