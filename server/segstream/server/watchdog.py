"""The liveness watchdog: health turns NOT_SERVING while frames wait on an engine that makes no progress.

An inference call that never returns (a wedged GPU driver, a deadlocked provider) raises nothing,
so `--max-engine-failures` never sees it: streams simply stop being answered while health still
says SERVING. The watchdog looks a few times per `--stall-timeout` at the batcher: when frames
wait and no batch has completed for that long, it logs why, sets `segstream_engine_stalled` to 1,
counts the stall and turns health NOT_SERVING (an orchestrator's probe then restarts the server
or sends traffic elsewhere). As soon as batches complete again it turns health back. An idle
server, with no frame waiting, is never stalled however long it idles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from segstream.server.metrics import Metrics

log = logging.getLogger(__name__)

# (frames waiting for or in the engine, seconds since it last made progress): Batcher.stalled_for.
Probe = Callable[[], tuple[int, float]]
# Told True when the engine stalls and False when it makes progress again.
OnChange = Callable[[bool], Awaitable[None]]

# Checks per timeout: a stall is noticed between 1 and 1.25 timeouts after the last progress.
CHECKS_PER_TIMEOUT = 4


class Watchdog:
    """Watches `probe` every `timeout_s / CHECKS_PER_TIMEOUT` seconds on the event loop."""

    def __init__(self, probe: Probe, timeout_s: float, metrics: Metrics, on_change: OnChange) -> None:
        if timeout_s <= 0:
            raise ValueError("a watchdog needs a positive timeout")
        self._probe = probe
        self._timeout = timeout_s
        self._metrics = metrics
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.stalled = False
        self._stalled_at = 0.0  # time.monotonic() of the last progress before the current stall
        metrics.engine_stalled.set(0)

    def start(self) -> None:
        """Starts watching on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="segstream-watchdog")

    async def stop(self) -> None:
        """Stops watching; the health it last set stays as it is."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> None:
        """Looks once: turns stalled or healthy again when that changed since the last look."""
        waiting, seconds = self._probe()
        stalled = waiting > 0 and seconds >= self._timeout
        if stalled == self.stalled:
            return
        self.stalled = stalled
        if stalled:
            self._stalled_at = time.monotonic() - seconds
            self._metrics.engine_stalls.inc()
            self._metrics.engine_stalled.set(1)
            log.error(
                "the inference engine has completed no batch for %.1f s while %d frame(s) wait "
                "(--stall-timeout %g s): health is NOT_SERVING until batches complete again",
                seconds,
                waiting,
                self._timeout,
            )
        else:
            self._metrics.engine_stalled.set(0)
            log.warning(
                "the inference engine completes batches again after %.1f s without progress: health follows",
                time.monotonic() - self._stalled_at,
            )
        await self._on_change(stalled)

    async def _watch(self) -> None:
        interval = self._timeout / CHECKS_PER_TIMEOUT
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:
                # The watchdog must outlive a failed look (a health update refused at shutdown, say).
                log.exception("liveness check failed; checking again in %.1f s", interval)
