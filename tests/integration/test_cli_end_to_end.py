"""The installed commands end to end: segstream-server as a process, segstream-client video against it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import SAMPLES
from tests.videos import count_frames

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_video_command_writes_one_frame_per_input_frame(tiny_model: Path, tmp_path: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [
            str(BIN / "segstream-server"),
            "--model",
            f"tiny={tiny_model}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--size",
            "64",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        target = ["--server", f"127.0.0.1:{port}"]
        subprocess.run([str(BIN / "segstream-client"), *target, "wait", "--timeout", "60"], check=True, timeout=90)
        clip = SAMPLES / "coco-pan.mp4"
        out, masks = tmp_path / "annotated.mp4", tmp_path / "masks"
        done = subprocess.run(
            [
                str(BIN / "segstream-client"),
                *target,
                "video",
                str(clip),
                "--out",
                str(out),
                "--png-dir",
                str(masks),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "48 frames, 0 failed" in done.stdout + done.stderr
        assert count_frames(out) == count_frames(clip) == 48
        assert len(list(masks.glob("*.png"))) == 48
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "Traceback" not in output
