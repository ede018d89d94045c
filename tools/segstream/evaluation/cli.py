"""segstream-eval: mean IoU and pixel accuracy of a model on a COCO-format dataset, by both protocols.

    segstream-eval --images val2017 --annotations instances_val2017.json --model fcn-resnet50-11.onnx
    segstream-eval --images val2017 --annotations instances_val2017.json --server localhost:50051 \\
        --protocol torchvision
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from segstream.client import SegstreamError
from segstream.client._cli_security import add_security_options, security_kwargs
from segstream.client._cli_support import CliError
from segstream.evaluation._coco import DatasetError, check_dataset, load_dataset
from segstream.evaluation._evaluate import TorchvisionResult, ZooResult, evaluate_torchvision, evaluate_zoo
from segstream.evaluation._predictors import (
    EnginePredictor,
    ModelDescription,
    PredictionError,
    Predictor,
    ServerPredictor,
)
from segstream.evaluation._report import Report, format_text, to_json
from segstream.wire.argparsing import OneLineParser
from segstream.wire.extras import ONNX_RUNTIME, require_server_extra

PROG = "segstream-eval"
PROTOCOLS = ("torchvision", "zoo", "both")
_RULE = "#" * 72


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command-line parser; `environ` supplies the server token's default (SEGSTREAM_TOKEN)."""
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Mean IoU and pixel accuracy of a segmentation model on a COCO-format dataset (images and an "
            "instances JSON), by torchvision's protocol (the published 60.5 / 63.7 mIoU), by the ONNX model "
            "zoo notebook's, or both; see docs/evaluation.md."
        ),
    )
    data = parser.add_argument_group("dataset")
    data.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of the images (val2017/)")
    data.add_argument(
        "--annotations", type=Path, required=True, metavar="JSON", help="COCO instances file (instances_val2017.json)"
    )
    data.add_argument("--limit", type=_positive, default=None, metavar="N", help="only the first N images by image id")
    source = parser.add_argument_group("where predictions come from (one of --model, --server)")
    which = source.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, metavar="ONNX", help="run this ONNX model in this process, no server")
    which.add_argument("--server", metavar="HOST:PORT", help="a running segstream-server")
    source.add_argument(
        "--zoo-server",
        metavar="HOST:PORT",
        help="a server started with --size 0 for protocol 2, which runs at the images' own resolution "
        "(default: --server)",
    )
    source.add_argument("--model-name", default="", metavar="NAME", help="served model (default: the server's default)")
    source.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="S", help="seconds to wait for a server (default 30)"
    )
    source.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "auto", "cuda", "tensorrt"),
        help="execution provider of --model (default cpu)",
    )
    source.add_argument(
        "--threads", type=_count, default=0, metavar="N", help="ONNX Runtime threads of --model (0: all cores)"
    )
    add_security_options(parser, environ)
    run = parser.add_argument_group("protocol")
    run.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="both",
        help="torchvision (confusion matrix at the inference size), zoo (per-image IoU at full resolution), "
        "or both (default)",
    )
    run.add_argument(
        "--size",
        type=_count,
        default=520,
        metavar="N",
        help="protocol 1: short side images are resized to (default 520, the published figures'); "
        "with --server, the size the server must have been started with",
    )
    run.add_argument(
        "--head", choices=("out", "aux"), default="out", help="model head (default out, as both protocols)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def warn(message: str) -> None:
    """Print a `segstream-eval: warning: ...` line on stderr, for figures that need a caveat."""
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _synthetic_banner(name: str) -> None:
    for line in (
        _RULE,
        f"model {name} has SYNTHETIC weights (random, from segstream-models build):",
        "its masks are meaningless, and so is every figure this run prints.",
        "Evaluate the real weights (segstream-models fetch fcn-resnet50) for real numbers.",
        _RULE,
    ):
        warn(line)


class _Run:
    """The predictors of one run and what was found out about them along the way."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.warnings: list[str] = []
        self.torchvision_size: int = args.size
        self.torchvision: Predictor
        self.zoo: Predictor
        wants_torchvision = args.protocol in ("torchvision", "both")
        wants_zoo = args.protocol in ("zoo", "both")
        if args.model is not None:
            if args.zoo_server or args.model_name:
                raise CliError("--zoo-server and --model-name go with --server, not --model")
            engine = EnginePredictor.load(args.model, args.size, args.head, args.device, args.threads)
            stack.callback(engine.close)
            self.torchvision, self.zoo = engine, engine.at_size(0)
            self.description = engine.describe()
            return
        security = security_kwargs(args)
        main = ServerPredictor.connect(args.server, args.model_name, args.head, args.timeout, **security)
        stack.callback(main.close)
        zoo = main
        if args.zoo_server and wants_zoo:
            zoo = ServerPredictor.connect(args.zoo_server, args.model_name, args.head, args.timeout, **security)
            stack.callback(zoo.close)
            if zoo.model.name != main.model.name or zoo.model.synthetic != main.model.synthetic:
                self.warn(f"--server serves {main.model.name}, --zoo-server {zoo.model.name}: not the same model")
        self.torchvision, self.zoo = main, zoo
        synthetic = main.model.synthetic or zoo.model.synthetic
        self.description = replace(main.describe(), synthetic=synthetic)
        self.torchvision_size = main.model.inference_size
        if wants_torchvision and main.model.inference_size != args.size:
            self.warn(
                f"server {args.server} resizes the short side to {main.model.inference_size or 'none (size 0)'}, "
                f"not --size {args.size}: protocol 1 ran at the server's size; for figures comparable to the "
                f"published ones, start the server with --size {args.size}"
            )
        if wants_zoo and zoo.model.inference_size != 0:
            where = args.zoo_server or args.server
            self.warn(
                f"server {where} resizes the short side to {zoo.model.inference_size}: protocol 2 runs at the "
                "images' own resolution, so its figures are not the model zoo's; start a server with --size 0 "
                "and pass it as --zoo-server"
            )

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        warn(message)


def _evaluate(args: argparse.Namespace) -> int:
    samples = load_dataset(args.annotations, args.images, args.limit)
    if not samples:
        raise CliError(f"{args.annotations}: no images to evaluate")
    # Every image and annotation is checked before the model loads: a missing last image would
    # otherwise end a long run at its very end, and only one problem would be reported.
    check_dataset(samples)
    progress = not args.no_progress
    with ExitStack() as stack:
        run = _Run(args, stack)
        description: ModelDescription = run.description
        if description.synthetic:
            _synthetic_banner(description.name)
            run.warnings.insert(0, f"model {description.name} has synthetic weights: the figures are meaningless")
        if description.head != "out":
            run.warn("both protocols measure head 'out'; these figures are for 'aux'")
        torchvision: TorchvisionResult | None = None
        zoo: ZooResult | None = None
        if args.protocol in ("torchvision", "both"):
            torchvision = evaluate_torchvision(samples, run.torchvision, progress=progress)
        if args.protocol in ("zoo", "both"):
            zoo = evaluate_zoo(samples, run.zoo, progress=progress)
            if zoo.images == 0:
                run.warn("no image has an instance of a VOC class: protocol 2 evaluated nothing")
    report = Report(description, torchvision, run.torchvision_size, zoo, tuple(run.warnings))
    if args.json:
        print(json.dumps(to_json(report), indent=2))
    else:
        print(format_text(report), end="")
    if description.synthetic:
        _synthetic_banner(description.name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate for the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    args = build_parser(os.environ).parse_args(argv)
    if args.model is not None:  # runs the model in-process with ONNX Runtime: the server extra
        require_server_extra(PROG, ONNX_RUNTIME)
    try:
        return _evaluate(args)
    except (CliError, DatasetError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (PredictionError, SegstreamError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
