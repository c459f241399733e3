from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IndexEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_ENCODING_UNSPECIFIED: _ClassVar[IndexEncoding]
    INDEX_ENCODING_DELTA_VARINT: _ClassVar[IndexEncoding]
    INDEX_ENCODING_BITMAP: _ClassVar[IndexEncoding]
    INDEX_ENCODING_RICE: _ClassVar[IndexEncoding]
INDEX_ENCODING_UNSPECIFIED: IndexEncoding
INDEX_ENCODING_DELTA_VARINT: IndexEncoding
INDEX_ENCODING_BITMAP: IndexEncoding
INDEX_ENCODING_RICE: IndexEncoding

class CodecStage(_message.Message):
    __slots__ = ("codec", "version", "bits", "axis", "scales", "zero_points", "stochastic", "ratio", "level")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINTS_FIELD_NUMBER: _ClassVar[int]
    STOCHASTIC_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    codec: str
    version: int
    bits: int
    axis: int
    scales: _containers.RepeatedScalarFieldContainer[float]
    zero_points: _containers.RepeatedScalarFieldContainer[float]
    stochastic: bool
    ratio: float
    level: int
    def __init__(self, codec: _Optional[str] = ..., version: _Optional[int] = ..., bits: _Optional[int] = ..., axis: _Optional[int] = ..., scales: _Optional[_Iterable[float]] = ..., zero_points: _Optional[_Iterable[float]] = ..., stochastic: _Optional[bool] = ..., ratio: _Optional[float] = ..., level: _Optional[int] = ...) -> None: ...

class SparseIndex(_message.Message):
    __slots__ = ("encoding", "count", "nbytes", "rice_bits")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    RICE_BITS_FIELD_NUMBER: _ClassVar[int]
    encoding: IndexEncoding
    count: int
    nbytes: int
    rice_bits: int
    def __init__(self, encoding: _Optional[_Union[IndexEncoding, str]] = ..., count: _Optional[int] = ..., nbytes: _Optional[int] = ..., rice_bits: _Optional[int] = ...) -> None: ...

class CompressedTensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "stages", "sparse", "payload", "raw_nbytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RAW_NBYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    stages: _containers.RepeatedCompositeFieldContainer[CodecStage]
    sparse: SparseIndex
    payload: bytes
    raw_nbytes: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[CodecStage, _Mapping]]] = ..., sparse: _Optional[_Union[SparseIndex, _Mapping]] = ..., payload: _Optional[bytes] = ..., raw_nbytes: _Optional[int] = ...) -> None: ...

class TensorUpdate(_message.Message):
    __slots__ = ("format_version", "fragment", "round", "chain", "tensor_names", "direction", "flat_layout")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    TENSOR_NAMES_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    FLAT_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    fragment: str
    round: int
    chain: str
    tensor_names: _containers.RepeatedScalarFieldContainer[str]
    direction: str
    flat_layout: int
    def __init__(self, format_version: _Optional[int] = ..., fragment: _Optional[str] = ..., round: _Optional[int] = ..., chain: _Optional[str] = ..., tensor_names: _Optional[_Iterable[str]] = ..., direction: _Optional[str] = ..., flat_layout: _Optional[int] = ...) -> None: ...
