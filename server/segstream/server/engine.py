"""The inference seam: what the pipeline needs from a model, whatever runs it.

`OrtModel` (ONNX Runtime, see ort_model.py) is the real implementation; tests may plug in fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

F32Array = npt.NDArray[np.float32]

HEADS: tuple[str, ...] = ("out", "aux")


class EngineError(RuntimeError):
    """A model that cannot be loaded or run; the message says what to check."""


class Model(Protocol):
    """A loaded segmentation model, safe to call from several worker threads at once."""

    @property
    def name(self) -> str: ...

    @property
    def provider(self) -> str:
        """The execution provider really running the model."""
        ...

    @property
    def heads(self) -> tuple[str, ...]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def synthetic(self) -> bool:
        """True when the weights are random (masks are meaningless)."""
        ...

    def run(self, head: str, batch: Sequence[F32Array]) -> F32Array:
        """Logits [N, classes, H, W] for N normalized 3xHxW tensors of one shape.

        The result may be a view into a buffer owned by the calling thread, valid until that
        thread's next `run`: consume it before running again.
        """
        ...

    def close(self) -> None: ...
