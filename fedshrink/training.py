"""Local training and evaluation loops: plain PyTorch, no Flower.

Both take arrays (:class:`~fedshrink.data.LabelledArrays`) and a model and
return small result records; the apps wrap them into Flower messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedshrink.data import LabelledArrays
from fedshrink.errors import ConfigError
from fedshrink.settings import Section, at_least, between, greater_than, one_of, option


def read_number(config: Mapping[str, object], key: str, kind: type[int] | type[float]) -> Any:
    """A numeric entry of a received config (e.g. the server's train message), checked for presence and type."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"train message {key}", value, f"a{'n integer' if kind is int else ' number'}")
    return kind(value)


LOSSES = ("ce", "masked-ce")


@dataclass(frozen=True)
class TrainSettings(Section):
    """Local training settings; the server sends them to clients in the train instruction.

    ``loss``: ``"ce"`` is cross-entropy over all classes; ``"masked-ce"`` is
    cross-entropy over the classes present in the client's own data (the
    softmax is restricted to them: HeteroFL's masked cross-entropy, FedRS's
    restricted softmax), so a client never pushes down the logits of classes
    it has no examples of, which on label-skewed data are the logits other
    clients are raising.
    """

    title: ClassVar[str] = "local training"

    epochs: int = option(2, "client epochs per round", rule=at_least(1), key="local-epochs")
    batch_size: int = option(16, "client batch size", rule=at_least(1))
    learning_rate: float = option(0.01, "client SGD learning rate", rule=greater_than(0))
    momentum: float = option(0.9, "client SGD momentum", rule=between(0, 1, hi_open=True))
    weight_decay: float = option(0.0, "client SGD weight decay", rule=at_least(0))
    loss: str = option("ce", "`ce`, or `masked-ce`: softmax over the classes in the client's own data only",
                       rule=one_of(LOSSES), key="local-loss")


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    steps: int
    mean_loss: float  # mean training loss over every step of every epoch
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    num_examples: int
    loss: float
    accuracy: float


ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def train_local(
    model: nn.Module, data: LabelledArrays, settings: TrainSettings, *, seed: int, extra_loss: ExtraLoss | None = None
) -> TrainResult:
    """SGD with momentum over ``settings.epochs`` epochs of shuffled mini-batches.

    ``extra_loss(model, x, y, logits)`` is added to every batch's loss (e.g.
    :class:`fedshrink.fragments.nested.NestedDistiller`); ``logits`` are the
    model's, before any class masking.

    Shuffling draws from a generator seeded with ``seed``, so a client's round
    is reproducible.
    """
    t0 = time.perf_counter()
    x = torch.from_numpy(data.x)  # (N, C, H, W)
    y = torch.from_numpy(data.y)  # (N,)
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=settings.learning_rate,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    loss_fn = nn.CrossEntropyLoss()
    present: torch.Tensor | None = None  # (K,) bool: classes in this client's data
    if settings.loss == "masked-ce" and n:
        num_classes = int(y.max()) + 1
        present = torch.zeros(num_classes, dtype=torch.bool)
        present[torch.unique(y)] = True
    model.train()
    total, steps = 0.0, 0
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            opt.zero_grad(set_to_none=True)
            xb, yb = x[idx], y[idx]
            logits = model(xb)  # (B, K)
            masked = logits
            if present is not None:
                mask = torch.zeros(logits.shape[1], dtype=torch.bool)
                mask[: present.numel()] = present
                masked = logits.masked_fill(~mask, float("-inf"))  # softmax over the present classes only
            loss = loss_fn(masked, yb)
            if extra_loss is not None:
                loss = loss + extra_loss(model, xb, yb, logits)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return TrainResult(
        num_examples=n,
        steps=steps,
        mean_loss=total / max(steps, 1),
        seconds=time.perf_counter() - t0,
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: LabelledArrays, *, batch_size: int = 512) -> EvalResult:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``data``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        xb = torch.from_numpy(data.x[start : start + batch_size])
        yb = torch.from_numpy(data.y[start : start + batch_size])
        logits = model(xb)  # (B, K)
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    n = len(data)
    return EvalResult(num_examples=n, loss=loss_sum / n, accuracy=correct / n)


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from non-negative integers (run seed, round, client ...)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))
