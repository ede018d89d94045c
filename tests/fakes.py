"""Fakes at the engine seam (segstream.server.engine.Model), for timing and failure tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from segstream.server.engine import F32Array


class GatedModel:
    """Logits that favour class (row index % 21); each run waits for `gate` and may fail on demand."""

    name = "gated"
    provider = "CPUExecutionProvider"
    heads = ("out",)
    num_classes = 21
    synthetic = True

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.runs = 0
        self.fail_when_mean_below: float | None = None

    def run(self, head: str, batch: Sequence[F32Array]) -> F32Array:
        if not self.gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        self.runs += 1
        if self.fail_when_mean_below is not None and any(t.mean() < self.fail_when_mean_below for t in batch):
            raise RuntimeError("simulated device failure")
        n, _, height, width = len(batch), *batch[0].shape
        logits = np.zeros((n, self.num_classes, height, width), np.float32)
        rows = np.arange(height) % self.num_classes
        logits[:, rows, np.arange(height), :] = 1.0
        return logits

    def close(self) -> None:
        pass
