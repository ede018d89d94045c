"""Channel security both clients share: TLS and mutual-TLS credentials, and the bearer-token metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeAlias

import grpc

from segstream.client._channel import ChannelOption

# A PEM file's path, or the PEM bytes themselves.
PemSource: TypeAlias = str | os.PathLike[str] | bytes
Metadata: TypeAlias = tuple[tuple[str, str], ...]

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"


def _pem(name: str, source: PemSource, mark: bytes, what: str) -> bytes:
    if isinstance(source, bytes):
        data = source
        origin = "the bytes given"
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ValueError(f"{name}: cannot read {source} ({exc.strerror or type(exc).__name__})") from None
        origin = str(source)
    if mark not in data:
        # Never quote the content: it may be a private key in the wrong place.
        raise ValueError(f"{name}: {origin} is not {what} (no '{mark.decode().strip('-')}' block)")
    return data


def channel_security(
    credentials: grpc.ChannelCredentials | None,
    *,
    tls: bool | None,
    tls_ca: PemSource | None,
    tls_cert: PemSource | None,
    tls_key: PemSource | None,
    server_name_override: str | None,
) -> tuple[grpc.ChannelCredentials | None, list[ChannelOption]]:
    """The channel credentials (None: plaintext) and channel options the TLS settings ask for.

    `tls` None means "TLS when a CA or a client certificate is given"; `tls_ca` None with TLS trusts
    the system's root certificates; `tls_cert` and `tls_key` (both or neither) answer a server that
    asks for client certificates (mutual TLS).
    """
    given = tls_ca is not None or tls_cert is not None or tls_key is not None
    use_tls = (given or credentials is not None) if tls is None else tls
    if credentials is not None and (tls is not None or given):
        raise ValueError("pass either credentials or the tls options (tls, tls_ca, tls_cert, tls_key), not both")
    if not use_tls and given:
        raise ValueError("tls=False contradicts tls_ca/tls_cert/tls_key: drop them or set tls=True")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together: pass the client certificate and its private key")
    if server_name_override is not None and not use_tls:
        raise ValueError("server_name_override only applies to TLS channels")
    options: list[ChannelOption] = []
    if server_name_override is not None:
        # The name the server's certificate must carry, instead of the host in the target.
        options.append(("grpc.ssl_target_name_override", server_name_override))
    if credentials is not None or not use_tls:
        return credentials, options
    return (
        grpc.ssl_channel_credentials(
            root_certificates=None if tls_ca is None else _pem("tls_ca", tls_ca, _CERT_MARK, "PEM CA certificates"),
            private_key=None if tls_key is None else _pem("tls_key", tls_key, _KEY_MARK, "a PEM private key"),
            certificate_chain=None
            if tls_cert is None
            else _pem("tls_cert", tls_cert, _CERT_MARK, "a PEM certificate chain"),
        ),
        options,
    )


def auth_metadata(token: str | None) -> Metadata | None:
    """The call metadata that carries a bearer token (None without one)."""
    if token is None:
        return None
    if not token or not all(33 <= ord(c) <= 126 for c in token):
        # Never echo the token, not even a bad one.
        raise ValueError("token must be non-empty printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)


def read_token_file(path: Path) -> str:
    """The first token in a token file (blank lines and # comments skipped); ValueError says why not."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise ValueError(f"cannot read it ({reason})") from None
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            return token
    raise ValueError("no token in it")
