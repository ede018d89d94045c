"""The argument parser every segstream command uses: a bad command line is one error line, exit 2.

argparse's own `error` prints the whole usage block first; scripts and people read the single line
`PROG: error: MESSAGE (see PROG SUBCOMMAND --help)` better, and it matches every other error the
commands report.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser that reports a bad command line in one `PROG: error: ...` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the one-line message instead of argparse's usage block."""
        program = self.prog.split()[0]  # subcommand parsers are named "PROG SUBCOMMAND"
        self.exit(2, f"{program}: error: {message} (see {self.prog} --help)\n")


def positive_seconds(text: str) -> float:
    """An argparse `type` for a timeout: a positive number of seconds, else a one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):  # nan and inf too
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: must be a positive number of seconds")
    return value
