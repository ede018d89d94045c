"""Engine places for LATEST streams: every waiting stream once per round, freshest frame first."""

from __future__ import annotations

import asyncio

import pytest

from segstream.server.admission import LiveAdmission


async def test_a_free_place_is_taken_at_once() -> None:
    admission = LiveAdmission(2)
    await asyncio.wait_for(admission.acquire("a", lambda: 0.0), 1)
    await asyncio.wait_for(admission.acquire("b", lambda: 0.0), 1)
    assert admission.free == 0
    admission.release()
    admission.release()
    assert admission.free == 2


async def test_the_freshest_waiting_frame_goes_first() -> None:
    admission = LiveAdmission(1)
    await admission.acquire("holder", lambda: 0.0)
    order: list[str] = []

    async def wait(stream: str, arrived: float) -> None:
        await admission.acquire(stream, lambda: arrived)
        order.append(stream)

    tasks = [asyncio.create_task(wait(s, t)) for s, t in (("old", 1.0), ("newest", 3.0), ("middle", 2.0))]
    await asyncio.sleep(0)
    for _ in range(3):
        admission.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["newest", "middle", "old"]


async def test_a_frame_replaced_while_waiting_counts_with_its_new_time() -> None:
    admission = LiveAdmission(1)
    await admission.acquire("holder", lambda: 0.0)
    arrivals = {"a": 2.0, "b": 1.0}
    order: list[str] = []

    async def wait(stream: str) -> None:
        await admission.acquire(stream, lambda: arrivals[stream])
        order.append(stream)

    tasks = [asyncio.create_task(wait(s)) for s in ("a", "b")]
    await asyncio.sleep(0)
    arrivals["b"] = 5.0  # b's camera sent a newer frame while b waited
    admission.release()
    await asyncio.sleep(0)
    admission.release()
    await asyncio.gather(*tasks)
    assert order == ["b", "a"]


async def test_every_waiting_stream_gets_one_place_per_round() -> None:
    # Stream "fresh" always has the newest frame, yet the others are served once in every round.
    admission = LiveAdmission(1)
    arrivals = {"fresh": 10.0, "x": 1.0, "y": 2.0}
    grants: list[str] = []

    async def stream(name: str, frames: int) -> None:
        for _ in range(frames):
            await admission.acquire(name, lambda: arrivals[name])
            grants.append(name)
            await asyncio.sleep(0.001)
            admission.release()

    await asyncio.wait_for(asyncio.gather(*(stream(n, 10) for n in arrivals)), 5)
    assert sorted(grants) == sorted(["fresh", "x", "y"] * 10)
    # While all three wait, any three consecutive grants are three different streams.
    for i in range(len(grants) - 2):
        assert len(set(grants[i : i + 3])) == 3, grants


async def test_cancelled_waiters_leave_no_trace() -> None:
    admission = LiveAdmission(1)
    await admission.acquire("holder", lambda: 0.0)
    waiter = asyncio.create_task(admission.acquire("gone", lambda: 9.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    admission.release()
    assert admission.free == 1
    # Granted and cancelled in the same loop iteration: the place is given on, not lost.
    await admission.acquire("holder", lambda: 0.0)
    granted_then_cancelled = asyncio.create_task(admission.acquire("late", lambda: 1.0))
    await asyncio.sleep(0)
    admission.release()
    granted_then_cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted_then_cancelled
    assert admission.free == 1


def test_at_least_one_place() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LiveAdmission(0)


async def test_a_place_released_to_a_waiter_cancelled_but_not_yet_resumed_is_not_lost() -> None:
    # A client disconnect cancels the waiting task; before that task runs its handler, another
    # stream releases its place. The place must go to the next waiter (or back to free), never vanish.
    admission = LiveAdmission(1)
    await admission.acquire("holder", lambda: 0.0)
    gone = asyncio.create_task(admission.acquire("gone", lambda: 9.0))
    other = asyncio.create_task(admission.acquire("other", lambda: 1.0))
    await asyncio.sleep(0)
    gone.cancel()  # settles its future now; its except block runs only on the next loop pass
    admission.release()
    await asyncio.wait_for(other, 1)  # the place went to the waiter still there
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert admission.free == 0 and admission.waiting == 0
    admission.release()
    assert admission.free == admission.capacity == 1
    # And with nobody else waiting, the place comes back to free.
    await admission.acquire("holder", lambda: 0.0)
    lone = asyncio.create_task(admission.acquire("lone", lambda: 2.0))
    await asyncio.sleep(0)
    lone.cancel()
    admission.release()
    with pytest.raises(asyncio.CancelledError):
        await lone
    assert admission.free == 1 and admission.waiting == 0
    await asyncio.wait_for(admission.acquire("fresh", lambda: 3.0), 1)


def test_releasing_more_than_was_granted_is_refused() -> None:
    with pytest.raises(RuntimeError, match="without a place"):
        LiveAdmission(1).release()
