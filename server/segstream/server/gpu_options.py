"""GPU settings and what they mean to ONNX Runtime's CUDA and TensorRT execution providers.

Everything here is pure (no ONNX Runtime import): the provider lists and option dicts that
`providers.provider_list` hands to ONNX Runtime, the TensorRT profile shapes derived from the
server's shape buckets (a server setting, see segstream.server.buckets), how many sessions a head
gets, and the checks that reject flag combinations that cannot work. Option names follow ONNX
Runtime's provider option keys (`cudnn_conv_algo_search`, `use_tf32`, `gpu_mem_limit`,
`arena_extend_strategy`, `enable_cuda_graph`, `trt_fp16_enable`, `trt_engine_cache_path`,
`trt_profile_min_shapes`, ...).

Example:
    >>> gpu = GpuOptions(cuda_graph=True)
    >>> cuda_provider_options(gpu)["enable_cuda_graph"]
    '1'
    >>> tensorrt_provider_options(GpuOptions(), buckets=((520, 693),))["trt_profile_opt_shapes"]
    'frames:1x520x693x3,input:1x3x520x693'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from segstream.server.buckets import Bucket
from segstream.server.ranges import check_range

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ConvSearch = Literal["exhaustive", "heuristic", "default"]
CONV_SEARCHES: tuple[ConvSearch, ...] = ("exhaustive", "heuristic", "default")
ArenaExtend = Literal["next-power-of-two", "same-as-requested"]
ARENA_EXTENDS: tuple[ArenaExtend, ...] = ("next-power-of-two", "same-as-requested")
_ARENA_VALUES = {"next-power-of-two": "kNextPowerOfTwo", "same-as-requested": "kSameAsRequested"}

ProviderList = list[str | tuple[str, dict[str, Any]]]

# app.worker_count's choice on a GPU; sessions that serialize their runs get one per worker.
DEFAULT_GPU_WORKERS = 2
MAX_DEVICE_ID = 63
MAX_SESSIONS = 64


@dataclass(frozen=True)
class GpuOptions:
    """How the model runs on an NVIDIA GPU; the defaults are ONNX Runtime's own, plus exhaustive search."""

    device_id: int = 0
    conv_search: ConvSearch = "exhaustive"
    tf32: bool = True
    mem_limit: int = 0  # bytes of the CUDA memory arena; 0: no limit
    arena_extend: ArenaExtend = "next-power-of-two"
    trt_fp16: bool = False
    trt_cache_dir: Path | None = None
    cuda_graph: bool = False
    fp16: bool = False  # the float16 model variant (CUDA); TensorRT builds float16 engines instead
    sessions_per_head: int = 0  # 0: one per worker where the provider serializes runs, else one

    def check(self, device: str, buckets: Sequence[Bucket]) -> None:
        """Raises ValueError saying which flag to change when the settings cannot work on `device`.

        `buckets` are the server's --buckets, which CUDA graphs need.
        """
        check_range("--gpu", self.device_id, 0, MAX_DEVICE_ID)
        if self.conv_search not in CONV_SEARCHES:
            raise ValueError(f"--cuda-conv-search {self.conv_search!r}: choose one of {', '.join(CONV_SEARCHES)}")
        if self.arena_extend not in ARENA_EXTENDS:
            raise ValueError(f"--arena-extend-strategy {self.arena_extend!r}: choose one of {', '.join(ARENA_EXTENDS)}")
        if self.mem_limit < 0:
            raise ValueError(f"--gpu-mem-limit {self.mem_limit}: must be 0 (no limit) or a number of bytes")
        check_range("--sessions-per-head", self.sessions_per_head, 0, MAX_SESSIONS)
        if self.trt_cache_dir is not None and self.trt_cache_dir.exists() and not self.trt_cache_dir.is_dir():
            raise ValueError(f"--trt-cache-dir {self.trt_cache_dir}: exists and is not a directory")
        if device != "tensorrt":
            for flag, used in (("--trt-fp16", self.trt_fp16), ("--trt-cache-dir", self.trt_cache_dir is not None)):
                if used:
                    raise ValueError(f"{flag} applies to --device tensorrt only (the CUDA provider has --fp16)")
        if self.cuda_graph:
            if device not in ("cuda", "auto"):
                raise ValueError(f"--cuda-graph needs --device cuda (or auto on a GPU), not --device {device}")
            if not buckets:
                raise ValueError(
                    "--cuda-graph needs --buckets: a CUDA graph replays fixed input shapes, "
                    "so frames must be snapped to a known set (e.g. --buckets 520x693,693x520,520x520)"
                )
        if self.fp16 and device == "cpu":
            raise ValueError("--fp16 needs a GPU (--device cuda, tensorrt or auto): the CPU runs float16 slower")

    @property
    def trt_float16(self) -> bool:
        """TensorRT builds float16 engines from the float32 graph: --fp16 means that there too."""
        return self.trt_fp16 or self.fp16


def parse_bytes(text: str) -> int:
    """'8589934592', '8G', '512M', '64K' (powers of 1024) -> bytes; '' or '0' -> 0 (no limit)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text or "0")
    if match is None:
        raise ValueError(f"--gpu-mem-limit {text!r}: expected a number of bytes, optionally with K, M, G or T")
    return int(match[1]) << (10 * " KMGT".index(match[2].upper() or " "))


def cuda_provider_options(gpu: GpuOptions) -> dict[str, str]:
    """ONNX Runtime's CUDAExecutionProvider options for these settings."""
    options = {
        "device_id": str(gpu.device_id),
        "cudnn_conv_algo_search": gpu.conv_search.upper(),
        "use_tf32": "1" if gpu.tf32 else "0",
        "arena_extend_strategy": _ARENA_VALUES[gpu.arena_extend],
    }
    if gpu.mem_limit:
        options["gpu_mem_limit"] = str(gpu.mem_limit)
    if gpu.cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def tensorrt_provider_options(gpu: GpuOptions, max_batch: int = 1, buckets: Sequence[Bucket] = ()) -> dict[str, str]:
    """ONNX Runtime's TensorrtExecutionProvider options for these settings and the server's --buckets."""
    options = {
        "device_id": str(gpu.device_id),
        "trt_fp16_enable": "1" if gpu.trt_float16 else "0",
    }
    if gpu.trt_cache_dir is not None:
        cache = str(gpu.trt_cache_dir)
        options.update(
            trt_engine_cache_enable="1",
            trt_engine_cache_path=cache,
            trt_timing_cache_enable="1",
            trt_timing_cache_path=cache,
        )
    if buckets:
        options.update(trt_profile_shapes(buckets, max_batch))
    return options


def trt_profile_shapes(buckets: Sequence[Bucket], max_batch: int = 1) -> dict[str, str]:
    """One TensorRT optimization profile covering every bucket at batch 1..max_batch.

    Min and max span the buckets; TensorRT tunes its kernels for the first bucket at the largest
    batch. ONNX Runtime's TensorRT provider parses several profiles per input but runs on the first
    one only, so one profile spanning all buckets is what works. The profile is given for `frames`
    (uint8 NHWC, the serving graph's input) and for `input` (float NCHW, the FCN's own input) in case
    the uint8 preprocessing is partitioned away from the TensorRT subgraph.
    """
    if not buckets:
        raise ValueError("TensorRT profile shapes need at least one bucket")
    low = (1, min(h for h, _ in buckets), min(w for _, w in buckets))
    high = (max_batch, max(h for h, _ in buckets), max(w for _, w in buckets))
    opt = (max_batch, *buckets[0])

    def spec(n: int, h: int, w: int) -> str:
        return f"frames:{n}x{h}x{w}x3,input:{n}x3x{h}x{w}"

    return {
        "trt_profile_min_shapes": spec(*low),
        "trt_profile_opt_shapes": spec(*opt),
        "trt_profile_max_shapes": spec(*high),
    }


def build_provider_list(
    device: str, gpu: GpuOptions, max_batch: int = 1, buckets: Sequence[Bucket] = ()
) -> ProviderList:
    """Providers for a resolved device ('cpu', 'cuda' or 'tensorrt'), most preferred first."""
    if device == "cpu":
        return [CPU]
    cuda: tuple[str, dict[str, Any]] = (CUDA, dict(cuda_provider_options(gpu)))
    if device == "cuda":
        return [cuda, CPU]
    if device == "tensorrt":
        # Nodes TensorRT cannot take run on CUDA; CUDA graphs are CUDA-only (checked in GpuOptions.check).
        return [(TENSORRT, dict(tensorrt_provider_options(gpu, max_batch, buckets))), cuda, CPU]
    raise ValueError(f"unknown device {device!r}")


def serializes_runs(provider: str, gpu: GpuOptions) -> bool:
    """Whether concurrent runs of one session wait for each other on this provider.

    TensorRT locks each engine for the whole run, and a CUDA graph is captured on and replayed from
    one stream per session, so workers sharing such a session would only take turns.
    """
    return provider == TENSORRT or (provider == CUDA and gpu.cuda_graph)


def session_count(provider: str, gpu: GpuOptions, workers: int = 0) -> int:
    """Sessions per head: --sessions-per-head, else one per worker where runs serialize; one on the CPU."""
    if provider == CPU:
        return 1  # one CPU session already uses every core
    if gpu.sessions_per_head:
        return gpu.sessions_per_head
    if serializes_runs(provider, gpu):
        return workers or DEFAULT_GPU_WORKERS
    return 1
