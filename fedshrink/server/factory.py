"""The strategy a run's settings describe: planner, aggregation stages, refiners, initialisation.

:func:`build_strategy` is the only place that reads the settings of the
strategy's parts; adding a defence or another stage means a registry entry
in its own package, not a change here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch

from fedshrink.compression.reference import DownlinkReferences
from fedshrink.config import RunConfig
from fedshrink.data import Splits
from fedshrink.devices import plan_budget
from fedshrink.devices.profiles import DeviceProfile
from fedshrink.errors import ConfigError
from fedshrink.fragments import build_graph
from fedshrink.fragments.fusion import Fusion, nested_initialiser
from fedshrink.models import ModelSpec, build_model
from fedshrink.privacy.server import PrivatePlanner, PrivateStrategy, private_parts
from fedshrink.protocol import Hello
from fedshrink.robust.defences import DefenceEnv, RootUpdate
from fedshrink.robust.guard import NormGuard
from fedshrink.strategy.fleet import Fleet
from fedshrink.strategy.memory import UpdateMemory
from fedshrink.strategy.plan import Planner, ReplyLimits
from fedshrink.strategy.rounds import BudgetPlanner, Refiner, ShrinkStrategy
from fedshrink.strategy.stages import ServerStep, Stage
from fedshrink.training import seed_for, train_local


def root_trainer(cfg: RunConfig, spec: ModelSpec, splits: Splits) -> RootUpdate:
    """FLTrust's root update: the global model trained on the first ``fltrust-root-size`` labelled proxy samples.

    The server holds these labels (FLTrust's threat model: a small clean root
    set collected by the service); the rest of the proxy split stays unlabeled.
    """
    size = int(cfg.robust.extras["fltrust-root-size"])
    n = min(size, len(splits.proxy))
    if n < 1:
        raise ConfigError("defence", cfg.robust.defence, "no fltrust when the proxy split is empty (proxy-fraction 0)")
    root = splits.proxy.subset(np.arange(n))

    def update(global_state: Mapping[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        model = build_model(spec)
        model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in global_state.items()})
        train_local(model, root, cfg.training, seed=seed_for(cfg.seed, server_round, 0xF1))
        return {k: v.numpy() - global_state[k] for k, v in model.state_dict().items()}

    return update


def build_stages(cfg: RunConfig, spec: ModelSpec, splits: Splits) -> list[Stage]:
    """The aggregation stages the settings ask for, in order: norm guard, then the defences."""
    stages: list[Stage] = []
    if cfg.robust.norm_guard > 0:
        stages.append(NormGuard(cfg.robust.norm_guard))
    defences = cfg.robust.defences()
    env = DefenceEnv(root_update=root_trainer(cfg, spec, splits) if any(d.name == "fltrust" for d in defences)
                     else None, seed=cfg.seed)
    stages += [stage for d in defences for stage in d.stages(env)]
    return stages


def server_step(cfg: RunConfig) -> list[Stage]:
    """The server's step as the last stage (none at FedAvg's step of 1)."""
    return [ServerStep(cfg.server_step)] if cfg.server_step != 1.0 else []


def budget_planner(cfg: RunConfig, spec: ModelSpec) -> BudgetPlanner:
    """A node's budget -> the profile that fits it (:func:`fedshrink.devices.plan_budget`), and why."""
    train = cfg.training

    def plan(hello: Hello) -> tuple[DeviceProfile, str]:
        assert hello.budget is not None
        picked = plan_budget(hello.budget, spec, device=hello.device, samples=hello.num_examples * train.epochs,
                             batch_size=train.batch_size, local_epochs=train.epochs, momentum=train.momentum > 0)
        return picked.profile, picked.explain()

    return plan


def explain_budgets(cfg: RunConfig, spec: ModelSpec, samples: int) -> list[str]:
    """What the planner picks for each budget of the run's budget mix, for a client of ``samples`` examples.

    A budget nothing fits raises :class:`ConfigError` (one line naming it): the run fails at start.
    """
    train = cfg.training
    return [plan_budget(budget, spec, samples=samples * train.epochs, batch_size=train.batch_size,
                        local_epochs=train.epochs, momentum=train.momentum > 0).explain()
            for budget, _ in cfg.devices.budgets()]


def build_strategy(cfg: RunConfig, spec: ModelSpec, splits: Splits) -> ShrinkStrategy:
    frag, fed = cfg.fragments, cfg.federation
    graph = build_graph(build_model(spec))
    privacy, private_stages = private_parts(cfg.privacy, rounds=fed.num_server_rounds, seed=cfg.seed)
    planner_cls = functools.partial(PrivatePlanner, privacy=privacy) if privacy is not None else Planner
    planner = planner_cls(spec, graph, cfg.training, uplink=cfg.chains.uplink_chain,
                          downlink=cfg.chains.downlink_chain, fragments=cfg.fragments_enabled,
                          policy=frag.policy(cfg.seed) if cfg.fragments_enabled else None,
                          input_scaling=frag.fragment_scaling, nested=frag.nested(), derive=frag.derive_masks,
                          reply_limits=ReplyLimits(fed.reply_size_factor, fed.max_reply_bytes),
                          references=DownlinkReferences(cfg.chains.downlink_delta) if cfg.chains.downlink_delta
                          else None, start_seed=cfg.seed if cfg.chains.downlink_start == "seed" else None)
    refiners: list[Refiner] = []
    fusion = frag.fusion()
    if cfg.fragments_enabled and fusion is not None:
        refiners.append(Fusion(graph, spec, torch.from_numpy(splits.proxy.x), fusion, scaled=frag.fragment_scaling,
                                rounds=fed.num_server_rounds))
    initialise = nested_initialiser(graph) if cfg.fragments_enabled and frag.fragment_init == "nested" else None
    fleet = Fleet(spec, cfg.training, uplink=cfg.chains.uplink_chain, downlink=cfg.chains.downlink_chain,
                  seed=cfg.seed, deadline_s=cfg.devices.round_deadline, over_select=cfg.devices.over_select,
                  availability=cfg.devices.device_availability)
    strategy_cls = functools.partial(PrivateStrategy, privacy=privacy) if privacy is not None else ShrinkStrategy
    return strategy_cls(planner, fraction_train=fed.fraction_train, min_train_clients=fed.min_train_clients,
                        clients_per_round=fed.clients_per_round, seed=cfg.seed, wait_timeout=fed.round_timeout,
                        stages=build_stages(cfg, spec, splits) + private_stages + server_step(cfg), refiners=refiners,
                        initialise=initialise, pruned_as_zero=frag.pruned_as_zero, examples_fence=fed.examples_fence,
                        update_limit=fed.update_limit, fleet=fleet, plan_budget=budget_planner(cfg, spec),
                        memory=UpdateMemory(max_age=cfg.devices.reuse_rounds,
                                            max_bytes=int(cfg.devices.reuse_memory_mb * 1e6))
                        if cfg.reuses_absent_updates and (cfg.devices.device_availability or cfg.devices.round_deadline)
                        else None)
