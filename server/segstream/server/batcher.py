"""Collects frames of the same model, head and shape from all streams into batches for the workers.

A batch closes when it holds `max_batch` frames or its oldest frame has waited `max_delay`.
At most `workers` batches run at once, so frames queue here (bounded by the streams' own windows)
rather than inside the thread pool, where they could no longer be cancelled or batched.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

# Runs one batch in a worker thread: the items' payloads in, one result (or exception) per item out.
BatchRunner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


@dataclass
class _Job:
    payload: Any
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        runner: BatchRunner,
        executor: Executor,
        workers: int,
        max_batch: int = 1,
        max_delay_s: float = 0.0,
    ) -> None:
        self._runner = runner
        self._executor = executor
        self._max_batch = max_batch
        self._max_delay = max_delay_s
        self._slots = asyncio.Semaphore(workers)
        self._pending: OrderedDict[Hashable, deque[_Job]] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Future[Any]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="segstream-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for jobs in self._pending.values():
            for job in jobs:
                job.future.cancel()
        self._pending.clear()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @property
    def queued(self) -> int:
        return sum(len(jobs) for jobs in self._pending.values())

    async def submit(self, key: Hashable, payload: Any) -> tuple[Any, float]:
        """Runs `payload` in a batch with others of the same key; returns (result, seconds queued).

        Cancelling the caller withdraws a frame that has not started yet.
        """
        job = _Job(payload, asyncio.get_running_loop().create_future())
        self._pending.setdefault(key, deque()).append(job)
        self._wakeup.set()
        result: tuple[Any, float] = await job.future
        return result

    async def _collect(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                key, jobs = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not jobs:
                self._slots.release()
                continue
            started = time.perf_counter()
            waits = [started - job.enqueued for job in jobs]
            run = asyncio.get_running_loop().run_in_executor(
                self._executor, self._runner, key, [job.payload for job in jobs]
            )
            self._running.add(run)
            run.add_done_callback(functools.partial(self._deliver, jobs=jobs, waits=waits))

    async def _next_batch(self) -> tuple[Hashable, list[_Job]]:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        # Oldest key first keeps streams fair: every key reached the dict in arrival order.
        key = next(iter(self._pending))
        queue = self._pending[key]
        deadline = queue[0].enqueued + self._max_delay
        while len(queue) < self._max_batch and (remaining := deadline - time.perf_counter()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        jobs: list[_Job] = []
        while queue and len(jobs) < self._max_batch:
            job = queue.popleft()
            if not job.future.done():  # a cancelled stream withdrew it
                jobs.append(job)
        if not queue:
            del self._pending[key]
        else:
            self._pending.move_to_end(key)
        return key, jobs

    def _deliver(self, run: asyncio.Future[Any], jobs: list[_Job], waits: list[float]) -> None:
        self._running.discard(run)
        self._slots.release()
        if run.cancelled():
            for job in jobs:
                job.future.cancel()
            return
        error = run.exception()
        results: Sequence[Any] = [error] * len(jobs) if error is not None else run.result()
        for job, result, wait in zip(jobs, results, waits, strict=True):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result((result, wait))
