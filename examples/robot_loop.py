"""A robot control loop on live segmentation: stop while a person fills the lower third of the view.

The loop streams a camera to a segstream server with the LATEST policy (the server drops frames it
cannot keep up with, so every decision is made on a fresh view), asks only for the class mask, and
prints per frame the fraction of 'person' pixels in the lower third, the decision, the round-trip
latency and the age of the frame the decision was made on.

    segstream-server --model models/onnx/fcn-resnet50-11.onnx &
    python examples/robot_loop.py --server localhost:50051 --source 0            # webcam 0
    python examples/robot_loop.py --source samples/coco-pan.mp4 --frames 48       # a recording
    python examples/robot_loop.py --source synthetic --frames 30                  # no camera at all

With a synthetic model (random weights) the masks, and so the decisions, are meaningless.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator

import cv2
import numpy as np
import numpy.typing as npt

from segstream.client import AsyncSegmentationClient, FrameInput, SegstreamError, StreamOptions
from segstream.wire.palette import VOC_CLASSES

U8Array = npt.NDArray[np.uint8]


def synthetic_frames(count: int, fps: float, size: tuple[int, int] = (480, 640)) -> Iterator[U8Array]:
    """A moving bright block on a gradient, at `fps` frames per second (BGR)."""
    height, width = size
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    for index in range(count):
        frame = gradient.copy()
        left = (index * 16) % (width - 120)
        frame[height // 2 :, left : left + 120] = (40, 180, 250)
        time.sleep(1 / fps)  # a camera delivers at its own pace; this runs on a worker thread
        yield frame


def camera_frames(source: str, count: int, fps: float) -> Iterator[FrameInput]:
    """Frames from a camera index, a video file or URL, or 'synthetic', stamped when captured."""
    if source == "synthetic":
        images: Iterator[U8Array] = synthetic_frames(count, fps)
    else:
        images = _capture(int(source) if source.isdigit() else source, count)
    for image in images:
        yield FrameInput(image, timestamp_ns=time.time_ns())


def _capture(source: int | str, count: int) -> Iterator[U8Array]:
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"robot_loop: cannot open video source {source!r}")
    try:
        for _ in range(count):
            ok, frame = capture.read()
            if not ok:
                return
            yield np.asarray(frame, np.uint8)
    finally:
        capture.release()


def person_share(labels: U8Array, person: int) -> float:
    """Fraction of the lower third of the mask (the ground just ahead) that is 'person'."""
    lower = labels[2 * labels.shape[0] // 3 :]
    return float(np.count_nonzero(lower == person)) / max(lower.size, 1)


def act(command: str) -> None:
    """Where a real robot would publish a velocity command."""


async def run(args: argparse.Namespace) -> int:
    """The control loop: one STOP/GO decision per segmented frame, then a latency summary."""
    async with AsyncSegmentationClient(args.server, pixel_format="bgr") as client:
        await client.wait_ready(timeout=args.wait)
        models = await client.models(timeout=10)
        model = next((m for m in models if m.name == args.model or (not args.model and m.is_default)), None)
        class_names = model.class_names if model is not None else VOC_CLASSES
        person = class_names.index("person") if "person" in class_names else VOC_CLASSES.index("person")
        if model is not None and model.synthetic:
            print(f"note: model {model.name!r} has random weights, so its decisions are meaningless")
        options = StreamOptions(model=args.model, policy="latest", outputs=("label_mask",))
        latencies: list[float] = []
        dropped = 0
        frames = camera_frames(args.source, args.frames, args.fps)
        async with contextlib.aclosing(client.stream(frames, options)) as results:
            async for result in results:
                if result.labels is None:
                    print(f"frame {result.frame_id}: {result.error}")
                    continue
                share = person_share(result.labels, person)
                command = "STOP" if share >= args.threshold else "GO"
                act(command)
                age_ms = (time.time_ns() - result.timestamp_ns) / 1e6
                latency = result.latency_ms or 0.0
                latencies.append(latency)
                dropped = result.dropped_frames
                print(
                    f"frame {result.frame_id:4d}  person {share:6.1%}  -> {command:4s}  "
                    f"latency {latency:6.1f} ms  frame age {age_ms:6.1f} ms"
                )
    if latencies:
        print(
            f"{len(latencies)} decisions, {dropped} frames dropped by the server to stay current; latency "
            f"median {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the loop and return the exit status (1 when the server fails)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--server", default="localhost:50051", help="segstream server host:port")
    parser.add_argument("--source", default="synthetic", help="camera index, video file or URL, or 'synthetic'")
    parser.add_argument("--frames", type=int, default=100, help="frames to read before stopping")
    parser.add_argument("--fps", type=float, default=15.0, help="frame rate of the synthetic source")
    parser.add_argument("--model", default="", help="model name (default: the server's default)")
    parser.add_argument("--threshold", type=float, default=0.05, help="person share of the lower third that stops")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the server to be ready")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except SegstreamError as exc:
        print(f"robot_loop: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
