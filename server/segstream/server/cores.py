"""How many CPU cores the server may use, and the inference workers that follows on a CPU.

Both the worker count (segstream.server.app) and each model's sessions (segstream.server.ort_model)
depend on it, so it is decided here once. The process's CPU affinity counts, not the host's cores:
a container pinned to one core of a large host gets one worker.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def default_cpu_workers() -> int:
    """Inference workers on a CPU when --workers does not say: two where the process may use two cores."""
    return 2 if available_cores() >= 2 else 1
