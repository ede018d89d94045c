"""Chaos against a server process: hostile client processes, then every count back where it was.

Client processes (tests/integration/chaos_client.py) cancel, close channels under streams, expire
deadlines and SIGKILL themselves at random over at least 200 rounds of mixed LATEST / ORDERED
streams and SegmentImage calls. Afterwards a fresh LATEST and a fresh ORDERED stream must each be
answered within 2 s, the server must report no open stream and no frame in flight, every frame it
received must be counted answered, failed or dropped, and its threads and file descriptors must be
back to their baseline. Before live admission conserved its places, a
few such rounds left every later LATEST stream unanswered for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import grpc
import numpy as np

from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec
from tests.integration.server_process import ServerProcess, server_process

REPO = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("SEGSTREAM_CHAOS_ROUNDS", "200"))
PROCESSES = 4
DEADLINE_S = 150.0


def _probe(target: str, policy: pb.FramePolicy, frames: int = 3) -> float:
    """Seconds until a fresh stream of `policy` answered all its frames."""
    image = np.full((48, 64, 3), 128, np.uint8)
    requests = [pb.SegmentRequest(config=pb.StreamConfig(policy=policy))]
    for i in range(frames):
        requests.append(pb.SegmentRequest(frame=codec.frame_from_array(image, frame_id=i, encoding="raw")))
    started = time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        responses = list(pb_grpc.SegmentationStub(channel).Segment(iter(requests), timeout=2))
    # LATEST may drop a frame the next one replaced, but answers the last and counts the rest.
    assert responses and not any(r.HasField("error") for r in responses), responses
    assert len(responses) + responses[-1].dropped_frames == frames
    return time.perf_counter() - started


def _threads_and_fds(pid: int) -> tuple[int, int]:
    threads = sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())
    fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    return threads, fds


def _eventually(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _unaccounted(server: ServerProcess) -> float:
    """Frames received minus those answered, failed and dropped (0 once every stream has ended)."""
    counts = {k: server.metric(f"segstream_frames_{k}_total") for k in ("received", "answered", "failed", "dropped")}
    assert counts["received"] > 0, "no frame counted received: the metric's name is wrong"
    return counts["received"] - counts["answered"] - counts["failed"] - counts["dropped"]


def _warm_up(server: ServerProcess) -> None:
    # Fill every lazily grown pool (decode threads, gRPC's own) before taking the baseline.
    with ThreadPoolExecutor(8) as pool:
        for policy in [pb.FRAME_POLICY_LATEST, pb.FRAME_POLICY_ORDERED] * 4:
            pool.submit(_probe, server.target, policy)


def _run_clients(target: str, errors: IO[str]) -> dict[str, int]:
    """Runs chaos client processes, replacing those that kill themselves, until ROUNDS rounds ran."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seed = 0
    running: list[subprocess.Popen[str]] = []
    done: dict[str, int] = {}
    finished = 0
    deadline = time.monotonic() + DEADLINE_S

    def spawn() -> None:
        nonlocal seed
        seed += 1
        per_process = max(10, ROUNDS // PROCESSES)
        command = [sys.executable, "-m", "tests.integration.chaos_client", target, str(seed), str(per_process)]
        running.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=errors, text=True))

    for _ in range(PROCESSES):
        spawn()
    while running:
        assert time.monotonic() < deadline, f"chaos clients still running after {DEADLINE_S} s ({finished} rounds)"
        for process in list(running):
            if process.poll() is None:
                continue
            running.remove(process)
            # Only a process that killed itself on purpose may end other than cleanly.
            if process.returncode not in (0, -signal.SIGKILL):
                errors.seek(0)
                raise AssertionError(f"a chaos client failed ({process.returncode}): {errors.read()[-3000:]}")
            output = process.stdout.read() if process.stdout else ""
            for line in output.splitlines():
                _, _, action = line.split(" ", 2)
                done[action] = done.get(action, 0) + 1
                finished += 1
            # A process that killed itself or failed leaves rounds to run: start another.
            if finished < ROUNDS:
                spawn()
        time.sleep(0.05)
    return done


def test_hostile_clients_leave_a_server_that_answers_and_holds_nothing(tiny_model: Path) -> None:
    with server_process(tiny_model, "--size", "64", "--max-streams", "100", "--idle-timeout", "10") as server:
        _warm_up(server)
        baseline = _threads_and_fds(server.process.pid)

        with tempfile.TemporaryFile("w+") as errors:
            rounds = _run_clients(server.target, errors)

        assert sum(rounds.values()) >= ROUNDS, rounds
        assert len(rounds) >= 5, f"too few kinds of misbehaviour ran: {rounds}"
        assert server.process.poll() is None, "the server died"
        assert _eventually(lambda: server.metric("segstream_open_streams") == 0, 10), "streams left open"
        assert _eventually(lambda: server.metric("segstream_inflight_frames") == 0, 10), "frames left in flight"
        for policy in (pb.FRAME_POLICY_LATEST, pb.FRAME_POLICY_ORDERED):
            assert _probe(server.target, policy) < 2.0
        # Every frame the server read, however its stream ended, was answered, failed or dropped.
        assert _eventually(lambda: _unaccounted(server) == 0, 10), f"frames unaccounted for: {_unaccounted(server)}"
        # Nothing kept: threads and descriptors return to what the warmed-up server had.
        assert _eventually(
            lambda: all(n <= b for n, b in zip(_threads_and_fds(server.process.pid), baseline, strict=True)), 10
        ), f"threads, fds {_threads_and_fds(server.process.pid)} above baseline {baseline} after {rounds}"
        server.terminate()
