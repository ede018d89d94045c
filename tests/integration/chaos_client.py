"""A hostile, clumsy client process: `python -m tests.integration.chaos_client TARGET SEED ROUNDS`.

Each round picks one misbehaviour at random: cancel a stream after a few answers, close the channel
under a running stream, stream LATEST from two threads and close the client (the way one real client
wedged every live stream), send corrupt or odd-shaped frames, let a SegmentImage deadline expire
mid-call, or SIGKILL itself mid-stream. Prints one line per finished round so that the test counts
rounds even for a process that killed itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np

from segstream.client import SegmentationClient, StreamOptions
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc
from segstream.wire import codec

LATEST = pb.StreamConfig(policy=pb.FRAME_POLICY_LATEST)
ORDERED = pb.StreamConfig(policy=pb.FRAME_POLICY_ORDERED)


class Chaos:
    def __init__(self, target: str, seed: int) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.image = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), np.uint8)

    def frame(self, frame_id: int) -> pb.Frame:
        kind = self.rng.random()
        if kind < 0.08:  # corrupt JPEG
            junk = b"\xff\xd8\xff\xe0" + os.urandom(self.rng.randint(0, 64))
            return pb.Frame(frame_id=frame_id, encoded=pb.EncodedImage(data=junk))
        if kind < 0.14:  # raw bytes that do not match the stated shape
            return pb.Frame(
                frame_id=frame_id,
                raw=pb.RawImage(data=b"\0" * 10, width=7, height=3, format=pb.PIXEL_FORMAT_RGB8),
            )
        if kind < 0.20:  # odd but valid shapes
            h, w = self.rng.choice([(1, 1), (2, 3), (5, 1), (3, 40)])
            return codec.frame_from_array(self.image[:h, :w], frame_id=frame_id, encoding="raw")
        return codec.frame_from_array(self.image, frame_id=frame_id, encoding=self.rng.choice(["raw", "jpeg"]))

    def requests(self, config: pb.StreamConfig, count: int, pause: float) -> Iterator[pb.SegmentRequest]:
        yield pb.SegmentRequest(config=config)
        for i in range(count):
            yield pb.SegmentRequest(frame=self.frame(i))
            if pause:
                time.sleep(pause)

    def pause(self) -> float:
        return self.rng.choice([0.0, 0.0, 0.002, 0.01, 0.03])

    def cancel_stream(self) -> None:
        config = self.rng.choice([LATEST, ORDERED])
        answers = self.rng.randint(0, 3)
        with grpc.insecure_channel(self.target) as channel:
            call = pb_grpc.SegmentationStub(channel).Segment(self.requests(config, 30, self.pause()), timeout=10)
            try:
                for i, _ in enumerate(call):
                    if i >= answers:
                        break
            except grpc.RpcError:
                pass
            call.cancel()

    def close_channel_under_stream(self) -> None:
        channel = grpc.insecure_channel(self.target)
        config = self.rng.choice([LATEST, ORDERED])
        call = pb_grpc.SegmentationStub(channel).Segment(self.requests(config, 50, self.pause()), timeout=10)

        def read() -> None:
            try:
                for _ in call:
                    pass
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(self.rng.uniform(0, 0.05))
        channel.close()
        reader.join(10)

    def two_live_threads_then_close(self) -> None:
        client = SegmentationClient(self.target, timeout=10)
        frames = [self.image] * 40

        def stream() -> None:
            try:
                for _ in client.stream(iter(frames), StreamOptions(policy="latest")):
                    pass
            except Exception:
                pass  # the client was closed under the stream: that is the point

        threads = [threading.Thread(target=stream) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(self.rng.uniform(0, 0.08))
        client.close()
        for thread in threads:
            thread.join(10)

    def whole_stream(self) -> None:
        """A stream read to its end: every frame is answered (or, LATEST, counted as dropped)."""
        config = self.rng.choice([LATEST, ORDERED])
        count = self.rng.randint(0, 8)
        with grpc.insecure_channel(self.target) as channel:
            call = pb_grpc.SegmentationStub(channel).Segment(self.requests(config, count, self.pause()), timeout=10)
            responses = list(call)
        dropped = responses[-1].dropped_frames if responses else 0
        if len(responses) + dropped != count:
            raise AssertionError(f"{count} frames sent, {len(responses)} answered, {dropped} dropped")

    def image_call(self) -> None:
        timeout = self.rng.choice([0.001, 0.01, 0.05, 5.0])
        request = pb.SegmentImageRequest(frame=self.frame(0))
        with grpc.insecure_channel(self.target) as channel:
            future = pb_grpc.SegmentationStub(channel).SegmentImage.future(request, timeout=timeout)
            if self.rng.random() < 0.3:
                time.sleep(self.rng.uniform(0, 0.02))
                future.cancel()
            with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
                future.result()

    def kill_self_mid_stream(self) -> None:
        channel = grpc.insecure_channel(self.target)
        config = self.rng.choice([LATEST, ORDERED])
        call = pb_grpc.SegmentationStub(channel).Segment(self.requests(config, 100, 0.005), timeout=10)
        delay = self.rng.uniform(0, 0.1)
        threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass
        time.sleep(1)  # the timer kills the process before this ends

    def round(self) -> str:
        actions = [
            (self.cancel_stream, 5),
            (self.close_channel_under_stream, 4),
            (self.two_live_threads_then_close, 3),
            (self.whole_stream, 3),
            (self.image_call, 4),
            (self.kill_self_mid_stream, 1),
        ]
        action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
        action()
        return action.__name__


def main() -> None:
    target, seed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    chaos = Chaos(target, seed)
    for number in range(rounds):
        name = chaos.round()
        print(f"round {number} {name}", flush=True)


if __name__ == "__main__":
    main()
