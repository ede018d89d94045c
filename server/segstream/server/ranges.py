"""The one range check behind every numeric option of the server, its GPU options and the benchmark."""

from __future__ import annotations


def check_range(flag: str, value: float, low: float, high: float, error: type[ValueError] = ValueError) -> None:
    """Raises `error` naming the flag, its value and the allowed range when `value` is outside it."""
    if not low <= value <= high:
        raise error(f"{flag} {_show(value)}: must be between {_show(low)} and {_show(high)}")


def _show(number: float) -> str:
    # Integers as written (1<<31 stays exact); floats without trailing zeros.
    return f"{number:g}" if isinstance(number, float) else str(number)
