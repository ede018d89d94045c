"""Places in the engine for LATEST streams: fair rounds, freshest frame first within a round.

A LATEST stream holds at most one frame waiting; it takes a place before it hands that frame to
the engine. When a place frees up, several live streams are usually waiting (a camera sends
faster than one model serves them all), and which one goes next decides how old the served
frame is. Within a round every waiting stream gets one place, so each stream gets its share
whatever the others send; the order inside a round is freshest waiting frame first. A frame's
age when it is taken is then the youngest of the waiting streams' frames rather than a random
one: with four 30 fps cameras on one model, about 10 ms on average instead of about 17.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable


class LiveAdmission:
    """Engine places shared by every LATEST stream of a server; see the module docstring.

    The count is conserved under cancellation at any await point: `free` plus the places held
    by streams whose `acquire` returned (and that have not released them) is always `capacity`.
    """

    def __init__(self, places: int) -> None:
        if places < 1:
            raise ValueError(f"places must be at least 1, got {places}")
        self.capacity = places
        self._free = places
        # Waiting streams: the future that grants their place and when their waiting frame arrived.
        self._waiting: dict[Hashable, tuple[asyncio.Future[None], Callable[[], float]]] = {}
        # Streams served in the current round.
        self._served: set[Hashable] = set()

    @property
    def free(self) -> int:
        """Places no stream holds right now."""
        return self._free

    @property
    def waiting(self) -> int:
        """Streams waiting for a place."""
        return len(self._waiting)

    async def acquire(self, stream: Hashable, arrived: Callable[[], float]) -> None:
        """Waits for a place for `stream`, whose waiting frame arrived at `arrived()` (perf_counter).

        `arrived` is read whenever places are handed out, so a frame replaced by a newer one
        while its stream waits counts with the newer frame's time.
        """
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[stream] = (granted, arrived)
        self._hand_out()
        try:
            await granted  # returns at once when the place was free
        except asyncio.CancelledError:
            if self._waiting.get(stream, (None,))[0] is granted:
                del self._waiting[stream]
            elif granted.done() and not granted.cancelled():
                self.release()  # granted just before the cancellation: give the place on
            raise

    def release(self) -> None:
        """Gives back a place that `acquire` granted."""
        if self._free >= self.capacity:
            raise RuntimeError("LiveAdmission.release() without a place held")
        self._free += 1
        self._hand_out()

    def forget(self, stream: Hashable) -> None:
        """A stream ended: it no longer counts towards the current round."""
        self._served.discard(stream)

    def _hand_out(self) -> None:
        while self._free > 0 and self._waiting:
            candidates = [s for s in self._waiting if s not in self._served]
            if not candidates:  # every waiting stream had its turn: a new round
                self._served.clear()
                candidates = list(self._waiting)
            stream = max(candidates, key=lambda s: self._waiting[s][1]())
            granted, _ = self._waiting.pop(stream)
            if granted.done():
                # Its task was cancelled while waiting and has not run its handler yet: the
                # cancellation already settled the future, so the place goes to the next stream.
                continue
            self._free -= 1
            self._served.add(stream)
            granted.set_result(None)
