"""Reconnecting streams: the `Reconnect` policy, its backoff, and the frames one stream() owes across connections.

A stream() call with a `Reconnect` policy may open several gRPC streams (connections, below) one after
another on the same channel. `StreamLedger` is the bookkeeping they share: which frames went out on the
current connection and are still unanswered, which must go out first on the next one, and how many
were dropped. It does no locking and no waiting; each client wraps it in its own concurrency.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from segstream.client._errors import SegstreamError, ServerUnavailableError
from segstream.client._frames import SendLog
from segstream.v1 import segmentation_pb2 as pb

log = logging.getLogger("segstream.client")


@dataclass(frozen=True)
class Reconnect:
    """How `stream()` reconnects when its stream ends with UNAVAILABLE (server draining, restarting or gone).

    The n-th reconnection in a row waits `initial * multiplier**(n-1)` seconds, at most `max_delay`,
    each delay scaled by a random factor in [1 - jitter, 1 + jitter] so that many clients of one
    restarting server do not all come back at the same instant. A result received resets the count
    and the clock.

    Attributes:
        initial: Seconds before the first reconnection (> 0).
        multiplier: Growth of the delay from one attempt to the next (>= 1).
        max_delay: Longest delay in seconds (>= initial).
        jitter: Relative randomness of each delay, from 0 (none) to 1.
        max_attempts: Reconnections in a row without a result before the error is raised;
            None retries forever.
        timeout: Seconds of reconnecting without a result (from the first failure on) before the
            error is raised; None retries forever. The last delay is shortened to end on time.

    Example:
        >>> Reconnect(initial=0.5, max_attempts=10).max_delay
        5.0
    """

    initial: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.2
    max_attempts: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("initial", "multiplier", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"Reconnect.{name} must be a finite number; got {value!r}")
        if self.initial <= 0:
            raise ValueError(f"Reconnect.initial must be more than 0 seconds; got {self.initial!r}")
        if self.multiplier < 1:
            raise ValueError(f"Reconnect.multiplier must be at least 1 (1: a constant delay); got {self.multiplier!r}")
        if self.max_delay < self.initial:
            raise ValueError(
                f"Reconnect.max_delay ({self.max_delay!r}) must be at least Reconnect.initial ({self.initial!r})"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Reconnect.jitter must be from 0 to 1; got {self.jitter!r}")
        attempts = self.max_attempts
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
            raise ValueError(f"Reconnect.max_attempts must be a positive integer or None (forever); got {attempts!r}")
        timeout = self.timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf
        ):
            raise ValueError(f"Reconnect.timeout must be a number of seconds > 0 or None (forever); got {timeout!r}")


class Backoff:
    """The delays of one `Reconnect` policy: growing with each attempt, back to `initial` after reset()."""

    def __init__(
        self,
        policy: Reconnect,
        uniform: Callable[[float, float], float] = random.uniform,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._uniform = uniform
        self._clock = clock
        self._base = policy.initial
        self._since: float | None = None  # when the current run of failures began
        self.attempt = 0
        self.max_attempts = policy.max_attempts

    def reset(self) -> None:
        """Start over after a success: the next failure waits the initial delay, attempts count from 0."""
        self._base = self._policy.initial
        self._since = None
        self.attempt = 0

    @property
    def elapsed(self) -> float:
        """Seconds since the first failure of the current run of attempts (0 before any)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None when `max_attempts` or `timeout` are used up."""
        policy = self._policy
        if self._since is None:
            self._since = self._clock()
        if policy.max_attempts is not None and self.attempt >= policy.max_attempts:
            return None
        left = math.inf if policy.timeout is None else policy.timeout - self.elapsed
        if left <= 0:
            return None
        base = self._base
        self.attempt += 1
        # Grown step by step rather than as a power, so an endless retry never overflows.
        self._base = min(policy.max_delay, base * policy.multiplier)
        spread = base * policy.jitter
        return min(policy.max_delay, left, max(0.0, self._uniform(base - spread, base + spread)))

    def gave_up(self, target: str, error: SegstreamError) -> ServerUnavailableError:
        """The one-line error stream() raises when this policy stops reconnecting after `error`."""
        attempts = f"{self.attempt} reconnection attempt{'s' if self.attempt != 1 else ''}"
        limit = self._policy.timeout
        within = f" (the limit is {limit:g} s)" if limit is not None else ""
        reason = f"gave up reconnecting to {target} after {attempts} in {self.elapsed:.1f} s{within}: {error.reason}"
        return ServerUnavailableError(reason, error.code, reason=reason)


class StreamLedger:
    """The frames of one stream() call across its connections. Not thread-safe: callers lock.

    Under policy "ordered" every frame sent and not answered is kept (at most `max_in_flight` of them),
    so a broken connection's unanswered frames are sent again, first and in order, on the next one;
    responses come in send order, so no frame is ever answered twice. Under "latest" unanswered
    frames are live data gone stale: they are dropped, and counted in `SegmentResult.dropped_frames`.
    """

    def __init__(self, ordered: bool, max_in_flight: int) -> None:
        self.ordered = ordered
        self.limit = max_in_flight if ordered else None
        self.connection = 0
        self.source_done = False
        self.reading = 0  # frames being read from the source, counted against the window
        self.times = SendLog()
        self._unanswered: deque[tuple[int, pb.SegmentRequest]] = deque()  # "ordered" only
        self.unsent: deque[tuple[int, pb.SegmentRequest]] = deque()
        self._sent_here = 0
        self._answered_here = 0
        self.dropped_before = 0  # "latest": frames of earlier connections that got no result

    def room(self) -> bool:
        """True when one more frame may be read: under "ordered", fewer than max_in_flight are owed."""
        owed = len(self._unanswered) + len(self.unsent) + self.reading
        return self.limit is None or owed < self.limit

    def sent(self, request: pb.SegmentRequest, first_time: bool) -> None:
        """`request` goes out on the current connection."""
        frame_id = request.frame.frame_id
        if first_time:
            # A frame sent again keeps its first send time: its latency includes the reconnection.
            self.times.sent(frame_id)
        if self.ordered:
            self._unanswered.append((frame_id, request))
        self._sent_here += 1

    def take_unsent(self) -> pb.SegmentRequest:
        """The oldest frame kept from a broken connection, recorded as sent again on this one."""
        _, request = self.unsent.popleft()
        self.sent(request, first_time=False)
        return request

    def keep(self, request: pb.SegmentRequest) -> None:
        """A frame read for a connection that broke meanwhile: sent on the next one, or dropped if "latest"."""
        if self.ordered:
            self.unsent.append((request.frame.frame_id, request))
        else:
            self.dropped_before += 1

    def answered(self, frame_id: int) -> tuple[float | None, int]:
        """The send time of `frame_id` (None if unknown) and the dropped frames before this connection."""
        self._answered_here += 1
        if self.ordered and any(fid == frame_id for fid, _ in self._unanswered):
            # Responses come in send order: everything before this frame was answered already.
            while self._unanswered.popleft()[0] != frame_id:
                pass
        return self.times.answered(frame_id), self.dropped_before

    def broke(self) -> int:
        """The current connection ended early; returns how many frames it left owed ("ordered", sent
        again first on the next connection) or lost ("latest", counted as dropped)."""
        self.connection += 1
        unanswered = self._sent_here - self._answered_here
        self._sent_here = self._answered_here = 0
        if self.ordered:
            self._unanswered.extend(self.unsent)
            self.unsent, self._unanswered = self._unanswered, deque()
            return len(self.unsent)
        # Whatever the server dropped on that connection, and whatever it never answered, is lost.
        self.dropped_before += max(unanswered, 0)
        return max(unanswered, 0)

    def begin(self) -> int:
        """A new connection starts; returns its number (requests of older ones are stale)."""
        self.connection += 1
        self._sent_here = self._answered_here = 0
        return self.connection

    @property
    def settled(self) -> bool:
        """True when the source has ended and no frame is owed a result."""
        return self.source_done and not self.unsent and not self._unanswered and not self.reading

    def describe_break(self, count: int) -> str:
        """What happened to the frames a broken connection left unanswered, for the log."""
        if count == 0:
            return "no frame was left unanswered"
        if self.ordered:
            return f"{count} unanswered frame(s) will be sent again"
        return f"{count} unanswered frame(s) dropped"


def log_reconnect(target: str, error: SegstreamError, backoff: Backoff, delay: float, frames: str) -> None:
    """One WARNING line per reconnection: why, what became of the frames, when, and which attempt."""
    limit = backoff.max_attempts
    of = "" if limit is None else f" of {limit}"
    log.warning(
        "stream to %s ended (%s); %s; reconnecting in %.2f s (attempt %d%s)",
        target,
        error.reason,
        frames,
        delay,
        backoff.attempt,
        of,
    )
