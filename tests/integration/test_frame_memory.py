"""Memory for one large frame at frame resolution stays a small multiple of the frame's own bytes.

The serving graph used to resize all 21 float logit channels to the frame's resolution before the
argmax: an 8-megapixel frame (24 MB) took 34 times its own bytes (790 MB), a 22-megapixel one 2.1 GB.
Measured in a fresh process by scripts/frame_memory.py (peak RSS while the frame is processed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# The decoded frame is one frame's bytes; the labels, the raw mask and its copy in the response are
# a third each; the rest is the upsampling's strips (a few MB) and allocator slack.
MAX_FRAMES = 4.0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS (VmHWM)")
def test_an_8_megapixel_frame_at_frame_resolution_stays_within_a_few_frames_of_memory(tiny_model: Path) -> None:
    command = [
        sys.executable,
        str(REPO / "scripts" / "frame_memory.py"),
        "--child",
        "--model",
        str(tiny_model),
        "--size",
        "64",
        "--megapixels",
        "8",
        "--approach",
        "host",
        "--threads",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["exact_peak"], result
    assert result["megapixels"] >= 7.9
    assert result["increase_frames"] < MAX_FRAMES, result
