"""Transport security and caller authentication: TLS / mutual TLS credentials and bearer tokens.

TLS (`--tls-cert`, `--tls-key`) encrypts the connection and proves the server's identity; mutual TLS
(`--tls-client-ca`) also makes every client present a certificate signed by that CA, checked during
the handshake, before any call. Bearer tokens (`--auth-token-file`) are checked per call by an
interceptor: every method needs `authorization: Bearer <token>` except the grpc.health.v1 health
service, which orchestrators probe without credentials. Tokens are compared in constant time and
never appear in a log line or an error message.

The files are read once, by `server_security`, when the server is built: a file that cannot be read
or does not hold what its flag needs is a ConfigError naming the flag, before any model loads.
Which flags go together is checked earlier, by ServerConfig, on the values alone.
"""

from __future__ import annotations

import hmac
import logging
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio

from segstream.server.config import ConfigError, ServerConfig
from segstream.server.untrusted import clip

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor

log = logging.getLogger(__name__)

# Probes from load balancers and orchestrators carry no credentials; health reveals nothing secret.
OPEN_METHOD_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/",)

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"
_HOW_TO_AUTHENTICATE = (
    "send the metadata 'authorization: Bearer <token>' with a token from the server's --auth-token-file "
    "(segstream-client --token-file FILE, or token=... in SegmentationClient)"
)


def _read_file(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None


def _read_pem(flag: str, path: Path, mark: bytes, what: str) -> bytes:
    data = _read_file(flag, path)
    if mark not in data:
        # Never quote the content: it may be a private key in the wrong place.
        raise ConfigError(f"{flag} {path}: not {what} (no '{mark.decode().strip('-')}' block found)")
    return data


def read_tokens(path: Path) -> tuple[str, ...]:
    """The bearer tokens in `path`: one per line; blank lines and lines starting with # are ignored."""
    try:
        text = _read_file("--auth-token-file", path).decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"--auth-token-file {path}: tokens must be printable ASCII") from None
    tokens: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        # Error messages name the line, never its content.
        if not all(33 <= ord(c) <= 126 for c in token):
            raise ConfigError(
                f"--auth-token-file {path}: line {number} is not a valid token (printable ASCII, no spaces)"
            )
        tokens.append(token)
    if not tokens:
        raise ConfigError(
            f"--auth-token-file {path}: no token in it; write one per line (e.g. the output of 'openssl rand -hex 32')"
        )
    return tuple(tokens)


@dataclass(frozen=True)
class ServerSecurity:
    """What the gRPC server is built with for the configured security: port credentials and interceptors."""

    credentials: grpc.ServerCredentials | None  # None: serve plaintext
    interceptors: tuple[grpc.aio.ServerInterceptor[Any, Any], ...]


@dataclass(frozen=True)
class _TlsFiles:
    chain: bytes
    key: bytes
    client_ca: bytes | None


def server_security(config: ServerConfig) -> ServerSecurity:
    """Reads the TLS and token files once; raises ConfigError naming the flag of a file that cannot serve."""
    tls = _read_tls(config)
    tokens = read_tokens(config.auth_token_file) if config.auth_token_file is not None else None
    # Nothing is logged until every file has been read, so a bad one is the only line a start prints.
    return ServerSecurity(_credentials(config, tls), _interceptors(config, tokens))


def _read_tls(config: ServerConfig) -> _TlsFiles | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    chain = _read_pem("--tls-cert", config.tls_cert, _CERT_MARK, "a PEM certificate chain")
    key = _read_pem("--tls-key", config.tls_key, _KEY_MARK, "a PEM private key")
    client_ca = None
    if config.tls_client_ca is not None:
        client_ca = _read_pem("--tls-client-ca", config.tls_client_ca, _CERT_MARK, "PEM CA certificates")
    return _TlsFiles(chain, key, client_ca)


def _credentials(config: ServerConfig, tls: _TlsFiles | None) -> grpc.ServerCredentials | None:
    if tls is None:
        if config.auth_token_file is not None:
            log.warning(
                "bearer tokens travel in plaintext without --tls-cert/--tls-key: the network path can read them"
            )
        return None
    log.info(
        "TLS on with certificate %s%s",
        config.tls_cert,
        f"; clients must present a certificate signed by {config.tls_client_ca}" if tls.client_ca else "",
    )
    return grpc.ssl_server_credentials(
        [(tls.key, tls.chain)], root_certificates=tls.client_ca, require_client_auth=bool(tls.client_ca)
    )


def _interceptors(
    config: ServerConfig, tokens: Sequence[str] | None
) -> tuple[grpc.aio.ServerInterceptor[Any, Any], ...]:
    path = config.auth_token_file
    if path is None or tokens is None:
        return ()
    _warn_if_exposed(path)
    log.info("bearer token authentication on: %d token(s) from %s; health checks stay open", len(tokens), path)
    return (BearerTokenInterceptor(tokens),)


def _warn_if_exposed(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s can be read by other users (mode %o): chmod 600 it", path, stat.S_IMODE(mode))


def _presented_tokens(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[bytes]:
    presented: list[bytes] = []
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
        scheme, _, credential = raw.strip().partition(b" ")
        if scheme.lower() == b"bearer" and credential.strip():
            presented.append(credential.strip())
    return presented


class BearerTokenInterceptor(_Interceptor):
    """Refuses every call without a valid bearer token (UNAUTHENTICATED), except `open_prefixes`."""

    def __init__(self, tokens: Sequence[str], open_prefixes: Sequence[str] = OPEN_METHOD_PREFIXES) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._tokens = tuple(t.encode("ascii") for t in tokens)
        self._open = tuple(open_prefixes)

    def __repr__(self) -> str:
        return f"BearerTokenInterceptor({len(self._tokens)} token(s))"

    def accepts(self, presented: bytes) -> bool:
        """Whether `presented` is one of the accepted tokens."""
        # compare_digest against every token, without stopping at a match, so the time taken says
        # neither which token matched nor how much of one did.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The method's own handler for an open method or an accepted token, else one that refuses the call."""
        method = handler_call_details.method
        if method.startswith(self._open):
            return await continuation(handler_call_details)
        presented = _presented_tokens(handler_call_details.invocation_metadata)
        if any(self.accepts(p) for p in presented):
            return await continuation(handler_call_details)
        reason = "bearer token not accepted" if presented else "no bearer token sent"
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        return _refusal(method, reason, handler)


def _refusal(
    method: str, reason: str, handler: grpc.RpcMethodHandler[Any, Any] | None
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED."""
    message = f"{reason}: {_HOW_TO_AUTHENTICATE}"

    async def refuse(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        # The method path is whatever the client sent, known to the server or not.
        log.info("refused %s from %s: %s", clip(method), clip(context.peer()), reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # Same streaming shape as the real method, so the call ends cleanly; an unknown method is also
    # refused (as a stream) rather than answered UNIMPLEMENTED, which would confirm it does not exist.
    request_streaming = handler.request_streaming if handler is not None else True
    response_streaming = handler.response_streaming if handler is not None else True
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
