"""Folding a student's static BatchNorm into the layers that feed it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedshrink.distill.compress import finalize_pruning, prune_student
from fedshrink.distill.fold import deployed_spec, fold_batch_norm, freeze_on
from fedshrink.distill.search import measure_figures
from fedshrink.errors import DistillError
from fedshrink.models import ModelSpec, build_model, count_parameters

SHAPE = (1, 8, 8)


def _trained_like(spec: ModelSpec) -> nn.Module:
    """A static-BatchNorm model whose norms are not the identity (random affine parameters)."""
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_the_folded_model_computes_what_the_frozen_one_does(name: str) -> None:
    spec = ModelSpec(name, SHAPE, 10, 0.25, "batch")
    model = _trained_like(spec)
    x = torch.randn(300, *SHAPE) * 2 + 1  # statistics far from (0, 1), so an unfolded norm would show
    folded, new_spec = fold_batch_norm(model, spec, x)
    assert new_spec == deployed_spec(spec) and new_spec.norm == "none"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    probe = torch.randn(50, *SHAPE) * 2 + 1  # inputs the statistics were not taken on
    with torch.no_grad():
        assert torch.allclose(folded(probe), freeze_on(model, x)(probe), atol=1e-4, rtol=1e-4)
        # and the statistics are those of x: freezing on other inputs gives another function
        assert not torch.allclose(folded(probe), freeze_on(model, torch.randn(300, *SHAPE))(probe), atol=1e-3)


def test_folding_keeps_pruned_weights_zero_and_the_counts_measure_figures_gives() -> None:
    spec = ModelSpec("cnn", SHAPE, 10, 0.25, "batch")
    model = _trained_like(spec)
    prune_student(model, 0.5)
    finalize_pruning(model)
    zeros = [int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    folded, _ = fold_batch_norm(model, spec, torch.randn(64, *SHAPE))
    assert [int((m.weight == 0).sum()) for m in folded.modules() if isinstance(m, nn.Conv2d | nn.Linear)] == zeros
    # the search measures what is exported: the norm-free model, without the norms' parameters
    assert measure_figures(spec, 0.5, repeats=1).params == count_parameters(folded) < count_parameters(model)


def test_a_norm_after_something_else_than_a_layer_is_refused() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.norm = nn.BatchNorm2d(4, track_running_stats=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.act(self.conv(x))).mean(dim=(2, 3))

    with pytest.raises(DistillError, match="cannot fold norm: the layer before it is ReLU"):
        fold_batch_norm(Odd(), ModelSpec("cnn", SHAPE, 10, 0.25, "batch"), torch.randn(8, *SHAPE))


def test_a_resnet_without_norm_has_convolution_biases_and_with_one_has_none() -> None:
    plain = build_model(ModelSpec("resnet", SHAPE, 10, 0.25, "none"))
    normed = build_model(ModelSpec("resnet", SHAPE, 10, 0.25, "batch"))
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in normed.modules() if isinstance(m, nn.Conv2d))
