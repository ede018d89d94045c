"""Rebuilds samples/coco-pan.mp4: a slow pan across the two bundled COCO val2017 photographs.

The clip is short and small on purpose: `make demo` segments every frame of it on a 2-core CPU.
Run: .venv/bin/python scripts/make_sample_clip.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
IMAGES = ("000000017968.jpg", "000000025205.jpg")
FRAMES_PER_IMAGE = 24
SIZE = (320, 240)  # width, height of the clip
FPS = 12.0


def pan(image: npt.NDArray[np.uint8], frames: int) -> list[npt.NDArray[np.uint8]]:
    """Frames of a 3/4-size window sliding from the top-left to the bottom-right corner."""
    height, width = image.shape[:2]
    win_w, win_h = width * 3 // 4, height * 3 // 4
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        x, y = round(t * (width - win_w)), round(t * (height - win_h))
        crop = image[y : y + win_h, x : x + win_w]
        out.append(np.asarray(cv2.resize(crop, SIZE, interpolation=cv2.INTER_AREA), np.uint8))
    return out


def main() -> None:
    """Write samples/coco-pan.mp4 from the bundled photographs."""
    writer = cv2.VideoWriter(str(SAMPLES / "coco-pan.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write mp4v video here")
    for name in IMAGES:
        image = cv2.imread(str(SAMPLES / name))
        if image is None:
            raise SystemExit(f"cannot read {SAMPLES / name}")
        for frame in pan(np.asarray(image, np.uint8), FRAMES_PER_IMAGE):
            writer.write(frame)
    writer.release()


if __name__ == "__main__":
    main()
