"""The inference seam: what the pipeline needs from a model, whatever runs it.

`OrtModel` (ONNX Runtime, see ort_model.py) is the real implementation; tests may plug in fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from segstream.models.classes import ClassList

F32Array = npt.NDArray[np.float32]
U8Array = npt.NDArray[np.uint8]

HEADS: tuple[str, ...] = ("out", "aux")


class EngineError(RuntimeError):
    """A model that cannot be loaded or run; the message says what to check."""


@dataclass(frozen=True)
class BatchResult:
    """What the serving graph returns for a batch of N frames."""

    labels: U8Array  # [N, out_height, out_width] class ids
    confidence: F32Array  # [N] mean over pixels of the maximum logit


class Model(Protocol):
    """A loaded segmentation model, safe to call from several worker threads at once."""

    @property
    def name(self) -> str:
        """The name clients address the model by."""
        ...

    @property
    def provider(self) -> str:
        """The execution provider really running the model."""
        ...

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads it serves ("out", "aux")."""
        ...

    @property
    def classes(self) -> ClassList:
        """Its class names and colours, one of each per class its label maps hold (see segstream.server.contract)."""
        ...

    @property
    def synthetic(self) -> bool:
        """True when the weights are random (masks are meaningless)."""
        ...

    def run(self, head: str, frames: Sequence[U8Array], output_size: tuple[int, int]) -> BatchResult:
        """Segments N HxWx3 RGB uint8 frames of one shape (already at the inference size).

        Labels come back at `output_size` (height, width). The arrays may be views into buffers
        owned by the calling thread, valid until that thread's next `run`: consume them first.
        """
        ...

    def close(self) -> None:
        """Frees its sessions and buffers; no `run` after it."""
        ...
