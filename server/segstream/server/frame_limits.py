"""What one frame may cost: the pixels of its network input and its aspect ratio.

The network's time and memory grow with the pixels it runs on, not with the frame's: the short
side is resized to --size, so a thin frame (2x150) became a 64x4800 network input at --size 64,
and with --size 0 a frame runs at its own resolution. Both limits are checked on the decoded frame
before it is resized, and a frame beyond them gets FrameOverLimitError (RESOURCE_EXHAUSTED) with
what to send instead.

Example:
    >>> FrameLimits().check(480, 640, (520, 693), 520)  # within both limits: no error
    >>> try:
    ...     FrameLimits().check(2, 150, (64, 4800), 64)
    ... except FrameOverLimitError as exc:
    ...     print(str(exc).split(",")[0])
    frame of 150x2 has an aspect ratio of 75.0:1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from segstream.wire.codec import FrameOverLimitError

# 1024 x 1024: the default --size 520 on every common display shape up to 32:9 (520 x 1849 = 961k
# pixels), at most 3.9 times a square 520 x 520 frame; with --size 0, frames up to 1280 x 800.
DEFAULT_MAX_INFERENCE_PIXELS = 1024 * 1024
# Wider than any camera or panorama (2:1), narrower than a scan line; the tighter of the two limits
# at --size 362 and below, where 8:1 frames stay under the pixel limit.
DEFAULT_MAX_ASPECT = 8.0


@dataclass(frozen=True)
class FrameLimits:
    """The server's --max-inference-pixels and --max-aspect."""

    max_inference_pixels: int = DEFAULT_MAX_INFERENCE_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT

    def check(self, height: int, width: int, inference: tuple[int, int], size: int) -> None:
        """Raises FrameOverLimitError when a height x width frame, run at `inference` (h, w), is too costly.

        `size` is the server's --size (the short side frames are resized to; 0: none), for the message.
        """
        short, long = min(height, width), max(height, width)
        pixels = inference[0] * inference[1]
        if long > short * self.max_aspect:
            what = f"has an aspect ratio of {long / short:.1f}:1, beyond this server's limit of {self.max_aspect:g}:1"
        elif pixels > self.max_inference_pixels:
            what = (
                f"would run the network at {inference[1]}x{inference[0]} = {pixels} pixels, beyond this server's "
                f"limit of {self.max_inference_pixels} pixels for the network input"
            )
        else:
            return
        if size > 0:
            # The short side becomes `size`, so only a narrower frame brings the input under the limit.
            aspect = min(self.max_aspect, (self.max_inference_pixels // size) / size)
            cut = max(1, math.floor(short * aspect))
            example = f"{cut}x{height}" if width >= height else f"{width}x{cut}"
            raise FrameOverLimitError(
                f"frame of {width}x{height} {what} (its short side is resized to {size}): crop it to an aspect "
                f"ratio of at most {math.floor(aspect * 100) / 100:g}:1 (e.g. {example})"
            )
        # Frames run at their own resolution: cut to the aspect limit, then scaled down to the pixel limit.
        steps, w, h = [], width, height
        if long > short * self.max_aspect:
            cut = max(1, math.floor(short * self.max_aspect))
            w, h = (cut, height) if width >= height else (width, cut)
            steps.append(f"crop it to at most {self.max_aspect:g}:1")
        if w * h > self.max_inference_pixels:
            scale = math.sqrt(self.max_inference_pixels / (w * h))
            w, h = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
            steps.append(f"resize it to at most {self.max_inference_pixels} pixels")
        todo = " and ".join(steps) + ("" if len(steps) > 1 or steps[0].startswith("crop") else " or crop it")
        raise FrameOverLimitError(
            f"frame of {width}x{height} {what} (frames run at their own resolution): {todo} (e.g. {w}x{h})"
        )
