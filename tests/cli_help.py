"""One check for every command's --help: each option of each (sub)command is shown and explained.

Walking the parser itself, rather than a list of flags kept by hand, means an option added later
cannot go undocumented without a test failing.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def assert_every_option_documented(parser: argparse.ArgumentParser) -> None:
    for command in _parsers(parser):
        text = command.format_help()
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings:
                assert flag in text, f"{command.prog}: {flag} missing from --help"
            assert action.help, f"{command.prog}: {action.option_strings or action.dest} has no help text"
