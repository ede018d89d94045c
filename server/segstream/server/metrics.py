"""Prometheus metrics of one server: what came in, what went out, where the time went.

Each server owns its registry, so several servers in one process (tests, benchmarks) never
share counters; `serve_http` exposes it on --metrics-port.

Frames are conserved, per model: every frame a stream or SegmentImage call receives counts once
in `segstream_frames_received` and, once its fate is known, once in exactly one of
`segstream_frames_answered`, `segstream_frames_failed` (answered with an error) and
`segstream_frames_dropped` (no answer: stale under LATEST, or cancelled because its stream or call
ended first). So received = answered + failed + dropped + the frames still in flight.

Answered and failed count frames the pipeline finished. An ORDERED stream that ends while later
frames are already finished (they wait behind an earlier one) does not send them, yet they count
as answered: the work was done; cancelled counts only the frames whose work was not.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from segstream.server.ports import listen_error
from segstream.v1 import segmentation_pb2 as pb

# Milliseconds to minutes: a CPU frame takes seconds, a GPU frame a few milliseconds.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGES = ("decode", "queue", "inference", "postprocess", "total")
_CODE_NAMES = {3: "invalid_argument", 8: "resource_exhausted", 13: "internal", 14: "unavailable"}


class Metrics:
    """The counters, gauges and histograms of one server, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "segstream_frames_received",
            "Frames received; each also counts once as answered, failed or dropped",
            ["model"],
            registry=r,
        )
        self.answered = Counter("segstream_frames_answered", "Frames answered with a result", ["model"], registry=r)
        self.dropped = Counter(
            "segstream_frames_dropped",
            "Frames never answered: stale (replaced by a newer one, LATEST policy) or cancelled (their stream "
            "or call ended first)",
            ["model", "reason"],
            registry=r,
        )
        self.failed = Counter(
            "segstream_frames_failed", "Frames answered with an error", ["model", "reason"], registry=r
        )
        self.stage = Histogram(
            "segstream_stage_seconds", "Time per frame in each stage", ["stage"], buckets=_SECONDS, registry=r
        )
        self.batch_size = Histogram(
            "segstream_batch_size", "Frames per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.inflight = Gauge("segstream_inflight_frames", "Frames being processed", registry=r)
        self.open_streams = Gauge("segstream_open_streams", "Open Segment streams", registry=r)
        self.open_unary = Gauge("segstream_open_unary_calls", "SegmentImage calls being answered", registry=r)
        self.rejected = Counter(
            "segstream_streams_rejected", "Streams and SegmentImage calls refused", ["reason"], registry=r
        )
        # The liveness watchdog (segstream.server.watchdog): frames wait, yet no batch completes.
        self.engine_stalled = Gauge(
            "segstream_engine_stalled",
            "1 while frames wait and the engine has completed no batch for --stall-timeout, else 0",
            registry=r,
        )
        self.engine_stalls = Counter("segstream_engine_stalls", "Times the engine was found stalled", registry=r)
        self.provider = Gauge(
            "segstream_model_info", "Served models and their execution provider", ["model", "provider"], registry=r
        )
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def frame_done(self, model: str, response: pb.SegmentResponse) -> None:
        """Counts one answered frame of `model`: its error reason, or its time in each stage."""
        if response.HasField("error"):
            self.failed.labels(model, _CODE_NAMES.get(response.error.code, str(response.error.code))).inc()
            return
        self.answered.labels(model).inc()
        t = response.timings
        for name, ms in zip(
            _STAGES, (t.decode_ms, t.queue_ms, t.inference_ms, t.postprocess_ms, t.total_ms), strict=True
        ):
            self.stage.labels(name).observe(ms / 1e3)

    def tally(self, model: str) -> FrameTally:
        """The counts of one stream or SegmentImage call of `model`, kept in step with these metrics."""
        return FrameTally(self, model)

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Starts the /metrics endpoint; returns the bound port (useful with port 0).

        Raises OSError with one line naming --metrics-port when it cannot listen there.
        """
        try:
            server, thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:  # "[Errno 98] Address already in use" alone does not say which port
            raise listen_error("--metrics-port", host, port, exc) from exc
        self._http = (server, thread)
        return int(server.server_port)

    def close(self) -> None:
        """Stops the /metrics endpoint, if it was started."""
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None


class FrameTally:
    """The frames of one stream (or SegmentImage call): received = answered + failed + dropped once it ends.

    `arrived` and `dropped` also count in the server's metrics; `done` counts only here, since the
    pipeline counts each frame it answers in the metrics itself (`Metrics.frame_done`).
    """

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._metrics = metrics
        self.model = model
        self.received = 0
        self.answered = 0
        self.failed = 0
        self.dropped = 0

    def arrived(self) -> None:
        """One more frame received."""
        self.received += 1
        self._metrics.received.labels(self.model).inc()

    def drop(self, reason: str) -> None:
        """A received frame that will get no answer, and why ("stale" or "cancelled")."""
        self.dropped += 1
        self._metrics.dropped.labels(self.model, reason).inc()

    def done(self, response: pb.SegmentResponse) -> None:
        """A received frame answered by the pipeline: with a result, or with an error."""
        if response.HasField("error"):
            self.failed += 1
        else:
            self.answered += 1

    def __str__(self) -> str:
        return (
            f"{self.received} frames received, {self.answered} answered, {self.failed} failed, {self.dropped} dropped"
        )
