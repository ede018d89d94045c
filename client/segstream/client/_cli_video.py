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

from segstream.client._cli_security import security_kwargs
from segstream.client._cli_signals import StopRequested, StopSignals
from segstream.client._cli_support import (
    PROG,
    CliError,
    FrameReader,
    LatencyStats,
    RateMeter,
    bgr_palette,
    check_output_folder,
    choose_model,
    cli_reconnect,
    open_capture,
    rgb_to_bgr,
    summary,
)
from segstream.client._options import OutputName, StreamOptions
from segstream.client._results import SegmentResult
from segstream.client._sync_client import SegmentationClient
from segstream.wire.codec import U8Array, as_u8

_FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG"}
# Redrawing the progress bar's statistics on every frame would cost more than the frames.
_POSTFIX_PERIOD_S = 0.5


def _video_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    codec = _FOURCC_BY_SUFFIX.get(path.suffix.lower())
    if codec is None:
        raise CliError(f"cannot write {path}: use a .mp4 or .avi file name")
    check_output_folder(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*codec), fps, size)
    if not writer.isOpened():
        raise CliError(f"cannot write {path}: OpenCV could not open a {codec} video writer for it")
    return writer


class _VideoOutputs:
    """Writes exactly one frame per input frame to each output, whatever came back."""

    def __init__(self, args: argparse.Namespace, fps: float, size: tuple[int, int], palette: U8Array) -> None:
        self.size = size
        self._palette = palette
        self._writers: list[cv2.VideoWriter] = []
        self.paths: list[Path] = []
        self.written = 0  # frames in each video
        self._overlay = self._open(Path(args.out), fps)
        self._masks = self._open(Path(args.mask_out), fps) if args.mask_out else None
        self._png_dir = Path(args.png_dir) if args.png_dir else None
        if self._png_dir is not None:
            self._png_dir.mkdir(parents=True, exist_ok=True)

    def _open(self, path: Path, fps: float) -> cv2.VideoWriter:
        writer = _video_writer(path, fps, self.size)
        self._writers.append(writer)
        self.paths.append(path)
        return writer

    def write(self, original: U8Array, result: SegmentResult | None) -> None:
        """Write the overlay, or `original` (and a black mask) for a frame without a result."""
        if (original.shape[1], original.shape[0]) != self.size:
            # VideoWriter silently drops a frame of another size; that would break the one-to-one count.
            original = as_u8(cv2.resize(original, self.size, interpolation=cv2.INTER_AREA))
        good = result is not None and result.ok and result.overlay is not None
        overlay = result.overlay if good and result is not None else None
        self._overlay.write(original if overlay is None else rgb_to_bgr(overlay, self.size))
        labels = result.labels if good and result is not None else None
        if self._masks is not None:
            colored = np.zeros_like(original) if labels is None else self._colorize(labels)
            self._masks.write(colored)
        if self._png_dir is not None and labels is not None and result is not None:
            cv2.imwrite(str(self._png_dir / f"{result.frame_id:06d}.png"), labels)
        self.written += 1

    def _colorize(self, labels: U8Array) -> U8Array:
        colored = self._palette[labels]
        if (colored.shape[1], colored.shape[0]) != self.size:
            colored = as_u8(cv2.resize(colored, self.size, interpolation=cv2.INTER_NEAREST))
        return colored

    def close(self) -> None:
        """Finishes every video (an MP4 only plays once its writer is released)."""
        for writer in self._writers:
            writer.release()
        self._writers.clear()


def run_video(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if not source.is_file():
        raise CliError(f"input video {source} does not exist")
    for path in (args.out, args.mask_out):
        if path and Path(path).suffix.lower() not in _FOURCC_BY_SUFFIX:
            raise CliError(f"cannot write {path}: use a .mp4 or .avi file name")
    capture = open_capture(str(source), "input video")
    reader = FrameReader(capture, args.max_frames)
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if 0 < fps < 1000 else 30.0  # some containers report 0 or nonsense
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    total = count if count > 0 else None  # streams and some containers do not know
    if total is not None and args.max_frames is not None:
        total = min(total, args.max_frames)
    want_masks = bool(args.mask_out or args.png_dir)
    outputs: tuple[OutputName, ...] = ("overlay", "label_mask") if want_masks else ("overlay",)
    options = StreamOptions(model=args.model, head=args.head, outputs=outputs, mask_encoding="png")
    client = SegmentationClient(args.server, wire_encoding=args.wire, timeout=args.timeout, **security_kwargs(args))
    outs: _VideoOutputs | None = None
    # SIGTERM and SIGINT end the wait for the server, never a frame's write: the videos are then
    # finished, so the frames answered before the stop play.
    with StopSignals() as stops:
        try:
            with stops.interruptible():
                model = choose_model(client, args.model)
            outs = _VideoOutputs(args, fps, size, bgr_palette(model))
            return _stream_video(client, reader, options, outs, total, args, stops)
        except StopRequested:
            pass  # reported below, once the videos are finished
        finally:
            reader.close()
            if outs is not None:
                outs.close()
            client.close()
    print(_stopped_line(stops.name, reader.count, outs), file=sys.stderr, flush=True)
    return 128 + (stops.signum or signal.SIGINT)  # the shell's convention for "ended by signal N"


def _stopped_line(signal_name: str, read: int, outs: _VideoOutputs | None) -> str:
    """The line a stopped `video` command ends with: what its finished videos hold."""
    line = f"{PROG}: stopped by {signal_name} after reading {read} frames"
    if outs is None:
        return f"{line}; no video was written"
    files = " and ".join(str(path) for path in outs.paths)
    verb = "holds" if len(outs.paths) == 1 else "each hold"
    return f"{line}; {files} {verb} {outs.written} frames (the first {outs.written} of the input)"


def _stream_video(
    client: SegmentationClient,
    reader: FrameReader,
    options: StreamOptions,
    outs: _VideoOutputs,
    total: int | None,
    args: argparse.Namespace,
    stops: StopSignals,
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
    print(summary(reader.count, failed, rate.rate(), latency, [f"output {args.out}"]), flush=True)
    if failed:
        first = failures[0] if failures else None
        detail = f" (first: frame {first.frame_id}: {first.error})" if first is not None else ""
        raise CliError(f"{failed} of {reader.count} frames failed{detail}")
    return 0


def run_image(args: argparse.Namespace) -> int:
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
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise CliError(f"cannot read {source}: not an image OpenCV can decode")
    outputs: tuple[OutputName, ...] = ("overlay", "label_mask") if mask_out else ("overlay",)
    # PNG results: the files written are the product here, so no second lossy step.
    options = StreamOptions(
        model=args.model, head=args.head, outputs=outputs, mask_encoding="png", image_encoding="png"
    )
    with SegmentationClient(args.server, timeout=args.timeout, **security_kwargs(args)) as client:
        choose_model(client, args.model)
        result = client.segment(as_u8(image), options)
    if not result.ok or result.overlay is None:
        raise CliError(f"server could not segment {source}: {result.error}")
    height, width = image.shape[:2]
    cv2.imwrite(str(out), rgb_to_bgr(result.overlay, (width, height)))
    if mask_out is not None and result.labels is not None:
        cv2.imwrite(str(mask_out), result.labels)
    print(
        f"wrote {out}" + (f" and {mask_out}" if mask_out else "") + f" (model {result.model}, "
        f"{result.latency_ms or 0.0:.1f} ms)",
        flush=True,
    )
    return 0
