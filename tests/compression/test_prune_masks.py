"""Pruning invariants (torch.nn.utils.prune reparametrisation) and mask bitmaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedshrink.compression import parse_tensor, pruning
from fedshrink.errors import ConfigError, DecodeError


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _model(seed: int = 0) -> tuple[TinyCNN, torch.Tensor]:
    torch.manual_seed(seed)
    return TinyCNN(), torch.randn(4, 1, 8, 8)


def test_all_ones_mask_is_noop() -> None:
    model, x = _model()
    before = model(x)
    keys = [k for k, _ in model.named_parameters() if k.endswith("weight")]
    pruning.apply_masks(model, {k: torch.ones_like(model.get_parameter(k)) for k in keys})
    assert set(pruning.get_masks(model)) == set(keys)
    assert torch.equal(model(x), before)


@pytest.mark.parametrize("method", pruning.PRUNING_METHODS)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_masked_weights_stay_zero_through_steps(method: str, opt: str) -> None:
    model, x = _model()
    pruning.prune_model(model, method, 0.5)
    masks = pruning.get_masks(model)
    optim = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        if opt == "sgd"
        else torch.optim.Adam(model.parameters(), lr=0.1)
    )
    for _ in range(3):
        optim.zero_grad()
        model(x).square().mean().backward()
        optim.step()
    for key, mask in masks.items():
        mod, _, param = key.rpartition(".")
        w = getattr(model.get_submodule(mod), param)
        assert torch.all(w[~mask] == 0)
        assert torch.any(w[mask] != 0)


def test_structured_masks_zero_whole_channels() -> None:
    model, _ = _model()
    pruning.prune_model(model, "l1_channel", 0.25)
    m = pruning.get_masks(model)["conv2.weight"]
    per_channel = m.reshape(m.shape[0], -1)
    assert torch.all(per_channel.all(1) | ~per_channel.any(1))  # each channel all-in or all-out
    assert int((~per_channel.any(1)).sum()) == 4
    record, nbytes = pruning.encode_masks({"conv2.weight": m})
    assert nbytes < m.numel() // 8  # 16 channels: 2 bytes of bitmap, not 144
    assert len(parse_tensor(record["conv2.weight"].data).payload) == 2
    assert torch.equal(pruning.decode_masks(record)["conv2.weight"], m)


def test_magnitude_prunes_smallest() -> None:
    model, _ = _model()
    w = model.fc.weight.detach().clone()
    pruning.prune_module(model.fc, "magnitude", 0.3)
    mask = pruning.get_masks(model)["fc.weight"]
    assert int((~mask).sum()) == round(0.3 * w.numel())
    assert w.abs()[~mask].max() <= w.abs()[mask].min()


@pytest.mark.parametrize("method", pruning.PRUNING_METHODS)
def test_remove_keeps_outputs(method: str) -> None:
    model, x = _model()
    pruning.prune_model(model, method, 0.4)
    before = model(x)
    pruning.remove_pruning(model)
    assert not pruning.get_masks(model)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert torch.equal(model(x), before)


def test_masks_travel_and_apply() -> None:
    model, x = _model(0)
    pruning.prune_model(model, "magnitude", 0.6)
    masks = pruning.get_masks(model)
    record, nbytes = pruning.encode_masks(masks)
    total = sum(m.numel() for m in masks.values())
    assert nbytes < total / 8 + 200
    client, _ = _model(0)
    pruning.apply_masks(client, pruning.decode_masks(record))
    assert torch.equal(client(x), model(x))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_bitmap_roundtrip(shape: list[int], seed: int) -> None:
    mask = torch.from_numpy(np.random.default_rng(seed).random(shape) < 0.3)
    data = pruning.mask_to_bitmap(mask)
    assert len(data) == (mask.numel() + 7) // 8
    assert torch.equal(pruning.bitmap_to_mask(data, tuple(shape)), mask)


def test_bitmap_to_mask_rejects() -> None:
    with pytest.raises(DecodeError):
        pruning.bitmap_to_mask(b"\x00", (3, 4))
    with pytest.raises(DecodeError, match="cap"):
        pruning.bitmap_to_mask(b"", (2**30, 2**30))
    with pytest.raises(DecodeError, match="padding"):
        pruning.bitmap_to_mask(b"\x01", (3,))


def test_bad_pruning_settings() -> None:
    model, _ = _model()
    with pytest.raises(ConfigError):
        pruning.prune_module(model.fc, "random", 0.5)
    with pytest.raises(ConfigError):
        pruning.prune_module(model.fc, "magnitude", 1.5)
    with pytest.raises(ConfigError):
        pruning.apply_masks(model, {"nope.weight": torch.ones(1)})


def test_magnitude_breaks_ties_by_index_and_counts_like_torch() -> None:
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.5, 0.5, 1.0]] * 4))  # 12 ties at |w| = 0.5
    pruning.prune_module(layer, "magnitude", 0.5)
    flat = layer.weight_mask.reshape(-1)
    order = [i for i in range(16) if i % 4 != 3]  # the tied entries, in index order
    assert flat[order[:8]].sum() == 0 and flat[order[8:]].all() and flat[3::4].all()
    for seed in range(3):  # same count as torch's own L1 pruning
        a, b = nn.Conv2d(3, 5, 3), nn.Conv2d(3, 5, 3)
        b.load_state_dict(a.state_dict())
        pruning.prune_module(a, "magnitude", 0.3 + 0.1 * seed)
        torch.nn.utils.prune.l1_unstructured(b, "weight", amount=0.3 + 0.1 * seed)
        assert int(a.weight_mask.sum()) == int(b.weight_mask.sum())


def test_mask_digest_changes_with_any_bit_and_fits_a_float_metric() -> None:
    masks = {"a.weight": torch.rand(6, 5, generator=torch.Generator().manual_seed(0)) > 0.3,
             "b.weight": torch.ones(3, dtype=torch.bool)}
    d = pruning.mask_digest(masks)
    assert 0 <= d < 2**48 and float(d) == d
    assert pruning.mask_digest(dict(reversed(list(masks.items())))) == d  # key order does not matter
    flipped = {**masks, "a.weight": masks["a.weight"].clone()}
    flipped["a.weight"][2, 3] = ~flipped["a.weight"][2, 3]
    assert pruning.mask_digest(flipped) != d
    assert pruning.mask_digest({"c.weight": masks["a.weight"], "b.weight": masks["b.weight"]}) != d  # keys count
