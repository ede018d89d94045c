"""A plain ONNX Runtime + numpy implementation of the model card's pipeline, for parity checks.

Deliberately independent of the server's code: plain `session.run`, no IOBinding, numpy bilinear.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from segstream.models.serving import MEAN, STD


def card_input(rgb: npt.NDArray[np.uint8], size: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    height, width = rgb.shape[:2]
    if size:
        scale = size / min(height, width)
        shape = (size, round(width * scale)) if height <= width else (round(height * scale), size)
        rgb = np.asarray(cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR), np.uint8)
    x = ((rgb.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)[None].astype(np.float32)
    return rgb, x


def bilinear(logits: npt.NDArray[np.float32], height: int, width: int) -> npt.NDArray[np.float32]:
    """Half-pixel-centre bilinear resize of CxHxW (align_corners=False)."""
    _, in_h, in_w = logits.shape

    def axis(n_out: int, n_in: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        low = np.floor(src).astype(np.intp)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, src - low

    y0, y1, wy = axis(height, in_h)
    x0, x1, wx = axis(width, in_w)
    top = logits[:, y0][:, :, x0] * (1 - wx) + logits[:, y0][:, :, x1] * wx
    bottom = logits[:, y1][:, :, x0] * (1 - wx) + logits[:, y1][:, :, x1] * wx
    return (top * (1 - wy)[:, None] + bottom * wy[:, None]).astype(np.float32)


def reference(
    model: Path, rgb: npt.NDArray[np.uint8], size: int, head: str = "out"
) -> tuple[npt.NDArray[np.uint8], float]:
    """(label map at the frame's resolution, confidence at the inference resolution)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    _, x = card_input(rgb, size)
    logits = session.run([head], {"input": x})[0][0]
    score = float(logits.max(axis=0).mean())
    labels = bilinear(logits, rgb.shape[0], rgb.shape[1]).argmax(axis=0).astype(np.uint8)
    return labels, score
