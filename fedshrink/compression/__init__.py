"""fedshrink's compression layer: composable codecs, their wire format and Flower carriage.

Clients and server exchange compressed tensors, never pickles. A chain of codecs
is written as a config string, e.g. ``"topk:0.05|int8|zlib"``::

    from fedshrink.compression import Chain, decode_tensor, encode_state, decode_record

    chain = Chain.parse("topk:0.05|int8|zlib")
    enc = chain.encode("conv1.weight", w)              # EncodedTensor; enc.nbytes = bytes on the wire
    w2 = decode_tensor(enc.data, name="conv1.weight")  # torch.Tensor or DecodeError

    store = ResidualStore.load(context.state)           # error feedback (client side)
    record, nbytes = encode_state(update, chain, residuals=store, fragment="f0", round=3)
    store.save(context.state)
    tensors = decode_record(record, limits=DecodeLimits(max_numel=2**24))   # server side

    header, parsed = parse_record(record, limits)       # two phases: check every header first ...
    for p in parsed:
        check_chain(p, "topk:0.05|int8|zlib")           # ... name, shape, dtype, numel, chain ...
    decoded = decode_all_with_support(parsed)            # ... then decode: name -> (tensor, sent-elements mask)
    message_nbytes(reply)                                # bytes of a whole Flower Message

Codecs (ids; see :mod:`.codecs` for error bounds and wire sizes): ``fp16``,
``bf16``, ``quant`` (aliases ``int8``, ``int4``, ``q1``..``q8``; options
``axis=<int>`` per channel, ``stochastic=true``), ``sign``, ``bitmap`` (masks),
``topk:<ratio>``, ``randk:<ratio>``, ``zlib[:<level>]``, ``zstd[:<level>]`` (needs the
``zstandard`` package).

Modules: :mod:`.bitops` (bit packing, bitmaps, delta varints), :mod:`.codecs`
(configs, codecs, registry), :mod:`.chain` (parsing and applying chains),
:mod:`.wire` (proto serde, limits, decoder), :mod:`.flower` (ArrayRecord
carriage, byte accounting), :mod:`.errorfeedback` (client residuals),
:mod:`.pruning` (torch.nn.utils.prune masks and their bitmaps).
"""

from fedshrink.compression.chain import Chain, ChainConfig
from fedshrink.compression.codecs import (
    REGISTRY,
    BFloat16Config,
    BitmapConfig,
    CodecConfig,
    Float16Config,
    QuantConfig,
    RandKConfig,
    SignConfig,
    TopKConfig,
    ZlibConfig,
    ZstdConfig,
)
from fedshrink.compression.errorfeedback import ResidualStore
from fedshrink.compression.flower import (
    FLAT_KEY,
    STYPE,
    UPDATE_KEY,
    DecodedUpdate,
    FlatLayout,
    check_chain,
    decode_all_with_support,
    decode_like,
    decode_record,
    decode_reply,
    decode_with_support,
    encode_state,
    message_nbytes,
    parse_record,
    read_update,
    recorddict_nbytes,
)
from fedshrink.compression.wire import (
    DEFAULT_LIMITS,
    DecodeLimits,
    EncodedTensor,
    ParsedTensor,
    decode_parsed,
    decode_parsed_with_support,
    decode_tensor,
    parse_tensor,
)
from fedshrink.errors import EncodeError

__all__ = [
    "DEFAULT_LIMITS",
    "FLAT_KEY",
    "REGISTRY",
    "STYPE",
    "UPDATE_KEY",
    "BFloat16Config",
    "BitmapConfig",
    "Chain",
    "ChainConfig",
    "CodecConfig",
    "DecodeLimits",
    "DecodedUpdate",
    "EncodeError",
    "EncodedTensor",
    "FlatLayout",
    "Float16Config",
    "ParsedTensor",
    "QuantConfig",
    "RandKConfig",
    "ResidualStore",
    "SignConfig",
    "TopKConfig",
    "ZlibConfig",
    "ZstdConfig",
    "check_chain",
    "decode_all_with_support",
    "decode_like",
    "decode_parsed",
    "decode_parsed_with_support",
    "decode_record",
    "decode_reply",
    "decode_tensor",
    "decode_with_support",
    "encode_state",
    "message_nbytes",
    "parse_record",
    "parse_tensor",
    "read_update",
    "recorddict_nbytes",
]
