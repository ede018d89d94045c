"""Where predictions come from: the `Predictor` seam, a running server, or the engine in this process.

A predictor turns an HxWx3 RGB uint8 image into an HxW uint8 label map, at the image's own
resolution ("frame") or at the resolution the network ran at ("inference"). Tests pass any object
with a `predict` method; predictors that can pipeline (a server stream) also offer `predict_many`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from segstream.client import ModelInfo, SegmentationClient, SegmentResult, StreamOptions
from segstream.wire.codec import U8Array, decode_mask

if TYPE_CHECKING:
    from segstream.server.ort_model import OrtModel

Resolution = Literal["frame", "inference"]


class PredictionError(RuntimeError):
    """A prediction could not be had (a frame error from the server, a model that cannot load)."""


@runtime_checkable
class Predictor(Protocol):
    """Anything that segments one RGB image into a label map of class indices."""

    def predict(self, rgb: U8Array, resolution: Resolution) -> U8Array:
        """HxW uint8 labels: at the image's size for "frame", at the network's input size for "inference"."""
        ...


@runtime_checkable
class StreamingPredictor(Predictor, Protocol):
    """A predictor that segments a sequence of images faster than one call per image."""

    def predict_many(self, images: Iterable[U8Array], resolution: Resolution) -> Iterator[U8Array]:
        """One label map per image, in order; `images` may be read ahead of the results."""
        ...


def predict_all(predictor: Predictor, images: Iterable[U8Array], resolution: Resolution) -> Iterator[U8Array]:
    """The predictor's label maps for `images`, in order, streamed when the predictor can."""
    if isinstance(predictor, StreamingPredictor):
        yield from predictor.predict_many(images, resolution)
        return
    for rgb in images:
        yield predictor.predict(rgb, resolution)


@dataclass(frozen=True)
class ModelDescription:
    """What the report says about the model behind a predictor."""

    name: str
    source: str
    provider: str
    inference_size: int
    synthetic: bool
    head: str


class EnginePredictor:
    """Runs the ONNX model in this process through the server's own engine and stages (no server, no network).

    Each image goes through segstream.server.stages as a served frame does: resized with the short
    side at `size` (bilinear, 0 keeps the image's own), the serving graph's normalisation and
    argmax, and the label mask the server would send; "frame" results are the logits resized
    bilinearly to the image's size before the argmax, as the server does. The server's limits on
    what one frame may cost are not applied: the images are the evaluation's own.

    Example:
        >>> predictor = EnginePredictor.load(Path("fcn-resnet50-11.onnx"), size=520)  # doctest: +SKIP
        >>> predictor.predict(rgb, "inference").shape  # doctest: +SKIP
        (520, 693)
    """

    def __init__(self, model: OrtModel, size: int, head: str = "out") -> None:
        if head not in model.heads:
            raise PredictionError(f"model {model.name} has no head {head!r} (heads: {list(model.heads)})")
        self._model = model
        self._size = size
        self._head = head

    @classmethod
    def load(cls, path: Path, size: int, head: str = "out", device: str = "cpu", threads: int = 0) -> EnginePredictor:
        """Loads the model file with ONNX Runtime (imports segstream.server, which needs its dependencies)."""
        from segstream.server.config import DEVICES, ModelSpec
        from segstream.server.engine import EngineError
        from segstream.server.ort_model import OrtModel

        chosen = next((d for d in DEVICES if d == device), None)
        if chosen is None:
            raise PredictionError(f"device {device!r}: choose one of {', '.join(DEVICES)}")
        try:
            model = OrtModel(ModelSpec(path.stem, path), device=chosen, threads=threads, heads=(head,))
        except EngineError as exc:
            raise PredictionError(str(exc)) from exc
        return cls(model, size, head)

    def at_size(self, size: int) -> EnginePredictor:
        """The same loaded model, resizing to another short side (0: the image's own resolution)."""
        return EnginePredictor(self._model, size, self._head)

    @property
    def size(self) -> int:
        """The short side images are resized to (0: their own resolution)."""
        return self._size

    def describe(self) -> ModelDescription:
        """What the report says about the model."""
        return ModelDescription(
            name=self._model.name,
            source="in-process engine",
            provider=self._model.provider,
            inference_size=self._size,
            synthetic=self._model.synthetic,
            head=self._head,
        )

    def predict(self, rgb: U8Array, resolution: Resolution) -> U8Array:
        """HxW uint8 labels: at the image's size for "frame", at the network's input size for "inference"."""
        from segstream.server import stages
        from segstream.server.engine import EngineError
        from segstream.v1 import segmentation_pb2 as pb

        model = self._model
        config = pb.StreamConfig(
            head=pb.HEAD_AUX if self._head == "aux" else pb.HEAD_OUT,
            outputs=[pb.OUTPUT_LABEL_MASK],
            mask_encoding=pb.MASK_ENCODING_RAW,
            resolution=pb.OUTPUT_RESOLUTION_INFERENCE if resolution == "inference" else pb.OUTPUT_RESOLUTION_FRAME,
        )
        settings = stages.resolve(config, {model.name: model}, model.name)
        response = stages.response_for(pb.Frame(), settings)
        prepared = stages.resize(rgb, settings, stages.Shaping(self._size, limits=None), response)
        try:
            result = stages.infer(model, [prepared])
        except EngineError as exc:
            raise PredictionError(str(exc)) from exc
        stages.finish(model, result, 0, prepared, response)
        return decode_mask(response.label_mask)

    def close(self) -> None:
        """Frees the model's sessions."""
        self._model.close()


class ServerPredictor:
    """Segments through a running segstream server: one ORDERED stream, raw RGB in, raw label masks out.

    The client must send RGB frames (`pixel_format="rgb"`); `connect` builds such a client.
    """

    def __init__(self, client: SegmentationClient, model: ModelInfo, head: str = "out") -> None:
        if head not in model.heads:
            raise PredictionError(f"served model {model.name} has no head {head!r} (heads: {list(model.heads)})")
        self._client = client
        self._model = model
        self._head = head

    @classmethod
    def connect(
        cls, target: str, model: str = "", head: str = "out", timeout: float = 30.0, **client_options: Any
    ) -> ServerPredictor:
        """Connects, waits until the server is ready and looks the model up ("" = the server's default).

        `client_options` go to SegmentationClient (TLS and token options, max_in_flight...).
        """
        client = SegmentationClient(target, pixel_format="rgb", wire_encoding="raw", **client_options)
        try:
            client.wait_ready(timeout=timeout)
            models = client.models(timeout=timeout)
            info = next((m for m in models if (m.name == model if model else m.is_default)), None)
            if info is None:
                served = ", ".join(m.name for m in models) or "none"
                wanted = repr(model) if model else "a default model"
                raise PredictionError(f"server {target} does not serve {wanted} (it serves: {served})")
            return cls(client, info, head)
        except BaseException:
            client.close()
            raise

    @property
    def model(self) -> ModelInfo:
        """The served model, as the server lists it."""
        return self._model

    def describe(self) -> ModelDescription:
        """What the report says about the served model."""
        return ModelDescription(
            name=self._model.name,
            source=f"server {self._client.target}",
            provider=self._model.execution_provider,
            inference_size=self._model.inference_size,
            synthetic=self._model.synthetic,
            head=self._head,
        )

    def _options(self, resolution: Resolution) -> StreamOptions:
        return StreamOptions(
            model=self._model.name,
            head="aux" if self._head == "aux" else "out",
            outputs=("label_mask",),
            mask_encoding="raw",
            resolution=resolution,
            policy="ordered",
        )

    def predict(self, rgb: U8Array, resolution: Resolution) -> U8Array:
        """The server's label mask for one image, by a SegmentImage call."""
        return _labels(self._client.segment(rgb, self._options(resolution)), 0)

    def predict_many(self, images: Iterable[U8Array], resolution: Resolution) -> Iterator[U8Array]:
        """The server's label masks for `images`, in order, over one stream."""
        for index, result in enumerate(self._client.stream(images, self._options(resolution))):
            if result.frame_id != index:
                raise PredictionError(f"server answered frame {result.frame_id} where frame {index} was due")
            yield _labels(result, index)

    def close(self) -> None:
        """Closes the client's channel."""
        self._client.close()


def _labels(result: SegmentResult, index: int) -> U8Array:
    if result.error is not None:
        raise PredictionError(f"the server could not segment image #{index}: {result.error}")
    if result.labels is None:
        raise PredictionError(f"the server sent no label mask for image #{index}")
    return result.labels
