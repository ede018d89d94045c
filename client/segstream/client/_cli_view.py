"""The command line's `--view [HOST:]PORT` (a live view in a browser) and `--legend` options."""

from __future__ import annotations

import argparse
import sys

from segstream.client._cli_support import PROG, CliError, warn
from segstream.client._legend import Annotator
from segstream.client._live_view import LiveView, is_loopback
from segstream.client._options import OutputName
from segstream.client._results import ModelInfo

DEFAULT_VIEW_HOST = "127.0.0.1"


def view_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` as (host, port): "8080", "0.0.0.0:8080", "[::1]:8080"; the host defaults to loopback."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 host in brackets, as [::1]:8080; got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be [HOST:]PORT with a port from 0 to 65535, got {text!r}")
    return host or DEFAULT_VIEW_HOST, port


def add_view_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--view [HOST:]PORT`: serve the live view in a browser; `what` says what it shows instead of."""
    parser.add_argument(
        "--view",
        type=view_address,
        metavar="[HOST:]PORT",
        help="serve a live view on http://HOST:PORT/ for any browser: the newest overlay, colour mask or both"
        " side by side, the classes in view with their colours, fps, latency, drops, model and provider"
        f" ({what}). HOST defaults to {DEFAULT_VIEW_HOST} (this machine only; from elsewhere use"
        " `ssh -L PORT:127.0.0.1:PORT HOST`); 0.0.0.0 serves every network, without a password;"
        " port 0 picks a free one",
    )


def add_legend_option(parser: argparse.ArgumentParser, where: str) -> None:
    """`--legend`: draw the classes present, with their colours, into `where`."""
    parser.add_argument(
        "--legend",
        action="store_true",
        help=f"draw a legend (the classes present, with their colours) into {where}",
    )


def annotator(args: argparse.Namespace, model: ModelInfo) -> Annotator:
    """What to draw into a command's images: the legend if asked, the synthetic mark when synthetic."""
    return Annotator(model, legend=bool(getattr(args, "legend", False)))


def wants_labels(args: argparse.Namespace) -> bool:
    """Whether the command needs class-index masks for the legend or the live view."""
    return bool(getattr(args, "legend", False) or getattr(args, "view", None) is not None)


def webcam_outputs(show_window: bool, args: argparse.Namespace) -> tuple[OutputName, ...]:
    """The results `webcam` asks for: an overlay to show, class masks for legends and statistics."""
    view = getattr(args, "view", None) is not None
    names: list[OutputName] = []
    if show_window or view:
        names.append("overlay")
    if wants_labels(args) or not show_window:
        names.append("label_mask")
    return tuple(names)


def start_view(args: argparse.Namespace, model: ModelInfo, *, source: str) -> LiveView | None:
    """The live view `--view` asks for (None without it), serving once this returns; says where."""
    address: tuple[str, int] | None = getattr(args, "view", None)
    if address is None:
        return None
    host, port = address
    try:
        view = LiveView(host, port, model, command=args.command, source=source, legend=bool(args.legend))
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        raise CliError(f"cannot serve the live view on {shown}:{port}: {exc.strerror or exc}") from None
    print(f"{PROG}: live view on {view.url} (open it in a browser)", file=sys.stderr, flush=True)
    if not is_loopback(host):
        warn(f"the live view on {host} can be opened by anyone who can reach this machine; it has no password")
    return view
