"""segstream-models and `python -m segstream.models`: the command line, once onnx is installed."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from segstream.wire.extras import ONNX, require_server_extra


def main(argv: Sequence[str] | None = None) -> int:
    """Runs segstream-models; without onnx (the server extra) one error line and exit status 2."""
    require_server_extra("segstream-models", ONNX)
    from segstream.models.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
