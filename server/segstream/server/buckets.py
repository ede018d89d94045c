"""Shape buckets (--buckets): the fixed inference shapes frames are snapped to, on every provider.

On the CPU they decide the network input of each frame; on a GPU they also let frames of different
sizes batch together and let TensorRT profiles and CUDA graphs be built once for known shapes.

Example:
    >>> parse_buckets("520x693, 693x520")
    ((520, 693), (693, 520))
    >>> format_buckets(((520, 693), (693, 520)))
    '520x693,693x520'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Bucket = tuple[int, int]  # (height, width) of the network input

MIN_BUCKET_SIDE = 8  # the FCN's output stride
MAX_BUCKET_SIDE = 4096

_BUCKET = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def parse_buckets(text: str) -> tuple[Bucket, ...]:
    """'520x693,693x520' -> ((520, 693), (693, 520)): HEIGHTxWIDTH, comma-separated; '' -> ()."""
    if not text.strip():
        return ()
    buckets: list[Bucket] = []
    for part in text.split(","):
        match = _BUCKET.fullmatch(part)
        if match is None:
            raise ValueError(
                f"--buckets {text!r}: {part.strip()!r} is not HEIGHTxWIDTH; "
                "write e.g. --buckets 520x693,693x520,520x520"
            )
        buckets.append((int(match[1]), int(match[2])))
    buckets_tuple = tuple(buckets)
    check_buckets(buckets_tuple)
    return buckets_tuple


def format_buckets(buckets: Sequence[Bucket]) -> str:
    """The --buckets text `parse_buckets` reads back as `buckets`."""
    return ",".join(f"{height}x{width}" for height, width in buckets)


def check_buckets(buckets: Sequence[Bucket], error: type[ValueError] = ValueError) -> None:
    """Raises `error` naming the bucket when a side is out of range or a bucket is listed twice."""
    seen: set[Bucket] = set()
    for height, width in buckets:
        for side in (height, width):
            if not MIN_BUCKET_SIDE <= side <= MAX_BUCKET_SIDE:
                raise error(
                    f"--buckets {height}x{width}: each side must be between {MIN_BUCKET_SIDE} and {MAX_BUCKET_SIDE}"
                )
        if (height, width) in seen:
            raise error(f"--buckets: {height}x{width} is listed twice")
        seen.add((height, width))
