"""TLS, mutual TLS and bearer tokens against real servers, with certificates made for each test run."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from segstream.client import (
    AsyncSegmentationClient,
    AuthenticationError,
    SegmentationClient,
    SegstreamError,
    ServerUnavailableError,
)
from segstream.client import cli as client_cli
from segstream.server import cli as server_cli
from segstream.server.config import ConfigError, ModelSpec, ServerConfig
from segstream.server.security import BearerTokenInterceptor, read_tokens, server_security
from tests.conftest import ServerFactory

pytestmark = pytest.mark.timeout(30)

TOKEN = "s3cr3t-7c0ffee-token-d5a1e0"
OTHER_TOKEN = "second-token-0123456789abcdef"
WRONG_TOKEN = "wrong-token-9f8e7d6c5b4a"
# Refusals (bad certificates, plaintext against TLS) must come back fast, not at a deadline.
REFUSAL_S = 5.0
CALL_S = 10.0


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_cert: Path  # a client certificate signed by other_ca, which the server does not trust
    rogue_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _issue("segstream test CA", ca_key, None)
    other = _issue("untrusted test CA", other_key, None)
    server_key, client_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    san: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _issue("localhost", server_key, (ca, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH, san=san)
    client = _issue("robot-1", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue = _issue("robot-x", rogue_key, (other, other_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = _write(folder, "ca", ca, ca_key)
    other_path, _ = _write(folder, "other-ca", other, other_key)
    server_cert, server_key_path = _write(folder, "server", server, server_key)
    client_cert, client_key_path = _write(folder, "client", client, client_key)
    rogue_cert, rogue_key_path = _write(folder, "rogue", rogue, rogue_key)
    return Pki(
        ca_path, server_cert, server_key_path, client_cert, client_key_path, other_path, rogue_cert, rogue_key_path
    )


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# robots\n\n  {TOKEN}  \n# ops\n{OTHER_TOKEN}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def image(sample_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(sample_bgr[:96, :128])


def _target(port: int) -> str:
    return f"127.0.0.1:{port}"


async def _refused(client: AsyncSegmentationClient) -> SegstreamError:
    """The error of a call that must fail at connection time, quickly."""
    started = time.monotonic()
    async with client:
        with pytest.raises(ServerUnavailableError) as info:
            await client.models(timeout=REFUSAL_S)
    assert time.monotonic() - started < REFUSAL_S
    assert "TLS" in str(info.value)  # the hint points at the TLS settings, not at a server being down
    return info.value


# --- TLS ---------------------------------------------------------------------------------------


async def test_tls_client_trusting_the_ca_segments_and_others_are_refused(
    server_factory: ServerFactory, pki: Pki, image: npt.NDArray[np.uint8]
) -> None:
    async with server_factory(tls_cert=pki.server_cert, tls_key=pki.server_key, warmup=False) as server:
        target = _target(server.port)
        async with AsyncSegmentationClient(target, tls_ca=pki.ca, timeout=CALL_S) as client:
            await client.wait_ready(timeout=CALL_S)
            result = await client.segment(image)
        assert result.ok and result.labels is not None and result.labels.shape == image.shape[:2]
        # The certificate's DNS name instead of the address; CA given as bytes.
        async with AsyncSegmentationClient(
            target, tls_ca=pki.ca.read_bytes(), server_name_override="localhost", timeout=CALL_S
        ) as client:
            assert [m.name for m in await client.models()] == ["tiny"]
        await _refused(AsyncSegmentationClient(target))  # plaintext against a TLS port
        await _refused(AsyncSegmentationClient(target, tls_ca=pki.other_ca))  # a CA that did not sign it
        await _refused(AsyncSegmentationClient(target, tls=True))  # system roots do not know the test CA


# --- mutual TLS --------------------------------------------------------------------------------


async def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(
    server_factory: ServerFactory, pki: Pki, image: npt.NDArray[np.uint8]
) -> None:
    async with server_factory(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca, warmup=False
    ) as server:
        target = _target(server.port)

        def segment_sync() -> bool:
            with SegmentationClient(
                target, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key, timeout=CALL_S
            ) as client:
                return client.segment(image).ok

        assert await asyncio.to_thread(segment_sync)
        async with AsyncSegmentationClient(
            target, tls_ca=pki.ca, tls_cert=pki.client_cert.read_bytes(), tls_key=pki.client_key, timeout=CALL_S
        ) as client:
            assert (await client.segment(image)).ok
        await _refused(AsyncSegmentationClient(target, tls_ca=pki.ca))  # no client certificate
        await _refused(AsyncSegmentationClient(target, tls_ca=pki.ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key))


# --- bearer tokens -----------------------------------------------------------------------------


async def test_calls_without_a_valid_token_are_unauthenticated_and_say_how_to_authenticate(
    server_factory: ServerFactory,
    token_file: Path,
    image: npt.NDArray[np.uint8],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[SegstreamError] = []
    async with server_factory(auth_token_file=token_file, warmup=False) as server:
        target = _target(server.port)
        for token in (None, WRONG_TOKEN):
            async with AsyncSegmentationClient(target, token=token, timeout=CALL_S) as client:
                with pytest.raises(AuthenticationError) as info:
                    await client.models()
                errors.append(info.value)
                with pytest.raises(AuthenticationError) as info:
                    await client.segment(image)
                errors.append(info.value)

            def stream(token: str | None = token) -> None:
                with SegmentationClient(target, token=token, timeout=CALL_S) as client:
                    for _ in client.stream([image]):
                        pass

            with pytest.raises(AuthenticationError) as info:
                await asyncio.wait_for(asyncio.to_thread(stream), CALL_S)
            errors.append(info.value)
        async with AsyncSegmentationClient(target, token=WRONG_TOKEN, timeout=CALL_S) as client:
            with pytest.raises(AuthenticationError) as info:
                async for _ in client.stream([image]):
                    pass
            errors.append(info.value)
    for error in errors:
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <token>" in str(error)
    assert "no bearer token sent" in str(errors[0]) and "not accepted" in str(errors[-1])
    assert "refused /segstream.v1.Segmentation/ListModels" in caplog.text
    for secret in (TOKEN, OTHER_TOKEN, WRONG_TOKEN):
        assert secret not in caplog.text
        assert all(secret not in str(e) and secret not in repr(e.__cause__) for e in errors)


async def test_the_right_token_works_for_both_clients_and_health_needs_none(
    server_factory: ServerFactory, token_file: Path, image: npt.NDArray[np.uint8], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with server_factory(auth_token_file=token_file, warmup=False) as server:
        target = _target(server.port)
        # Health checks are open: a probe without credentials sees SERVING.
        async with AsyncSegmentationClient(target, timeout=CALL_S) as anonymous:
            await anonymous.wait_ready(timeout=CALL_S)
        async with AsyncSegmentationClient(target, token=TOKEN, timeout=CALL_S) as client:
            await client.wait_ready(timeout=CALL_S)
            assert (await client.segment(image)).ok
            results = [r async for r in client.stream([image, image])]
            assert [r.ok for r in results] == [True, True]

        def sync_calls() -> tuple[list[str], int]:
            # The second token in the file works as well as the first.
            with SegmentationClient(target, token=OTHER_TOKEN, timeout=CALL_S) as client:
                client.wait_ready(timeout=CALL_S)
                return [m.name for m in client.models()], sum(r.ok for r in client.stream([image, image]))

        assert await asyncio.to_thread(sync_calls) == (["tiny"], 2)
    for secret in (TOKEN, OTHER_TOKEN):
        assert secret not in caplog.text


async def test_reflection_needs_the_token_and_health_watch_does_not(
    server_factory: ServerFactory, token_file: Path
) -> None:
    async def list_services() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async with (
        server_factory(auth_token_file=token_file, warmup=False) as server,
        grpc.aio.insecure_channel(_target(server.port)) as channel,
    ):
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in reflection.ServerReflectionInfo(list_services(), timeout=CALL_S)]
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        replies = [r async for r in reflection.ServerReflectionInfo(list_services(), timeout=CALL_S, metadata=metadata)]
        assert "segstream.v1.Segmentation" in {s.name for s in replies[0].list_services_response.service}
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CALL_S)
        assert (await anext(aiter(watch))).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        # Unknown methods are refused too, before anything reveals whether they exist.
        unknown = channel.unary_unary("/segstream.v1.Segmentation/Nope", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unknown(b"", timeout=CALL_S)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_tokens_and_mutual_tls_together(
    server_factory: ServerFactory, pki: Pki, token_file: Path, image: npt.NDArray[np.uint8]
) -> None:
    async with server_factory(
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
        auth_token_file=token_file,
        warmup=False,
    ) as server:
        tls: dict[str, Any] = {"tls_ca": pki.ca, "tls_cert": pki.client_cert, "tls_key": pki.client_key}
        async with AsyncSegmentationClient(_target(server.port), timeout=CALL_S, **tls) as client:
            with pytest.raises(AuthenticationError):
                await client.models()
        async with AsyncSegmentationClient(_target(server.port), timeout=CALL_S, token=TOKEN, **tls) as client:
            assert (await client.segment(image)).ok


def test_token_comparison_checks_every_token() -> None:
    interceptor = BearerTokenInterceptor(["a" * 20, "b" * 20])
    assert interceptor.accepts(b"b" * 20) and interceptor.accepts(b"a" * 20)
    assert not interceptor.accepts(b"a" * 19) and not interceptor.accepts(b"")
    assert "aaaa" not in repr(interceptor)


# --- configuration and command lines -----------------------------------------------------------


def test_token_file_format(tmp_path: Path, token_file: Path) -> None:
    assert read_tokens(token_file) == (TOKEN, OTHER_TOKEN)
    empty = tmp_path / "empty"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="no token in it"):
        read_tokens(empty)
    spaced = tmp_path / "spaced"
    spaced.write_text("two words-and-a-secret\n")
    with pytest.raises(ConfigError, match="line 1 is not a valid token") as info:
        read_tokens(spaced)
    assert "secret" not in str(info.value)


def test_security_settings_are_checked_with_one_line_errors(tiny_model: Path, pki: Pki, tmp_path: Path) -> None:
    models = (ModelSpec("tiny", tiny_model),)
    key_text = pki.server_key.read_text().splitlines()[1]
    # Flags that do not go together: the values alone say so.
    pairs: list[tuple[dict[str, Any], str]] = [
        ({"tls_cert": pki.server_cert}, "--tls-cert and --tls-key go together"),
        ({"tls_key": pki.server_key}, "--tls-cert and --tls-key go together"),
        ({"tls_client_ca": pki.ca}, "--tls-client-ca needs --tls-cert"),
    ]
    for settings, message in pairs:
        with pytest.raises(ConfigError, match=message) as info:
            ServerConfig(models=models, **settings)
        assert "\n" not in str(info.value)
    # Files that cannot serve: found where they are read, as the server builds its credentials.
    files: list[tuple[dict[str, Any], str]] = [
        ({"tls_cert": pki.server_key, "tls_key": pki.server_key}, "--tls-cert .*: not a PEM certificate chain"),
        ({"tls_cert": pki.server_cert, "tls_key": pki.server_cert}, "--tls-key .*: not a PEM private key"),
        ({"tls_cert": pki.server_cert, "tls_key": tmp_path / "nope.pem"}, "--tls-key .*nope.pem: cannot read it"),
        (
            {"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_client_ca": pki.server_key},
            "--tls-client-ca .*: not PEM CA certificates",
        ),
        ({"auth_token_file": tmp_path / "missing"}, "--auth-token-file .*missing: cannot read it"),
    ]
    for settings, message in files:
        config = ServerConfig(models=models, **settings)
        with pytest.raises(ConfigError, match=message) as info:
            server_security(config)
        assert "\n" not in str(info.value) and key_text not in str(info.value)


def test_security_files_are_read_once_when_the_server_is_built(
    tiny_model: Path, pki: Pki, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    read_bytes = Path.read_bytes

    def counting_read_bytes(path: Path) -> bytes:
        reads.append(path)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", counting_read_bytes)
    config = ServerConfig(
        models=(ModelSpec("tiny", tiny_model),),
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
        auth_token_file=token_file,
    )
    assert reads == []  # ServerConfig holds values only
    security = server_security(config)
    assert sorted(reads) == sorted([pki.server_cert, pki.server_key, pki.ca, token_file])
    assert security.credentials is not None and len(security.interceptors) == 1
    plain = server_security(ServerConfig(models=(ModelSpec("tiny", tiny_model),)))
    assert (plain.credentials, plain.interceptors) == (None, ())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tls-cert", "server.pem"], "--tls-cert and --tls-key go together"),
        (["--auth-token-file", "missing-tokens"], "--auth-token-file missing-tokens: cannot read it"),
        (["--tls-cert", "missing.pem", "--tls-key", "server.pem"], "--tls-cert missing.pem: cannot read it"),
        (["--tls-cert", "server.pem", "--tls-key", "server.pem"], "not a PEM private key"),
    ],
)
def test_server_cli_security_errors_are_one_line(
    extra: list[str], message: str, tiny_model: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", str(tiny_model), *[str(pki.server_cert) if a == "server.pem" else a for a in extra]]
    with pytest.raises(SystemExit) as info:
        server_cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_a_bad_security_file_fails_before_any_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")  # loading it would fail with exit status 1
    argv = ["--model", str(broken), "--port", "0", "--host", "127.0.0.1", "--auth-token-file", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as info:
        server_cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"segstream-server: error: --auth-token-file {tmp_path / 'x'}: cannot read it (No such file or directory)\n"
    )


def test_server_cli_reads_security_settings_from_flags_and_environment(
    tiny_model: Path, pki: Pki, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGSTREAM_AUTH_TOKEN_FILE", str(token_file))
    args = server_cli.build_parser().parse_args(
        ["--model", str(tiny_model), "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    )
    config = server_cli.config_from_args(args)
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == (pki.server_cert, pki.server_key, None)
    assert config.auth_token_file == token_file
    help_text = server_cli.build_parser().format_help()
    assert "server reflection included" in help_text and "health checks stay open" in help_text


@pytest.fixture
def client_token_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "client-token"
    path.write_text(f"# for the robot\n{TOKEN}\n")
    yield path


async def test_client_cli_with_tls_and_token(
    server_factory: ServerFactory,
    pki: Pki,
    token_file: Path,
    client_token_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with server_factory(
        tls_cert=pki.server_cert, tls_key=pki.server_key, auth_token_file=token_file, warmup=False
    ) as server:
        base = ["--server", _target(server.port), "--timeout", "5"]

        async def run(*argv: str) -> tuple[int, str]:
            code = await asyncio.to_thread(client_cli.main, [*base, *argv])
            captured = capsys.readouterr()
            return code, captured.out + captured.err

        code, out = await run("--tls-ca", str(pki.ca), "--token-file", str(client_token_file), "models")
        assert code == 0 and "tiny (default)" in out
        code, out = await run("models", "--tls-ca", str(pki.ca), "--token", WRONG_TOKEN)
        assert code == 1 and "UNAUTHENTICATED" in out and WRONG_TOKEN not in out
        monkeypatch.setenv("SEGSTREAM_TOKEN", TOKEN)
        code, out = await run("--tls-ca", str(pki.ca), "wait")
        assert code == 0 and "SERVING" in out
        code, out = await run("--tls-ca", str(pki.ca), "models")
        assert code == 0 and TOKEN not in out
        code, out = await run("--token", TOKEN, "--token-file", str(client_token_file), "models")
        assert code == 1 and "not both" in out and TOKEN not in out


def test_client_cli_documents_the_security_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert client_cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--tls", "--tls-ca", "--tls-cert", "--tls-key", "--token", "--token-file", "SEGSTREAM_TOKEN"):
        assert flag in text


def test_client_security_arguments_are_checked_before_connecting(pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        SegmentationClient(tls_cert=pki.client_cert)
    with pytest.raises(ValueError, match="contradicts"):
        SegmentationClient(tls=False, tls_ca=pki.ca)
    with pytest.raises(ValueError, match="not a PEM private key"):
        SegmentationClient(tls_cert=pki.client_cert, tls_key=pki.client_cert)
    with pytest.raises(ValueError, match="only applies to TLS"):
        SegmentationClient(server_name_override="localhost")
    with pytest.raises(ValueError, match="printable ASCII") as info:
        SegmentationClient(token="line\nbreak-secret")
    assert "secret" not in str(info.value)
