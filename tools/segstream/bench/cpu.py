"""Where the machine's CPU time went during a phase: this process, the server, everything else.

A benchmark on a shared machine is only as good as its quiet: `CpuMeter` reads /proc (Linux) at
the start and end of a phase and reports cores used by the bench process, by the server process,
and by all other processes together, so a disturbed run shows itself. Elsewhere it reports nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float | None:
    """CPU time all cores spent not idle since boot, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    values = [int(v) for v in first[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK


def _process_seconds(pid: int | str) -> float | None:
    """User + system CPU time of one process (all its threads), from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces; the fields after its closing parenthesis are fixed.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class CpuUse:
    """Average cores busy during a phase."""

    wall_s: float
    bench: float | None
    server: float | None
    other: float | None

    def combine(self, other: CpuUse) -> CpuUse:
        """Both phases as one: each figure averaged over their wall time."""
        wall = self.wall_s + other.wall_s

        def mix(a: float | None, b: float | None) -> float | None:
            if a is None or b is None or wall <= 0:
                return None
            return (a * self.wall_s + b * other.wall_s) / wall

        return CpuUse(wall, mix(self.bench, other.bench), mix(self.server, other.server), mix(self.other, other.other))

    def as_dict(self) -> dict[str, float | None]:
        """The figures for the JSON report, rounded to 0.01 cores (None where unknown)."""
        return {
            "bench": _r(self.bench),
            "server": _r(self.server),
            "other": _r(self.other),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class CpuMeter:
    """Start with `CpuMeter(server_pid)`, end with `.stop()`; `server_pid` None for no server process."""

    def __init__(self, server_pid: int | None = None) -> None:
        self._server_pid = server_pid
        self._start = self._read()

    def _read(self) -> tuple[float, float | None, float | None, float | None]:
        server = _process_seconds(self._server_pid) if self._server_pid is not None else 0.0
        return time.perf_counter(), _busy_seconds(), _process_seconds("self"), server

    def stop(self) -> CpuUse:
        """The cores the bench, the server and everything else kept busy since the meter started."""
        end = self._read()
        wall = end[0] - self._start[0]
        deltas: list[float | None] = []
        for a, b in zip(self._start[1:], end[1:], strict=True):
            deltas.append(None if a is None or b is None or wall <= 0 else (b - a) / wall)
        total, bench, server = deltas
        other = None
        if total is not None and bench is not None and server is not None:
            other = max(0.0, total - bench - server)
        return CpuUse(wall, bench, server if self._server_pid is not None else None, other)
