"""Server configuration: one frozen dataclass of values; CLI flags > SEGSTREAM_* environment > defaults.

Each default is written once, here (and in GpuOptions): segstream-server's flags and their help
texts read them from these classes. The checks here look at values only; the TLS and token files
are read where the server builds its credentials (segstream.server.security).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from segstream.server.buckets import Bucket, check_buckets
from segstream.server.engine import HEADS
from segstream.server.frame_limits import DEFAULT_MAX_ASPECT, DEFAULT_MAX_INFERENCE_PIXELS
from segstream.server.gpu_options import GpuOptions
from segstream.server.ranges import check_range
from segstream.wire.codec import DEFAULT_MAX_PIXELS

Device = Literal["auto", "cpu", "cuda", "tensorrt"]
DEVICES: tuple[Device, ...] = ("auto", "cpu", "cuda", "tensorrt")


class ConfigError(ValueError):
    """A server setting that cannot work; the message says which and how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: a name clients address it by, the ONNX file, and how to read it.

    `classes_file` names the classes of a model whose file does not (--classes, see
    segstream.models.classes); `head_outputs` serves a head from a graph output of another name
    (--head), as (head, output) pairs.
    """

    name: str
    path: Path
    classes_file: Path | None = None
    head_outputs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """'NAME=PATH' or 'PATH' (the name is then the file name without .onnx)."""
        name, sep, path = text.partition("=")
        if not sep:
            path, name = text, Path(text).stem
        if not name or not path:
            raise ConfigError(f"--model {text!r}: expected PATH or NAME=PATH")
        return cls(name=name, path=Path(path))

    def output_of(self, head: str) -> str:
        """The graph output head `head` is served from: its --head mapping, else the output of its own name."""
        return dict(self.head_outputs).get(head, head)


def with_model_options(
    models: Sequence[ModelSpec], classes: Sequence[str] = (), heads: Sequence[str] = ()
) -> tuple[ModelSpec, ...]:
    """The models with their --classes [MODEL=]FILE and --head [MODEL:]HEAD=OUTPUT options attached.

    MODEL may be left out when one model is served. Raises ConfigError for an option that names no
    served model, a head other than out/aux, or a model given two class files.
    """
    specs = {spec.name: spec for spec in models}
    for text in classes:
        name, sep, path = text.partition("=")
        if not sep:
            name, path = "", text
        spec = _named(specs, name, "--classes", text, "MODEL=FILE")
        if not path:
            raise ConfigError(f"--classes {text!r}: expected FILE or MODEL=FILE")
        if spec.classes_file is not None:
            raise ConfigError(f"--classes: model {spec.name} is given two class files; give one")
        specs[spec.name] = replace(spec, classes_file=Path(path))
    for text in heads:
        target, sep, output = text.partition("=")
        name, _, head = target.rpartition(":")
        if not sep or not head or not output:
            raise ConfigError(f"--head {text!r}: expected HEAD=OUTPUT or MODEL:HEAD=OUTPUT, e.g. out=logits")
        if head not in HEADS:
            raise ConfigError(f"--head {text!r}: the heads are {' and '.join(HEADS)}, not {head!r}")
        spec = _named(specs, name, "--head", text, "MODEL:HEAD=OUTPUT")
        if head in dict(spec.head_outputs):
            raise ConfigError(f"--head: head {head} of model {spec.name} is mapped twice; map it once")
        specs[spec.name] = replace(spec, head_outputs=(*spec.head_outputs, (head, output)))
    return tuple(specs[spec.name] for spec in models)


def _named(specs: Mapping[str, ModelSpec], name: str, flag: str, text: str, form: str) -> ModelSpec:
    if not name:
        if len(specs) != 1:
            raise ConfigError(f"{flag} {text!r}: several models are served; name one as {form}")
        return next(iter(specs.values()))
    spec = specs.get(name)
    if spec is None:
        served = ", ".join(specs) or "none"
        raise ConfigError(f"{flag} {text!r}: no model is named {name!r} (models: {served}); name one as {form}")
    return spec


@dataclass(frozen=True)
class ServerConfig:
    """Everything a segstream server is started with; construction rejects values that cannot work."""

    models: tuple[ModelSpec, ...]
    host: str = "[::]"
    port: int = 50051
    # Short side of the network input; 0 runs frames at their own resolution.
    size: int = 520
    # Inference shapes frames are snapped to (closest aspect ratio), on every provider; empty: the
    # short side is resized to `size`. See segstream.server.buckets.
    buckets: tuple[Bucket, ...] = ()
    device: Device = "auto"
    # Inference workers (threads, each with its own IOBinding buffers). 0 picks per provider.
    workers: int = 0
    # ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime use every core.
    threads: int = 0
    max_batch: int = 1
    max_delay_ms: float = 2.0
    # Frames of one ORDERED stream being processed at once; the server stops reading beyond it.
    inflight: int = 4
    max_frame_pixels: int = DEFAULT_MAX_PIXELS
    # What one frame may cost the network: the pixels of its input (after the resize to --size) and
    # the frame's long/short side ratio; frames beyond either get RESOURCE_EXHAUSTED with what to
    # send instead. See segstream.server.frame_limits.
    max_inference_pixels: int = DEFAULT_MAX_INFERENCE_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT
    # Large enough for a raw 4K RGB frame (25 MB) plus protobuf framing.
    max_message_bytes: int = 64 * 1024 * 1024
    max_streams: int = 64
    # Concurrent SegmentImage calls, counted apart from streams so a burst of images never
    # refuses live streams; each call holds one whole image (decoded) until it is answered.
    max_unary: int = 32
    warmup: bool = True
    reflection: bool = True
    # TLS: the server's PEM certificate chain and private key (both or neither); with a client CA,
    # clients must present a certificate it signed (mutual TLS). The files are read, and their
    # content checked, in segstream.server.security.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens, one per line; every call but the health checks must carry one.
    auth_token_file: Path | None = None
    # A stream with no message for this long is closed (0: never); catches clients that vanished.
    idle_timeout_s: float = 300.0
    # HTTP/2 keepalive pings find dead connections behind NATs and load balancers.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    # Connections older than this are asked to reconnect (0: never), so long streams rebalance.
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 30.0
    # Prometheus /metrics port (0: off).
    metrics_port: int = 0
    # Let several server processes listen on one port (SO_REUSEPORT); off, a busy port is an error.
    reuse_port: bool = False
    # Consecutive frames lost to engine failures before health turns NOT_SERVING (0: never).
    max_engine_failures: int = 10
    # Seconds frames may wait on an engine that completes no batch before health turns
    # NOT_SERVING (0: never); see segstream.server.watchdog.
    stall_timeout_s: float = 30.0
    # GPU providers, float16 and CUDA graphs; see segstream.server.gpu_options.
    gpu: GpuOptions = field(default_factory=GpuOptions)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError(
                "no model to serve: pass --model PATH (or NAME=PATH), e.g. --model models/onnx/fcn-resnet50.onnx"
            )
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"model name(s) {', '.join(dupes)} given twice: name them with NAME=PATH")
        for spec in self.models:
            if not spec.path.is_file():
                raise ConfigError(
                    f"model file {spec.path} does not exist: run 'segstream-models fetch fcn-resnet50' "
                    "or 'segstream-models build resnet50 --out PATH'"
                )
            if spec.classes_file is not None and not spec.classes_file.is_file():
                raise ConfigError(
                    f"--classes {spec.name}={spec.classes_file}: no such file "
                    "(one class name per line, see docs/models.md)"
                )
        if self.device not in DEVICES:
            raise ConfigError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        _check_range("--port", self.port, 0, 65535)
        _check_range("--size", self.size, 0, 4096)
        _check_range("--workers", self.workers, 0, 64)
        _check_range("--threads", self.threads, 0, 1024)
        _check_range("--max-batch", self.max_batch, 1, 256)
        _check_range("--inflight", self.inflight, 1, 1024)
        _check_range("--max-streams", self.max_streams, 1, 100_000)
        _check_range("--max-unary", self.max_unary, 1, 100_000)
        _check_range("--max-frame-pixels", self.max_frame_pixels, 1, 1 << 31)
        self._check_frame_limits()
        _check_range("--max-message-bytes", self.max_message_bytes, 1 << 20, (1 << 31) - 1)
        for flag, seconds in (
            ("--idle-timeout", self.idle_timeout_s),
            ("--keepalive-time", self.keepalive_time_s),
            ("--keepalive-timeout", self.keepalive_timeout_s),
            ("--max-connection-age", self.max_connection_age_s),
            ("--max-connection-age-grace", self.max_connection_age_grace_s),
            ("--stall-timeout", self.stall_timeout_s),
        ):
            if not 0 <= seconds <= 30 * 24 * 3600:
                raise ConfigError(f"{flag} {seconds}: must be between 0 and 2592000 seconds")
        _check_range("--metrics-port", self.metrics_port, 0, 65535)
        _check_range("--max-engine-failures", self.max_engine_failures, 0, 1_000_000)
        if not 0 <= self.max_delay_ms <= 1000:
            raise ConfigError(f"--max-delay-ms {self.max_delay_ms}: must be between 0 and 1000")
        try:
            self.gpu.check(self.device, self.buckets)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._check_security_settings()

    def _check_frame_limits(self) -> None:
        check_buckets(self.buckets, ConfigError)
        # 64 pixels: the smallest useful network input (the FCN's output stride is 8).
        _check_range("--max-inference-pixels", self.max_inference_pixels, 64, 1 << 31)
        if not 1 <= self.max_aspect <= 10_000:
            raise ConfigError(f"--max-aspect {self.max_aspect}: must be between 1 and 10000")
        # Settings under which every frame would be refused are a startup error, not a surprise later.
        square = self.size * self.size
        if square > self.max_inference_pixels:
            raise ConfigError(
                f"--size {self.size} runs even a square frame at {square} pixels, beyond --max-inference-pixels "
                f"{self.max_inference_pixels}: raise --max-inference-pixels to at least {square} or lower --size"
            )
        for height, width in self.buckets:
            if height * width > self.max_inference_pixels:
                raise ConfigError(
                    f"--buckets {height}x{width} has {height * width} pixels, beyond --max-inference-pixels "
                    f"{self.max_inference_pixels}: raise --max-inference-pixels or use a smaller bucket"
                )

    def _check_security_settings(self) -> None:
        # Which flags go together; whether the files hold what they should is found where they are read.
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "--tls-cert and --tls-key go together: pass both "
                "(the server's PEM certificate chain and its private key)"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked over TLS"
            )

    @property
    def default_model(self) -> str:
        """The name of the model streams get when their StreamConfig names none (the first one)."""
        return self.models[0].name

    @property
    def address(self) -> str:
        """HOST:PORT, as gRPC takes the address to listen on."""
        return f"{self.host}:{self.port}"


def _check_range(flag: str, value: int, low: int, high: int) -> None:
    check_range(flag, value, low, high, ConfigError)


_TRUE = ("1", "true", "yes", "on")


def env_default(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """The SEGSTREAM_<NAME> environment value, else the default (read only by the CLI)."""
    env = os.environ if environ is None else environ
    return env.get(f"SEGSTREAM_{name.upper().replace('-', '_')}", default)


def env_flag(name: str, default: bool) -> bool:
    """An on/off flag's default: SEGSTREAM_<NAME> as 1/true/yes/on (anything else is off), else `default`."""
    return env_default(name, "1" if default else "0").strip().lower() in _TRUE


def env_option(parser: Any, flag: str, default: object, help: str, **kwargs: Any) -> None:
    """Adds `flag` to an argparse parser or group with its default from SEGSTREAM_<FLAG>, else `default`.

    The default is handed to argparse as a string: argparse converts string defaults with the
    option's `type`, so a bad environment value fails like a bad flag, in one line. A None default
    (an optional path, say) stays None unless the environment sets it.
    """
    value = env_default(flag.lstrip("-"), "" if default is None else str(default))
    parser.add_argument(flag, default=value if value or default is not None else None, help=help, **kwargs)
