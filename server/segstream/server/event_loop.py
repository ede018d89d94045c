"""Which asyncio event loop the server runs on.

Every frame crosses the event loop twice (in with its request, out with its result) and each
crossing is a wake-up of the loop from another thread; uvloop's loop does those and gRPC's own
socket callbacks with less work per call than the standard loop: about 0.1-0.2 ms less per frame
on loopback (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Literal

EventLoop = Literal["auto", "uvloop", "asyncio"]
EVENT_LOOPS: tuple[EventLoop, ...] = ("auto", "uvloop", "asyncio")


class EventLoopUnavailable(RuntimeError):
    """--event-loop uvloop was asked for where uvloop is not installed."""


def loop_factory(choice: EventLoop) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop's name and a factory for it; `auto` takes uvloop where it is installed."""
    if choice != "asyncio" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return "uvloop", uvloop.new_event_loop
    if choice == "uvloop":
        raise EventLoopUnavailable(
            "--event-loop uvloop: uvloop is not installed (pip install uvloop; it does not exist for Windows)"
        )
    return "asyncio", asyncio.new_event_loop
