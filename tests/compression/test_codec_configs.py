"""Every codec config round-trips through its string and JSON forms; bad ones raise ConfigError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshrink.compression import REGISTRY, Chain, ChainConfig, CodecConfig
from fedshrink.compression.codecs import (
    BFloat16Config,
    BitmapConfig,
    Float16Config,
    QuantConfig,
    RandKConfig,
    SignConfig,
    TopKConfig,
    ZlibConfig,
    ZstdConfig,
)
from fedshrink.errors import ConfigError

RATIOS = st.floats(min_value=1e-9, max_value=1.0, allow_nan=False).filter(lambda r: r > 0)

#: one strategy per registered codec id (the test below checks the table is complete)
CONFIGS: dict[str, st.SearchStrategy[Any]] = {
    "fp16": st.just(Float16Config()),
    "bf16": st.just(BFloat16Config()),
    "quant": st.builds(
        QuantConfig, bits=st.integers(1, 8), axis=st.none() | st.integers(-8, 7), stochastic=st.booleans()
    ),
    "sign": st.just(SignConfig()),
    "bitmap": st.just(BitmapConfig()),
    "topk": st.builds(TopKConfig, ratio=RATIOS),
    "randk": st.builds(RandKConfig, ratio=RATIOS),
    "zlib": st.builds(ZlibConfig, level=st.integers(0, 9)),
    "zstd": st.builds(ZstdConfig, level=st.integers(1, 22)),
}

BAD: list[tuple[type[CodecConfig], dict[str, Any], str]] = [
    (QuantConfig, {"bits": 0}, "quant.bits"),
    (QuantConfig, {"bits": 9}, "quant.bits"),
    (QuantConfig, {"bits": True}, "quant.bits"),
    (QuantConfig, {"axis": 8}, "quant.axis"),
    (QuantConfig, {"stochastic": "yes"}, "quant.stochastic"),
    (TopKConfig, {"ratio": 0.0}, "topk.ratio"),
    (TopKConfig, {"ratio": 1.5}, "topk.ratio"),
    (RandKConfig, {"ratio": float("nan")}, "randk.ratio"),
    (ZlibConfig, {"level": 10}, "zlib.level"),
    (ZstdConfig, {"level": 0}, "zstd.level"),
    (ZstdConfig, {"level": 23}, "zstd.level"),
    (ZstdConfig, {"level": 1.5}, "zstd.level"),
]


def test_table_covers_registry() -> None:
    assert set(CONFIGS) == set(REGISTRY)


@pytest.mark.parametrize("codec_id", sorted(CONFIGS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_config_roundtrips(codec_id: str, data: st.DataObject) -> None:
    cfg = data.draw(CONFIGS[codec_id])
    assert cfg.codec_id == codec_id
    chain = ChainConfig((cfg,))
    assert ChainConfig.parse(chain.to_string()) == chain
    assert ChainConfig.from_json(chain.to_json()) == chain
    assert ChainConfig.from_dict(json.loads(json.dumps(chain.to_dict()))) == chain
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


@settings(max_examples=40, deadline=None)
@given(
    sparse=st.none() | CONFIGS["topk"] | CONFIGS["randk"],
    value=st.none() | CONFIGS["quant"] | CONFIGS["fp16"] | CONFIGS["bf16"] | CONFIGS["sign"],
    entropy=st.none() | CONFIGS["zlib"] | CONFIGS["zstd"],
)
def test_chain_roundtrips(sparse: Any, value: Any, entropy: Any) -> None:
    chain = ChainConfig(tuple(c for c in (sparse, value, entropy) if c is not None))
    assert ChainConfig.parse(chain.to_string()) == chain
    assert ChainConfig.from_json(chain.to_json()) == chain


@pytest.mark.parametrize(("cls", "kwargs", "key"), BAD)
def test_bad_config_names_setting(cls: type[CodecConfig], kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.key == key
    assert "allowed" in str(info.value) and "\n" not in str(info.value)


def test_parse_aliases_and_canonical_form() -> None:
    assert ChainConfig.parse("topk:0.05|int8|zlib").to_string() == "topk:0.05|quant:8|zlib:6"
    assert ChainConfig.parse("q4:axis=0,stochastic=true").stages == (QuantConfig(4, 0, True),)
    assert ChainConfig.parse("int4").stages == (QuantConfig(bits=4),)
    assert ChainConfig.parse("half|zlib:9").stages == (Float16Config(), ZlibConfig(9))
    assert ChainConfig.parse("topk:0.1|q4|zstd").to_string() == "topk:0.1|quant:4|zstd:1"
    assert ChainConfig.parse("int8|zstd:19").stages == (QuantConfig(8), ZstdConfig(19))
    assert ChainConfig.parse("raw") == ChainConfig.parse("") == ChainConfig(())
    assert Chain.parse("raw").config.to_string() == "raw"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("lz4", "codec"),
        ("int8|topk:0.1", "chain"),  # sparsifier after a value codec
        ("zlib|int8", "chain"),  # entropy not last
        ("zlib|zstd", "chain"),  # two entropy stages
        ("zstd:0", "zstd.level"),
        ("int8|fp16", "chain"),  # two value codecs
        ("topk:0.1|bitmap", "chain"),
        ("quant:bits=x", "quant.bits"),
        ("quant:colour=red", "quant.colour"),
        ("topk:0.1,0.2", "topk.argument"),
        ("sign:1", "sign.argument"),
        ("topk:2", "topk.ratio"),
    ],
)
def test_bad_chain_strings(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ChainConfig.parse(text)
    assert info.value.key == key


@pytest.mark.parametrize(
    "payload",
    [
        "{",
        "[]",
        '{"chain": [{"codec": "nope"}]}',
        '{"chain": [{"codec": "quant", "bits": 12}]}',
        '{"chain": [{"codec": "quant", "colour": 1}]}',
        '{"chain": [], "x": 1}',
    ],
)
def test_bad_chain_json(payload: str) -> None:
    with pytest.raises(ConfigError):
        ChainConfig.from_json(payload)
