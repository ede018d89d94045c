"""Peak memory of one large frame through the server's stages, with results at the frame's resolution.

For each frame size (1, 8 and 22 megapixels, 4:3, made from a sample photograph) a fresh process
loads the model on the CPU and warms it up twice on a 640x480 frame, so that ONNX Runtime's buffers
for the inference size already exist (its second run of a shape allocates them as one block). It
then takes one raw RGB frame through what the server does with it: decode (codec.decode_frame),
resize to --size, the serving graph, the labels at the frame's resolution (OUTPUT_RESOLUTION_FRAME)
and a raw label mask in the response. It prints the process's resident memory before the frame and
its peak while the frame was processed (VmHWM, reset just before, after freed heap memory went back
to the system), and the increase in multiples of the frame's own bytes (3 per pixel).

--approach graph measures how the CPU worked before (and GPU providers still do): the serving
graph resized all 21 logit channels to the frame's resolution before the argmax.

    python scripts/frame_memory.py                          # synthetic FCN-ResNet50, --size 520
    python scripts/frame_memory.py --approach host graph    # both, side by side
    python scripts/frame_memory.py --model models/onnx/fcn-resnet50-11.onnx --megapixels 22
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from segstream.models.build import build_fcn
from segstream.server.config import ModelSpec
from segstream.server.ort_model import OrtModel
from segstream.server.postprocess import OutputSpec, postprocess
from segstream.server.preprocess import inference_shape, resize_rgb
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "000000017968.jpg"
APPROACHES = {"host": "labels upsampled on the host (CPU today)", "graph": "logits resized in the graph (before)"}


def frame_shape(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 4:3 frame of about this many megapixels."""
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    return round(width * 3 / 4), width


def _status_mb(field: str) -> float:
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _trim_heap() -> None:
    """Hands freed heap memory back to the system (glibc), so that RSS counts live memory only."""
    # Without glibc, RSS may include freed memory, which only lowers the increase measured.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process; False where Linux does not allow it."""
    try:
        with Path("/proc/self/clear_refs").open("w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _segment(model: OrtModel, frame: pb.Frame, size: int) -> pb.SegmentResponse:
    """One frame as the pipeline handles it: decode, resize, serving graph, raw label mask at frame size."""
    rgb = codec.decode_frame(frame, 1 << 31)
    resized = resize_rgb(rgb, inference_shape(rgb.shape[0], rgb.shape[1], size))
    batch = model.run("out", [resized], (rgb.shape[0], rgb.shape[1]))
    response = pb.SegmentResponse(frame_id=frame.frame_id)
    spec = OutputSpec(resolution=pb.OUTPUT_RESOLUTION_FRAME)
    postprocess(batch.labels[0], float(batch.confidence[0]), model.classes, rgb, spec, response)
    return response


def measure(model_path: Path, size: int, megapixels: float, approach: str, threads: int = 0) -> dict[str, Any]:
    """Runs in a fresh process: the resident memory before one frame and the peak while it is segmented."""
    model = OrtModel(
        ModelSpec("model", model_path), device="cpu", threads=threads, cpu_resize_in_graph=approach == "graph"
    )
    photo = cv2.imread(str(SAMPLE))
    if photo is None:
        raise SystemExit(f"cannot read {SAMPLE}")
    warm = np.ascontiguousarray(cv2.resize(photo, (640, 480), interpolation=cv2.INTER_LINEAR), np.uint8)
    for _ in range(2):
        _segment(model, codec.frame_from_array(warm, 0, pixel_format="bgr"), size)
    height, width = frame_shape(megapixels)
    big = np.asarray(cv2.resize(photo, (width, height), interpolation=cv2.INTER_LINEAR), np.uint8)
    frame = codec.frame_from_array(big, 1, pixel_format="bgr")  # the raw message as the server gets it
    del big, photo
    gc.collect()
    _trim_heap()
    exact = _reset_peak()
    before = _status_mb("VmRSS")
    started = time.perf_counter()
    response = _segment(model, frame, size)
    seconds = time.perf_counter() - started
    # Without a resettable VmHWM, the lifetime peak (ru_maxrss, KiB on Linux) bounds it from above.
    peak = _status_mb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frame_mb = height * width * 3 / 2**20
    assert response.label_mask.width == width and response.label_mask.height == height
    return {
        "approach": approach,
        "megapixels": round(height * width / 1e6, 2),
        "frame": f"{width}x{height}",
        "frame_mb": round(frame_mb, 1),
        "rss_before_mb": round(before, 1),
        "peak_mb": round(peak, 1),
        "increase_mb": round(peak - before, 1),
        "increase_frames": round((peak - before) / frame_mb, 2),
        "seconds": round(seconds, 2),
        "exact_peak": exact,
    }


def run_child(model: Path, size: int, megapixels: float, approach: str, threads: int) -> dict[str, Any]:
    """`measure` in a fresh Python process (each frame size starts from a clean heap)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--model",
        str(model),
        "--size",
        str(size),
        "--megapixels",
        str(megapixels),
        "--approach",
        approach,
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {megapixels} MP ({approach}) failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure each frame size in a fresh child process and print the table (a child prints one JSON line)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, help="ONNX model (default: a synthetic FCN-ResNet50, built here)")
    parser.add_argument("--size", type=int, default=520, help="short side of the network input (default 520)")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1.0, 8.0, 22.0], help="frame sizes")
    parser.add_argument(
        "--approach", nargs="+", choices=sorted(APPROACHES), default=["host"], help="host (today) and/or graph"
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default 0: all cores)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.model, args.size, args.megapixels[0], args.approach[0], args.threads)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "fcn-resnet50-synthetic.onnx"
            onnx.save(build_fcn("resnet50", seed=0), str(model))
        print(f"model {args.model or 'synthetic FCN-ResNet50'}, --size {args.size}, output at frame resolution")
        print(f"{'approach':8} {'frame':>11} {'MP':>6} {'frame MB':>9} {'RSS before':>11} {'peak':>8} {'increase':>9}")
        for approach in args.approach:
            for megapixels in args.megapixels:
                r = run_child(model, args.size, megapixels, approach, args.threads)
                print(
                    f"{approach:8} {r['frame']:>11} {r['megapixels']:>6} {r['frame_mb']:>9} "
                    f"{r['rss_before_mb']:>8} MB {r['peak_mb']:>5} MB {r['increase_mb']:>6} MB"
                    f"  ({r['increase_frames']}x the frame, {r['seconds']} s)"
                    + ("" if r["exact_peak"] else "  [lifetime peak: VmHWM could not be reset]")
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
