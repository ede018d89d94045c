import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FramePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_POLICY_UNSPECIFIED: _ClassVar[FramePolicy]
    FRAME_POLICY_LATEST: _ClassVar[FramePolicy]
    FRAME_POLICY_ORDERED: _ClassVar[FramePolicy]

class Head(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEAD_UNSPECIFIED: _ClassVar[Head]
    HEAD_OUT: _ClassVar[Head]
    HEAD_AUX: _ClassVar[Head]

class Output(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_UNSPECIFIED: _ClassVar[Output]
    OUTPUT_LABEL_MASK: _ClassVar[Output]
    OUTPUT_COLOR_MASK: _ClassVar[Output]
    OUTPUT_OVERLAY: _ClassVar[Output]
    OUTPUT_CONFIDENCE: _ClassVar[Output]
    OUTPUT_CLASS_SHARE: _ClassVar[Output]

class MaskEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_ENCODING_UNSPECIFIED: _ClassVar[MaskEncoding]
    MASK_ENCODING_RAW: _ClassVar[MaskEncoding]
    MASK_ENCODING_PNG: _ClassVar[MaskEncoding]

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_JPEG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_RAW_RGB: _ClassVar[ImageEncoding]

class OutputResolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_RESOLUTION_UNSPECIFIED: _ClassVar[OutputResolution]
    OUTPUT_RESOLUTION_FRAME: _ClassVar[OutputResolution]
    OUTPUT_RESOLUTION_INFERENCE: _ClassVar[OutputResolution]

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY8: _ClassVar[PixelFormat]
FRAME_POLICY_UNSPECIFIED: FramePolicy
FRAME_POLICY_LATEST: FramePolicy
FRAME_POLICY_ORDERED: FramePolicy
HEAD_UNSPECIFIED: Head
HEAD_OUT: Head
HEAD_AUX: Head
OUTPUT_UNSPECIFIED: Output
OUTPUT_LABEL_MASK: Output
OUTPUT_COLOR_MASK: Output
OUTPUT_OVERLAY: Output
OUTPUT_CONFIDENCE: Output
OUTPUT_CLASS_SHARE: Output
MASK_ENCODING_UNSPECIFIED: MaskEncoding
MASK_ENCODING_RAW: MaskEncoding
MASK_ENCODING_PNG: MaskEncoding
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_JPEG: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_RAW_RGB: ImageEncoding
OUTPUT_RESOLUTION_UNSPECIFIED: OutputResolution
OUTPUT_RESOLUTION_FRAME: OutputResolution
OUTPUT_RESOLUTION_INFERENCE: OutputResolution
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_GRAY8: PixelFormat

class StreamConfig(_message.Message):
    __slots__ = ("model", "head", "outputs", "mask_encoding", "image_encoding", "resolution", "policy", "jpeg_quality")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MASK_ENCODING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    head: Head
    outputs: _containers.RepeatedScalarFieldContainer[Output]
    mask_encoding: MaskEncoding
    image_encoding: ImageEncoding
    resolution: OutputResolution
    policy: FramePolicy
    jpeg_quality: int
    def __init__(self, model: _Optional[str] = ..., head: _Optional[_Union[Head, str]] = ..., outputs: _Optional[_Iterable[_Union[Output, str]]] = ..., mask_encoding: _Optional[_Union[MaskEncoding, str]] = ..., image_encoding: _Optional[_Union[ImageEncoding, str]] = ..., resolution: _Optional[_Union[OutputResolution, str]] = ..., policy: _Optional[_Union[FramePolicy, str]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class EncodedImage(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("data", "width", "height", "stride", "format")
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    width: int
    height: int
    stride: int
    format: PixelFormat
    def __init__(self, data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., stride: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame_id", "capture_time", "encoded", "raw")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    capture_time: _timestamp_pb2.Timestamp
    encoded: EncodedImage
    raw: RawImage
    def __init__(self, frame_id: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., encoded: _Optional[_Union[EncodedImage, _Mapping]] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    frame: Frame
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class SegmentImageRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    frame: Frame
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("data", "width", "height", "encoding")
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    width: int
    height: int
    encoding: MaskEncoding
    def __init__(self, data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[MaskEncoding, str]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "width", "height", "encoding")
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    width: int
    height: int
    encoding: ImageEncoding
    def __init__(self, data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("decode_ms", "queue_ms", "inference_ms", "postprocess_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("frame_id", "capture_time", "error", "label_mask", "color_mask", "overlay", "confidence", "class_share", "timings", "dropped_frames", "model", "inference_width", "inference_height")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LABEL_MASK_FIELD_NUMBER: _ClassVar[int]
    COLOR_MASK_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CLASS_SHARE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    capture_time: _timestamp_pb2.Timestamp
    error: FrameError
    label_mask: Mask
    color_mask: Image
    overlay: Image
    confidence: float
    class_share: _containers.RepeatedScalarFieldContainer[float]
    timings: StageTimings
    dropped_frames: int
    model: str
    inference_width: int
    inference_height: int
    def __init__(self, frame_id: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., label_mask: _Optional[_Union[Mask, _Mapping]] = ..., color_mask: _Optional[_Union[Image, _Mapping]] = ..., overlay: _Optional[_Union[Image, _Mapping]] = ..., confidence: _Optional[float] = ..., class_share: _Optional[_Iterable[float]] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., dropped_frames: _Optional[int] = ..., model: _Optional[str] = ..., inference_width: _Optional[int] = ..., inference_height: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Color(_message.Message):
    __slots__ = ("r", "g", "b")
    R_FIELD_NUMBER: _ClassVar[int]
    G_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    r: int
    g: int
    b: int
    def __init__(self, r: _Optional[int] = ..., g: _Optional[int] = ..., b: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "class_names", "palette", "inference_size", "execution_provider", "heads", "synthetic", "is_default", "inference_shapes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PALETTE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SHAPES_FIELD_NUMBER: _ClassVar[int]
    name: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    palette: _containers.RepeatedCompositeFieldContainer[Color]
    inference_size: int
    execution_provider: str
    heads: _containers.RepeatedScalarFieldContainer[Head]
    synthetic: bool
    is_default: bool
    inference_shapes: _containers.RepeatedCompositeFieldContainer[InferenceShape]
    def __init__(self, name: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., palette: _Optional[_Iterable[_Union[Color, _Mapping]]] = ..., inference_size: _Optional[int] = ..., execution_provider: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[Head, str]]] = ..., synthetic: _Optional[bool] = ..., is_default: _Optional[bool] = ..., inference_shapes: _Optional[_Iterable[_Union[InferenceShape, _Mapping]]] = ...) -> None: ...

class InferenceShape(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
