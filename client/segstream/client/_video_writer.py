"""Video files the commands write: H.264 in MP4 through PyAV, which browsers play, else OpenCV's writers.

MPEG-4 Part 2 (OpenCV's `mp4v`) plays in desktop players but in no browser, so `.mp4` is written as H.264
(yuv420p, `+faststart` so a browser can start playing before the whole file has arrived) with the
libx264 encoder that PyAV's wheels bundle. Without PyAV (the `video` extra) or without an H.264 encoder in
it, `.mp4` falls back to OpenCV's `mp4v` with a warning; `.avi` is always OpenCV's Motion JPEG.

Two ways to time frames: one frame per source frame at the source's exact frame rate (the `video`
command; the source's audio is copied in where the container can hold it), or the time each frame was
captured (`webcam --out`: a live stream skips frames, and the file still plays in real time).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2

from segstream.wire.codec import U8Array, as_u8

if TYPE_CHECKING:
    from av.container import OutputContainer
    from av.video.stream import VideoStream

log = logging.getLogger("segstream.client")

VIDEO_SUFFIXES = (".mp4", ".avi")
VIDEO_EXTRA = "video"
_FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG"}
_H264_ENCODERS = ("libx264", "h264")
# Fast enough to keep up with a live camera on a small CPU; an overlay is a view, not an archive.
_X264_OPTIONS = {"preset": "veryfast", "crf": "23"}
# Frame times of a live recording, in milliseconds: finer than any camera's frame interval.
_LIVE_TIME_BASE = Fraction(1, 1000)
# OpenCV rounds a reported rate such as 29.97 to a float; the exact NTSC-style rates are fractions.
_MAX_RATE_DENOMINATOR = 1001


class VideoWriter(Protocol):
    """What the commands need of a video file being written (cv2.VideoWriter's `write`/`release`)."""

    path: Path
    codec: str  # "h264", "mp4v" or "MJPG"
    written: int  # frames written so far

    def write(self, image: U8Array, time_s: float | None = None) -> None:
        """Append a BGR frame; `time_s` (seconds since recording began) times it, None: the next frame slot."""

    def release(self) -> None:
        """Finish the file (an MP4 plays only once finished); further calls do nothing."""


def pyav_available() -> bool:
    """Whether PyAV is installed (the `video` extra)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def h264_encoder() -> str | None:
    """The name of PyAV's H.264 encoder, or None without PyAV or without one."""
    try:
        import av
        import av.codec
    except ImportError:
        return None
    for name in _H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except (ValueError, av.FFmpegError):
            continue
        return name
    return None


def exact_rate(fps: float) -> Fraction:
    """`fps` as the fraction it most likely is: 29.97002997 -> 30000/1001, 25.0 -> 25."""
    return Fraction(fps).limit_denominator(_MAX_RATE_DENOMINATOR)


def source_rate(path: Path, fps: float) -> Fraction:
    """The exact frame rate of `path`'s video (PyAV's reading), or `fps` as a fraction when PyAV cannot tell.

    PyAV's rate is used only when it agrees with `fps` (OpenCV's reading), the rate frames are counted at.
    """
    guess = exact_rate(fps)
    try:
        import av
    except ImportError:
        return guess
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return guess
            rate = container.streams.video[0].average_rate
    except (av.FFmpegError, OSError, ValueError):
        return guess
    if rate is None or rate <= 0 or not math.isclose(float(rate), fps, rel_tol=1e-3):
        return guess
    return Fraction(rate)


def open_video_writer(
    path: Path,
    fps: float,
    size: tuple[int, int],
    *,
    source: Path | None = None,
    copy_audio: bool = False,
    live: bool = False,
    warn: Callable[[str], None] = log.warning,
) -> VideoWriter:
    """A writer for `path` (.mp4: H.264 when PyAV can, .avi: Motion JPEG) of `size` (width, height) frames.

    `source` is the video the frames come from: its exact frame rate is kept, and with `copy_audio` its
    audio is copied in. `live` times frames by the `time_s` each `write` is given (`fps` is then only
    the nominal rate). `warn` is told when `.mp4` falls back to OpenCV's `mp4v`. Raises OSError (or
    ValueError for another file type) when the file cannot be written.
    """
    suffix = path.suffix.lower()
    if suffix not in _FOURCC_BY_SUFFIX:
        raise ValueError(f"cannot write {path}: use a .mp4 or .avi file name")
    rate = source_rate(source, fps) if source is not None else exact_rate(fps)
    if suffix == ".mp4":
        encoder = h264_encoder()
        if encoder is not None:
            audio = source if copy_audio and not live else None
            return H264Writer(path, rate, size, encoder=encoder, audio_from=audio, live=live, warn=warn)
        why = "PyAV is not installed" if not pyav_available() else "PyAV has no H.264 encoder"
        warn(
            f"writing {path} as MPEG-4 Part 2 (mp4v), which browsers do not play: {why};"
            f" for H.264, pip install 'segstream[{VIDEO_EXTRA}]'"
        )
    return OpenCvWriter(path, _FOURCC_BY_SUFFIX[suffix], float(rate), size)


def _even_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    return width + width % 2, height + height % 2


def _fit(image: U8Array, size: tuple[int, int], even: tuple[int, int]) -> U8Array:
    """`image` at `size`, then padded by repeating its last row/column up to the `even` size H.264 needs."""
    if (image.shape[1], image.shape[0]) != size:
        # A writer drops or corrupts a frame of another size; that would break the one-to-one count.
        image = as_u8(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    pad_x, pad_y = even[0] - size[0], even[1] - size[1]
    if pad_x or pad_y:
        image = as_u8(cv2.copyMakeBorder(image, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE))
    return image


class OpenCvWriter:
    """cv2.VideoWriter with a fixed frame rate; timed frames are repeated or skipped to keep real time."""

    def __init__(self, path: Path, fourcc: str, fps: float, size: tuple[int, int]) -> None:
        self.path, self.codec, self.size, self.written = path, fourcc, size, 0
        self._fps = fps
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            raise OSError(f"cannot write {path}: OpenCV could not open a {fourcc} video writer for it")
        self._last: U8Array | None = None

    def write(self, image: U8Array, time_s: float | None = None) -> None:
        """Append a BGR frame; a timed one fills the frame slots up to its time (at least one frame first)."""
        image = _fit(image, self.size, self.size)
        if time_s is None:
            self._writer.write(image)
            self.written += 1
            return
        due = max(1, math.floor(time_s * self._fps) + 1)  # the slot this frame's time falls in, from 1
        if self._last is not None:
            while self.written < due - 1:  # the previous frame stays on screen until this one's slot
                self._writer.write(self._last)
                self.written += 1
        if self.written < due:
            self._writer.write(image)
            self.written += 1
        self._last = image

    def release(self) -> None:
        """Finish the file."""
        self._writer.release()


class H264Writer:
    """H.264 (yuv420p) in MP4 through PyAV, optionally with the audio of `audio_from` copied in."""

    def __init__(
        self,
        path: Path,
        rate: Fraction,
        size: tuple[int, int],
        *,
        encoder: str,
        audio_from: Path | None = None,
        live: bool = False,
        warn: Callable[[str], None] = log.warning,
    ) -> None:
        import av

        self.path, self.codec, self.size, self.written = path, "h264", size, 0
        self.rate = rate
        self._even = _even_size(size)
        self._live = live
        self._last_pts = -1
        self._closed = False
        self._audio: _AudioCopy | None = None
        try:
            self._container, self._stream = self._open(encoder)
            if audio_from is not None:
                self._audio = _AudioCopy.attach(audio_from, self._container, warn)
            try:
                self._container.start_encoding()  # writes the header now: a refused audio stream shows here
            except (av.FFmpegError, ValueError) as exc:
                if self._audio is None:
                    raise
                warn(f"{path}: the audio of {audio_from} cannot go into an MP4 ({exc}); writing the video alone")
                self._audio.close()
                self._audio = None
                self._container.close()
                self._container, self._stream = self._open(encoder)
                self._container.start_encoding()
        except av.FFmpegError as exc:
            raise OSError(f"cannot write {path}: {exc}") from None

    def _open(self, encoder: str) -> tuple[OutputContainer, VideoStream]:
        import av
        from av.video.stream import VideoStream

        container = av.open(str(self.path), "w", options={"movflags": "+faststart"})
        try:
            stream = container.add_stream(encoder, rate=self.rate, options=dict(_X264_OPTIONS))
            assert isinstance(stream, VideoStream)
            stream.width, stream.height = self._even
            stream.pix_fmt = "yuv420p"
            if self._live:
                stream.codec_context.time_base = _LIVE_TIME_BASE
                stream.time_base = _LIVE_TIME_BASE
        except BaseException:
            container.close()
            raise
        return container, stream

    @property
    def duration_s(self) -> float:
        """Seconds of video written so far."""
        if self._live:
            return (self._last_pts + 1) * float(_LIVE_TIME_BASE) if self._last_pts >= 0 else 0.0
        return float(self.written / self.rate)

    def write(self, image: U8Array, time_s: float | None = None) -> None:
        """Append a BGR frame, at the next frame slot or (live) at `time_s`; never two at one time."""
        import av

        frame = av.VideoFrame.from_ndarray(_fit(image, self.size, self._even), format="bgr24")
        pts = round((time_s or 0.0) / float(_LIVE_TIME_BASE)) if self._live else self.written
        pts = max(pts, self._last_pts + 1)
        frame.pts = pts
        self._last_pts = pts
        self._container.mux(self._stream.encode(frame))
        self.written += 1
        if self._audio is not None:
            # Audio goes in as the video grows (the muxer interleaves the two), never past its end.
            self._audio.copy_until(self.duration_s)

    def release(self) -> None:
        """Flush the encoder, copy the audio up to the video's end, and finish the file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.mux(self._stream.encode(None))
            if self._audio is not None:
                self._audio.copy_until(self.duration_s)
        finally:
            if self._audio is not None:
                self._audio.close()
            self._container.close()


class _AudioCopy:
    """The packets of a source's first audio stream, remuxed unchanged into an output container."""

    def __init__(self, source: Any, stream_in: Any, stream_out: Any, container: Any) -> None:
        self._source, self._in, self._out, self._container = source, stream_in, stream_out, container
        self._packets: Iterator[Any] = iter(source.demux(stream_in))
        self._held: Any = None
        # Output time 0 is the source's first video frame: audio keeps its offset from it.
        video = source.streams.video[0] if source.streams.video else None
        start = video.start_time * video.time_base if video is not None and video.start_time is not None else 0
        self._offset = int(start / stream_in.time_base) if stream_in.time_base else 0

    @classmethod
    def attach(cls, path: Path, container: Any, warn: Callable[[str], None]) -> _AudioCopy | None:
        """A copier for `path`'s audio into `container`, or None when it has none the container can hold."""
        import av

        try:
            source = av.open(str(path))
        except (av.FFmpegError, OSError) as exc:
            warn(f"cannot read the audio of {path} ({exc}); writing the video alone")
            return None
        if not source.streams.audio:
            source.close()
            return None
        stream_in = source.streams.audio[0]
        name = stream_in.codec_context.name
        if name not in container.supported_codecs:
            source.close()
            warn(f"the {name} audio of {path} cannot go into {container.format.name}; writing the video alone")
            return None
        stream_out = container.add_stream_from_template(stream_in)
        return cls(source, stream_in, stream_out, container)

    def copy_until(self, until_s: float) -> None:
        """Mux the audio packets that start before `until_s` seconds of output time."""
        limit = until_s / float(self._in.time_base)
        while True:
            packet = self._held if self._held is not None else next(self._packets, None)
            self._held = None
            if packet is None:
                return
            if packet.dts is None or packet.pts is None:
                continue  # the demuxer's closing flush packet: nothing to copy
            pts = packet.pts - self._offset
            if pts < 0:
                continue  # before the first video frame
            if pts >= limit:
                self._held = packet
                return
            packet.pts, packet.dts = pts, packet.dts - self._offset
            packet.stream = self._out
            self._container.mux(packet)

    def close(self) -> None:
        """Close the source."""
        self._source.close()
