"""`segstream-bench`: served throughput and latency next to raw ONNX Runtime and the in-process pipeline.

Exit status: 0 when every frame was answered without error and accounted for, 1 when the run
failed or frames went missing (the figures are still printed), 2 for bad options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from segstream.bench.options import PROG, UsageError, build_parser, config_from_args
from segstream.bench.report import render, to_json
from segstream.bench.served import BenchError
from segstream.server.engine import EngineError
from segstream.wire.extras import require_server_extra

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark for the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    require_server_extra(PROG)  # --help works without the server extra; a run does not
    from segstream.bench.run import run, say

    try:
        config = config_from_args(args)
        report = run(config)
    except (UsageError, FileNotFoundError) as exc:
        parser.exit(2, f"{PROG}: error: {exc}\n")
    except (BenchError, EngineError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(render(report), file=sys.stderr, flush=True)
    failed = bool(report["errors"] or report["unaccounted"])
    if report["errors"]:
        say(f"error: {report['errors']} frame(s) answered with an error, the first: {report['first_error']}")
    if report["unaccounted"]:
        say(f"error: {report['unaccounted']} frame(s) neither answered nor counted as dropped")
    if config.json:
        print(to_json(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
