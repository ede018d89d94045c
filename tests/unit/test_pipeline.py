"""The Pipeline without gRPC, over a gated fake model: its threads, batches, failures and cancellation."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from segstream.server import cores, stages
from segstream.server.app import live_workers, worker_count
from segstream.server.config import ModelSpec, ServerConfig
from segstream.server.engine import BatchResult, U8Array
from segstream.server.errors import InvalidConfigError
from segstream.server.frame_limits import FrameLimits
from segstream.server.pipeline import Pipeline
from segstream.server.providers import CPU
from segstream.server.stages import Shaping, StreamSettings
from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec
from tests.fakes import GatedModel

SHAPING = Shaping(size=24, limits=FrameLimits(max_inference_pixels=4096, max_aspect=4.0))


class BatchRecordingModel(GatedModel):
    """A GatedModel that also records the size of each batch it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def run(self, head: str, frames: Sequence[U8Array], output_size: tuple[int, int]) -> BatchResult:
        result = super().run(head, frames, output_size)
        self.batch_sizes.append(len(frames))
        return result


def frame(frame_id: int, value: int = 128, height: int = 48, width: int = 64) -> pb.Frame:
    return codec.frame_from_array(np.full((height, width, 3), value, np.uint8), frame_id, pixel_format="rgb")


def settings(pipeline: Pipeline, **config: object) -> StreamSettings:
    return pipeline.resolve(pb.StreamConfig(**config))  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.005)


def make(
    model: BatchRecordingModel,
    workers: int = 1,
    max_batch: int = 1,
    on_engine_failure: Callable[[int], None] | None = None,
) -> Pipeline:
    return Pipeline(
        {"gated": model},
        "gated",
        SHAPING,
        workers=workers,
        max_batch=max_batch,
        max_delay_s=0.02,
        on_engine_failure=on_engine_failure,
    )


def running_alone(pipeline: Pipeline) -> Callable[[], bool]:
    """True once a worker has taken the one frame put in, so that later frames cannot join its batch."""
    return lambda: pipeline.batcher.stalled_for()[0] == 1 and pipeline.batcher.queued == 0


@pytest.fixture
def model() -> BatchRecordingModel:
    return BatchRecordingModel()


@pytest.fixture
async def pipeline(model: BatchRecordingModel) -> AsyncIterator[Pipeline]:
    built = make(model, max_batch=4)
    try:
        yield built
    finally:
        model.gate.set()
        await built.close()


async def test_a_frame_comes_back_segmented_with_its_timings(pipeline: Pipeline, model: BatchRecordingModel) -> None:
    outputs = [pb.OUTPUT_LABEL_MASK, pb.OUTPUT_CONFIDENCE, pb.OUTPUT_CLASS_SHARE]
    response = await pipeline.process(frame(7), settings(pipeline, outputs=outputs), time.perf_counter())
    assert not response.HasField("error")
    assert (response.frame_id, response.model) == (7, "gated")
    assert (response.inference_width, response.inference_height) == (32, 24)
    labels = codec.decode_mask(response.label_mask)
    assert labels.shape == (48, 64)  # the frame's resolution by default
    assert (labels[:, 0] == np.arange(48) % 21).all()
    assert response.confidence == 1.0 and len(response.class_share) == 21
    timings = response.timings
    assert timings.total_ms >= timings.decode_ms > 0 and timings.total_ms >= timings.inference_ms > 0
    # The model ran on the batcher's own worker, never on the event loop or a decode thread.
    assert model.threads == {"segstream-infer-0"}
    assert pipeline.engine_failures == 0


async def test_the_inference_resolution_answers_at_the_network_input_size(pipeline: Pipeline) -> None:
    config = settings(pipeline, resolution=pb.OUTPUT_RESOLUTION_INFERENCE)
    response = await pipeline.process(frame(1), config, time.perf_counter())
    assert codec.decode_mask(response.label_mask).shape == (24, 32)


async def test_frames_of_one_shape_batch_across_streams_and_other_shapes_apart(
    pipeline: Pipeline, model: BatchRecordingModel
) -> None:
    model.gate.clear()
    plain = settings(pipeline)
    # The first frame holds the only worker at the gate; the next ones queue behind it.
    first = asyncio.create_task(pipeline.process(frame(0), plain, time.perf_counter()))
    await until(running_alone(pipeline))
    same = [asyncio.create_task(pipeline.process(frame(i), plain, time.perf_counter())) for i in range(1, 5)]
    other = asyncio.create_task(pipeline.process(frame(9, height=64, width=48), plain, time.perf_counter()))
    await until(lambda: pipeline.batcher.queued == 5)
    model.gate.set()
    responses = await asyncio.gather(first, *same, other)
    assert [r.frame_id for r in responses] == [0, 1, 2, 3, 4, 9]
    assert not any(r.HasField("error") for r in responses)
    assert sorted(model.batch_sizes) == [1, 1, 4]


async def test_an_engine_failure_is_the_frames_error_and_is_counted_until_a_frame_succeeds(
    model: BatchRecordingModel,
) -> None:
    failures: list[int] = []
    built = make(model, on_engine_failure=failures.append)
    try:
        model.fail_when_mean_below = 10
        plain = settings(built)
        for i in range(2):
            failed = await built.process(frame(i, value=0), plain, time.perf_counter())
            assert failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "simulated device failure" in failed.error.message
            assert not failed.HasField("label_mask")
        assert failures == [1, 2] and built.engine_failures == 2
        ok = await built.process(frame(2), plain, time.perf_counter())
        assert not ok.HasField("error") and built.engine_failures == 0
    finally:
        await built.close()


async def test_a_frame_that_breaks_its_batch_fails_alone(pipeline: Pipeline, model: BatchRecordingModel) -> None:
    model.gate.clear()
    model.fail_when_mean_below = 10
    plain = settings(pipeline)
    first = asyncio.create_task(pipeline.process(frame(0), plain, time.perf_counter()))
    await until(running_alone(pipeline))
    values = {1: 128, 2: 0, 3: 128}
    batch = [asyncio.create_task(pipeline.process(frame(i, v), plain, time.perf_counter())) for i, v in values.items()]
    await until(lambda: pipeline.batcher.queued == 3)
    model.gate.set()
    responses = await asyncio.gather(first, *batch)
    assert [r.HasField("error") for r in responses] == [False, False, True, False]


@pytest.mark.parametrize(
    ("bad", "size", "code"),
    [
        (pb.Frame(frame_id=3), 24, grpc.StatusCode.INVALID_ARGUMENT),  # no image at all
        (frame(3, height=8, width=64), 24, grpc.StatusCode.RESOURCE_EXHAUSTED),  # 8:1, beyond max_aspect
        (frame(3, height=96, width=128), 0, grpc.StatusCode.RESOURCE_EXHAUSTED),  # beyond the pixel limit
    ],
)
async def test_a_bad_frame_is_its_own_error_and_never_reaches_the_engine(
    model: BatchRecordingModel, bad: pb.Frame, size: int, code: grpc.StatusCode
) -> None:
    built = Pipeline({"gated": model}, "gated", Shaping(size, limits=SHAPING.limits))
    try:
        response = await built.process(bad, settings(built), time.perf_counter())
        assert response.error.code == code.value[0] and response.frame_id == 3
        assert model.runs == 0 and built.engine_failures == 0
    finally:
        await built.close()


async def test_a_cancelled_frame_that_has_not_run_never_does(pipeline: Pipeline, model: BatchRecordingModel) -> None:
    model.gate.clear()
    plain = settings(pipeline)
    running = asyncio.create_task(pipeline.process(frame(0), plain, time.perf_counter()))
    await until(running_alone(pipeline))
    queued = asyncio.create_task(pipeline.process(frame(1), plain, time.perf_counter()))
    await until(lambda: pipeline.batcher.queued == 1)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    model.gate.set()
    assert (await running).frame_id == 0
    await until(lambda: pipeline.batcher.stalled_for() == (0, 0.0))
    assert model.batch_sizes == [1]
    assert pipeline.metrics.registry.get_sample_value("segstream_inflight_frames") == 0


async def test_close_cancels_queued_frames_and_stops_the_threads(model: BatchRecordingModel) -> None:
    built = make(model, workers=2)
    model.gate.clear()
    plain = settings(built)
    tasks = [asyncio.create_task(built.process(frame(i), plain, time.perf_counter())) for i in range(3)]
    await until(lambda: built.batcher.stalled_for()[0] == 3 and built.batcher.queued == 1)
    closing = asyncio.create_task(built.close())
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.wait_for(closing, 10)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    # Two frames were running on the two workers and are answered; the third was cancelled.
    assert sum(isinstance(o, pb.SegmentResponse) for o in outcomes) == 2
    assert sum(isinstance(o, asyncio.CancelledError) for o in outcomes) == 1
    assert not any(t.name.startswith("segstream-infer") for t in threading.enumerate())


async def test_live_places_are_what_the_workers_run_in_full_batches(model: BatchRecordingModel) -> None:
    built = make(model, workers=3, max_batch=2)
    try:
        assert built.admission.capacity == 6
    finally:
        await built.close()


async def test_on_a_cpu_two_workers_share_the_cores_and_live_frames_run_one_at_a_time(
    model: BatchRecordingModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert model.provider == CPU
    (tmp_path / "m.onnx").touch()
    config = ServerConfig(models=(ModelSpec("gated", tmp_path / "m.onnx"),))
    # The cores the process may use (its CPU affinity), not the host's.
    monkeypatch.setattr("segstream.server.cores.available_cores", lambda: 2)
    assert worker_count(config, {"gated": model}) == 2
    monkeypatch.setattr("segstream.server.cores.available_cores", lambda: 1)
    assert worker_count(config, {"gated": model}) == 1
    assert worker_count(replace(config, workers=3), {"gated": model}) == 3  # --workers wins
    assert live_workers({"gated": model}, 2) == 1
    built = Pipeline({"gated": model}, "gated", SHAPING, workers=2, max_batch=2, live_workers=1)
    try:
        assert built.admission.capacity == 2  # one worker's full batch of live frames
    finally:
        await built.close()


def test_stream_configs_are_checked_against_the_served_models(model: BatchRecordingModel) -> None:
    models = {"gated": model}
    assert stages.resolve(pb.StreamConfig(), models, "gated").model == "gated"
    with pytest.raises(InvalidConfigError, match="unknown model 'other'"):
        stages.resolve(pb.StreamConfig(model="other"), models, "gated")
    with pytest.raises(InvalidConfigError, match="no head"):
        stages.resolve(pb.StreamConfig(head=pb.HEAD_AUX), models, "gated")
    with pytest.raises(InvalidConfigError, match="jpeg_quality"):
        stages.resolve(pb.StreamConfig(jpeg_quality=101), models, "gated")


async def test_the_stages_in_one_thread_answer_as_the_pipeline_does(pipeline: Pipeline) -> None:
    # What the benchmark's in-process loop and the evaluation's predictor do with a frame.
    model = pipeline.models["gated"]
    outputs = [pb.OUTPUT_LABEL_MASK, pb.OUTPUT_COLOR_MASK, pb.OUTPUT_OVERLAY, pb.OUTPUT_CONFIDENCE]
    config = settings(pipeline, outputs=outputs, image_encoding=pb.IMAGE_ENCODING_PNG)
    wire = frame(5, value=90)
    response = stages.response_for(wire, config)
    prepared = stages.prepare(wire, config, SHAPING, response)
    stages.finish(model, stages.infer(model, [prepared]), 0, prepared, response)
    served = await pipeline.process(wire, config, time.perf_counter())
    served.ClearField("timings")
    assert response == served


def test_the_cores_are_those_the_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # pinned to one core
    assert cores.available_cores() == 1 and cores.default_cpu_workers() == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # a platform without affinity
    assert cores.available_cores() == 64 and cores.default_cpu_workers() == 2
