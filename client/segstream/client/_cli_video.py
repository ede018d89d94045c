"""The `video` and `image` commands: segment a file, write the overlay (and masks) to files."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from segstream.client._cli_record import Recording, check_record_paths, start_recording, with_record_outputs
from segstream.client._cli_security import security_kwargs
from segstream.client._cli_signals import StopRequested, StopSignals
from segstream.client._cli_support import (
    PROG,
    CliError,
    LatencyStats,
    RateMeter,
    bgr_palette,
    check_output_folder,
    choose_model,
    cli_reconnect,
    rgb_to_bgr,
    summary,
    warn,
)
from segstream.client._cli_view import annotator, start_view, wants_labels
from segstream.client._frames import EncodedFrame
from segstream.client._legend import Annotator
from segstream.client._live_view import LiveView
from segstream.client._options import OutputName, StreamOptions
from segstream.client._results import SegmentResult
from segstream.client._sources import CameraSource, VideoSourceError
from segstream.client._sync_client import SegmentationClient
from segstream.client._video_writer import VideoWriter, open_video_writer
from segstream.wire.codec import U8Array, WireEncoding, as_u8, encode_bgr
from segstream.wire.imageinfo import image_kind, image_size

_FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG"}
# Redrawing the progress bar's statistics on every frame would cost more than the frames.
_POSTFIX_PERIOD_S = 0.5


def _video_writer(path: Path, fps: float, size: tuple[int, int], source: Path, audio: bool) -> VideoWriter:
    if path.suffix.lower() not in _FOURCC_BY_SUFFIX:
        raise CliError(f"cannot write {path}: use a .mp4 or .avi file name")
    check_output_folder(path)
    try:
        # .mp4: H.264 at the source's exact frame rate (with its audio), or OpenCV's mp4v without PyAV.
        return open_video_writer(path, fps, size, source=source, copy_audio=audio, warn=warn)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None


class _VideoOutputs:
    """Writes exactly one frame per input frame to each output, whatever came back."""

    def __init__(
        self, args: argparse.Namespace, fps: float, size: tuple[int, int], palette: U8Array, marks: Annotator
    ) -> None:
        self.size = size
        self._palette = palette
        self._marks = marks  # the legend and the synthetic mark, on both videos
        self._writers: list[VideoWriter] = []
        self.paths: list[Path] = []
        self.written = 0  # frames in each video
        self._source = Path(args.input)
        self.record: Recording | None = None  # Foxglove live and MCAP
        self._overlay = self._open(Path(args.out), fps, audio=True) if args.out else None
        self._masks = self._open(Path(args.mask_out), fps) if args.mask_out else None
        self._png_dir = Path(args.png_dir) if args.png_dir else None
        if self._png_dir is not None:
            self._png_dir.mkdir(parents=True, exist_ok=True)

    def _open(self, path: Path, fps: float, audio: bool = False) -> VideoWriter:
        writer = _video_writer(path, fps, self.size, self._source, audio)
        self._writers.append(writer)
        self.paths.append(path)
        return writer

    def record_to(self, record: Recording | None) -> None:
        """Also hand every frame to `record` (Foxglove, MCAP), whose files then count as outputs too."""
        self.record = record
        if record is not None:
            self.paths.extend(record.paths)

    def write(self, original: U8Array, result: SegmentResult | None) -> None:
        """Write the overlay, or `original` (and a black mask) for a frame without a result."""
        if (original.shape[1], original.shape[0]) != self.size:
            # VideoWriter silently drops a frame of another size; that would break the one-to-one count.
            original = as_u8(cv2.resize(original, self.size, interpolation=cv2.INTER_AREA))
        good = result is not None and result.ok and result.overlay is not None
        overlay = result.overlay if good and result is not None else None
        labels = result.labels if good and result is not None else None
        shown = original if overlay is None else rgb_to_bgr(overlay, self.size)
        if self._overlay is not None:
            self._overlay.write(self._marks.annotate(shown, labels))
        if self._masks is not None:
            colored = np.zeros_like(original) if labels is None else self._colorize(labels)
            self._masks.write(self._marks.annotate(colored, labels))
        if self._png_dir is not None and labels is not None and result is not None:
            cv2.imwrite(str(self._png_dir / f"{result.frame_id:06d}.png"), labels)
        if self.record is not None:
            self.record.publish_video_frame(original, result)
        self.written += 1

    def _colorize(self, labels: U8Array) -> U8Array:
        colored = self._palette[labels]
        if (colored.shape[1], colored.shape[0]) != self.size:
            colored = as_u8(cv2.resize(colored, self.size, interpolation=cv2.INTER_NEAREST))
        return colored

    def close(self) -> None:
        """Finishes every video (an MP4 only plays once its writer is released) and the recording."""
        for writer in self._writers:
            writer.release()
        self._writers.clear()
        record, self.record = self.record, None
        if record is not None:
            record.close()


def run_video(args: argparse.Namespace) -> int:
    """The `video` command: every frame in order, one output frame per input frame, even failed ones."""
    source = Path(args.input)
    if not source.is_file():
        raise CliError(f"input video {source} does not exist")
    for path in (args.out, args.mask_out):
        if path and Path(path).suffix.lower() not in _FOURCC_BY_SUFFIX:
            raise CliError(f"cannot write {path}: use a .mp4 or .avi file name")
    if not (args.out or args.mcap or args.foxglove is not None):
        raise CliError("nothing to write: give --out FILE, --mcap FILE or --foxglove")
    check_record_paths(args)
    try:
        # Every frame, as fast as it decodes: a file is a batch job here, not a stand-in for a camera.
        # Given as a Path, it is read as a file even when its name is "0", which would name a camera.
        reader = CameraSource(source, max_frames=args.max_frames, pace=False, reopen=None)
    except VideoSourceError:
        raise CliError(
            f"cannot open input video {str(source)!r}: it is missing or not something OpenCV can read"
        ) from None
    fps = reader.get(cv2.CAP_PROP_FPS)
    fps = fps if 0 < fps < 1000 else 30.0  # some containers report 0 or nonsense
    size = (int(reader.get(cv2.CAP_PROP_FRAME_WIDTH)), int(reader.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    count = int(reader.get(cv2.CAP_PROP_FRAME_COUNT))
    total = count if count > 0 else None  # streams and some containers do not know
    if total is not None and args.max_frames is not None:
        total = min(total, args.max_frames)
    want_masks = bool(args.mask_out or args.png_dir) or wants_labels(args)
    outputs: tuple[OutputName, ...] = ("overlay", "label_mask") if want_masks else ("overlay",)
    outputs = with_record_outputs(outputs, args)
    options = StreamOptions(model=args.model, head=args.head, outputs=outputs, mask_encoding="png")
    client = SegmentationClient(args.server, wire_encoding=args.wire, timeout=args.timeout, **security_kwargs(args))
    outs: _VideoOutputs | None = None
    view: LiveView | None = None
    # SIGTERM and SIGINT end the wait for the server, never a frame's write: the videos are then
    # finished, so the frames answered before the stop play.
    with StopSignals() as stops:
        try:
            with stops.interruptible():
                model = choose_model(client, args.model)
            outs = _VideoOutputs(args, fps, size, bgr_palette(model), annotator(args, model))
            outs.record_to(start_recording(args, model, source=str(source), fps=fps, video=source))
            view = start_view(args, model, source=str(source))
            return _stream_video(client, reader, options, outs, total, args, stops, view)
        except StopRequested:
            pass  # reported below, once the videos are finished
        finally:
            if view is not None:
                view.close()
            reader.close()
            if outs is not None:
                outs.close()
            client.close()
    print(_stopped_line(stops.name, reader.count, outs), file=sys.stderr, flush=True)
    return 128 + (stops.signum or signal.SIGINT)  # the shell's convention for "ended by signal N"


def _stopped_line(signal_name: str, read: int, outs: _VideoOutputs | None) -> str:
    """The line a stopped `video` command ends with: what its finished videos hold."""
    line = f"{PROG}: stopped by {signal_name} after reading {read} frames"
    if outs is None or not outs.paths:  # stopped before any file was opened, or only --foxglove
        return f"{line}; no video was written"
    files = " and ".join(str(path) for path in outs.paths)
    verb = "holds" if len(outs.paths) == 1 else "each hold"
    return f"{line}; {files} {verb} {outs.written} frames (the first {outs.written} of the input)"


def _stream_video(
    client: SegmentationClient,
    reader: CameraSource,
    options: StreamOptions,
    outs: _VideoOutputs,
    total: int | None,
    args: argparse.Namespace,
    stops: StopSignals,
    view: LiveView | None = None,
) -> int:
    pending: dict[int, U8Array] = {}

    def remember() -> Iterator[U8Array]:
        # Keep each original until its result arrives: a failed frame is written as it was read.
        # Frame ids are positions from 0, as the client numbers plain arrays.
        for index, frame in enumerate(reader):
            pending[index] = frame
            yield frame

    latency, rate, failures = LatencyStats(), RateMeter(), list[SegmentResult]()

    def show_stats(bar: tqdm[Any]) -> None:
        p50 = latency.percentile(50)
        bar.set_postfix_str(f"{rate.rate():.1f} fps, latency mean {latency.mean:.1f} ms p50 {p50:.1f} ms")

    shown = time.monotonic()
    with tqdm(total=total, unit="frame", disable=args.no_progress, dynamic_ncols=True) as bar:
        # An ORDERED stream that reconnects sends its unanswered frames again: the output stays complete.
        reconnect = cli_reconnect(args.reconnect, args.reconnect_timeout)
        results = client.stream(remember(), options, reconnect=reconnect)
        try:
            while True:
                with stops.interruptible():
                    result = next(results, None)
                if result is None:
                    break
                original = pending.pop(result.frame_id, None)
                if original is None:  # not a frame of ours: nothing to write it over
                    continue
                outs.write(original, result)
                if view is not None:
                    view.publish(result, original)
                if not result.ok:
                    failures.append(result)
                latency.add(result.latency_ms)
                rate.tick()
                bar.update()
                if time.monotonic() - shown > _POSTFIX_PERIOD_S:
                    shown = time.monotonic()
                    show_stats(bar)
                if stops.requested:
                    raise StopRequested(stops.signum or signal.SIGINT)
        finally:
            results.close()  # cancels the stream at once when it ends early
        show_stats(bar)
    failed = len(failures) + len(pending)
    for index in sorted(pending):  # read but never answered: keep the output frame count exact
        outs.write(pending.pop(index), None)
    written = [f"output {', '.join(str(path) for path in outs.paths)}"] if outs.paths else []
    print(summary(reader.count, failed, rate.rate(), latency, written), flush=True)
    if failed:
        first = failures[0] if failures else None
        detail = f" (first: frame {first.frame_id}: {first.error})" if first is not None else ""
        raise CliError(f"{failed} of {reader.count} frames failed{detail}")
    return 0


def image_frame(source: Path, data: bytes, wire: WireEncoding | None) -> EncodedFrame | U8Array:
    """What the `image` command sends for the file `source` holding `data`, with `--wire` (None: as it is).

    A JPEG or PNG file goes as its own bytes unless `wire` asks for something else; other formats
    are decoded and sent as `wire` says, PNG by default (lossless). Raw sends the decoded BGR array.
    The format is told by the magic bytes, never by the file's name.
    """
    kind = image_kind(data)
    if kind is not None and wire in (None, kind):
        if image_size(data) is None:
            raise CliError(f"cannot read {source}: its {kind.upper()} header is corrupt or truncated")
        return EncodedFrame(data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CliError(f"cannot read {source}: not an image OpenCV can decode")
    bgr = as_u8(image)
    if wire == "raw":
        return bgr
    return EncodedFrame(encode_bgr(bgr, "jpeg" if wire == "jpeg" else "png"))


def run_image(args: argparse.Namespace) -> int:
    """The `image` command: segment one image file and write its overlay (and class-index mask)."""
    source, out = Path(args.input), Path(args.out)
    if not source.is_file():
        raise CliError(f"input image {source} does not exist")
    if not cv2.haveImageWriter(str(out)):
        raise CliError(f"cannot write {out}: OpenCV cannot write that image type (use .png or .jpg)")
    check_output_folder(out)
    mask_out = Path(args.mask_out) if args.mask_out else None
    if mask_out is not None:
        if mask_out.suffix.lower() != ".png":
            raise CliError(f"cannot write {mask_out}: class-index masks need a lossless .png file")
        check_output_folder(mask_out)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror or exc}") from None
    frame = image_frame(source, data, args.wire)
    outputs: tuple[OutputName, ...] = ("overlay", "label_mask") if mask_out or wants_labels(args) else ("overlay",)
    # PNG results: the files written are the product here, so no second lossy step.
    options = StreamOptions(
        model=args.model, head=args.head, outputs=outputs, mask_encoding="png", image_encoding="png"
    )
    with SegmentationClient(args.server, timeout=args.timeout, **security_kwargs(args)) as client:
        model = choose_model(client, args.model)
        result = client.segment(frame, options)
    if not result.ok or result.overlay is None:
        raise CliError(f"server could not segment {source}: {result.error}")
    # The overlay has the image's size as the server decoded it (a JPEG's EXIF orientation applied).
    cv2.imwrite(str(out), annotator(args, model).annotate(rgb_to_bgr(result.overlay), result.labels))
    if mask_out is not None and result.labels is not None:
        cv2.imwrite(str(mask_out), result.labels)
    print(
        f"wrote {out}" + (f" and {mask_out}" if mask_out else "") + f" (model {result.model}, "
        f"{result.latency_ms or 0.0:.1f} ms)",
        flush=True,
    )
    return 0
