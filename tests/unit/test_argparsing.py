"""The shared option types of every segstream command."""

from __future__ import annotations

import argparse

import pytest

from segstream.wire.argparsing import positive_seconds


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "soon", ""])
def test_a_timeout_must_be_a_finite_positive_number_of_seconds(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="must be a positive number of seconds"):
        positive_seconds(text)


def test_a_positive_timeout_is_read_as_seconds() -> None:
    assert positive_seconds("2.5") == 2.5
    assert positive_seconds("1e-3") == 0.001
