"""Fakes at the engine seam (segstream.server.engine.Model), for timing and failure tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from segstream.models.classes import voc_classes
from segstream.server.engine import BatchResult, U8Array


class GatedModel:
    """Labels equal to (row index % 21); each run waits for `gate` and may fail on demand."""

    name = "gated"
    provider = "CPUExecutionProvider"
    heads = ("out",)
    classes = voc_classes()
    synthetic = True

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.runs = 0
        self.threads: set[str] = set()
        self.fail_when_mean_below: float | None = None
        self.closed = False
        self.entered = threading.Event()  # set when a run starts (before it waits for the gate)

    def run(self, head: str, frames: Sequence[U8Array], output_size: tuple[int, int]) -> BatchResult:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        self.runs += 1
        self.threads.add(threading.current_thread().name)
        if self.fail_when_mean_below is not None and any(f.mean() < self.fail_when_mean_below for f in frames):
            raise RuntimeError("simulated device failure")
        n = len(frames)
        rows = (np.arange(output_size[0]) % len(self.classes)).astype(np.uint8)
        labels = np.broadcast_to(rows[None, :, None], (n, *output_size)).copy()
        return BatchResult(labels, np.ones(n, np.float32))

    def close(self) -> None:
        self.closed = True
