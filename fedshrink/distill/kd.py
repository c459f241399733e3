"""Knowledge distillation on the server's unlabeled proxy images: loss, augmentation, loop.

Loss (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", Sec. 2)::

    L = (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T)) + alpha * CE(s, y)

with ``t`` the teacher's and ``s`` the student's logits, ``T`` the temperature
(the ``T^2`` keeps the soft-target gradients on the scale of the hard-label
ones). ``alpha = 0`` is pure distillation: no labels needed, the default, as the
proxy split is unlabeled for training purposes. ``alpha = 1`` is plain
supervised training (benchmarks only: "student trained on the proxy with its labels").

The teacher is the global model or, as FedDF does (Lin et al. 2020, "Ensemble
Distillation for Robust Model Fusion in Federated Learning", Alg. 1), an
ensemble whose logits are the mean of its members' logits (:class:`EnsembleTeacher`).

Augmentation for small grey images in [0, 1] (:func:`augment`): a random affine
map (shift, rotation, scale) sampled bilinearly with zero padding, additive
Gaussian noise, then mixup between proxy images (Zhang et al. 2018) on a part of
the batch; the teacher labels whatever the student sees, so mixed images need
no labels. Random draws come from a seeded ``torch.Generator`` (and a seeded numpy
``Generator`` for the Beta draws), never from global state.

Training runs on a *transfer set* (:func:`build_transfer_set`): the proxy images
plus augmented copies, ``transfer_size`` in all, labelled once by the teacher. On
this CPU that halves the cost of a step (the teacher's forward pass was half of it)
and lets every candidate of a search share one set of teacher outputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedshrink.errors import ConfigError, DistillError


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of proxy images; all zeros turns it off."""

    max_shift: float = 1.0  # pixels, uniform in [-max_shift, max_shift] per axis
    max_rotate_deg: float = 12.0  # degrees, uniform in [-max, max]
    max_scale: float = 0.1  # zoom factor uniform in [1 - max_scale, 1 + max_scale]
    noise_std: float = 0.03  # std of additive Gaussian noise, in pixel units ([0, 1] images)
    mixup_fraction: float = 0.5  # share of each batch replaced by mixes of two proxy images
    mixup_alpha: float = 0.4  # Beta(alpha, alpha) mixing weights

    def __post_init__(self) -> None:
        for key in ("max_shift", "max_rotate_deg", "noise_std", "mixup_alpha"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
                raise ConfigError(f"distill.augment.{key}", v, "a finite number >= 0")
        for key in ("max_scale", "mixup_fraction"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise ConfigError(f"distill.augment.{key}", v, "a number in [0, 1)")
        if self.mixup_fraction > 0 and self.mixup_alpha == 0:
            raise ConfigError("distill.augment.mixup_alpha", self.mixup_alpha, "> 0 when mixup_fraction > 0")


@dataclass(frozen=True)
class KDSettings:
    steps: int = 1500
    batch_size: int = 128
    learning_rate: float = 3e-3  # Adam, cosine-decayed to 0 over ``steps``
    weight_decay: float = 1e-4
    temperature: float = 4.0
    alpha: float = 0.0  # weight of the labelled loss; 0 = pure distillation

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError("distill.steps", self.steps, "an integer >= 0")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("distill.batch_size", self.batch_size, "an integer >= 1")
        if not 0 < self.learning_rate < math.inf:
            raise ConfigError("distill.learning_rate", self.learning_rate, "a finite number > 0")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError("distill.weight_decay", self.weight_decay, "a finite number >= 0")
        if not 0 < self.temperature < math.inf:
            raise ConfigError("distill.temperature", self.temperature, "a finite number > 0")
        if not 0 <= self.alpha <= 1:
            raise ConfigError("distill.alpha", self.alpha, "a number in [0, 1]")


@dataclass(frozen=True)
class KDResult:
    steps: int
    final_loss: float  # mean loss over the last 10% of steps
    seconds: float


class EnsembleTeacher(nn.Module):
    """Mean of the members' logits (FedDF's ensemble teacher)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise DistillError("an ensemble teacher needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, mean over the batch; inputs ``(B, K)``."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)  # (B, K)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)  # (B, K)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def mixed_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    soft_labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``(1 - alpha) * kd_loss + alpha * CE(soft_labels)``; a term with weight 0 needs no input.

    ``soft_labels`` ``(B, K)`` are one-hot rows, or their mixup mixes.
    """
    loss = student_logits.new_zeros(())
    if alpha < 1:
        assert teacher_logits is not None
        loss = loss + (1 - alpha) * kd_loss(student_logits, teacher_logits, temperature)
    if alpha > 0:
        assert soft_labels is not None
        ce = -(soft_labels * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()
        loss = loss + alpha * ce
    return loss


def augment(
    x: torch.Tensor,
    cfg: AugmentConfig,
    gen: torch.Generator,
    rng: np.random.Generator,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augmented copy of images ``x`` ``(B, C, H, W)`` in [0, 1], clamped to [0, 1].

    ``labels`` ``(B, K)`` (one-hot rows), when given, are mixed alongside the
    images and returned; without them the second result is ``None``.
    """
    b, _, h, w = x.shape
    out = x
    if cfg.max_shift or cfg.max_rotate_deg or cfg.max_scale:
        u = torch.rand((b, 4), generator=gen) * 2 - 1  # (B, 4) in [-1, 1]
        angle = u[:, 0] * math.radians(cfg.max_rotate_deg)  # (B,)
        scale = 1 + u[:, 1] * cfg.max_scale  # (B,)
        # affine_grid works in normalised coordinates: one pixel = 2 / size
        tx, ty = u[:, 2] * cfg.max_shift * 2 / w, u[:, 3] * cfg.max_shift * 2 / h  # (B,)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.noise_std:
        out = out + torch.randn(out.shape, generator=gen) * cfg.noise_std
    soft: torch.Tensor | None = None
    if labels is not None:
        soft = labels.to(out.dtype)  # (B, K) one-hot or soft
    n_mix = int(round(b * cfg.mixup_fraction))
    if n_mix > 0 and b > 1:
        lam = torch.from_numpy(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, n_mix).astype(np.float32))  # (M,)
        lam = torch.maximum(lam, 1 - lam)  # the first image dominates
        partner = torch.randint(0, b, (n_mix,), generator=gen)  # (M,)
        mixed = lam.view(-1, 1, 1, 1) * out[:n_mix] + (1 - lam.view(-1, 1, 1, 1)) * out[partner]
        out = torch.cat([mixed, out[n_mix:]])
        if soft is not None:
            soft = torch.cat([lam.view(-1, 1) * soft[:n_mix] + (1 - lam.view(-1, 1)) * soft[partner], soft[n_mix:]])
    return out.clamp(0.0, 1.0), soft


@dataclass(frozen=True)
class TransferSet:
    """Augmented proxy images ``x`` ``(M, C, H, W)`` with the teacher's logits ``(M, K)`` on them.

    Built once (:func:`build_transfer_set`) and shared by every student of a search:
    the teacher runs once per image instead of once per step. ``soft_labels`` ``(M, K)``
    (one-hot rows mixed by mixup) exist only when proxy labels were given (baselines).
    """

    x: torch.Tensor
    teacher_logits: torch.Tensor | None
    soft_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: torch.Tensor) -> TransferSet:
        return TransferSet(
            self.x[idx],
            None if self.teacher_logits is None else self.teacher_logits[idx],
            None if self.soft_labels is None else self.soft_labels[idx],
        )


@torch.no_grad()
def build_transfer_set(
    proxy_x: torch.Tensor,
    teacher: nn.Module | None,
    size: int,
    aug: AugmentConfig,
    *,
    seed: int,
    proxy_y: torch.Tensor | None = None,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> TransferSet:
    """The proxy images themselves, then augmented copies, ``max(size, N)`` images in all.

    Copies come in passes over a fresh permutation of the proxy, so every image is
    augmented about equally often. ``teacher=None`` gives no logits (labelled training only).
    """
    n = len(proxy_x)
    if n == 0:
        raise DistillError("the proxy set is empty: there is nothing to distill on")
    if size < 1:
        raise ConfigError("distill.transfer_size", size, "an integer >= 1")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    onehot = F.one_hot(proxy_y, num_classes).float() if proxy_y is not None and num_classes else None
    xs, ys = [proxy_x], [onehot] if onehot is not None else []
    have = n
    while have < size:
        idx = torch.randperm(n, generator=gen)[: min(n, size - have, batch_size)]
        xb, soft = augment(proxy_x[idx], aug, gen, rng, None if onehot is None else onehot[idx])
        xs.append(xb)
        if soft is not None:
            ys.append(soft)
        have += len(idx)
    x = torch.cat(xs)  # (M, C, H, W)
    logits = None
    if teacher is not None:
        teacher.eval()
        logits = torch.cat([teacher(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])  # (M, K)
    return TransferSet(x, logits, torch.cat(ys) if ys else None)


def distill(student: nn.Module, transfer: TransferSet, settings: KDSettings, *, seed: int) -> KDResult:
    """Train ``student`` in place on ``transfer`` for ``settings.steps`` mini-batches.

    Batches are consecutive slices of a fresh permutation each pass; Adam with the
    learning rate cosine-decayed to 0. Pruning masks installed on the student
    (``torch.nn.utils.prune``) stay applied. The loss is :func:`mixed_loss`, which
    needs the teacher's logits unless ``alpha == 1`` and soft labels unless ``alpha == 0``.
    """
    n = len(transfer)
    if n == 0:
        raise DistillError("the proxy set is empty: there is nothing to distill on")
    if settings.alpha < 1 and transfer.teacher_logits is None:
        raise DistillError("distillation (alpha < 1) needs a teacher")
    if settings.alpha > 0 and transfer.soft_labels is None:
        raise DistillError(f"alpha={settings.alpha} mixes in a labelled loss, but no proxy labels were given")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, settings.steps) / max(settings.steps, 1)))
    )
    student.train()
    bs = min(settings.batch_size, n)
    order, pos = torch.randperm(n, generator=gen), 0
    tail: list[float] = []
    keep_tail = max(1, settings.steps // 10)
    for _ in range(settings.steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        batch = transfer.subset(order[pos : pos + bs])
        pos += bs
        s_logits = student(batch.x)  # (B, K)
        loss = mixed_loss(s_logits, batch.teacher_logits, batch.soft_labels, settings.temperature, settings.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
        opt.step()
        sched.step()
        tail.append(float(loss.detach()))
        if len(tail) > keep_tail:
            tail.pop(0)
    student.eval()
    return KDResult(
        steps=settings.steps,
        final_loss=sum(tail) / len(tail) if tail else float("nan"),
        seconds=time.perf_counter() - t0,
    )


@torch.no_grad()
def agreement(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    """Share of images ``(N, C, H, W)`` on which student and teacher predict the same class."""
    student.eval()
    teacher.eval()
    return float((student(x).argmax(1) == teacher(x).argmax(1)).float().mean())
