"""Collects frames of the same model, head and shape from all streams into batches for the workers.

A batch closes when it holds `max_batch` frames or its oldest frame has waited `max_delay`.
The batcher owns its inference worker threads: a worker takes the next batch itself as soon as
it is free, and frames are put in from any thread (the decode threads put them in directly), so
a frame crosses no event loop between its decode and its inference. Frames queue here rather
than inside a thread pool, where they could no longer be withdrawn or batched; the queue is
bounded by the streams' own windows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Runs one batch in a worker thread: the items' payloads in, one result (or exception) per item out.
BatchRunner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]
# Receives, in the worker thread, one item's result (or exception) and the seconds it queued.
Deliver = Callable[[Any, float], None]


class Ticket:
    """A frame's place in the batcher; withdrawing it before its batch forms means it never runs."""

    __slots__ = ("withdrawn",)

    def __init__(self) -> None:
        # Written by the event loop, read by the workers: a plain flag, set once, never reset.
        self.withdrawn = False


@dataclass(eq=False)
class _Job:
    payload: Any
    deliver: Deliver
    ticket: Ticket
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Batches frames of one key from every stream and runs them on its own inference worker threads."""

    def __init__(
        self,
        runner: BatchRunner,
        workers: int,
        max_batch: int = 1,
        max_delay_s: float = 0.0,
        name: str = "segstream-infer",
    ) -> None:
        self._runner = runner
        self._max_batch = max_batch
        self._max_delay = max_delay_s
        self._cond = threading.Condition()
        self._pending: OrderedDict[Hashable, deque[_Job]] = OrderedDict()
        # Work that must run on one particular worker thread (warm-up of its own bindings).
        self._chores: list[deque[Callable[[], None]]] = [deque() for _ in range(workers)]
        self._closing = False
        # For the liveness watchdog: frames in running batches, and when the engine last made
        # progress (finished a batch, or was handed work while it had none).
        self._running = 0
        self._progress = time.monotonic()
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        """Starts the worker threads."""
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        """Frames waiting for a batch (withdrawn ones included until a worker discards them)."""
        with self._cond:
            return sum(len(jobs) for jobs in self._pending.values())

    def put(self, key: Hashable, payload: Any, deliver: Deliver, ticket: Ticket | None = None) -> Ticket:
        """Queues `payload` for a batch of its key; any thread may call it.

        `deliver` is called exactly once, in a worker thread (or here, when the batcher is closed),
        unless the ticket was withdrawn before the frame ran.
        """
        job = _Job(payload, deliver, ticket or Ticket())
        with self._cond:
            if self._closing:
                closed = True
            else:
                closed = False
                if self._idle():
                    # Time spent idle is no stall: the clock starts with the first frame waiting.
                    self._progress = time.monotonic()
                self._pending.setdefault(key, deque()).append(job)
                # One worker is enough: whichever wakes takes the batch once it is full or due.
                self._cond.notify()
        if closed:
            _call(deliver, asyncio.CancelledError("the server is shutting down"), 0.0)
        return job.ticket

    def stalled_for(self) -> tuple[int, float]:
        """(frames waiting for or in the engine, seconds since the engine last made progress).

        Progress is a finished batch, or work handed to an engine that had none; with no frame
        waiting the seconds are 0: an idle engine is never stalled.
        """
        with self._cond:
            waiting = self._running + sum(not job.ticket.withdrawn for queue in self._pending.values() for job in queue)
            return waiting, (time.monotonic() - self._progress if waiting else 0.0)

    def _idle(self) -> bool:
        # Called with the lock held; withdrawn frames will never run, so they are no work.
        return not self._running and all(job.ticket.withdrawn for queue in self._pending.values() for job in queue)

    async def on_each_worker(self, chore: Callable[[], T]) -> list[T]:
        """Runs `chore` once on every worker thread, between batches; returns their results."""
        futures: list[Future[T]] = []
        with self._cond:
            for chores in self._chores:
                future: Future[T] = Future()
                chores.append(_bind(chore, future))
                futures.append(future)
            self._cond.notify_all()
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    async def close(self, run_grace: float | None = None) -> bool:
        """Cancels what is still queued, lets running batches finish, and stops the workers.

        Waits for running batches until `run_grace` seconds after the engine last made progress
        (None: as long as it takes), so a run already stalled that long is not waited for again, and
        for idle workers `run_grace` seconds from now;
        returns False when a worker is still inside a run then (a hung engine), True once all have
        stopped.
        """
        with self._cond:
            self._closing = True
            jobs = [job for queue in self._pending.values() for job in queue]
            self._pending.clear()
            self._cond.notify_all()
            progress = self._progress
            running = self._running
        for job in jobs:
            _call(job.deliver, asyncio.CancelledError("the server is shutting down"), 0.0)
        started = [t for t in self._threads if t.ident is not None]
        if started:
            # With no batch running, the last progress may lie long ago (an idle server): idle
            # workers only need a moment to see the close, so they get the grace from now.
            since = progress if running else time.monotonic()
            limit = None if run_grace is None else max(0.0, since + run_grace - time.monotonic())
            await asyncio.get_running_loop().run_in_executor(None, _join, started, limit)
        return not any(t.is_alive() for t in started)

    def _work(self, index: int) -> None:
        while (item := self._next(index)) is not None:
            if callable(item):
                item()
                continue
            key, jobs = item
            started = time.perf_counter()
            try:
                results: Sequence[Any] = self._runner(key, [job.payload for job in jobs])
                if len(results) != len(jobs):
                    raise RuntimeError(f"batch runner returned {len(results)} results for {len(jobs)} items")
            except Exception as exc:
                results = [exc] * len(jobs)
            finally:
                with self._cond:
                    self._running -= len(jobs)
                    self._progress = time.monotonic()
            for job, result in zip(jobs, results, strict=True):
                _call(job.deliver, result, started - job.enqueued)

    def _next(self, index: int) -> Callable[[], None] | tuple[Hashable, list[_Job]] | None:
        """The worker's next chore or batch, waiting for one; None once the batcher is closed."""
        with self._cond:
            while True:
                if self._chores[index]:
                    return self._chores[index].popleft()
                if self._closing:
                    return None
                if not self._pending:
                    self._cond.wait()
                    continue
                # Oldest key first keeps streams fair: every key reached the dict in arrival order.
                key = next(iter(self._pending))
                queue = self._pending[key]
                while queue and queue[0].ticket.withdrawn:
                    queue.popleft()
                if not queue:
                    del self._pending[key]
                    continue
                remaining = queue[0].enqueued + self._max_delay - time.perf_counter()
                if len(queue) < self._max_batch and remaining > 0:
                    self._cond.wait(remaining)
                    continue
                jobs: list[_Job] = []
                while queue and len(jobs) < self._max_batch:
                    job = queue.popleft()
                    if not job.ticket.withdrawn:  # a cancelled stream withdrew it
                        jobs.append(job)
                if not queue:
                    del self._pending[key]
                else:
                    self._pending.move_to_end(key)
                if jobs:
                    self._running += len(jobs)
                    return key, jobs


async def delivered(start: Callable[[Deliver, Ticket], object]) -> tuple[Any, float]:
    """Waits on the event loop for work that ends in a `Deliver` call from some other thread.

    `start(deliver, ticket)` sets the work off (queues it, or hands it to a thread that will);
    returns (result, seconds queued) or raises the item's error. Cancelling the caller withdraws
    the ticket, so a frame that has not run yet never will.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[Any, float]] = loop.create_future()
    ticket = Ticket()
    start(settle_from_thread(loop, future), ticket)
    try:
        return await future
    except asyncio.CancelledError:
        ticket.withdrawn = True
        raise


def settle_from_thread(loop: asyncio.AbstractEventLoop, future: asyncio.Future[tuple[Any, float]]) -> Deliver:
    """A `Deliver` that settles `future` on its own event loop, from whichever thread calls it."""

    def deliver(result: Any, waited: float) -> None:
        loop.call_soon_threadsafe(_settle, future, result, waited)

    return deliver


def _settle(future: asyncio.Future[tuple[Any, float]], result: Any, waited: float) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(result, asyncio.CancelledError):
        future.cancel()
    elif isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result((result, waited))


def _call(deliver: Deliver, result: Any, waited: float) -> None:
    # A worker thread must outlive any one frame: a callback that fails (its event loop already
    # closed at shutdown, say) is logged, never raised.
    try:
        deliver(result, waited)
    except Exception:
        log.warning("a frame's result could not be delivered", exc_info=True)


def _bind(chore: Callable[[], T], future: Future[T]) -> Callable[[], None]:
    def run() -> None:
        try:
            future.set_result(chore())
        except BaseException as exc:
            future.set_exception(exc)

    return run


def _join(threads: list[threading.Thread], timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
