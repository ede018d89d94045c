"""What one gRPC round trip costs on this machine, with no serving work at all.

Starts a bare grpc.aio server process speaking segstream's Segment method: for each frame it
waits --pause-ms in a worker thread (as an inference would, the cores idle meanwhile) and answers
with a raw 640x480 label mask of zeros; nothing is decoded, run or encoded. The client is
segstream-bench's own stream (one stream, window 1, the bench's JPEG frames). The latency above
the pause is the floor under segstream-bench's one-stream overhead: gRPC on loopback plus the
machine's thread wake-ups after an idle pause.

    python scripts/transport_floor.py --pause-ms 42 --frames 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from segstream.bench.frames import encoded_frames
from segstream.bench.served import LoadSpec, run_stream
from segstream.client import StreamOptions
from segstream.server.event_loop import EVENT_LOOPS, loop_factory
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc

_MASK = bytes(640 * 480)


class _Bare(pb_grpc.SegmentationServicer):
    def __init__(self, pause_s: float) -> None:
        self._pause = pause_s

    async def Segment(
        self, requests: AsyncIterator[pb.SegmentRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SegmentResponse]:
        loop = asyncio.get_running_loop()
        async for request in requests:
            if not request.HasField("frame"):
                continue
            started = time.perf_counter()
            if self._pause:
                await loop.run_in_executor(None, time.sleep, self._pause)
            response = pb.SegmentResponse(frame_id=request.frame.frame_id)
            response.label_mask.width, response.label_mask.height = 640, 480
            response.label_mask.data = _MASK
            # The pause as it really was (sleep overshoots), so the client can subtract it.
            response.timings.inference_ms = (time.perf_counter() - started) * 1e3
            yield response


async def _serve(pause_s: float) -> None:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
    pb_grpc.add_SegmentationServicer_to_server(_Bare(pause_s), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _measure(port: int, frames: int) -> tuple[float, float]:
    images = encoded_frames()
    options = StreamOptions(policy="ordered")
    target = f"127.0.0.1:{port}"
    await run_stream(target, images, LoadSpec(streams=1, frames=20, options=options), time.perf_counter())
    spec = LoadSpec(streams=1, frames=frames, options=options)
    stats, _, _ = await run_stream(target, images, spec, time.perf_counter())
    pause = stats.stage_sums_ms["inference"] / max(1, len(stats.latencies_ms))
    return statistics.median(stats.latencies_ms), pause


def main() -> int:
    """Start the bare server in a child process, time the round trips against it and print the floor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pause-ms", type=float, default=42.0, help="server-side idle wait per frame (default 42)")
    parser.add_argument("--frames", type=int, default=200, help="frames to time (default 200)")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="both sides' event loop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    loop_name, new_loop = loop_factory(args.event_loop)
    if args.serve:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(_serve(args.pause_ms / 1e3))
        return 0
    command = [sys.executable, __file__, "--serve", "--pause-ms", str(args.pause_ms), "--event-loop", args.event_loop]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            with asyncio.Runner(loop_factory=new_loop) as runner:
                p50, pause = runner.run(_measure(port, args.frames))
        finally:
            server.terminate()
    print(
        f"{loop_name}: {args.frames} frames, pause {args.pause_ms:g} ms: latency p50 {p50:.3f} ms, "
        f"measured pause {pause:.3f} ms, round trip above the pause {p50 - pause:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
