"""The cross-stream batcher: batch formation, key separation, cancellation, failure isolation and its workers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any

import pytest

from segstream.server.batcher import Batcher, delivered, settle_from_thread


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[Any]]] = []
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key: Hashable, items: Sequence[Any]) -> Any:
        assert self.gate.wait(10)
        self.batches.append((key, list(items)))
        self.threads.append(threading.current_thread().name)
        return [ValueError(f"bad {item}") if item == "bad" else f"{key}:{item}" for item in items]


async def submit(batcher: Batcher, key: Hashable, payload: Any) -> tuple[Any, float]:
    """What the pipeline does with a frame: puts it in, then awaits its delivery on the event loop."""
    return await delivered(lambda deliver, ticket: batcher.put(key, payload, deliver, ticket))


async def run(batcher: Batcher, calls: list[tuple[Hashable, Any]]) -> list[Any]:
    return list(await asyncio.gather(*(submit(batcher, k, v) for k, v in calls), return_exceptions=True))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@contextlib.asynccontextmanager
async def started(batcher: Batcher) -> AsyncIterator[Batcher]:
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.close()


async def test_same_key_frames_share_a_batch_up_to_max_batch(recorder: Recorder) -> None:
    async with started(Batcher(recorder, workers=1, max_batch=3, max_delay_s=0.05)) as batcher:
        results = await run(batcher, [("a", i) for i in range(7)])
    assert [r[0] for r in results] == [f"a:{i}" for i in range(7)]
    assert all(r[1] >= 0 for r in results)  # seconds queued
    assert [len(items) for _, items in recorder.batches] == [3, 3, 1]


async def test_a_lone_frame_waits_at_most_max_delay(recorder: Recorder) -> None:
    async with started(Batcher(recorder, workers=1, max_batch=8, max_delay_s=0.03)) as batcher:
        begun = time.perf_counter()
        ((result, queued_s),) = await run(batcher, [("a", 1)])
        elapsed = time.perf_counter() - begun
    assert result == "a:1"
    assert 0.025 <= queued_s <= elapsed < 1.0


async def test_different_keys_never_mix(recorder: Recorder) -> None:
    async with started(Batcher(recorder, workers=1, max_batch=8, max_delay_s=0.02)) as batcher:
        await run(batcher, [("a" if i % 2 else "b", i) for i in range(10)])
    for key, items in recorder.batches:
        assert all((i % 2 == 1) == (key == "a") for i in items)


async def test_one_failure_does_not_fail_its_batch_mates(recorder: Recorder) -> None:
    async with started(Batcher(recorder, workers=1, max_batch=4, max_delay_s=0.05)) as batcher:
        results = await run(batcher, [("k", 1), ("k", "bad"), ("k", 3)])
    assert results[0][0] == "k:1" and results[2][0] == "k:3"
    assert isinstance(results[1], ValueError)


async def test_a_runner_crash_fails_only_that_batch() -> None:
    def crash(key: Hashable, items: Sequence[Any]) -> list[Any]:
        if key == "boom":
            raise RuntimeError("device lost")
        return list(items)

    async with started(Batcher(crash, workers=1)) as batcher:
        results = await run(batcher, [("boom", 1), ("fine", 2)])
    assert isinstance(results[0], RuntimeError)
    assert results[1][0] == 2


async def test_cancelled_frames_are_withdrawn_before_running(recorder: Recorder) -> None:
    recorder.gate.clear()
    async with started(Batcher(recorder, workers=1, max_batch=1)) as batcher:
        first = asyncio.create_task(submit(batcher, "k", "first"))
        await asyncio.sleep(0.05)  # "first" is now running and holds the only worker
        waiting = [asyncio.create_task(submit(batcher, "k", f"w{i}")) for i in range(5)]
        await asyncio.sleep(0.05)
        for task in waiting[:4]:
            task.cancel()
        await asyncio.sleep(0)
        recorder.gate.set()
        assert (await first)[0] == "k:first"
        assert (await waiting[4])[0] == "k:w4"
    ran = [item for _, items in recorder.batches for item in items]
    assert ran == ["first", "w4"]
    assert batcher.queued == 0


async def test_close_cancels_what_is_still_queued(recorder: Recorder) -> None:
    recorder.gate.clear()
    batcher = Batcher(recorder, workers=1)
    batcher.start()
    running = asyncio.create_task(submit(batcher, "k", 1))
    queued = asyncio.create_task(submit(batcher, "k", 2))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)
    recorder.gate.set()
    await closing
    assert (await running)[0] == "k:1"
    with pytest.raises(asyncio.CancelledError):
        await queued
    # Frames put in after closing are cancelled at once rather than left waiting.
    with pytest.raises(asyncio.CancelledError):
        await submit(batcher, "k", 3)


async def test_frames_put_from_other_threads_reach_the_workers(recorder: Recorder) -> None:
    loop = asyncio.get_running_loop()
    async with started(Batcher(recorder, workers=2, max_batch=4, max_delay_s=0.01)) as batcher:
        futures = [loop.create_future() for _ in range(40)]

        def put_from_thread(first: int) -> None:
            for i in range(first, 40, 4):
                batcher.put("k", i, settle_from_thread(loop, futures[i]))

        threads = [threading.Thread(target=put_from_thread, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        results = await asyncio.wait_for(asyncio.gather(*futures), 10)
        for thread in threads:
            thread.join()
    assert [result for result, _ in results] == [f"k:{i}" for i in range(40)]
    assert sorted(item for _, items in recorder.batches for item in items) == list(range(40))
    assert all(len(items) <= 4 for _, items in recorder.batches)


async def test_batches_run_on_the_batchers_own_worker_threads(recorder: Recorder) -> None:
    # Two workers, one batch each at a time: every batch runs on a worker thread, never on the loop.
    async with started(Batcher(recorder, workers=2)) as batcher:
        await run(batcher, [("k", i) for i in range(20)])
    assert set(recorder.threads) <= {"segstream-infer-0", "segstream-infer-1"}
    assert len(recorder.batches) == 20


async def test_chores_run_once_on_every_worker_thread(recorder: Recorder) -> None:
    async with started(Batcher(recorder, workers=3)) as batcher:
        names = await batcher.on_each_worker(lambda: threading.current_thread().name)
        assert sorted(names) == ["segstream-infer-0", "segstream-infer-1", "segstream-infer-2"]
        with pytest.raises(ZeroDivisionError):
            await batcher.on_each_worker(lambda: 1 // 0)
        # A failed chore leaves every worker serving.
        assert [r[0] for r in await run(batcher, [("k", i) for i in range(6)])] == [f"k:{i}" for i in range(6)]


async def test_a_failing_delivery_does_not_stop_a_worker(recorder: Recorder) -> None:
    def broken(result: Any, waited: float) -> None:
        raise RuntimeError("event loop closed")

    async with started(Batcher(recorder, workers=1)) as batcher:
        batcher.put("k", "lost", broken)
        assert (await submit(batcher, "k", "next"))[0] == "k:next"
