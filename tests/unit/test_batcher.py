"""The cross-stream batcher: batch formation, key separation, cancellation and failure isolation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from segstream.server.batcher import Batcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[Any]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key: Hashable, items: Sequence[Any]) -> Any:
        assert self.gate.wait(10)
        self.batches.append((key, list(items)))
        return [ValueError(f"bad {item}") if item == "bad" else f"{key}:{item}" for item in items]


async def run(batcher: Batcher, calls: list[tuple[Hashable, Any]]) -> list[Any]:
    return list(await asyncio.gather(*(batcher.submit(k, v) for k, v in calls), return_exceptions=True))


async def test_same_key_frames_share_a_batch_up_to_max_batch() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(recorder, pool, workers=1, max_batch=3, max_delay_s=0.05)
        batcher.start()
        results = await run(batcher, [("a", i) for i in range(7)])
        await batcher.close()
    assert [r[0] for r in results] == [f"a:{i}" for i in range(7)]
    assert all(r[1] >= 0 for r in results)  # seconds queued
    assert [len(items) for _, items in recorder.batches] == [3, 3, 1]


async def test_different_keys_never_mix() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(recorder, pool, workers=1, max_batch=8, max_delay_s=0.02)
        batcher.start()
        await run(batcher, [("a" if i % 2 else "b", i) for i in range(10)])
        await batcher.close()
    for key, items in recorder.batches:
        assert all((i % 2 == 1) == (key == "a") for i in items)


async def test_one_failure_does_not_fail_its_batch_mates() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(recorder, pool, workers=1, max_batch=4, max_delay_s=0.05)
        batcher.start()
        results = await run(batcher, [("k", 1), ("k", "bad"), ("k", 3)])
        await batcher.close()
    assert results[0][0] == "k:1" and results[2][0] == "k:3"
    assert isinstance(results[1], ValueError)


async def test_a_runner_crash_fails_only_that_batch() -> None:
    def crash(key: Hashable, items: Sequence[Any]) -> list[Any]:
        if key == "boom":
            raise RuntimeError("device lost")
        return list(items)

    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(crash, pool, workers=1)
        batcher.start()
        results = await run(batcher, [("boom", 1), ("fine", 2)])
        await batcher.close()
    assert isinstance(results[0], RuntimeError)
    assert results[1][0] == 2


async def test_cancelled_frames_are_withdrawn_before_running() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(recorder, pool, workers=1, max_batch=1)
        batcher.start()
        first = asyncio.create_task(batcher.submit("k", "first"))
        await asyncio.sleep(0.05)  # "first" is now running and holds the only worker
        waiting = [asyncio.create_task(batcher.submit("k", f"w{i}")) for i in range(5)]
        await asyncio.sleep(0.05)
        for task in waiting[:4]:
            task.cancel()
        recorder.gate.set()
        assert (await first)[0] == "k:first"
        assert (await waiting[4])[0] == "k:w4"
        await batcher.close()
    ran = [item for _, items in recorder.batches for item in items]
    assert ran == ["first", "w4"]
    assert batcher.queued == 0


async def test_close_cancels_what_is_still_queued() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(recorder, pool, workers=1)
        batcher.start()
        running = asyncio.create_task(batcher.submit("k", 1))
        queued = asyncio.create_task(batcher.submit("k", 2))
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.05)
        recorder.gate.set()
        await closing
        assert (await running)[0] == "k:1"
        with pytest.raises(asyncio.CancelledError):
            await queued
