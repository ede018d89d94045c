"""Stopping a command cleanly on SIGTERM or SIGINT.

Python's default SIGTERM kills the process on the spot, and a KeyboardInterrupt can land anywhere,
half-way through writing a frame to one of several videos included. `StopSignals` instead records
the signal and raises `StopRequested` only inside blocks marked `interruptible()` (waiting for the
server); everywhere else the command finishes its step and checks `requested` itself, so every
output file it then closes holds whole frames and is finalised (an MP4 without its index does not
play).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGINT asked the command to stop; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Turns SIGTERM and SIGINT into a stop request while the context is active (main thread only).

    Only the first signal counts; later ones are ignored until the context ends, so that the
    cleanup a stop starts is not cut short in turn.

    Example:
        >>> with StopSignals() as stops:  # doctest: +SKIP
        ...     for item in work:
        ...         with stops.interruptible():
        ...             result = wait_for(item)
        ...         write(result)
        ...         if stops.requested:
        ...             break
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._interruptible = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """The name of the signal that arrived ("SIGTERM"), or "" when none did."""
        return "" if self.signum is None else signal.Signals(self.signum).name

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block (a wait) that a stop signal ends at once by raising StopRequested."""
        if self.signum is not None:
            raise StopRequested(self.signum)
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if self._interruptible:
            raise StopRequested(signum)

    def __enter__(self) -> StopSignals:
        # Handlers can only be installed from the main thread; elsewhere (a test calling main() on
        # a thread) signals keep their default meaning.
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
