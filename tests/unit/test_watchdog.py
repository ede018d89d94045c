"""The liveness watchdog's two halves: the batcher's progress probe and the watchdog's state changes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import pytest

from segstream.server.batcher import Batcher, Ticket
from segstream.server.metrics import Metrics
from segstream.server.watchdog import Watchdog


def _ignore(result: Any, waited: float) -> None:
    pass


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_probe_counts_only_frames_waiting_and_restarts_its_clock_after_idling() -> None:
    gate = threading.Event()

    def runner(key: Hashable, items: Sequence[Any]) -> list[Any]:
        gate.wait(10)
        return list(items)

    batcher = Batcher(runner, workers=1)
    batcher.start()
    try:
        # Idle, however long: nothing waits, so nothing is stalled.
        await asyncio.sleep(0.2)
        assert batcher.stalled_for() == (0, 0.0)
        # The first frame after a long idle starts the clock afresh (not from the last batch).
        batcher.put("k", 1, _ignore)
        await _until(lambda: batcher.stalled_for()[0] == 1)
        waiting, seconds = batcher.stalled_for()
        assert waiting == 1 and seconds < 0.15
        # A frame queued behind the hung one counts; a withdrawn one never runs, so it does not.
        batcher.put("k", 2, _ignore)
        withdrawn = Ticket()
        withdrawn.withdrawn = True
        batcher.put("k", 3, _ignore, withdrawn)
        assert batcher.stalled_for()[0] == 2
        await asyncio.sleep(0.2)
        assert batcher.stalled_for()[1] >= 0.2
        gate.set()
        await _until(lambda: batcher.stalled_for() == (0, 0.0))
    finally:
        gate.set()
        await batcher.close()


async def test_a_failing_batch_is_progress_too() -> None:
    def runner(key: Hashable, items: Sequence[Any]) -> list[Any]:
        raise RuntimeError("device lost")

    batcher = Batcher(runner, workers=1)
    batcher.start()
    try:
        results: list[Any] = []
        batcher.put("k", 1, lambda result, waited: results.append(result))
        await _until(lambda: bool(results))
        assert isinstance(results[0], RuntimeError)
        assert batcher.stalled_for() == (0, 0.0)
    finally:
        await batcher.close()


class _Probe:
    def __init__(self) -> None:
        self.value = (0, 0.0)

    def __call__(self) -> tuple[int, float]:
        return self.value


async def test_watchdog_reports_each_change_once_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    probe = _Probe()
    changes: list[bool] = []

    async def on_change(stalled: bool) -> None:
        changes.append(stalled)

    watchdog = Watchdog(probe, 1.0, metrics, on_change)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("segstream_engine_stalled")

    def stalls() -> float | None:
        return metrics.registry.get_sample_value("segstream_engine_stalls_total")

    probe.value = (0, 0.0)
    await watchdog.check()
    probe.value = (3, 0.9)  # frames wait, but not yet for the timeout
    await watchdog.check()
    assert changes == [] and gauge() == 0
    probe.value = (3, 1.2)
    with caplog.at_level("ERROR", logger="segstream.server.watchdog"):
        await watchdog.check()
        await watchdog.check()
    assert changes == [True] and gauge() == 1 and stalls() == 1
    assert len(caplog.records) == 1
    assert "no batch for 1.2 s while 3 frame(s) wait" in caplog.text
    assert "NOT_SERVING" in caplog.text
    probe.value = (3, 0.01)  # a batch completed
    await watchdog.check()
    probe.value = (0, 0.0)
    await watchdog.check()
    assert changes == [True, False] and gauge() == 0 and stalls() == 1


async def test_watchdog_task_watches_on_its_own_and_stops() -> None:
    metrics = Metrics()
    probe = _Probe()
    changed = asyncio.Event()

    async def on_change(stalled: bool) -> None:
        changed.set()

    watchdog = Watchdog(probe, 0.1, metrics, on_change)
    watchdog.start()
    try:
        probe.value = (1, 5.0)
        await asyncio.wait_for(changed.wait(), 5)
        assert watchdog.stalled
    finally:
        await watchdog.stop()
    await watchdog.stop()  # stopping twice is harmless


def test_watchdog_needs_a_positive_timeout() -> None:
    async def on_change(stalled: bool) -> None:
        pass

    with pytest.raises(ValueError, match="positive"):
        Watchdog(_Probe(), 0, Metrics(), on_change)
