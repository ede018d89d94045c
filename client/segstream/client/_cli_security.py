"""segstream-client's connection security options: TLS, mutual TLS and bearer tokens."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict

from segstream.client._cli_support import CliError
from segstream.client._security import read_token_file

TOKEN_ENV = "SEGSTREAM_TOKEN"


class SecurityKwargs(TypedDict):
    """The SegmentationClient arguments the options select."""

    tls: bool | None
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    token: str | None


def add_security_options(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None) -> None:
    """Adds the options; `environ` None (a subcommand) keeps what the main parser found."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if environ is None else value

    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="connect over TLS, trusting the system's CA certificates unless --tls-ca is given",
    )
    parser.add_argument(
        "--tls-ca", metavar="PEM", default=default(None), help="CA certificates that sign the server's (implies --tls)"
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        default=default(None),
        help="client certificate, for servers that require mutual TLS (with --tls-key; implies --tls)",
    )
    parser.add_argument("--tls-key", metavar="PEM", default=default(None), help="private key of --tls-cert")
    parser.add_argument(
        "--token",
        default=default(None),
        help=f"bearer token for servers started with --auth-token-file (default: ${TOKEN_ENV}); "
        "prefer --token-file or the environment: other users can see a command line",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=default(None),
        help="read the bearer token from FILE (its first line that is not blank or a # comment)",
    )
    if environ is not None:
        parser.set_defaults(env_token=environ.get(TOKEN_ENV) or None)


def security_kwargs(args: argparse.Namespace) -> SecurityKwargs:
    """SegmentationClient's TLS and token arguments from the parsed options."""
    if args.token is not None and args.token_file is not None:
        raise CliError("pass --token or --token-file, not both")
    token: str | None = args.token if args.token is not None else args.env_token
    if args.token_file is not None:
        token = _read_token(Path(args.token_file))
    return SecurityKwargs(
        tls=True if args.tls else None,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=token,
    )


def _read_token(path: Path) -> str:
    try:
        return read_token_file(path)
    except ValueError as exc:
        raise CliError(f"--token-file {path}: {exc}") from None
