"""Per-process caches return what a fresh computation would."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedshrink.client.cache import model_costs, whole_model
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec, build_model, count_parameters
from fedshrink.protocol import CONFIG, TrainInstruction
from fedshrink.resources import macs_per_sample
from fedshrink.training import TrainSettings


def _state(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) if v.is_floating_point() else v + seed
            for k, v in build_model(spec).state_dict().items()}


@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_whole_model_holds_exactly_the_state_loaded(norm: str) -> None:
    spec = ModelSpec("cnn", (1, 28, 28), 10, norm=norm)
    for seed in (1, 2):  # the second load overwrites every value of the first
        state = _state(spec, seed)
        model = whole_model(spec, state)
        fresh = build_model(spec)
        fresh.load_state_dict(state)
        assert model.state_dict().keys() == fresh.state_dict().keys()
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
        assert all(p.grad is None for p in model.parameters())
    assert whole_model(spec, state) is model  # one object per thread and spec


def test_whole_model_refuses_a_state_that_does_not_fit() -> None:
    spec = ModelSpec("cnn", (1, 28, 28), 10)
    state = _state(spec, 3)
    missing = dict(list(state.items())[1:])
    with pytest.raises(RuntimeError, match="Missing key"):
        whole_model(spec, missing)
    key = next(k for k, v in state.items() if v.dim() == 2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        whole_model(spec, {**state, key: state[key][:, :-1]})


def test_model_costs_of_the_whole_model_are_counted_once_and_right() -> None:
    spec = ModelSpec("cnn", (1, 28, 28), 10)
    model = whole_model(spec, _state(spec, 4))
    fresh = build_model(spec)
    expected = (count_parameters(fresh), macs_per_sample(fresh, spec.input_shape, cache=False))
    assert model_costs(model, spec) == expected
    assert model_costs(model, spec) == expected  # from the cache
    assert model_costs(fresh, spec) == expected  # another object: counted


def test_instruction_parsed_once_per_record_and_still_checked() -> None:
    sent = TrainInstruction(3, ModelSpec("cnn", (1, 28, 28), 10), TrainSettings(), "raw", ArrayRecord())
    content = sent.to_records()
    first, second = TrainInstruction.from_records(content), TrainInstruction.from_records(content)
    assert first == sent and second == sent and second.model is content.array_records["arrays"]
    config = dict(content.config_records[CONFIG])
    for key, bad in (("server-round", True), ("server-round", 3.0), ("input-scaling", 0)):  # == a valid value
        content[CONFIG] = ConfigRecord({**config, key: bad})
        with pytest.raises(ConfigError):
            TrainInstruction.from_records(content)
