"""Domain errors and the one place that maps them to gRPC status codes.

StreamError            the stream or call itself is wrong; ends the call
    InvalidConfigError     bad StreamConfig (unknown model or head, sent twice or late)
    TooManyStreamsError    the server's stream limit is reached
        TooManyCallsError      the server's limit on concurrent SegmentImage calls is reached
    NotReadyError          models are still loading, or the server is draining
    IdleStreamError        no message within the idle timeout
InvalidFrameError      (segstream.wire.codec) one frame is bad; answered in its own response
    FrameOverLimitError    one frame is beyond a limit (pixels, network input, aspect ratio)
EngineError            (segstream.server.engine) a model failed to load or run
"""

from __future__ import annotations

import grpc

from segstream.server.config import ConfigError
from segstream.server.engine import EngineError
from segstream.wire.codec import FrameOverLimitError, InvalidFrameError


class StreamError(Exception):
    """A stream or call that cannot go on; `code` is the gRPC status it ends with."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidConfigError(StreamError):
    """A StreamConfig the server cannot serve: unknown model or head, a bad value, sent twice or late."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class TooManyStreamsError(StreamError):
    """Too many streams at once (--max-streams)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooManyCallsError(TooManyStreamsError):
    """Too many SegmentImage calls at once (--max-unary); the same status as too many streams."""


class NotReadyError(StreamError):
    """The models are still loading, or the server is draining."""

    code = grpc.StatusCode.UNAVAILABLE


class IdleStreamError(StreamError):
    """A stream sent nothing for --idle-timeout seconds."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and client-facing message for an error."""
    if isinstance(exc, StreamError):
        return exc.code, str(exc)
    if isinstance(exc, FrameOverLimitError):
        # Checked before its base class: the proto answers "over a limit" with 8, a bad frame with 3.
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, InvalidFrameError | ConfigError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, EngineError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    # Never leak a traceback or internals to clients: the server log has the details.
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error while segmenting ({type(exc).__name__}); see the server log",
    )
