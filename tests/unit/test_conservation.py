"""Counts that must survive any interleaving: engine places, batcher tickets and deliveries, stream frames.

Stateful property tests: hypothesis picks random sequences of acquire / release / cancel / replace
steps, with the event loop advanced by hand between them, so a cancellation can land at any await
point (including after a place was granted and before its task resumed).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from segstream.server.admission import LiveAdmission
from segstream.server.batcher import Batcher, Ticket
from segstream.server.streams import CANCELLED, STALE, latest, ordered
from segstream.v1 import segmentation_pb2 as pb

STREAMS = [f"s{i}" for i in range(5)]


class AdmissionMachine(RuleBasedStateMachine):
    """Streams acquire a place, hold it, release it, and get cancelled at any point."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.admission = LiveAdmission(1)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.arrivals: dict[str, float] = dict.fromkeys(STREAMS, 0.0)
        self.holding: set[str] = set()
        self.settled = True

    @initialize(capacity=st.integers(1, 3))
    def make(self, capacity: int) -> None:
        self.admission = LiveAdmission(capacity)

    async def _stream(self, name: str, done: asyncio.Event) -> None:
        # What a LATEST stream does with its place (streams.latest): acquire, work, release.
        await self.admission.acquire(name, lambda: self.arrivals[name])
        self.holding.add(name)
        try:
            await done.wait()
        finally:
            self.holding.discard(name)
            self.admission.release()

    def _live(self, name: str) -> bool:
        task = self.tasks.get(name)
        return task is not None and not task.done()

    @rule(name=st.sampled_from(STREAMS), arrived=st.floats(0, 100))
    def start(self, name: str, arrived: float) -> None:
        if self._live(name):
            return
        self.arrivals[name] = arrived
        self.done[name] = asyncio.Event()
        self.tasks[name] = self.loop.create_task(self._stream(name, self.done[name]))
        self.settled = False

    @rule(name=st.sampled_from(STREAMS))
    def cancel(self, name: str) -> None:
        if self._live(name):
            self.tasks[name].cancel()
            self.settled = False

    @rule(name=st.sampled_from(STREAMS))
    def finish(self, name: str) -> None:
        if name in self.done:
            self.done[name].set()
            self.settled = False

    @rule(name=st.sampled_from(STREAMS), arrived=st.floats(0, 100))
    def replace_frame(self, name: str, arrived: float) -> None:
        self.arrivals[name] = arrived

    @rule()
    def step(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))
        self.settled = False

    @rule()
    def settle(self) -> None:
        for _ in range(12):
            self.loop.run_until_complete(asyncio.sleep(0))
        self.settled = True

    @invariant()
    def places_are_conserved(self) -> None:
        assert 0 <= self.admission.free <= self.admission.capacity
        if self.settled:
            # Every grant has reached its task: free + held is the capacity, and no stream
            # waits while a place is free.
            assert self.admission.free + len(self.holding) == self.admission.capacity
            assert self.admission.free == 0 or self.admission.waiting == 0

    def teardown(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for _ in range(12):
            self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
        assert self.admission.free == self.admission.capacity
        assert self.admission.waiting == 0


TestAdmissionConservation = AdmissionMachine.TestCase
TestAdmissionConservation.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class BatcherMachine(RuleBasedStateMachine):
    """Frames put from the test thread, withdrawn at random, run by real worker threads.

    Every frame is delivered exactly once unless it was withdrawn, and then at most once; a batch
    runner that fails fails only its own frames; closing delivers what is still queued.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.deliveries: Counter[int] = Counter()
        self.ran: Counter[int] = Counter()
        self.tickets: dict[int, Ticket] = {}
        self.withdrawn: set[int] = set()
        self.next_id = 0
        self.gate = threading.Event()
        self.gate.set()
        self.batcher = Batcher(self._run, workers=2, max_batch=3, max_delay_s=0.001)
        self.batcher.start()

    def _run(self, key: Any, items: Any) -> list[Any]:
        self.gate.wait(2)
        with self.lock:
            for item in items:
                self.ran[item] += 1
        if key == "poison":
            raise RuntimeError("this batch fails")
        return list(items)

    def _deliver(self, frame: int) -> Any:
        def deliver(result: Any, waited: float) -> None:
            with self.lock:
                self.deliveries[frame] += 1

        return deliver

    @rule(key=st.sampled_from(["a", "b", "poison"]))
    def put(self, key: str) -> None:
        frame = self.next_id
        self.next_id += 1
        self.tickets[frame] = self.batcher.put(key, frame, self._deliver(frame))

    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        if self.tickets:
            frame = data.draw(st.sampled_from(sorted(self.tickets)))
            self.tickets[frame].withdrawn = True
            self.withdrawn.add(frame)

    @rule()
    def hold_workers(self) -> None:
        self.gate.clear()

    @rule()
    def free_workers(self) -> None:
        self.gate.set()

    @invariant()
    def nothing_delivered_twice(self) -> None:
        with self.lock:
            assert all(count == 1 for count in self.deliveries.values())
            assert all(count == 1 for count in self.ran.values())

    def teardown(self) -> None:
        self.gate.set()
        asyncio.run(asyncio.wait_for(self.batcher.close(), 10))
        assert self.batcher.queued == 0
        for frame in range(self.next_id):
            if frame in self.withdrawn:
                assert self.deliveries[frame] <= 1
            else:
                assert self.deliveries[frame] == 1, frame
            # A frame runs only if delivered: a withdrawn one that never ran is never delivered.
            assert self.ran[frame] <= self.deliveries[frame] or frame in self.withdrawn


TestBatcherConservation = BatcherMachine.TestCase
TestBatcherConservation.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


async def _run_stream(
    policy: str, gaps: list[int], work: list[int], fail: set[int], window: int, cancel_after: int | None
) -> tuple[int, int, Counter[str]]:
    """One stream over a fake engine, cancelled after `cancel_after` loop steps (None: runs to its end).

    `gaps[i]` and `work[i]` are loop steps before frame i arrives and while it is processed.
    Returns (frames read, frames answered or failed, drops by reason).
    """
    read = 0
    answered = 0
    drops: Counter[str] = Counter()

    async def source() -> Any:
        nonlocal read
        for i, gap in enumerate(gaps):
            for _ in range(gap):
                await asyncio.sleep(0)
            read += 1  # counted as it is handed on, as the server counts it received
            yield pb.Frame(frame_id=i)

    async def process(frame: pb.Frame, received: float) -> pb.SegmentResponse:
        nonlocal answered
        for _ in range(work[frame.frame_id]):
            await asyncio.sleep(0)
        answered += 1  # a failed frame is answered too, with its error
        response = pb.SegmentResponse(frame_id=frame.frame_id)
        if frame.frame_id in fail:
            response.error.code = 3
        return response

    def drop(reason: str) -> None:
        drops[reason] += 1

    stream = (
        latest(source(), process, drop, LiveAdmission(1))
        if policy == "latest"
        else ordered(source(), process, window, drop)
    )

    async def consume() -> None:
        async for _ in stream:
            pass

    task = asyncio.ensure_future(consume())
    if cancel_after is not None:
        for _ in range(cancel_after):
            await asyncio.sleep(0)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for _ in range(5):  # done callbacks of cancelled work
        await asyncio.sleep(0)
    return read, answered, drops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(["ordered", "latest"]),
    frames=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.booleans()), max_size=12),
    window=st.integers(1, 4),
    cancel_after=st.none() | st.integers(0, 60),
)
def test_every_frame_read_is_answered_or_dropped_once(
    policy: str, frames: list[tuple[int, int, bool]], window: int, cancel_after: int | None
) -> None:
    gaps = [gap for gap, _, _ in frames]
    work = [steps for _, steps, _ in frames]
    fail = {i for i, (_, _, bad) in enumerate(frames) if bad}
    read, answered, drops = asyncio.run(_run_stream(policy, gaps, work, fail, window, cancel_after))
    assert read == answered + sum(drops.values()), (read, answered, drops)
    assert set(drops) <= {STALE, CANCELLED}
    if policy == "ordered":
        assert drops[STALE] == 0
    if cancel_after is None:
        assert drops[CANCELLED] == 0 and read == len(frames)
