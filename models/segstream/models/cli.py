"""`segstream-models`: fetch, build, export, label and inspect the segmentation models."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx

from segstream.models.build import ARCHS, WARNING_TEXT, build_fcn
from segstream.models.catalog import MODELS, UnknownModelError, find_by_sha256, get_model
from segstream.models.classes import (
    ClassList,
    ClassListError,
    classes_from_metadata,
    read_classes_file,
    set_class_metadata,
)
from segstream.models.export import ExportError, export_torchvision
from segstream.models.fetch import DEFAULT_TIMEOUT, FetchError, fetch, sha256_of
from segstream.models.graph import (
    count_macs,
    input_names,
    is_synthetic,
    model_metadata,
    output_channels,
    output_names,
)
from segstream.wire.argparsing import OneLineParser, positive_seconds

PROG = "segstream-models"
MODEL_DIR_ENV = "SEGSTREAM_MODEL_DIR"
REFERENCE_SIZE = 520


class _UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


def default_model_dir() -> Path:
    """Where `fetch` stores a model without --dir: $SEGSTREAM_MODEL_DIR, else models/onnx."""
    return Path(os.environ.get(MODEL_DIR_ENV) or "models/onnx")


def _size(text: str) -> tuple[int, int]:
    """`520` or `520x693` (height x width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use N or HEIGHTxWIDTH") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use N or HEIGHTxWIDTH")
    return (values[0], values[-1])


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: must be a non-negative integer")
    return value


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG, description="Fetch, build, export, label and inspect segstream's segmentation models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = ", ".join(MODELS)

    p = sub.add_parser("fetch", help="download a published model and verify its sha256")
    p.add_argument("name", metavar="NAME", help=f"model to download ({names})")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"directory to store it in (default: ${MODEL_DIR_ENV} or models/onnx)",
    )
    p.add_argument(
        "--url",
        action="append",
        default=None,
        help="download from this URL instead of the known sources (repeat to try several in order)",
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for data before giving up on a source (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or status messages")

    p = sub.add_parser("build", help="build a synthetic model with random weights (offline stand-in)")
    p.add_argument("arch", metavar="ARCH", choices=list(ARCHS), help=f"backbone ({', '.join(ARCHS)})")
    p.add_argument("--out", type=Path, required=True, help="path of the .onnx file to write")
    p.add_argument("--seed", type=_seed, default=0, help="random seed of the weights (default 0)")
    p.add_argument(
        "--classes",
        type=Path,
        metavar="FILE",
        default=None,
        help="a class file (one name per line, optionally followed by #rrggbb; or JSON): the model gets one class "
        "per name and names them in its metadata (default: the 21 Pascal VOC classes)",
    )

    p = sub.add_parser("export", help="export a published model from torchvision (needs torch and network)")
    p.add_argument("name", metavar="NAME", help=f"model to export ({names})")
    p.add_argument("--out", type=Path, required=True, help="path of the .onnx file to write")

    p = sub.add_parser("label", help="write class names (and colours) into an ONNX file's metadata")
    p.add_argument("path", metavar="PATH", type=Path, help="the .onnx file to label")
    p.add_argument(
        "--classes",
        type=Path,
        metavar="FILE",
        required=True,
        help="class file: one name per line in class order, optionally followed by #rrggbb; or JSON, a list of "
        'names or {"classes": [...], "palette": [[r, g, b], ...]}',
    )
    p.add_argument(
        "--output",
        metavar="NAME",
        default=None,
        help="the logits output whose channels are the classes, to check their count against "
        "(default: out, else the first output)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the labelled model here (default: replace PATH)")

    p = sub.add_parser("info", help="show a model's inputs, outputs, classes, origin and cost")
    p.add_argument("path", metavar="PATH", type=Path, help="the .onnx file to inspect")
    p.add_argument(
        "--size",
        type=_size,
        default=(REFERENCE_SIZE, REFERENCE_SIZE),
        help=f"input size for the cost figures, N or HEIGHTxWIDTH (default {REFERENCE_SIZE})",
    )
    return parser


def _cmd_fetch(args: argparse.Namespace) -> int:
    model = get_model(args.name)
    directory = args.dir if args.dir is not None else default_model_dir()
    path = fetch(model, directory, sources=args.url, timeout=args.timeout, progress=not args.quiet)
    print(path)
    return 0


def _read_classes(path: Path) -> ClassList:
    try:
        return read_classes_file(path)
    except ClassListError as exc:
        raise _UsageError(str(exc)) from None


def _save(model: onnx.ModelProto, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so that an interrupted write never leaves a truncated model behind
    # for a later "is the file there?" check to pick up.
    tmp = out.with_name(out.name + ".tmp")
    try:
        onnx.save(model, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _cmd_build(args: argparse.Namespace) -> int:
    classes = None if args.classes is None else _read_classes(args.classes)
    model = build_fcn(args.arch, seed=args.seed, classes=classes)
    out: Path = args.out
    _save(model, out)
    macs = count_macs(model, REFERENCE_SIZE, REFERENCE_SIZE)
    without_aux = count_macs(model, REFERENCE_SIZE, REFERENCE_SIZE, ["out"])
    print(
        f"{args.arch}: {macs / 1e9:.1f} GMAC per {REFERENCE_SIZE}x{REFERENCE_SIZE} frame "
        f"({without_aux / 1e9:.1f} GMAC without aux)",
        file=sys.stderr,
    )
    print(f"WARNING: SYNTHETIC MODEL, RANDOM WEIGHTS. {WARNING_TEXT}", file=sys.stderr)
    print(out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    print(export_torchvision(get_model(args.name), args.out))
    return 0


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise _UsageError(f"no such file: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise _UsageError(f"cannot read {path} as ONNX: {exc}") from exc
    if not model.graph.node:
        raise _UsageError(f"{path} contains no ONNX graph")
    return model


def _cmd_label(args: argparse.Namespace) -> int:
    path: Path = args.path
    model = _load(path)
    classes = _read_classes(args.classes)
    outputs = output_names(model)
    output = args.output or ("out" if "out" in outputs else outputs[0] if outputs else None)
    if output not in outputs:
        raise _UsageError(f"{path} has no output {output!r} (its outputs: {', '.join(outputs) or 'none'})")
    channels = output_channels(model, output)
    if channels is not None and channels != len(classes):
        raise _UsageError(
            f"{args.classes} names {len(classes)} classes but output {output!r} of {path} has {channels} "
            "channels (one per class): give one name per channel, or pick the logits output with --output"
        )
    set_class_metadata(model, classes)
    out: Path = args.out or path
    _save(model, out)
    if channels is None:
        print(f"note: the channel count of output {output!r} is not fixed in the file: not checked", file=sys.stderr)
    print(f"{out}: {classes.summary()}", file=sys.stderr)
    print(out)
    return 0


def _dim(dim: onnx.TensorShapeProto.Dimension) -> str:
    if dim.dim_param:
        return str(dim.dim_param)
    return str(dim.dim_value) if dim.HasField("dim_value") else "?"


def _describe(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dims = ", ".join(_dim(d) for d in tensor.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else "?"
    return f"{value.name} {dtype} [{dims}]"


def _cmd_info(args: argparse.Namespace) -> int:
    path: Path = args.path
    model = _load(path)
    graph_inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    print(f"file: {path}")
    for name in input_names(model):
        print(f"input: {_describe(graph_inputs[name])}")
    for name in output_names(model):
        print(f"output: {_describe(outputs[name])}")
    opsets = (f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    print(f"opset: {', '.join(opsets)}")
    meta = model_metadata(model)
    try:
        classes = classes_from_metadata(meta, "metadata")
        unnamed = "not named in the file (a 21-class model is served as Pascal VOC; segstream-models label names them)"
        print(f"classes: {unnamed if classes is None else classes.summary()}")
    except ClassListError as exc:
        print(f"classes: unusable {exc}")
    if is_synthetic(meta):
        arch, seed = meta.get("segstream.arch", "?"), meta.get("segstream.seed", "?")
        print(f"synthetic: yes (arch {arch}, seed {seed})")
        print(f"WARNING: {meta.get('segstream.warning', WARNING_TEXT)}")
    else:
        known = find_by_sha256(sha256_of(path))
        origin = f"published file {known.name}, sha256 verified" if known else "not a catalog file"
        print(f"synthetic: no ({origin})")
    height, width = args.size
    try:
        total = count_macs(model, height, width)
        print(f"cost at {height}x{width}: {total / 1e9:.1f} GMAC (all outputs)")
        for name in output_names(model):
            print(f"  {name} only: {count_macs(model, height, width, [name]) / 1e9:.1f} GMAC")
    except ValueError as exc:
        print(f"cost at {height}x{width}: unknown ({exc})")
    return 0


_COMMANDS = {
    "fetch": _cmd_fetch,
    "build": _cmd_build,
    "export": _cmd_export,
    "label": _cmd_label,
    "info": _cmd_info,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 runtime failure, 2 bad input)."""
    try:
        args = _parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (_UsageError, UnknownModelError) as exc:
        _fail(str(exc))
        return 2
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except (FetchError, ExportError, OSError) as exc:
        _fail(str(exc))
        return 1
    except Exception as exc:
        _fail(f"{type(exc).__name__}: {exc}")
        return 1


def _fail(message: str) -> None:
    # One line, whatever the exception text holds.
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
