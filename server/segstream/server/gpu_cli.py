"""segstream-server's GPU options: flags (with SEGSTREAM_* environment defaults) -> GpuOptions.

The flags' defaults, and the ones their help texts quote, are GpuOptions' own (and ServerConfig's for
--buckets, which is listed here with the GPU flags but shapes the input on every provider).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from segstream.server.buckets import format_buckets, parse_buckets
from segstream.server.config import ServerConfig, env_default, env_flag, env_option
from segstream.server.gpu_options import ARENA_EXTENDS, CONV_SEARCHES, GpuOptions, parse_bytes

T = TypeVar("T")
_DEFAULT = GpuOptions()


def _arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type whose ValueError message becomes argparse's one-line error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def add_gpu_arguments(p: argparse.ArgumentParser) -> None:
    """Adds the GPU flags to segstream-server's parser."""
    g = p.add_argument_group("GPU (CUDA and TensorRT providers)")
    env_option(
        g,
        "--gpu",
        _DEFAULT.device_id,
        "CUDA device id the CUDA and TensorRT providers and the bound input buffers use "
        f"(default {_DEFAULT.device_id})",
        type=int,
        metavar="N",
    )
    g.add_argument(
        "--cuda-conv-search",
        choices=CONV_SEARCHES,
        default=env_default("cuda-conv-search", _DEFAULT.conv_search),
        help="cuDNN convolution algorithm search: exhaustive benchmarks every algorithm once per shape (slow "
        "first frame, fastest after), heuristic asks cuDNN, default takes cuDNN's default "
        f"(default {_DEFAULT.conv_search})",
    )
    g.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=env_flag("tf32", _DEFAULT.tf32),
        help="let the CUDA provider use TF32 tensor cores for float32 convolutions on Ampere and newer "
        "(ONNX Runtime's use_tf32)",
    )
    g.add_argument(
        "--gpu-mem-limit",
        type=_arg_type(parse_bytes),
        default=env_default("gpu-mem-limit", str(_DEFAULT.mem_limit)),
        metavar="BYTES",
        help=f"cap of the CUDA memory arena in bytes, K/M/G suffixes allowed, e.g. 8G (default {_DEFAULT.mem_limit}: "
        "no cap)",
    )
    g.add_argument(
        "--arena-extend-strategy",
        choices=ARENA_EXTENDS,
        default=env_default("arena-extend-strategy", _DEFAULT.arena_extend),
        help="how the CUDA memory arena grows; same-as-requested wastes less under --gpu-mem-limit "
        f"(default {_DEFAULT.arena_extend})",
    )
    g.add_argument(
        "--buckets",
        type=_arg_type(parse_buckets),
        default=env_default("buckets", format_buckets(ServerConfig.buckets)),
        metavar="HxW,HxW,...",
        help="inference shapes (height x width): each frame is resized to the one with the closest aspect ratio, "
        "so frames batch together and GPU engines and graphs are reused, e.g. 520x693,693x520,520x520 "
        "(default: none, the short side is resized to --size)",
    )
    g.add_argument(
        "--fp16",
        action="store_true",
        default=env_flag("fp16", _DEFAULT.fp16),
        help="serve a float16 copy of the network (postprocessing stays float32) on CUDA; with --device tensorrt "
        "the same as --trt-fp16; needs onnxruntime-gpu and onnxconverter-common",
    )
    g.add_argument(
        "--cuda-graph",
        action="store_true",
        default=env_flag("cuda-graph", _DEFAULT.cuda_graph),
        help="capture each (bucket, batch, output size) as a CUDA graph and replay it (needs --device cuda and "
        "--buckets)",
    )
    g.add_argument(
        "--trt-fp16",
        action="store_true",
        default=env_flag("trt-fp16", _DEFAULT.trt_fp16),
        help="let TensorRT build float16 engines (--device tensorrt)",
    )
    env_option(
        g,
        "--trt-cache-dir",
        _DEFAULT.trt_cache_dir,
        "keep TensorRT engines and its timing cache in DIR so restarts skip the build (--device tensorrt)",
        type=Path,
        metavar="DIR",
    )
    env_option(
        g,
        "--sessions-per-head",
        _DEFAULT.sessions_per_head,
        f"ONNX Runtime sessions per model head (default {_DEFAULT.sessions_per_head}: one per inference worker "
        "with TensorRT or "
        "--cuda-graph, whose sessions run one batch at a time, else one; always one on the CPU)",
        type=int,
        metavar="N",
    )


def gpu_options_from_args(args: argparse.Namespace) -> GpuOptions:
    """The GpuOptions of parsed flags (--buckets, a server setting, goes to ServerConfig instead)."""
    return GpuOptions(
        device_id=args.gpu,
        conv_search=args.cuda_conv_search,
        tf32=args.tf32,
        mem_limit=args.gpu_mem_limit,
        arena_extend=args.arena_extend_strategy,
        trt_fp16=args.trt_fp16,
        trt_cache_dir=args.trt_cache_dir,
        cuda_graph=args.cuda_graph,
        fp16=args.fp16,
        sessions_per_head=args.sessions_per_head,
    )
