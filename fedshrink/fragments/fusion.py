"""The server's work on the global model across widths: nested initialisation and fusion.

With a profile mix, the global model's *inner* channels (those inside the
widest sub-model narrower than 1, its static prefix) are trained by every
client, while its *outer* channels are trained only by the full-width clients,
on their own non-IID data. Measured on digits, the global model then scores
below its own inner sub-model (``simulations/results/fragments.md``). Two
server-side steps close that gap; both leave the inner coordinates alone, so
what the narrow clients receive is unchanged:

* :func:`nested_init` (``fragment-init = nested``): before round 1, every
  weight that reads a channel outside the inner sub-model is set to zero. The
  width-1 model then computes exactly the inner sub-model's function (with
  per-channel normalisation; ``model-norm = batch``), and the full-width
  clients grow the outer channels from there instead of from noise.
* :func:`fuse` (``fusion-steps`` > 0): after an aggregation, the outer
  coordinates are distilled toward the ensemble of the global model's nested
  sub-models (mean of their tempered softmax; with ``teacher = "self"`` the
  global model's own softmax joins the mean) on the server's unlabelled
  proxy inputs, as FedDF distils a client ensemble (Lin et al., 2020), here
  restricted to the coordinates few clients train. Cost: ``steps`` forward
  and backward passes of the full model on the proxy set, plus one forward
  pass of each teacher. :class:`Fusion` runs it after every round, or only in
  the run's last ``last_rounds`` rounds; shipped: the self-teacher on the
  final model only (fusing every round from weak early sub-models hurt,
  docs/devices.md#fusion).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedshrink.errors import ConfigError
from fedshrink.fragments.graph import LayerGraph
from fedshrink.fragments.policies import make_policy
from fedshrink.fragments.scaler import build_sub_model
from fedshrink.fragments.slicing import extract, tensor_indices
from fedshrink.fragments.spec import FragmentSpec
from fedshrink.models.registry import ModelSpec, build_model

INITS = ("nested", "random")
TEACHERS = ("sub-models", "self")  # fusion's teacher: the nested sub-models, or they and the full model


@dataclass(frozen=True)
class FusionConfig:
    """Distillation of the nested sub-models into the outer coordinates (see the module doc)."""

    steps: int = 20  # Adam steps per round
    temperature: float = 2.0  # softmax temperature of teacher and student
    lr: float = 1e-3  # Adam learning rate
    batch: int = 256  # proxy images a step uses at most (the whole proxy when it is smaller): bounds the cost
    teacher: str = "sub-models"  # one of TEACHERS
    last_rounds: int = 0  # fuse only in the run's last this many rounds; 0: after every round

    def __post_init__(self) -> None:
        if isinstance(self.last_rounds, bool) or not isinstance(self.last_rounds, int) or self.last_rounds < 0:
            raise ConfigError("fusion-last-rounds", self.last_rounds, "an integer >= 0 (0 = every round)")
        if self.teacher not in TEACHERS:
            raise ConfigError("fusion-teacher", self.teacher, "one of " + ", ".join(repr(t) for t in TEACHERS))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError("fusion-steps", self.steps, "an integer >= 1 (0 in the run config turns fusion off)")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError("fusion-batch", self.batch, "an integer >= 1")
        for name, value, hi in (("fusion-temperature", self.temperature, 100.0), ("fusion-lr", self.lr, 1.0)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and 0 < value <= hi):
                raise ConfigError(name, value, f"a number in (0, {hi:g}]")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FusionConfig:
        return cls(**json.loads(text))


def inner_spec(graph: LayerGraph, widths: Sequence[float]) -> FragmentSpec | None:
    """The static prefix of the widest width below 1 in ``widths`` (None when there is none)."""
    narrow = [w for w in widths if w < 1.0]
    if not narrow:
        return None
    return make_policy("static").spec_for(graph, max(narrow), 0, 0)


def outer_masks(graph: LayerGraph, spec: FragmentSpec) -> dict[str, np.ndarray]:
    """Per state-dict key, True where the coordinate lies outside the fragment ``spec``."""
    out: dict[str, np.ndarray] = {}
    for key, rule in graph.tensors.items():
        outer = np.ones(rule.shape, dtype=bool)
        outer[np.ix_(*tensor_indices(rule, spec))] = False
        out[key] = outer
    return out


def nested_init(state: Mapping[str, np.ndarray], graph: LayerGraph, spec: FragmentSpec) -> dict[str, np.ndarray]:
    """``state`` with every weight that reads a channel outside ``spec`` set to zero (copies; input untouched).

    Those are the entries of dim 1 (a layer's input channels) outside the kept
    indices, for every tensor whose dim 1 follows a channel group.
    """
    out = {k: np.array(v, copy=True) for k, v in state.items()}
    for key, rule in graph.tensors.items():
        for d in rule.dims:
            if d.dim != 1:
                continue
            keep = np.zeros(rule.shape[1], dtype=bool)
            keep[tensor_indices(rule, spec)[1]] = True
            out[key][:, ~keep] = 0
    return out


def _load(model: nn.Module, state: Mapping[str, np.ndarray]) -> nn.Module:
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return model


def prefix_sub_model(state: Mapping[str, np.ndarray], graph: LayerGraph, model_spec: ModelSpec, width: float, *,
                     scaled: bool = False) -> nn.Module:
    """The sub-model at ``width`` holding the static prefix of the full ``state`` (the nested sub-model)."""
    prefix = make_policy("static").spec_for(graph, width, 0, 0)
    return _load(build_sub_model(model_spec, width, scaled=scaled), extract(state, graph, prefix))


def fuse(state: Mapping[str, np.ndarray], graph: LayerGraph, model_spec: ModelSpec, widths: Sequence[float],
         x: torch.Tensor, config: FusionConfig, *, scaled: bool = False, seed: int = 0,
         calibrate: bool = False) -> dict[str, np.ndarray]:
    """Distil the sub-models at ``widths`` (< 1) of ``state`` into its coordinates outside the widest of them.

    ``x`` is a batch of unlabelled inputs ``(N, C, H, W)``. The teacher is the
    mean of the sub-models' ``softmax(logits / T)`` (and the model's own with
    ``teacher = "self"``); the loss is
    ``T**2 * KL(teacher || softmax(student / T))`` (Hinton et al., 2015).
    Gradients are masked to the outer coordinates, so the inner ones come back
    bit-identical. Each step uses the whole proxy batch, or, when it holds more
    than ``config.batch`` images, that many drawn from a generator seeded by
    ``seed`` (so a step's cost is bounded whatever the proxy's size, and a
    round is reproducible).

    ``calibrate``: a mean of softmaxes is softer than any of them, and the
    fused model learns that softness (on digits its test loss doubled while its
    accuracy rose). With ``calibrate`` the output layer (the model's last
    Linear, inner coordinates included) is then multiplied by the one factor
    that gives the fused model the unfused model's mean prediction entropy on
    ``x``: no label is used, and no prediction changes (a positive scale of the
    logits keeps their argmax). For a model nobody trains from afterwards.
    """
    inner = inner_spec(graph, widths)
    if inner is None or len(x) == 0:
        return dict(state)
    probs = []
    for w in sorted({w for w in widths if w < 1.0}):
        sub = prefix_sub_model(state, graph, model_spec, w, scaled=scaled)
        sub.train()  # as the clients run it: batch statistics with model-norm = batch
        with torch.no_grad():
            probs.append(torch.softmax(sub(x) / config.temperature, dim=1))  # (N, K)
    student = _load(build_model(model_spec), state)
    student.train()
    if config.teacher == "self":
        with torch.no_grad():
            probs.append(torch.softmax(student(x) / config.temperature, dim=1))
    teacher = torch.stack(probs).mean(dim=0)  # (N, K)
    masks = {k: torch.from_numpy(m.astype(np.float32)) for k, m in outer_masks(graph, inner).items()}
    params = dict(student.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=config.lr)
    t = config.temperature
    rng = np.random.default_rng([seed, 0xF05E])
    for _ in range(config.steps):
        opt.zero_grad()
        idx = torch.from_numpy(np.sort(rng.choice(len(x), config.batch, replace=False))) \
            if len(x) > config.batch else slice(None)
        log_p = torch.log_softmax(student(x[idx]) / t, dim=1)  # (B, K)
        loss = nn.functional.kl_div(log_p, teacher[idx], reduction="batchmean") * t * t
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
        for key, p in params.items():
            if p.grad is not None:
                p.grad.mul_(masks[key])
        opt.step()
    trained = student.state_dict()
    out = {k: trained[k].detach().numpy().astype(np.asarray(v).dtype) for k, v in state.items()}
    for key, m in masks.items():  # Adam moves nothing where the gradient was always 0; make it exact anyway
        inner_mask = m.numpy() == 0
        out[key][inner_mask] = np.asarray(state[key])[inner_mask]
    if calibrate:
        out = _with_confidence_of(state, out, model_spec, x)
    return out


def _mean_entropy(logits: torch.Tensor) -> float:
    p = torch.softmax(logits.double(), dim=1)
    return float(-(p * torch.log(p.clamp_min(1e-300))).sum(dim=1).mean())


def confidence_scale(logits: torch.Tensor, target: float, lo: float = 1e-2, hi: float = 1e2) -> float:
    """The factor ``a`` in ``[lo, hi]`` whose ``softmax(a * logits)`` has mean entropy ``target`` (bisection in
    log space; the entropy falls as ``a`` grows), clamped to the range when the target lies outside it."""
    if _mean_entropy(logits * hi) >= target:
        return hi
    if _mean_entropy(logits * lo) <= target:
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if _mean_entropy(logits * mid) > target else (lo, mid)
    return math.sqrt(lo * hi)


def _with_confidence_of(before: Mapping[str, np.ndarray], after: dict[str, np.ndarray], model_spec: ModelSpec,
                        x: torch.Tensor) -> dict[str, np.ndarray]:
    """``after`` with its last Linear scaled so its mean prediction entropy on ``x`` equals ``before``'s."""
    def logits(state: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, str]:
        model = _load(build_model(model_spec), state).train()  # batch statistics, as fusion ran it
        last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not last:
            raise ConfigError("fusion-steps", None, "a model whose output layer is a Linear, to keep its confidence")
        with torch.no_grad():
            return model(x), last[-1]
    target = _mean_entropy(logits(before)[0])
    out, name = logits(after)
    scale = confidence_scale(out, target)
    scaled = dict(after)
    for key in (f"{name}.weight", f"{name}.bias"):
        if key in scaled:
            scaled[key] = (scaled[key] * scale).astype(scaled[key].dtype)
    return scaled


class Fusion:
    """:func:`fuse` as a server-side refiner of the aggregated model (after every aggregation, or those of the
    run's last ``config.last_rounds`` rounds)."""

    name = "fusion"

    def __init__(self, graph: LayerGraph, model_spec: ModelSpec, x: torch.Tensor, config: FusionConfig, *,
                 scaled: bool = False, rounds: int = 0) -> None:
        """``rounds``: the run's number of rounds (what ``config.last_rounds`` counts back from). The run's
        final model, fused in round ``rounds``, keeps its confidence (:func:`fuse`'s ``calibrate``)."""
        if len(x) == 0:
            raise ConfigError("fusion-steps", config.steps, "0 when the server has no proxy inputs (proxy-fraction 0)")
        self.graph, self.model_spec, self.x, self.config, self.scaled = graph, model_spec, x, config, scaled
        self.rounds = rounds
        self.first_round = rounds - config.last_rounds + 1 if config.last_rounds else 1

    def refine(self, server_round: int, state: Mapping[str, np.ndarray], widths: Sequence[float]
               ) -> dict[str, np.ndarray]:
        if server_round < self.first_round:
            return dict(state)
        return fuse(state, self.graph, self.model_spec, widths, self.x, self.config, scaled=self.scaled,
                    seed=server_round, calibrate=self.rounds > 0 and server_round >= self.rounds)


def nested_initialiser(graph: LayerGraph) -> Callable[[Mapping[str, np.ndarray], Sequence[float]],
                                                      dict[str, np.ndarray]]:
    """The run's one-off start for ``fragment-init = nested``: :func:`nested_init` at the widest narrow width."""

    def initialise(state: Mapping[str, np.ndarray], widths: Sequence[float]) -> dict[str, np.ndarray]:
        inner = inner_spec(graph, widths)
        return nested_init(state, graph, inner) if inner is not None else dict(state)

    return initialise
