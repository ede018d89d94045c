"""Reading back the videos the commands under test write."""

from __future__ import annotations

from pathlib import Path

import cv2


def count_frames(path: Path) -> int:
    """The number of frames OpenCV can decode from the video at `path` (0 if it cannot open it)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count
