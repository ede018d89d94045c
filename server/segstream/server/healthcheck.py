"""`python -m segstream.server.healthcheck`: one grpc.health.v1 Check against a server, as an exit status.

For container health checks (Docker's HEALTHCHECK) and scripts: exit 0 when the server answers SERVING,
1 for anything else (NOT_SERVING while the models load or the server drains, a service it does not know,
no connection, no answer within --timeout), 2 for a bad command line. One line on stdout says which.
It speaks plaintext gRPC, as Kubernetes' own gRPC probe does, and loads neither numpy nor a model, so it starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segstream.wire.argparsing import OneLineParser, positive_seconds

PROG = "segstream.server.healthcheck"
DEFAULT_HOST = "localhost"
# The server's own default port, and the environment variable it reads it from.
DEFAULT_PORT = 50051
PORT_ENV = "SEGSTREAM_PORT"
DEFAULT_TIMEOUT_S = 3.0

_STATUS_NAMES = {number: name for name, number in health_pb2.HealthCheckResponse.ServingStatus.items()}


def build_parser() -> argparse.ArgumentParser:
    """The health check's argument parser; --port defaults to $SEGSTREAM_PORT, like the server's."""
    p = OneLineParser(
        prog=PROG,
        description="Ask a segstream server's grpc.health.v1 service whether it is SERVING: exit 0 if so, else 1.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"server address (default {DEFAULT_HOST})")
    p.add_argument(
        "--port",
        type=int,
        default=os.environ.get(PORT_ENV) or str(DEFAULT_PORT),
        help=f"server port (default ${PORT_ENV}, else {DEFAULT_PORT})",
    )
    p.add_argument(
        "--service",
        default="",
        help='service to ask about (default "": the whole server; "segstream.v1.Segmentation" answers the same)',
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for the answer, connecting included (default {DEFAULT_TIMEOUT_S:g})",
    )
    return p


def check(target: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """One health Check of `service` at `target`: (True, "SERVING") or (False, what was wrong instead)."""
    # A health check asks the server next to it: an HTTP proxy set in the environment must not stand between.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "ERROR"
            return False, f"{name}: {' '.join((details or '').split())}"
    status = int(response.status)
    name = _STATUS_NAMES.get(status, str(status))
    return status == health_pb2.HealthCheckResponse.SERVING, name


def main(argv: Sequence[str] | None = None) -> int:
    """Check once; print the outcome on one line; return 0 for SERVING, 1 otherwise."""
    args = build_parser().parse_args(argv)
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    target = f"{host}:{args.port}"
    serving, outcome = check(target, args.service, args.timeout)
    print(f"{target}: {outcome}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
