"""`segstream-client`: segment videos, images and live cameras with a segstream server.

Every failure ends in one `segstream-client: error: ...` line on stderr and a non-zero exit status,
never a traceback: 1 for a failure, 2 for a bad command line, 130 when interrupted (`video`, which first
finishes its videos: 128 + the signal, so 130 for Ctrl-C and 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import cv2

from segstream.client._channel import DEFAULT_TARGET
from segstream.client._cli_record import add_foxglove_options, add_webcam_out_option
from segstream.client._cli_security import add_security_options, security_kwargs
from segstream.client._cli_support import PROG, CliError, choose_model
from segstream.client._cli_video import run_image, run_video
from segstream.client._cli_view import add_legend_option, add_view_option
from segstream.client._cli_webcam import run_webcam
from segstream.client._errors import SegstreamError, server_is_loading
from segstream.client._legend import class_lines
from segstream.client._sources import DEFAULT_REOPEN
from segstream.client._sync_client import SegmentationClient
from segstream.wire.argparsing import OneLineParser

_DEFAULT_TIMEOUT_S = 10.0
_DEFAULT_RECONNECT_TIMEOUT_S = 60.0
_WIRE_HELP = (
    "how frames travel: raw pixels (3 bytes a pixel, no encoding cost), JPEG (quality 90: smallest, lossy)"
    " or PNG (lossless, about half the bytes of raw, about 20 ms to encode a VGA frame); default raw"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command-line parser; `environ` supplies SEGSTREAM_SERVER's default."""
    parser = OneLineParser(prog=PROG, description="Segment video with a segstream server.")
    defaults = {
        "server": environ.get("SEGSTREAM_SERVER", DEFAULT_TARGET),
        "model": "",
        "head": "out",
        "timeout": _DEFAULT_TIMEOUT_S,
    }
    _add_global_options(parser, defaults)
    add_security_options(parser, environ)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    video = _command(commands, "video", run_video, "segment every frame of a video file, in order")
    video.add_argument("input", metavar="IN", help="video file to read")
    video.add_argument(
        "--out",
        metavar="OUT",
        help="overlay video to write: .mp4 is H.264, which browsers play (with the input's audio), .avi Motion"
        " JPEG; may be left out when --mcap or --foxglove is given",
    )
    video.add_argument("--mask-out", metavar="MASK_VIDEO", help="also write the colourised masks as a video")
    video.add_argument("--png-dir", metavar="DIR", help="also write class-index masks as 8-bit PNGs, one per frame")
    video.add_argument(
        "--wire",
        choices=("raw", "jpeg", "png"),
        default="raw",
        help=_WIRE_HELP,
    )
    video.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after N frames")
    video.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    add_legend_option(video, "the overlay and colour mask videos")
    add_view_option(video, "as the video is written")
    add_foxglove_options(video)
    _add_reconnect(video, "and send the unanswered frames again, so that no frame is lost")

    webcam = _command(commands, "webcam", run_webcam, "live view of a camera, stream URL or file; newest frame wins")
    webcam.add_argument(
        "--device",
        default="0",
        metavar="0|URL|FILE",
        help="camera index or device path (/dev/video0), stream URL (rtsp://, http(s)://) or video file"
        " (default 0); a file is read at its own frame rate, like a camera",
    )
    webcam.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after reading N frames")
    webcam.add_argument("--loop", action="store_true", help="start a video file again at its end (files only)")
    _add_reconnect(webcam, "and go on with the newest frames")
    webcam.add_argument(
        "--reopen-attempts",
        type=_positive_int,
        default=DEFAULT_REOPEN.max_attempts,
        metavar="N",
        help="attempts in a row to reopen a camera or stream that stopped delivering frames, 0.5 s to 5 s"
        f" apart, before giving up (default {DEFAULT_REOPEN.max_attempts})",
    )
    webcam.add_argument("--no-display", action="store_true", help="print statistics only, open no window")
    add_legend_option(webcam, "the window")
    add_view_option(webcam, "instead of a window; statistics still print")
    add_webcam_out_option(webcam)
    add_foxglove_options(webcam)
    webcam.add_argument(
        "--wire",
        choices=("raw", "jpeg", "png"),
        default="raw",
        help=_WIRE_HELP,
    )

    image = _command(commands, "image", run_image, "segment one image file")
    image.add_argument("input", metavar="IN", help="image file to read")
    image.add_argument("--out", required=True, metavar="OUT", help="overlay image to write (.png or .jpg)")
    image.add_argument("--mask-out", metavar="PATH", help="also write the class-index mask as an 8-bit PNG")
    image.add_argument(
        "--wire",
        choices=("raw", "jpeg", "png"),
        default=None,
        help="how the image travels; by default a JPEG or PNG file (told by its first bytes, not its name)"
        " is sent as it is, without re-encoding, and any other format (BMP, TIFF, WebP, ...) is decoded and"
        " sent as lossless PNG; raw: the decoded pixels (3 bytes a pixel, so over the 64 MiB message limit"
        " from about 22 MP); jpeg or png: re-encoded to that format (JPEG quality 90), unless the file"
        " already is in that format, whose bytes are then sent as they are",
    )
    add_legend_option(image, "the overlay image")

    _command(commands, "models", _run_models, "list the models the server serves")

    wait = _command(
        commands,
        "wait",
        _run_wait,
        "wait until the server reports SERVING (exit 0) or time out (exit 1);"
        " with --model, also check that the model is served",
    )
    del wait  # its only option is the global --timeout
    return parser


def _add_global_options(parser: argparse.ArgumentParser, defaults: Mapping[str, object] | None) -> None:
    """The options every command takes; `defaults` None means "keep what the main parser found".

    Each subcommand repeats them with SUPPRESSed defaults, so `segstream-client video IN --server X`
    works as well as `segstream-client --server X video IN`, and the later one wins.
    """

    def default(name: str) -> object:
        return argparse.SUPPRESS if defaults is None else defaults[name]

    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=default("server"),
        help=f"server address (default: $SEGSTREAM_SERVER or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--model", default=default("model"), help="model to use (see `models`; default: the server's default)"
    )
    parser.add_argument(
        "--head",
        choices=("out", "aux"),
        default=default("head"),
        help="network head: out (main) or aux (faster, rougher)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=default("timeout"),
        metavar="S",
        help=(
            "seconds to wait for the server on single calls and for `wait`;"
            f" streams have no deadline (default {_DEFAULT_TIMEOUT_S:g})"
        ),
    )


def _add_reconnect(parser: argparse.ArgumentParser, what_then: str) -> None:
    parser.add_argument(
        "--reconnect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when the server drains, restarts or cannot be reached, reconnect with backoff (0.1 s doubling"
        f" to 5 s) {what_then}; --no-reconnect ends with an error instead (default: reconnect)",
    )
    parser.add_argument(
        "--reconnect-timeout",
        type=_seconds,
        default=_DEFAULT_RECONNECT_TIMEOUT_S,
        metavar="S",
        help="give up with an error after reconnecting for this many seconds without an answer"
        f" (default {_DEFAULT_RECONNECT_TIMEOUT_S:g}; 0: never give up)",
    )


def _command(
    commands: argparse._SubParsersAction[OneLineParser],
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
) -> OneLineParser:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(handler=handler)
    _add_global_options(sub, None)
    add_security_options(sub, None)
    return sub


def _run_models(args: argparse.Namespace) -> int:
    with SegmentationClient(args.server, timeout=args.timeout, **security_kwargs(args)) as client:
        models = client.models()
    for m in models:
        flags = " (default)" if m.is_default else ""
        flags += " SYNTHETIC: random weights, meaningless masks" if m.synthetic else ""
        print(f"{m.name}{flags}")
        provider = m.execution_provider or "unknown provider"
        shapes = ", ".join(f"{w}x{h}" for w, h in m.inference_shapes)
        size = f"inference shapes {shapes}" if shapes else f"inference size {m.inference_size}"
        print(f"  {provider}, {size}, heads {','.join(m.heads) or '-'}")
        print("\n".join(class_lines(m, sys.stdout)))
    if not models:
        print(f"server {args.server} serves no models")
    return 0


def _run_wait(args: argparse.Namespace) -> int:
    with SegmentationClient(args.server, timeout=args.timeout, **security_kwargs(args)) as client:
        client.wait_ready(timeout=args.timeout)
        if args.model:
            choose_model(client, args.model)
    print(f"server {args.server} is SERVING")
    return 0


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser(os.environ)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad command line already reported by OneLineParser.error
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    # OpenCV logs its own warnings (a file it cannot open); our error line says it better.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        status: int = args.handler(args)
    except (CliError, SegstreamError, OSError, ValueError) as exc:
        if server_is_loading(exc):
            # Not "serves no models": the server is up and will serve once its models are warm.
            _fail(f"the server is still loading its models ({args.server}); retry shortly, or run `{PROG} wait`")
        else:
            _fail(str(exc))
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:  # a bug, still reported in one line as promised
        _fail(f"unexpected {type(exc).__name__}: {exc}")
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
