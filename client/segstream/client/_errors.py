"""The client's exceptions, and the one place gRPC errors become them.

Every failure of a whole call raises a subclass of `SegstreamError`::

    SegstreamError                  anything the client raises for a failed call
    ├── ServerUnavailableError      UNAVAILABLE: the server cannot be reached, is starting or is draining
    │   └── ServerNotReadyError     wait_ready() gave up before the server reported SERVING (a TimeoutError)
    ├── DeadlineExceededError       DEADLINE_EXCEEDED: the call's timeout ran out (a TimeoutError)
    ├── InvalidRequestError         INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE, FAILED_PRECONDITION:
    │                               a bad stream config, an unknown model, a config sent twice
    ├── ResourceExhaustedError      RESOURCE_EXHAUSTED: a server limit or the message size limit was hit
    ├── AuthenticationError         UNAUTHENTICATED, PERMISSION_DENIED: missing or rejected credentials
    └── ServerError                 every other status (INTERNAL, UNIMPLEMENTED, CANCELLED by the server, ...)

A problem with one frame does not raise: it comes back as `SegmentResult.error` and the stream goes on.
Mistakes in the caller's own input (a float32 frame, an unknown option) raise `ValueError`/`TypeError`
before anything is sent.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
import grpc.aio

_T = TypeVar("_T")


class SegstreamError(Exception):
    """A call to the segstream server failed; `code` is the gRPC status when the server sent one.

    `reason` is the status and the server's words alone, without the advice the message adds.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = message if reason is None else reason


class ServerUnavailableError(SegstreamError):
    """The server cannot be reached, or is starting or draining; retrying later may succeed."""


class ServerNotReadyError(ServerUnavailableError, TimeoutError):
    """`wait_ready` ran out of time before the server's health check reported SERVING."""


class DeadlineExceededError(SegstreamError, TimeoutError):
    """The call's timeout ran out before the server answered."""


class InvalidRequestError(SegstreamError):
    """The server refused the request itself: a bad config, an unknown model, a config sent twice."""


class ResourceExhaustedError(SegstreamError):
    """A server limit, or the channel's message size limit, was hit."""


class AuthenticationError(SegstreamError):
    """The server wants credentials that were not sent or were rejected."""


class ServerError(SegstreamError):
    """The server failed in a way the caller cannot fix by changing the request."""


_CLASS_BY_CODE: dict[grpc.StatusCode, type[SegstreamError]] = {
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
}

# What to do about it, so that one line of output is enough to act on.
_HINT_BY_CODE: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "is the server running at that address, and has it finished loading?",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the server may be overloaded; raise the timeout or retry",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "a server limit was hit: send smaller frames, or fewer streams or calls",
    grpc.StatusCode.UNIMPLEMENTED: "the server at that address does not serve segstream.v1.Segmentation",
    grpc.StatusCode.UNAUTHENTICATED: "pass a token or client certificate the server accepts (token=..., --token-file)",
}

# gRPC's own "Sent/Received message larger than max (N vs. M)": a frame or a result over the size limit.
_MESSAGE_SIZE_HINT = (
    "a message is over the gRPC size limit: send frames compressed (wire_encoding='jpeg' or 'png'; "
    "segstream-client: --wire jpeg or png) or smaller, or raise the limit on both sides "
    "(max_message_bytes here, --max-message-bytes on the server)"
)


def _lost_status(exc: grpc.RpcError, code: grpc.StatusCode, details: str) -> bool:
    # grpc.aio replaces the server's status with this one when a frame is written just as the server
    # ends the stream (grpc/grpc#36066); the real reason is gone, so say what most likely happened.
    if code is not grpc.StatusCode.INTERNAL or details != "Internal error from Core":
        return False
    debug = exc.debug_error_string() if isinstance(exc, grpc.aio.AioRpcError) else ""
    return "SendMessageOperation" in (debug or "")


def status_was_lost(error: BaseException) -> bool:
    """True when `error` came from a grpc.aio call whose real status grpc.aio replaced (see above)."""
    cause = error.__cause__
    return isinstance(cause, grpc.aio.AioRpcError) and _lost_status(cause, cause.code(), cause.details() or "")


def _value_now(awaitable: Coroutine[Any, Any, _T]) -> _T | None:
    # Runs a coroutine that has nothing to wait for to its end, synchronously; None if it would wait.
    try:
        awaitable.send(None)
    except StopIteration as stop:
        value: _T = stop.value
        return value
    awaitable.close()
    return None


class StatusWitness:
    """Records the first status a grpc.aio call ends with, as it arrives: `call.add_done_callback(witness)`.

    When grpc.aio later replaces that status (see `status_was_lost`), `recovered()` still has it.
    A done callback runs right after the status is set, so reading it then never has to wait.
    """

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def __call__(self, call: grpc.aio.Call) -> None:
        # Runs inside grpc.aio's own bookkeeping: it must never raise.
        try:
            self.code = _value_now(call.code())
            self.details = _value_now(call.details()) or ""
        except Exception:
            self.code = None

    def recovered(self, error: BaseException, target: str) -> SegstreamError | None:
        """The error for the status the server really sent, when `error` is one whose status grpc.aio lost."""
        cause = error.__cause__
        if self.code is None or not status_was_lost(error) or not isinstance(cause, grpc.aio.AioRpcError):
            return None
        if self.code is grpc.StatusCode.INTERNAL and self.details == cause.details():
            return None  # no earlier status: this one is all there is
        metadata = grpc.aio.Metadata()
        return error_from_rpc(grpc.aio.AioRpcError(self.code, metadata, metadata, self.details, None), target)


def _tls_hint(details: str) -> str | None:
    # A failed handshake, or a server closing a fresh connection (a plaintext client meeting a TLS port,
    # a missing client certificate), is a matter of TLS settings rather than of a server being down.
    lowered = details.lower()
    if "handshake" in lowered or "ssl" in lowered:
        return (
            "the TLS handshake failed: trust the CA that signed the server's certificate (tls_ca, --tls-ca) "
            "and, if the server requires client certificates, pass one it trusts (tls_cert/tls_key)"
        )
    if "socket closed" in lowered:
        return (
            "the server closed the connection: is it running, and if it serves TLS, is TLS on "
            "(tls=True, --tls/--tls-ca) with a client certificate where it requires one?"
        )
    return None


def server_is_loading(error: BaseException) -> bool:
    """True when `error` says the server is up but still loading its models (UNAVAILABLE "loading")."""
    return (
        isinstance(error, ServerUnavailableError)
        and error.reason.startswith("UNAVAILABLE:")
        and ("loading" in error.reason)
    )


def _status_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    # Sync errors are also grpc.Call objects; aio errors carry the same accessors on AioRpcError.
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.UNKNOWN, str(exc)


def error_from_rpc(exc: grpc.RpcError, target: str) -> SegstreamError:
    """The `SegstreamError` for a failed gRPC call to `target`."""
    code, details = _status_of(exc)
    cls = _CLASS_BY_CODE.get(code, ServerError)
    message = f"{code.name} from {target}: {details or 'no details'}"
    hint = _HINT_BY_CODE.get(code)
    if code is grpc.StatusCode.UNAVAILABLE and (tls_hint := _tls_hint(details)):
        hint = tls_hint
    elif code is grpc.StatusCode.UNAVAILABLE and "loading" in details:
        hint = "wait_ready() (segstream-client wait) returns once it serves"
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        hint = _MESSAGE_SIZE_HINT
    elif code is grpc.StatusCode.UNAVAILABLE and "shutting down" in details:
        hint = "stream(..., reconnect=Reconnect()) carries a stream over to another server or a restart"
    if _lost_status(exc, code, details):
        hint = (
            "the server ended the stream while frames were still being sent and grpc.aio lost its status "
            "(grpc/grpc#36066); likely an unknown model or a server shutting down; the blocking "
            "SegmentationClient reports the real reason"
        )
    if hint is not None:
        message += f" ({hint})"
    return cls(message, code, reason=f"{code.name}: {details or 'no details'}")


@contextmanager
def translating_rpc_errors(target: str) -> Iterator[None]:
    """Re-raise any `grpc.RpcError` from the block as the matching `SegstreamError`.

    Works around plain, generator and async code alike, since it only wraps what the block raises.
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, target) from exc
