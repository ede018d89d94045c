"""The command line's Foxglove options (`--foxglove`, `--mcap`, `--frame-id`) and `webcam --out`.

`Recording` is what a command hands its frames and results to, besides its own outputs: the Foxglove
live server and MCAP file (`_foxglove.FoxglovePublisher`), and for `webcam` the overlay video.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.client._cli_support import PROG, CliError, check_output_folder, rgb_to_bgr, warn
from segstream.client._cli_view import DEFAULT_VIEW_HOST, annotator, view_address
from segstream.client._legend import Annotator
from segstream.client._live_view import is_loopback
from segstream.client._options import OutputName
from segstream.client._results import ModelInfo, SegmentResult
from segstream.client._sources import redact
from segstream.client._video_writer import VIDEO_SUFFIXES, VideoWriter, open_video_writer, source_rate
from segstream.wire.codec import U8Array

if TYPE_CHECKING:
    from segstream.client._foxglove import FoxglovePublisher

FOXGLOVE_EXTRA = "foxglove"
_FOXGLOVE_PORT = 8765  # Foxglove's own default for a WebSocket data source
_DEFAULT_FRAME_ID = "camera"
_DEFAULT_FPS = 30.0
_NS = 1_000_000_000
# Originals kept for the camera topic while their results are on the way; more than a LATEST stream has in flight.
_MAX_ORIGINALS = 8


def add_foxglove_options(parser: argparse.ArgumentParser) -> None:
    """`--foxglove [[HOST:]PORT]`, `--mcap FILE` and `--frame-id NAME`."""
    parser.add_argument(
        "--foxglove",
        nargs="?",
        const=(DEFAULT_VIEW_HOST, _FOXGLOVE_PORT),
        type=view_address,
        metavar="[HOST:]PORT",
        help="serve the stream live to Foxglove over its WebSocket protocol: camera frame, overlay, colour mask,"
        " class-index mask (mono8) and class names/colours, stamped with each frame's capture time (default"
        f" {DEFAULT_VIEW_HOST}:{_FOXGLOVE_PORT}; 0.0.0.0 serves every network, without a password; port 0 picks"
        f" a free one). Needs pip install 'segstream[{FOXGLOVE_EXTRA}]'",
    )
    parser.add_argument(
        "--mcap",
        metavar="FILE",
        help="record the same topics to an MCAP file (overwritten) that Foxglove opens; no ROS needed",
    )
    parser.add_argument(
        "--frame-id",
        default=_DEFAULT_FRAME_ID,
        metavar="NAME",
        help=f"coordinate frame named by every Foxglove/MCAP image (default {_DEFAULT_FRAME_ID})",
    )


def add_webcam_out_option(parser: argparse.ArgumentParser) -> None:
    """`webcam --out FILE`: record the live overlay."""
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="also record the live overlay (with --legend's legend) to FILE: .mp4 is H.264, which browsers play,"
        " .avi Motion JPEG; each frame is timed by its capture time, so the video plays in real time",
    )


def wants_foxglove(args: argparse.Namespace) -> bool:
    """Whether the command publishes to Foxglove (live or MCAP)."""
    return getattr(args, "foxglove", None) is not None or bool(getattr(args, "mcap", None))


def with_record_outputs(outputs: Iterable[OutputName], args: argparse.Namespace) -> tuple[OutputName, ...]:
    """`outputs` plus the results the recording options need from the server."""
    names = list(outputs)
    extra: list[OutputName] = []
    if wants_foxglove(args):
        extra += ["overlay", "label_mask"]
    if getattr(args, "out", None) and args.command == "webcam":
        extra.append("overlay")
    return tuple(dict.fromkeys([*names, *extra]))


def check_record_paths(args: argparse.Namespace) -> None:
    """Refuse a recording path that cannot be written before any work is done."""
    mcap = getattr(args, "mcap", None)
    if mcap:
        check_output_folder(Path(mcap))
    out = getattr(args, "out", None)
    if out and args.command == "webcam":
        path = Path(out)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise CliError(f"cannot write {path}: use a .mp4 or .avi file name")
        check_output_folder(path)


def _publisher(
    args: argparse.Namespace, model: ModelInfo, marks: Annotator, metadata: dict[str, str]
) -> FoxglovePublisher | None:
    if not wants_foxglove(args):
        return None
    try:
        from segstream.client._foxglove import FoxglovePublisher
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "foxglove":
            raise
        raise CliError(
            f"--foxglove and --mcap need the foxglove-sdk package: pip install 'segstream[{FOXGLOVE_EXTRA}]'"
        ) from None
    mcap = Path(args.mcap) if args.mcap else None
    serve: tuple[str, int] | None = args.foxglove
    try:
        publisher = FoxglovePublisher(
            model, mcap=mcap, serve=serve, frame_id=args.frame_id, annotator=marks, metadata=metadata
        )
    except OSError as exc:
        raise CliError(str(exc)) from None
    if serve is not None:
        host = serve[0]
        shown = f"[{host}]" if ":" in host else host
        print(
            f"{PROG}: Foxglove live on ws://{shown}:{publisher.port} (in Foxglove: Open connection, Foxglove"
            f" WebSocket; or {publisher.app_url()})",
            file=sys.stderr,
            flush=True,
        )
        if not is_loopback(host):
            warn(f"the Foxglove server on {host} can be reached by anyone who can reach this machine; no password")
    return publisher


class Recording:
    """Frames and results of one command, handed on to Foxglove and (for `webcam`) to the overlay video.

    Stamps: a video file's frames are stamped by their time in the video (frame number / exact frame
    rate, from 0); a live stream's by the capture time each frame was sent with (`result.timestamp_ns`).
    """

    def __init__(
        self,
        publisher: FoxglovePublisher | None,
        *,
        marks: Annotator,
        video_rate: Fraction | None = None,
        mcap: Path | None = None,
        out: Path | None = None,
        fps: float = _DEFAULT_FPS,
    ) -> None:
        self.publisher = publisher
        self.mcap = mcap
        self._marks = marks
        self._video_rate = video_rate
        self._out_path = out
        self._fps = fps if 0 < fps < 1000 else _DEFAULT_FPS
        self._out: VideoWriter | None = None
        self._first_stamp: int | None = None
        self._originals: OrderedDict[int, U8Array] = OrderedDict()
        self.frames = 0
        self.paths = [p for p in (mcap, out) if p is not None]  # the files it writes

    def remember(self, frames: Iterable[U8Array]) -> Iterator[U8Array]:
        """`frames`, unchanged, keeping the newest few by position (the id a stream gives plain arrays)."""
        keep = self.publisher is not None
        for position, frame in enumerate(frames):
            if keep:
                self._originals[position] = frame
                while len(self._originals) > _MAX_ORIGINALS:
                    self._originals.popitem(last=False)
            yield frame

    def publish(self, result: SegmentResult) -> None:
        """A live result: to Foxglove with its remembered original, and to the overlay video."""
        original = self._originals.pop(result.frame_id, None)
        # Results come in send order: older frames will get none.
        while self._originals and next(iter(self._originals)) < result.frame_id:
            self._originals.popitem(last=False)
        stamp = result.timestamp_ns
        if self.publisher is not None:
            self.publisher.publish(result, original, stamp)
        if self._out_path is not None and result.ok and result.overlay is not None:
            if self._first_stamp is None:
                self._first_stamp = stamp
            image = self._marks.annotate(rgb_to_bgr(result.overlay), result.labels)
            writer = self._writer((image.shape[1], image.shape[0]))
            writer.write(image, (stamp - self._first_stamp) / _NS)
        self.frames += 1

    def publish_video_frame(self, original: U8Array, result: SegmentResult | None) -> None:
        """The next frame of a video file, in order (None: it was never answered), stamped by its video time."""
        rate = self._video_rate or Fraction(_DEFAULT_FPS)
        stamp = self.frames * _NS * rate.denominator // rate.numerator
        if self.publisher is not None:
            self.publisher.publish(result, original, stamp)
        self.frames += 1

    def _writer(self, size: tuple[int, int]) -> VideoWriter:
        if self._out is None:
            assert self._out_path is not None
            try:
                self._out = open_video_writer(self._out_path, self._fps, size, live=True, warn=warn)
            except (OSError, ValueError) as exc:
                raise CliError(str(exc)) from None
        return self._out

    def close(self) -> None:
        """Finish the MCAP file and the video, stop the live server, and say what was written."""
        publisher, self.publisher = self.publisher, None
        out, self._out = self._out, None
        try:
            if out is not None:
                out.release()
                print(f"{PROG}: wrote {out.path} ({out.written} frames, {out.codec})", file=sys.stderr, flush=True)
        finally:
            if publisher is not None:
                publisher.close()
                if self.mcap is not None:
                    print(f"{PROG}: recorded {self.mcap} ({self.frames} frames)", file=sys.stderr, flush=True)


def start_recording(
    args: argparse.Namespace,
    model: ModelInfo,
    *,
    source: str,
    fps: float,
    video: Path | None = None,
) -> Recording | None:
    """The recording the command line asks for (None: none), already serving/recording when this returns.

    `video` is the file a `video` command reads (its frames are then stamped by their video time); `fps`
    the source's frame rate as OpenCV reports it.
    """
    live_out = Path(args.out) if getattr(args, "out", None) and args.command == "webcam" else None
    if not wants_foxglove(args) and live_out is None:
        return None
    check_record_paths(args)
    marks = annotator(args, model)
    publisher = _publisher(args, model, marks, {"command": args.command, "source": redact(source)})
    return Recording(
        publisher,
        marks=marks,
        video_rate=source_rate(video, fps) if video is not None else None,
        mcap=Path(args.mcap) if getattr(args, "mcap", None) else None,
        out=live_out,
        fps=fps,
    )
