"""segstream-server's GPU options: flags (with SEGSTREAM_* environment defaults) -> GpuOptions."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from segstream.server.config import env_default, env_option
from segstream.server.gpu_options import ARENA_EXTENDS, CONV_SEARCHES, GpuOptions, parse_buckets, parse_bytes

_TRUE = ("1", "true", "yes", "on")
T = TypeVar("T")


def _env_flag(name: str, default: bool = False) -> bool:
    return env_default(name, "1" if default else "0").strip().lower() in _TRUE


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
        "0",
        "CUDA device id the CUDA and TensorRT providers and the bound input buffers use (default 0)",
        type=int,
        metavar="N",
    )
    g.add_argument(
        "--cuda-conv-search",
        choices=CONV_SEARCHES,
        default=env_default("cuda-conv-search", "exhaustive"),
        help="cuDNN convolution algorithm search: exhaustive benchmarks every algorithm once per shape (slow "
        "first frame, fastest after), heuristic asks cuDNN, default takes cuDNN's default (default exhaustive)",
    )
    g.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("tf32", True),
        help="let the CUDA provider use TF32 tensor cores for float32 convolutions on Ampere and newer "
        "(ONNX Runtime's use_tf32)",
    )
    g.add_argument(
        "--gpu-mem-limit",
        type=_arg_type(parse_bytes),
        default=env_default("gpu-mem-limit", "0"),
        metavar="BYTES",
        help="cap of the CUDA memory arena in bytes, K/M/G suffixes allowed, e.g. 8G (default 0: no cap)",
    )
    g.add_argument(
        "--arena-extend-strategy",
        choices=ARENA_EXTENDS,
        default=env_default("arena-extend-strategy", "next-power-of-two"),
        help="how the CUDA memory arena grows; same-as-requested wastes less under --gpu-mem-limit "
        "(default next-power-of-two)",
    )
    g.add_argument(
        "--buckets",
        type=_arg_type(parse_buckets),
        default=env_default("buckets", ""),
        metavar="HxW,HxW,...",
        help="inference shapes (height x width): each frame is resized to the one with the closest aspect ratio, "
        "so frames batch together and GPU engines and graphs are reused, e.g. 520x693,693x520,520x520 "
        "(default: none, the short side is resized to --size)",
    )
    g.add_argument(
        "--fp16",
        action="store_true",
        default=_env_flag("fp16"),
        help="serve a float16 copy of the network (postprocessing stays float32) on CUDA; with --device tensorrt "
        "the same as --trt-fp16; needs onnxruntime-gpu and onnxconverter-common",
    )
    g.add_argument(
        "--cuda-graph",
        action="store_true",
        default=_env_flag("cuda-graph"),
        help="capture each (bucket, batch, output size) as a CUDA graph and replay it (needs --device cuda and "
        "--buckets)",
    )
    g.add_argument(
        "--trt-fp16",
        action="store_true",
        default=_env_flag("trt-fp16"),
        help="let TensorRT build float16 engines (--device tensorrt)",
    )
    env_option(
        g,
        "--trt-cache-dir",
        None,
        "keep TensorRT engines and its timing cache in DIR so restarts skip the build (--device tensorrt)",
        type=Path,
        metavar="DIR",
    )
    env_option(
        g,
        "--sessions-per-head",
        "0",
        "ONNX Runtime sessions per model head (default 0: one per inference worker with TensorRT or "
        "--cuda-graph, whose sessions run one batch at a time, else one; always one on the CPU)",
        type=int,
        metavar="N",
    )


def gpu_options_from_args(args: argparse.Namespace) -> GpuOptions:
    return GpuOptions(
        device_id=args.gpu,
        conv_search=args.cuda_conv_search,
        tf32=args.tf32,
        mem_limit=args.gpu_mem_limit,
        arena_extend=args.arena_extend_strategy,
        trt_fp16=args.trt_fp16,
        trt_cache_dir=args.trt_cache_dir,
        buckets=args.buckets,
        cuda_graph=args.cuda_graph,
        fp16=args.fp16,
        sessions_per_head=args.sessions_per_head,
    )
