"""Assembling and running the server: gRPC services, health, reflection, model loading, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Mapping

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from segstream.server.config import ServerConfig
from segstream.server.cores import default_cpu_workers
from segstream.server.engine import Model
from segstream.server.metrics import Metrics
from segstream.server.pipeline import Pipeline
from segstream.server.ports import ListenError, PortInUseError, bind_error
from segstream.server.preprocess import inference_shape
from segstream.server.providers import CPU
from segstream.server.security import server_security
from segstream.server.service import SegmentationService
from segstream.server.stages import Shaping
from segstream.server.watchdog import Watchdog
from segstream.v1 import segmentation_pb2 as pb
from segstream.v1 import segmentation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name


def load_models(config: ServerConfig) -> dict[str, Model]:
    """Loads every configured model with ONNX Runtime (slow: call off the event loop)."""
    from segstream.server.ort_model import OrtModel

    models: dict[str, Model] = {}
    for spec in config.models:
        model = OrtModel(
            spec,
            device=config.device,
            threads=config.threads,
            gpu=config.gpu,
            max_batch=config.max_batch,
            workers=config.workers,
            buckets=config.buckets,
        )
        heads = (h if output == h else f"{h}={output}" for h, output in model.outputs.items())
        log.info(
            "model %s loaded from %s on %s (heads: %s); %s",
            spec.name,
            spec.path,
            model.provider,
            ",".join(heads),
            model.classes.summary(),
        )
        if model.synthetic:
            log.warning("model %s has RANDOM weights (synthetic graph): its masks are meaningless", spec.name)
        models[spec.name] = model
    return models


def worker_count(config: ServerConfig, models: Mapping[str, Model]) -> int:
    """Inference worker threads for these models: --workers, or what suits their provider."""
    if config.workers:
        return config.workers
    if _on_cpu(models):
        # One session uses every core, but not fully: on 2 cores the network at 64x85 keeps them
        # about 75% busy. A second worker runs its frame's upsampling and postprocess, and its own
        # run, in that slack: 4 ORDERED streams, 2 cores, 0.85 of the network alone against 0.79
        # (three back-to-back pairs of segstream-bench runs). Live frames stay one at a time (see
        # live_workers), since two runs at once each take twice as long.
        return default_cpu_workers()
    # On a GPU a second worker overlaps the host-side work and copies of one batch with the next
    # batch's kernels; with several sessions per head (providers that serialize runs), one worker
    # per session.
    return max(2, config.gpu.sessions_per_head)


def live_workers(models: Mapping[str, Model], workers: int) -> int:
    """How many workers' batches LATEST frames may fill at once.

    On a CPU one: two frames run side by side take about twice as long each, so a live frame would
    come back later than if it ran alone, and freshness is what LATEST is for. Elsewhere all.
    """
    return 1 if _on_cpu(models) else workers


def _on_cpu(models: Mapping[str, Model]) -> bool:
    return all(m.provider == CPU for m in models.values())


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC channel arguments for the server's limits and keepalive policy."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        # Clients may ping as often as the server does without being told to go away.
        ("grpc.http2.min_ping_interval_without_data_ms", int(min(config.keepalive_time_s, 10.0) * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC's default (on) lets a second server start silently on a busy port and take a random
        # share of its clients; only processes that all ask for it share a port.
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
    ]
    if config.max_connection_age_s:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)),
        ]
    return options


def _http_host(host: str) -> str:
    # gRPC's "[::]" form is not a socket address for the metrics server.
    return host.strip("[]") or "0.0.0.0"


class SegstreamServer:
    """The segstream gRPC server. `models` may be given (already loaded) instead of loading the config's."""

    def __init__(self, config: ServerConfig, models: Mapping[str, Model] | None = None) -> None:
        self.config = config
        self._given_models = models
        self._ready = False
        # First, so that a TLS or token file that cannot serve fails before anything else is built.
        security = server_security(config)
        self._server = grpc.aio.server(options=server_options(config), interceptors=security.interceptors)
        self._credentials = security.credentials
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        # Loaded in `start`; the pipeline is built on them once they are.
        self._models: Mapping[str, Model] = {}
        self.pipeline: Pipeline | None = None
        # Set when a thread is left inside ONNX Runtime: by stop(), when an inference run had not
        # returned within the stall timeout (a hung engine; its model is not freed), or when start()
        # is cancelled while the models still load. The process should then exit without waiting
        # for that thread (the CLI does: os._exit).
        self.abandoned_work = False
        self._health_tasks: set[asyncio.Task[None]] = set()
        self.watchdog: Watchdog | None = None
        self.service = SegmentationService(
            self.metrics,
            inflight=config.inflight,
            max_streams=config.max_streams,
            max_unary=config.max_unary,
            ready=lambda: self._ready,
            idle_timeout=config.idle_timeout_s,
        )
        pb_grpc.add_SegmentationServicer_to_server(self.service, self._server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if config.reflection:
            names = (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
            reflection.enable_server_reflection(names, self._server)
        self.port = 0

    async def start(self) -> int:
        """Binds and starts serving (health NOT_SERVING), then loads and warms the models (SERVING)."""
        self.port = self._listen()
        if self.config.metrics_port:
            # Bound before the models load, so a busy metrics port fails at once and not minutes later.
            bound = self.metrics.serve_http(self.config.metrics_port, _http_host(self.config.host))
            log.info("metrics on http://%s:%d/metrics", self.config.host, bound)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        log.info("listening on %s (port %d)", self.config.address, self.port)
        models = self._given_models
        if models is None:
            models = await self._load()
        self._models = models
        for name, model in models.items():
            self.metrics.provider.labels(name, model.provider).set(1)
        workers = worker_count(self.config, models)
        pipeline = self.pipeline = Pipeline(
            models,
            self.config.default_model,
            Shaping.of(self.config),
            workers=workers,
            max_batch=self.config.max_batch,
            max_delay_s=self.config.max_delay_ms / 1e3,
            live_workers=live_workers(models, workers),
            metrics=self.metrics,
            on_engine_failure=self._engine_failed,
        )
        if self.config.warmup:
            await self._warm_up(pipeline)
        self.service.serve(pipeline)
        self._ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.config.stall_timeout_s:
            self.watchdog = Watchdog(
                pipeline.batcher.stalled_for, self.config.stall_timeout_s, self.metrics, self._stalled
            )
            self.watchdog.start()
        log.info("serving %s with %d inference worker(s)", ", ".join(models), workers)
        return self.port

    def _listen(self) -> int:
        # Checked first: gRPC would log a C-level error line and raise a bare "Failed to bind". Other
        # problems are left to gRPC, which may listen where this probe could not (IPv4 alone for [::]).
        config = self.config
        problem = bind_error("--port", config.host, config.port, reuse_port=config.reuse_port)
        if isinstance(problem, PortInUseError):
            raise PortInUseError(problem.errno, f"{problem}; servers meant to share a port all need --reuse-port")
        try:
            if self._credentials is None:
                port = self._server.add_insecure_port(config.address)
            else:
                port = self._server.add_secure_port(config.address, self._credentials)
        except RuntimeError as exc:
            # Taken in the meantime, or an address this machine does not have: say which.
            why = bind_error("--port", config.host, config.port, reuse_port=config.reuse_port)
            raise why or ListenError(None, f"--port {config.port}: cannot listen on {config.address}") from exc
        if port == 0:
            raise ListenError(None, f"--port {config.port}: cannot listen on {config.address}")
        return port

    async def _load(self) -> Mapping[str, Model]:
        # A daemon thread, not the loop's executor: a stop while the models load (a slow disk, a
        # TensorRT build of minutes) must not wait for them, and the executor is joined at exit.
        loading: asyncio.Future[Mapping[str, Model]] = asyncio.get_running_loop().create_future()
        threading.Thread(target=_load_into, args=(loading, self.config), name="segstream-load", daemon=True).start()
        try:
            return await loading
        except asyncio.CancelledError:
            self.abandoned_work = True
            log.warning("stopped while the models were still loading")
            raise

    async def _warm_up(self, pipeline: Pipeline) -> None:
        # The first run of each head allocates ONNX Runtime's arenas (and on a GPU picks kernels);
        # doing it here keeps that cost out of the first client's latency. Every worker runs every
        # bucket itself, at the largest batch too where it batches: each worker owns its bindings
        # (buffers, CUDA graphs) and its session (TensorRT builds its engine per session).
        shapes = pipeline.shaping.buckets or (inference_shape(480, 640, pipeline.shaping.size),)
        batcher = pipeline.batcher
        for name, model in pipeline.models.items():
            batches = sorted({1, self.config.max_batch if model.provider != CPU else 1})
            for head in model.heads:
                for height, width in shapes:
                    for n in batches:
                        frames = [np.zeros((height, width, 3), np.uint8)] * n
                        await batcher.on_each_worker(functools.partial(model.run, head, frames, (480, 640)))
                    log.info("warmed up %s/%s at %dx%d", name, head, width, height)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def _stalled(self, stalled: bool) -> None:
        # Work flowing again restores health only if nothing else (engine failures, draining) took it.
        if stalled:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        elif self._ready:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _engine_failed(self, consecutive: int) -> None:
        limit = self.config.max_engine_failures
        if limit and consecutive == limit and self._ready:
            log.error(
                "%d consecutive frames failed in the inference engine: health is now NOT_SERVING; "
                "restart the server (an orchestrator's health probe does this)",
                consecutive,
            )
            self._ready = False
            task = asyncio.get_running_loop().create_task(self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING))
            self._health_tasks.add(task)
            task.add_done_callback(self._health_tasks.discard)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Drains: refuses new streams, stops reading frames, answers those taken within `grace` seconds.

        Streams still open when the grace period ends are cancelled; then the models are freed once
        their running batches end (see `abandoned_work` for a run that does not, within the stall
        timeout).
        """
        self._ready = False
        if self.watchdog is not None:
            await self.watchdog.stop()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.service.draining.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace or 0.0)
        try:
            await asyncio.wait_for(self.service.all_closed.wait(), grace)
        except TimeoutError:
            # wait_for(..., 0) times out without looking, so a server that never opened a stream (a
            # startup failure) would warn about none.
            if self.service.open_streams:
                log.warning(
                    "%d stream(s) still open after %.1f s of grace: cancelling", self.service.open_streams, grace
                )
        await self._server.stop(max(0.0, deadline - loop.time()))
        self.metrics.close()
        if self.pipeline is not None:
            # A run that outlasts the stall timeout (counted from the engine's last progress) is
            # hung: waiting for it would keep the server from ever exiting (0: no timeout, as for
            # the watchdog).
            timeout = self.config.stall_timeout_s or None
            if not await self.pipeline.close(timeout):
                self.abandoned_work = True
                log.error(
                    "an inference run has not returned %.1f s after the engine's last progress (the engine is "
                    "hung): stopping without it",
                    timeout,
                )
                return  # its model stays loaded: freeing a session while a thread runs in it is unsafe
        for model in self._models.values():
            model.close()

    async def wait_for_termination(self) -> None:
        """Returns once the gRPC server has stopped."""
        await self._server.wait_for_termination()


def _load_into(future: asyncio.Future[Mapping[str, Model]], config: ServerConfig) -> None:
    """In a thread: the models of `config`, or the error loading them, set on `future` unless it was cancelled."""
    outcome: Mapping[str, Model] | BaseException
    try:
        outcome = load_models(config)
    except BaseException as exc:
        outcome = exc

    def settle() -> None:
        if future.done():
            # The start was cancelled while they loaded: nobody will serve or close them.
            if not isinstance(outcome, BaseException):
                for model in outcome.values():
                    model.close()
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
        future.get_loop().call_soon_threadsafe(settle)
