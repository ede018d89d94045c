"""The argument parser every segstream command uses: a bad command line is one error line, exit 2.

argparse's own `error` prints the whole usage block first; scripts and people read the single line
`PROG: error: MESSAGE (see PROG SUBCOMMAND --help)` better, and it matches every other error the
commands report.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        program = self.prog.split()[0]  # subcommand parsers are named "PROG SUBCOMMAND"
        self.exit(2, f"{program}: error: {message} (see {self.prog} --help)\n")
