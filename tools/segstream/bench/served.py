"""The served phase: a real `segstream-server` process, and N concurrent client streams against it.

The streams speak the wire protocol directly (pre-encoded JPEG frames in, responses counted, never
decoded), so the client does as little as a client can on the same cores as the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import grpc.aio

from segstream.bench.frames import frame_request
from segstream.bench.report import STAGES, StreamStats
from segstream.client import AsyncSegmentationClient, ModelInfo, ServerNotReadyError, StreamOptions
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class BenchError(RuntimeError):
    """The benchmark could not run (the server did not start, a stream failed); the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, for the server under test to bind."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """VmHWM (peak resident set) and VmRSS of a process in MB, from /proc (empty where unavailable)."""
    figures: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return figures
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            figures[key] = int(value.split()[0]) / 1024.0  # kB
    return figures


@dataclass(frozen=True)
class ServerCommand:
    """How to start the server under test."""

    model_name: str
    model_path: Path
    size: int
    device: str
    threads: int
    max_batch: int
    extra_args: tuple[str, ...] = ()
    host: str = "127.0.0.1"

    def argv(self, port: int) -> list[str]:
        """The command line of a server process of this interpreter."""
        return [sys.executable, "-m", "segstream.server.cli", *self.flags(port)]

    def flags(self, port: int) -> list[str]:
        """The server's options alone, as its own parser reads them (see `argv`)."""
        return [
            "--model",
            f"{self.model_name}={self.model_path}",
            "--host",
            self.host,
            "--port",
            str(port),
            "--size",
            str(self.size),
            "--device",
            self.device,
            "--threads",
            str(self.threads),
            "--max-batch",
            str(self.max_batch),
            "--log-level",
            "WARNING",
            *self.extra_args,
        ]


class ServerProcess:
    """A `segstream-server` subprocess on a free loopback port; its log goes to a temporary file."""

    def __init__(self, command: ServerCommand) -> None:
        self.command = command
        self.port = free_port(command.host)
        self.target = f"{command.host}:{self.port}"
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - open while the server runs
        self._proc = subprocess.Popen(
            command.argv(self.port), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        """The server's process id, for its CPU time and memory."""
        return self._proc.pid

    def exited(self) -> int | None:
        """The server's exit status once it has exited, else None."""
        return self._proc.poll()

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of the server's output, to say why it failed."""
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip().splitlines()
        return "\n".join(text[-lines:])

    async def wait_ready(self, timeout: float) -> list[ModelInfo]:  # noqa: ASYNC109 - a deadline for startup
        """Waits for health SERVING (or the process to die); returns what ListModels reports."""
        deadline = time.monotonic() + timeout
        async with AsyncSegmentationClient(self.target) as client:
            while True:
                if self.exited() is not None:
                    # The server's last line says why (its own one-line error, or a traceback's last line).
                    reason = self.log_tail(1) or "no output"
                    raise BenchError(f"segstream-server exited with status {self.exited()} before serving: {reason}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"segstream-server did not report SERVING within {timeout:g} s")
                try:
                    await client.wait_ready(timeout=min(1.0, remaining))
                except ServerNotReadyError:
                    continue
                return await client.models(timeout=10.0)

    def memory(self) -> dict[str, float]:
        """The server's peak and current resident memory, as `memory_mb` gives them."""
        return memory_mb(self.pid)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; returns the exit status."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        return self._proc.returncode


async def server_models(target: str, timeout: float) -> list[ModelInfo]:  # noqa: ASYNC109
    """An existing server's models, once its health check reports SERVING."""
    async with AsyncSegmentationClient(target) as client:
        try:
            await client.wait_ready(timeout=timeout)
        except ServerNotReadyError as exc:
            raise BenchError(str(exc)) from exc
        return await client.models(timeout=10.0)


@dataclass(frozen=True)
class LoadSpec:
    """The client load: `streams` concurrent streams of `frames` frames each."""

    streams: int
    frames: int
    options: StreamOptions
    # Unanswered frames a stream may have (ORDERED); LATEST streams send regardless.
    window: int = 1
    # Frames per second per stream, paced like a camera; 0 sends as fast as the policy allows.
    rate: float = 0.0
    # Which of `frames` a stream sends first (a later round goes on where the previous one stopped).
    first: int = 0


def _channel(target: str) -> grpc.aio.Channel:
    options = [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        # Each stream gets its own connection, as separate cameras would.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return grpc.aio.insecure_channel(target, options)


def _stub(channel: grpc.aio.Channel) -> Any:
    # The generated module is untyped; naming the class as a callable keeps mypy strict here.
    stub_class: Callable[[object], Any] = segmentation_pb2_grpc.SegmentationStub
    return stub_class(channel)


async def run_stream(
    target: str,
    frames: Sequence[bytes],
    spec: LoadSpec,
    start_at: float,
    count: int | None = None,
) -> tuple[StreamStats, float, float]:
    """One stream; returns its stats, when it sent its first frame and when its last answer came.

    `start_at` (time.perf_counter()) is when this stream's first frame is due; with a rate, frame i
    is due at start_at + i / rate.
    """
    total = spec.frames if count is None else count
    stats = StreamStats()
    sent_at: dict[int, float] = {}
    window = asyncio.Semaphore(spec.window) if spec.options.policy == "ordered" else None
    first_sent = last_answer = 0.0
    async with _channel(target) as channel:
        await channel.channel_ready()
        call = _stub(channel).Segment()

        async def write() -> None:
            nonlocal first_sent
            await call.write(pb.SegmentRequest(config=spec.options.to_proto()))
            for i in range(total):
                due = start_at + (i / spec.rate if spec.rate else 0.0)
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if window is not None:
                    await window.acquire()
                request = frame_request(frames[(spec.first + i) % len(frames)], i, time.time_ns())
                now = time.perf_counter()
                sent_at[i] = now
                if i == 0:
                    first_sent = now
                await call.write(request)
                stats.sent += 1
            await call.done_writing()

        writer = asyncio.create_task(write())
        try:
            async for response in call:
                now = time.perf_counter()
                last_answer = now
                if window is not None:
                    window.release()
                stats.answered += 1
                stats.dropped = max(stats.dropped, response.dropped_frames)
                if response.HasField("error"):
                    stats.errors += 1
                    stats.first_error = stats.first_error or f"{response.error.code}: {response.error.message}"
                    continue
                started = sent_at.pop(response.frame_id, None)
                if started is not None:
                    stats.latencies_ms.append((now - started) * 1e3)
                timings = response.timings
                for stage in STAGES:
                    stats.stage_sums_ms[stage] += getattr(timings, f"{stage}_ms")
            await writer
        except grpc.aio.AioRpcError as exc:
            raise BenchError(f"stream to {target} failed: {exc.code().name}: {exc.details()}") from exc
        finally:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
    return stats, first_sent, last_answer


async def run_load(target: str, frames: Sequence[bytes], spec: LoadSpec) -> tuple[list[StreamStats], float]:
    """All streams at once; returns each stream's stats and the wall time from first send to last answer.

    With a rate, the streams' first frames are spread over one frame interval, as independent
    cameras' would be.
    """
    start = time.perf_counter() + 0.05
    offset = 1.0 / (spec.rate * spec.streams) if spec.rate else 0.0
    results = await asyncio.gather(*(run_stream(target, frames, spec, start + i * offset) for i in range(spec.streams)))
    stats = [r[0] for r in results]
    first = min((r[1] for r in results if r[0].sent), default=0.0)
    last = max((r[2] for r in results), default=0.0)
    wall = max(0.0, last - first)
    if spec.rate:
        # Paced streams: at least the frames' own intervals, so that a server keeping up is credited
        # the rate, not more (from first send to last answer alone covers frames - 1 intervals).
        wall = max(wall, spec.frames / spec.rate)
    return stats, wall


async def warm_up(target: str, frames: Sequence[bytes], spec: LoadSpec, count: int) -> None:
    """A short ORDERED stream, not counted: connections, server buffers and caches get set up."""
    if count <= 0:
        return
    options = StreamOptions(
        model=spec.options.model, head=spec.options.head, outputs=spec.options.outputs, policy="ordered"
    )
    warm = LoadSpec(streams=1, frames=count, options=options, window=1)
    stats, _, _ = await run_stream(target, frames, warm, time.perf_counter())
    if stats.errors:
        raise BenchError(f"the server answered warm-up frames with errors: {stats.first_error}")
