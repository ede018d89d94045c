"""The video files the client writes: H.264 MP4 through PyAV (rate, audio, live timing), OpenCV otherwise."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from segstream.client import _video_writer
from segstream.client._video_writer import H264Writer, OpenCvWriter, exact_rate, open_video_writer, source_rate

pytestmark = pytest.mark.timeout(30)


def _frame(value: int, size: tuple[int, int]) -> np.ndarray:
    return np.full((size[1], size[0], 3), value % 256, np.uint8)


def make_clip(path: Path, frames: int, rate: Fraction, size: tuple[int, int], audio_s: float = 0.0) -> None:
    """A small MPEG-4 clip; with `audio_s`, also that many seconds of AAC audio (a 440 Hz tone)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=rate)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=48000) if audio_s else None
        for i in range(frames):
            out.mux(video.encode(av.VideoFrame.from_ndarray(_frame(i * 9, size), format="bgr24")))
        out.mux(video.encode(None))
        if audio is not None:
            samples = int(48000 * audio_s)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[start : start + 1024]
                frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                out.mux(audio.encode(frame))
            out.mux(audio.encode(None))


def _seconds(duration: int | None, time_base: Fraction | None) -> float:
    assert duration is not None and time_base is not None
    return float(duration * time_base)


def _probe(path: Path) -> dict[str, object]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        audio = container.streams.audio
        return {
            "codec": video.codec_context.name,
            "size": (video.codec_context.width, video.codec_context.height),
            "rate": video.average_rate,
            "frames": frames,
            "pix_fmt": video.codec_context.pix_fmt,
            "audio_s": _seconds(audio[0].duration, audio[0].time_base) if audio else None,
        }


def test_exact_rate_recovers_the_fractions_opencv_rounds() -> None:
    assert exact_rate(29.97002997) == Fraction(30000, 1001)
    assert exact_rate(25.0) == 25
    assert exact_rate(23.976023976) == Fraction(24000, 1001)


def test_mp4_is_h264_at_the_sources_exact_rate_with_its_audio(tmp_path: Path) -> None:
    source, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(source, 30, Fraction(30000, 1001), (64, 48), audio_s=2.0)
    assert source_rate(source, 29.97) == Fraction(30000, 1001)
    writer = open_video_writer(out, 29.97, (64, 48), source=source, copy_audio=True)
    assert isinstance(writer, H264Writer) and writer.codec == "h264"
    for i in range(30):
        writer.write(_frame(i * 9, (64, 48)))
    writer.release()
    writer.release()  # a second release is harmless
    probe = _probe(out)
    assert probe["codec"] == "h264" and probe["pix_fmt"] == "yuv420p"
    assert probe["rate"] == Fraction(30000, 1001) and probe["frames"] == 30
    # The source has 2 s of audio; the copy stops where the 30 frames (about 1 s) end.
    audio_s = probe["audio_s"]
    assert isinstance(audio_s, float) and 0.9 < audio_s < 1.1
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT) == 30  # OpenCV reads it too


def test_a_source_without_audio_gives_a_video_alone(tmp_path: Path) -> None:
    source, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(source, 5, Fraction(12), (32, 32))
    writer = open_video_writer(out, 12.0, (32, 32), source=source, copy_audio=True)
    for i in range(5):
        writer.write(_frame(i, (32, 32)))
    writer.release()
    probe = _probe(out)
    assert probe["audio_s"] is None and probe["frames"] == 5 and probe["rate"] == 12


def test_odd_sizes_are_padded_to_even_and_other_sizes_resized(tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"
    writer = open_video_writer(out, 10.0, (33, 25))
    writer.write(_frame(0, (33, 25)))
    writer.write(_frame(1, (64, 64)))  # another size: resized, never dropped
    writer.release()
    probe = _probe(out)
    assert probe["size"] == (34, 26) and probe["frames"] == 2


def test_live_frames_keep_their_capture_times(tmp_path: Path) -> None:
    out = tmp_path / "live.mp4"
    writer = open_video_writer(out, 30.0, (32, 32), live=True)
    for i, time_s in enumerate([0.0, 0.1, 0.1, 0.25, 1.0]):
        writer.write(_frame(i * 40, (32, 32)), time_s)
    writer.release()
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        times = [round(float(frame.time), 3) for frame in container.decode(stream) if frame.time is not None]
    assert times == [0.0, 0.1, 0.101, 0.25, 1.0]  # two frames never share a time


def test_without_pyav_mp4_falls_back_to_opencv_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_video_writer, "h264_encoder", lambda: None)
    warnings: list[str] = []
    writer = open_video_writer(tmp_path / "out.mp4", 10.0, (32, 32), warn=warnings.append)
    assert isinstance(writer, OpenCvWriter) and writer.codec == "mp4v"
    writer.write(_frame(0, (32, 32)))
    writer.release()
    assert len(warnings) == 1 and "browsers do not play" in warnings[0] and "segstream[video]" in warnings[0]


def test_opencv_live_writer_repeats_frames_to_keep_real_time(tmp_path: Path) -> None:
    out = tmp_path / "live.avi"
    writer = open_video_writer(out, 10.0, (32, 32), live=True)
    assert isinstance(writer, OpenCvWriter) and writer.codec == "MJPG"
    for i, time_s in enumerate([0.0, 0.1, 0.1, 0.25, 1.0]):
        writer.write(_frame(i * 40, (32, 32)), time_s)
    writer.release()
    # Slots of 0.1 s: 0.0 -> 1, 0.1 -> 2, again 0.1 -> skipped, 0.25 -> 3, then 4..10 repeat it, 1.0 -> 11.
    assert writer.written == 11
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT) == 11


def test_other_file_types_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"use a \.mp4 or \.avi"):
        open_video_writer(tmp_path / "out.gif", 10.0, (32, 32))
